"""The registry of framework backends that tests, `ibp-check`, benchmarks and training all use.

A backend adapts NumPy data (matrices (B, C, C); feature maps channels-first (B, C, H, W), the
reference's layout, unless a call says otherwise) to a framework's tensors, layout and device, and
computes vector-Jacobian products through that framework's autodiff. It is the one place that
resolves a device request, places tensors and models on the device, waits for it and reads
tensors back. The stage functions themselves live in `impls.<name>`.

Devices are the framework's own objects (`torch.device`, or a TensorFlow device string such as
"/GPU:0"), so they can be passed to the framework directly; `device=None` everywhere means the
framework's default placement.
"""

import contextlib
import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeAlias

import numpy as np

from reference.contracts import IBPInputError

if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    # Hides TensorFlow's C++ notices (CPU instruction sets, ...); its oneDNN line comes regardless.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

#: A tensor of the backend's framework (frameworks without type information make this Any).
Tensor: TypeAlias = Any
#: A device of the backend's framework: `torch.device`, or a TensorFlow device string.
Device: TypeAlias = Any

#: What a user may ask for: "gpu" fails when the framework sees none, "auto" falls back to the CPU.
DEVICE_REQUESTS = ("cpu", "gpu", "auto")

CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"


class Backend(ABC):
    """One framework: its tensors, layout, devices and autodiff."""

    name: ClassVar[str]
    package: ClassVar[str]
    layout: ClassVar[str]
    impl_module: ClassVar[str]

    def is_available(self) -> bool:
        try:
            return importlib.util.find_spec(self.package) is not None
        except ValueError:  # sys.modules holds None for it: imports of it are blocked
            return False

    @property
    def impl(self) -> Any:
        """The implementation subpackage (`impls.torch` or `impls.tf`)."""
        return importlib.import_module(self.impl_module)

    @property
    def fw(self) -> Any:
        """The framework module itself."""
        return importlib.import_module(self.package)

    # Devices.

    def resolve_device(self, request: str = "cpu") -> Device:
        """The device for "cpu", "gpu" or "auto" (the GPU when the framework sees one).

        Raises IBPInputError for another request, or for "gpu" when the framework sees no GPU.
        """
        if request not in DEVICE_REQUESTS:
            raise IBPInputError(f"device {request!r}: choose one of {', '.join(DEVICE_REQUESTS)}")
        has_gpu = self._has_gpu()
        if request == "gpu" and not has_gpu:
            raise IBPInputError(f"device 'gpu': {self.package} sees no GPU")
        return self._device(gpu=has_gpu and request != "cpu")

    @abstractmethod
    def _has_gpu(self) -> bool: ...

    @abstractmethod
    def _device(self, gpu: bool) -> Device: ...

    @abstractmethod
    def is_gpu(self, device: Device) -> bool:
        """Whether `device` (from `resolve_device`) is a GPU."""

    @abstractmethod
    def describe_device(self, device: Device) -> str:
        """'cpu', or the GPU's model name, for results' metadata."""

    @abstractmethod
    def placement(self, device: Device) -> contextlib.AbstractContextManager[Any]:
        """A context in which what is created (models, variables, tensors) and run lands on
        `device`. Around a traced TensorFlow function's body it is recorded in the graph, at no
        cost per call."""

    @abstractmethod
    def synchronize(self, device: Device) -> None:
        """Block until the work queued on `device` is done (what a timer needs on a GPU)."""

    # Conversion from and to NumPy.

    @abstractmethod
    def tensor(self, array: Any, dtype: str = "float64", device: Device = None) -> Tensor:
        """`array` as a tensor of `dtype` ('float32', 'bfloat16', 'int64', ...) on `device`."""

    def feature_map(
        self,
        x: Any,
        dtype: str = "float64",
        device: Device = None,
        layout: str = CHANNELS_FIRST,
    ) -> Tensor:
        """A NumPy feature map (or batch of images) in `layout` as a tensor in this framework's
        layout; data pipelines deliver images channels-last, the reference is channels-first."""
        if layout not in (CHANNELS_FIRST, CHANNELS_LAST):
            raise IBPInputError(f"layout {layout!r}: choose {CHANNELS_FIRST} or {CHANNELS_LAST}")
        x = np.asarray(x)
        if layout != self.layout:
            x = x.transpose(0, 2, 3, 1) if layout == CHANNELS_FIRST else x.transpose(0, 3, 1, 2)
        return self.tensor(x, dtype, device)

    def labels(self, array: Any, device: Device = None) -> Tensor:
        """Class indices as the int64 tensor both frameworks' losses take."""
        return self.tensor(array, "int64", device)

    @abstractmethod
    def numpy(self, tensor: Tensor) -> np.ndarray:
        """The tensor's values in host memory; half precision comes back widened to float32."""

    def feature_map_numpy(self, tensor: Tensor) -> np.ndarray:
        """A feature map (or its gradient) in this framework's layout as channels-first NumPy."""
        x = self.numpy(tensor)
        return x.transpose(0, 3, 1, 2) if self.layout == CHANNELS_LAST else x

    def dtype_name(self, tensor: Tensor) -> str:
        """'float32', 'bfloat16', ... in both frameworks."""
        return str(tensor.dtype).removeprefix("torch.").removeprefix("<dtype: '").rstrip("'>")

    # Autodiff.

    @abstractmethod
    def value_and_vjp(
        self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], cotangent: Any
    ) -> tuple[np.ndarray, list[Any]]:
        """fn(*inputs) and the gradient of <cotangent, fn(*inputs)> with respect to each input
        (None where fn does not depend on it)."""

    @abstractmethod
    def check_gradient(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> None:
        """Compare fn's gradient at the float64 tensor x with finite differences (raises on a
        mismatch)."""

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


class TorchBackend(Backend):
    name, package, layout, impl_module = "torch", "torch", CHANNELS_FIRST, "impls.torch"

    def _has_gpu(self) -> bool:
        return bool(self.fw.cuda.is_available())

    def _device(self, gpu: bool) -> Device:
        return self.fw.device("cuda" if gpu else "cpu")

    def is_gpu(self, device: Device) -> bool:
        return device is not None and self.fw.device(device).type == "cuda"

    def describe_device(self, device: Device) -> str:
        return str(self.fw.cuda.get_device_name(device)) if self.is_gpu(device) else "cpu"

    def placement(self, device: Device) -> contextlib.AbstractContextManager[Any]:
        # torch places by tensor: the device as a context is the default of the factories inside.
        return contextlib.nullcontext() if device is None else self.fw.device(device)

    def synchronize(self, device: Device) -> None:
        if self.is_gpu(device):
            self.fw.cuda.synchronize(device)

    def tensor(self, array: Any, dtype: str = "float64", device: Device = None) -> Tensor:
        torch = self.fw
        return torch.as_tensor(np.ascontiguousarray(array)).to(
            device=device, dtype=getattr(torch, dtype)
        )

    def numpy(self, tensor: Tensor) -> np.ndarray:
        tensor = tensor.detach().cpu()
        # NumPy has no bfloat16: half precision comes back widened to float32, as in TensorFlow.
        return (tensor.float() if tensor.dtype.itemsize < 4 else tensor).numpy()

    def value_and_vjp(
        self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], cotangent: Any
    ) -> tuple[np.ndarray, list[Any]]:
        torch = self.fw
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        if not out.requires_grad:  # detached, or computed outside autograd
            return self.numpy(out), [None] * len(leaves)
        g = torch.as_tensor(np.asarray(cotangent), dtype=out.dtype, device=out.device)
        grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
        return self.numpy(out), [None if d is None else self.numpy(d) for d in grads]

    def check_gradient(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> None:
        self.fw.autograd.gradcheck(
            fn, (x.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4
        )


class TensorFlowBackend(Backend):
    name, package, layout, impl_module = "tf", "tensorflow", CHANNELS_LAST, "impls.tf"

    def _has_gpu(self) -> bool:
        return bool(self.fw.config.list_physical_devices("GPU"))

    def _device(self, gpu: bool) -> Device:
        return "/GPU:0" if gpu else "/CPU:0"

    def is_gpu(self, device: Device) -> bool:
        return device is not None and self.fw.DeviceSpec.from_string(device).device_type == "GPU"

    def describe_device(self, device: Device) -> str:
        if not self.is_gpu(device):
            return "cpu"
        tf = self.fw
        index = tf.DeviceSpec.from_string(device).device_index or 0
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[index]
        )
        return str(details.get("device_name", "gpu"))

    def placement(self, device: Device) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if device is None else self.fw.device(device)

    def synchronize(self, device: Device) -> None:
        # On the CPU an op or tf.function call returns once its outputs exist: nothing queued.
        if self.is_gpu(device):
            self.fw.test.experimental.sync_devices()

    def tensor(self, array: Any, dtype: str = "float64", device: Device = None) -> Tensor:
        tf = self.fw
        with self.placement(device):
            # Eager constants start in host memory; the identity copies them onto `device`.
            converted = tf.cast(tf.constant(np.asarray(array)), getattr(tf, dtype))
            return converted if device is None else tf.identity(converted)

    def numpy(self, tensor: Tensor) -> np.ndarray:
        tf = self.fw
        if tensor.dtype in (tf.float16, tf.bfloat16):
            tensor = tf.cast(tensor, tf.float32)
        return np.asarray(tensor.numpy())

    def value_and_vjp(
        self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], cotangent: Any
    ) -> tuple[np.ndarray, list[Any]]:
        tf = self.fw
        with tf.GradientTape() as tape:
            for t in inputs:
                tape.watch(t)
            out = fn(*inputs)
        g = tf.cast(tf.constant(np.asarray(cotangent)), out.dtype)
        grads = tape.gradient(out, list(inputs), output_gradients=g)
        return self.numpy(out), [None if d is None else self.numpy(d) for d in grads]

    def check_gradient(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> None:
        (analytic,), (numeric,) = self.fw.test.compute_gradient(fn, [x], delta=1e-6)
        np.testing.assert_allclose(analytic, numeric, atol=1e-6, rtol=1e-4)


BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (TorchBackend(), TensorFlowBackend())
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; choose one of {sorted(BACKENDS)}") from None


def available_backends() -> list[Backend]:
    return [b for b in BACKENDS.values() if b.is_available()]
