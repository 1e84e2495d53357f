"""How to time each backend of `impls.backends.BACKENDS`: callables that run one forward,
forward+backward or training step on tensors already in place, and block until it is done.

One adapter class per registry entry, keyed by the backend's name; the suites iterate the registry
and look the adapter up, so a new backend needs an adapter here and nothing else. Devices, placement
and conversion are the backend's (`impls.backends`); an adapter only holds the resolved device.

TensorFlow callables are `tf.function`s (graph mode, as Keras runs `fit`); each is traced by the
warm-up call that precedes every timing, so tracing is never timed. Autograph is off: nothing here
branches on tensors, and autograph re-reads source files, which breaks when they change mid-run.
"""

import importlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from bench.cases import SqrtmVariant
from impls.backends import Backend, Device, Tensor, available_backends

#: Classes of the head and training-step benchmarks (CUB-200-2011 has 200).
NUM_CLASSES = 200
#: Any rate does for timing; a small one keeps repeated steps on random data finite.
TRAIN_LEARNING_RATE = 1e-3
#: The benchmarks name a device by its hardware ("cuda"), the registry by its kind.
_DEVICE_REQUESTS = {"cpu": "cpu", "cuda": "gpu"}


def _build_model(backend: Backend, name: str) -> Any:
    """`impls.<framework>.models.build_model(name)`: backbone (He-initialised) + IBP head."""
    models = importlib.import_module(f"{backend.impl_module}.models")
    return models.build_model(name, num_classes=NUM_CLASSES)


class Adapter:
    """A backend on one device; the conversions are the backend's, on that device."""

    #: The benchmark devices ("cpu", "cuda") this adapter's suites run on.
    devices: ClassVar[tuple[str, ...]]

    def __init__(self, backend: Backend, device: str) -> None:
        self.backend = backend
        self.device: Device = backend.resolve_device(_DEVICE_REQUESTS[device])

    def synchronize(self) -> None:
        self.backend.synchronize(self.device)

    def matrices(self, array: np.ndarray, dtype: str) -> Tensor:
        return self.backend.tensor(array, dtype, self.device)

    def feature_maps(self, channels_first: np.ndarray, dtype: str) -> Tensor:
        return self.backend.feature_map(channels_first, dtype, self.device)

    def labels(self, array: np.ndarray) -> Tensor:
        return self.backend.labels(array, self.device)

    def to_numpy(self, tensor: Tensor) -> np.ndarray:
        return self.backend.numpy(tensor)

    def sqrtm_function(self, variant: SqrtmVariant) -> Callable[[Any], Any]:
        raise NotImplementedError

    def forward_backward(
        self, root: Callable[[Any], Any], a: Any, cotangent: Any
    ) -> Callable[[], tuple[Any, Any]]:
        raise NotImplementedError

    def sqrtm_forward_backward(
        self, variant: SqrtmVariant, a: Any, cotangent: Any
    ) -> Callable[[], tuple[Any, Any]]:
        """`forward_backward` of `variant`'s root."""
        return self.forward_backward(self.sqrtm_function(variant), a, cotangent)


class TorchAdapter(Adapter):
    devices = ("cpu", "cuda")

    def __init__(self, backend: Backend, device: str) -> None:
        super().__init__(backend, device)
        self.torch = backend.fw

    def sqrtm_function(self, variant: SqrtmVariant) -> Callable[[Any], Any]:
        sqrtm, options = self.backend.impl.sqrtm, variant.options
        if variant.compute_dtype is None:
            return lambda a: sqrtm(a, **options)
        wide = getattr(self.torch, variant.compute_dtype)
        return lambda a: sqrtm(a.to(wide), **options).to(a.dtype)

    def naive_eigh_sqrtm(self, a: Any) -> Any:
        """The root with autograd differentiating torch.linalg.eigh (1 / (s_i - s_j) terms)."""
        eigenvalues, u = self.torch.linalg.eigh((a + a.mT) / 2)
        return (u * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)) @ u.mT

    def forward(self, root: Callable[[Any], Any], a: Any) -> Callable[[], Any]:
        def run() -> Any:
            with self.torch.no_grad():
                z = root(a)
            self.synchronize()
            return z

        return run

    def forward_backward(
        self, root: Callable[[Any], Any], a: Any, cotangent: Any
    ) -> Callable[[], tuple[Any, Any]]:
        """A callable returning (Z, dL/dA) for L = <cotangent, root(A)>."""

        def run() -> tuple[Any, Any]:
            leaf = a.detach().requires_grad_(True)
            z = root(leaf)
            (grad,) = self.torch.autograd.grad(z, leaf, cotangent)
            self.synchronize()
            return z.detach(), grad

        return run

    def memory(self, run: Callable[[], Any], inputs: Sequence[Any]) -> tuple[Any, dict[str, int]]:
        """Call `run` once; return its result and what it keeps for its backward (on CUDA also
        its peak allocation).

        saved_tensor_bytes: the bytes of the distinct storages autograd saves during the forward
        for the backward (captured with saved_tensors_hooks: exact and deterministic, the same
        on every device). It excludes the inputs' own storage, the output, and the transient
        workspace of the backward itself (an eigendecomposition inside a backward, say).
        """
        input_storages = {tensor.untyped_storage().data_ptr() for tensor in inputs}
        on_gpu = self.backend.is_gpu(self.device)
        saved: dict[int, int] = {}

        def pack(tensor: Any) -> Any:
            storage = tensor.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with self.torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if on_gpu:
                self.synchronize()
                baseline = self.torch.cuda.memory_allocated()
                self.torch.cuda.reset_peak_memory_stats()
                result = run()
                peak = self.torch.cuda.max_memory_allocated() - baseline
            else:
                result = run()
        info = {"saved_tensor_bytes": sum(n for p, n in saved.items() if p not in input_storages)}
        if on_gpu:
            info["cuda_peak_bytes_above_inputs"] = peak
        return result, info

    def _train_step(self, model: Any, inputs: Any, labels: Any) -> Callable[[], Any]:
        torch = self.torch
        optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN_LEARNING_RATE)

        def run() -> Any:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            self.synchronize()
            return loss.detach()

        return run

    def head_forward_backward(
        self, features: Any, options: dict[str, Any], num_classes: int = NUM_CLASSES
    ) -> Callable[[], Any]:
        """Loss and gradients (input and classifier) of IBPHead + cross-entropy; no update."""
        torch = self.torch
        head = self.backend.impl.IBPHead(features.shape[1], num_classes, **options)
        head = head.to(device=self.device, dtype=features.dtype)
        labels = torch.zeros(features.shape[0], dtype=torch.long, device=self.device)

        def run() -> Any:
            leaf = features.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(head(leaf), labels)
            grads = torch.autograd.grad(loss, [leaf, *head.parameters()])
            self.synchronize()
            return grads

        return run

    def model_train_step(self, name: str, images: Any, labels: Any) -> Callable[[], Any]:
        """One SGD step of build_model(name) on a batch of images."""
        model = _build_model(self.backend, name).to(self.device)
        return self._train_step(model, images, labels)

    def autocast(self, enabled: bool) -> Any:
        """bfloat16 autocast for the backbone (the IBP stages opt out and stay float32)."""
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=enabled)


class TensorFlowAdapter(Adapter):
    # tensorflow-cpu is what this project installs; tf.linalg.sqrtm has no GPU kernel either.
    # On the CPU a tf.function call returns once its outputs are computed: nothing to wait for.
    devices = ("cpu",)

    def __init__(self, backend: Backend, device: str) -> None:
        super().__init__(backend, device)
        self.tf = backend.fw
        self._sqrtm_steps: dict[SqrtmVariant, Any] = {}

    def sqrtm_function(self, variant: SqrtmVariant) -> Callable[[Any], Any]:
        sqrtm, options, tf = self.backend.impl.sqrtm, variant.options, self.tf
        if variant.compute_dtype is None:
            return lambda a: sqrtm(a, **options)
        wide = tf.as_dtype(variant.compute_dtype)
        return lambda a: tf.cast(sqrtm(tf.cast(a, wide), **options), a.dtype)

    def naive_eigh_sqrtm(self, a: Any) -> Any:
        """The root with autograd differentiating tf.linalg.eigh (1 / (s_i - s_j) terms)."""
        tf = self.tf
        eigenvalues, u = tf.linalg.eigh((a + tf.linalg.matrix_transpose(a)) / 2)
        s = tf.sqrt(tf.maximum(eigenvalues, 0))
        return tf.matmul(u * s[..., None, :], u, transpose_b=True)

    def _placed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as a tf.function whose ops run on the adapter's device (fixed when traced)."""

        def placed(*args: Any) -> Any:
            with self.backend.placement(self.device):
                return fn(*args)

        return self.tf.function(placed, autograph=False)

    def forward(self, root: Callable[[Any], Any], a: Any) -> Callable[[], Any]:
        compiled = self._placed(root)
        return lambda: compiled(a)

    def forward_backward(
        self, root: Callable[[Any], Any], a: Any, cotangent: Any
    ) -> Callable[[], tuple[Any, Any]]:
        """A callable returning (Z, dL/dA) for L = <cotangent, root(A)>."""
        step = self._step(root)
        return lambda: step(a, cotangent)

    def _step(self, root: Callable[[Any], Any]) -> Any:
        tf = self.tf

        @self._placed
        def step(a: Any, cotangent: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                tape.watch(a)
                z = root(a)
            return z, tape.gradient(z, a, output_gradients=cotangent)

        return step

    def sqrtm_forward_backward(
        self, variant: SqrtmVariant, a: Any, cotangent: Any
    ) -> Callable[[], tuple[Any, Any]]:
        """One graph per variant, traced again only for a new shape or dtype: the error commands
        run a variant on many inputs, and tracing costs more than a small root."""
        if variant not in self._sqrtm_steps:
            self._sqrtm_steps[variant] = self._step(self.sqrtm_function(variant))
        step = self._sqrtm_steps[variant]
        return lambda: step(a, cotangent)

    def memory(self, run: Callable[[], Any], inputs: Sequence[Any]) -> tuple[Any, dict[str, int]]:
        """Call `run` once. TensorFlow has no allocation counter for the CPU: no measurement."""
        return run(), {}

    def _train_step(self, model: Any, inputs: Any, labels: Any) -> Callable[[], Any]:
        import keras

        tf = self.tf
        optimizer = keras.optimizers.SGD(learning_rate=TRAIN_LEARNING_RATE)

        @self._placed
        def step(inputs: Any, labels: Any) -> Any:
            with tf.GradientTape() as tape:
                logits = model(inputs, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                )
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        return lambda: step(inputs, labels)

    def head_forward_backward(
        self, features: Any, options: dict[str, Any], num_classes: int = NUM_CLASSES
    ) -> Callable[[], Any]:
        """Loss and gradients (input and classifier) of IBPHead + cross-entropy; no update."""
        tf = self.tf
        with self.backend.placement(self.device):
            head = self.backend.impl.IBPHead(num_classes=num_classes, **options)
            head.build(features.shape)
            labels = tf.zeros(features.shape[0], dtype=tf.int64)

        @self._placed
        def step(x: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, head(x))
                )
            return tape.gradient(loss, [x, *head.trainable_variables])

        return lambda: step(features)

    def model_train_step(self, name: str, images: Any, labels: Any) -> Callable[[], Any]:
        """One SGD step of build_model(name) on a batch of images."""
        with self.backend.placement(self.device):
            model = _build_model(self.backend, name)
        return self._train_step(model, images, labels)


ADAPTERS: dict[str, type[Adapter]] = {
    "torch": TorchAdapter,
    "tf": TensorFlowAdapter,
}


def benchmarked_backends(device: str) -> list[Backend]:
    """Registry backends that are installed and have an adapter that runs on `device`."""
    return [
        backend
        for backend in available_backends()
        if backend.name in ADAPTERS and device in ADAPTERS[backend.name].devices
    ]


def adapter_for(backend: Backend, device: str) -> Any:
    """The adapter of `backend` on the benchmark device ("cpu" or "cuda")."""
    return ADAPTERS[backend.name](backend, device)
