"""A user's model as the model checks see it, in PyTorch or Keras: its layers' outputs, its
gradients, one step of its optimizer. Everything crosses this boundary as NumPy, inputs in the
model's own layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from impls.testing.check_target import UsageError, framework_of, load


@dataclasses.dataclass
class LayerCall:
    """One layer's call during a forward pass."""

    name: str
    kind: str  # the class, and the function of a Lambda layer
    input: np.ndarray
    output: np.ndarray
    batch_dependent: bool  # a BatchNorm, whose training mode mixes samples on purpose
    parametrised: bool


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value)


def is_probabilities(output: Any) -> bool:
    """Whether a model's output rows are probabilities (a softmax last layer), not logits."""
    values = _numpy(output)
    return bool(np.all(values >= 0) and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


class KerasModel:
    """A Keras model traced as the chain of its top-level layers (Sequential, or a functional
    model without branches); a branching model is checked as one layer."""

    framework = "tf"

    def __init__(self, model: Any, optimizer: Any) -> None:
        import keras

        self.model = model
        self.optimizer: Any = (
            optimizer if optimizer is not None else getattr(model, "optimizer", None)
        )
        if not model.inputs:
            raise UsageError("the Keras model has no input shape: start it with keras.Input")
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self.layers = [
            layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        self._chain: bool | None = None

    def _batch_dependent(self, layer: Any) -> bool:
        import keras

        inner = getattr(layer, "_flatten_layers", lambda: [layer])()
        return any(isinstance(one, keras.layers.BatchNormalization) for one in inner)

    @staticmethod
    def _kind(layer: Any) -> str:
        function = getattr(layer, "function", None)
        if function is not None:
            return f"{type(layer).__name__}({getattr(function, '__name__', 'function')})"
        return type(layer).__name__

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return _numpy(self.model(x, training=training))

    def trace(self, x: np.ndarray, training: bool = False) -> list[LayerCall]:
        """Each layer's call in order; one call for the whole model where its layers branch."""
        calls, h = [], x
        if self._chain is not False:
            for layer in self.layers:
                try:
                    out = layer(h, training=training)
                except Exception:  # a layer of a branching model refuses its predecessor's output
                    self._chain = False
                    break
                calls.append(
                    LayerCall(
                        layer.name,
                        self._kind(layer),
                        _numpy(h),
                        _numpy(out),
                        self._batch_dependent(layer),
                        bool(layer.weights),
                    )
                )
                h = out
            if self._chain is False:
                calls = []
            elif self._chain is None:
                whole = self.forward(x, training=False)
                chained = calls if not training else self.trace(x, training=False)
                self._chain = chained[-1].output.shape == whole.shape and np.allclose(
                    chained[-1].output, whole, rtol=1e-4, atol=1e-6
                )
            if self._chain:
                return calls
        whole = self.forward(x, training)
        return [
            LayerCall(self.model.name, "Model", x, whole, self._batch_dependent(self.model), True)
        ]

    def layer_function(self, name: str) -> Callable[[Any], Any]:
        # `call`, not the layer itself: calling a Keras layer casts its input to the layer's
        # dtype (float32), which would hide what the user's code does in float16 or float64.
        return self.model.get_layer(name).call

    def call_layer(self, name: str, x: np.ndarray, training: bool = False) -> np.ndarray:
        return _numpy(self.model.get_layer(name)(x, training=training))

    def frozen(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.weights and not layer.trainable]

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray | None]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self._loss(self.model(x, training=True), labels)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        return {
            v.path: None if g is None else _numpy(g) for v, g in zip(variables, grads, strict=True)
        }

    @staticmethod
    def _loss(output: Any, labels: np.ndarray) -> Any:
        import keras

        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, output, from_logits=not is_probabilities(output)
            )
        )

    def step(self, x: np.ndarray, labels: np.ndarray) -> None:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self._loss(self.model(x, training=True), labels)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    def learning_rates(self) -> list[float]:
        return [float(np.asarray(self.optimizer.learning_rate))]


class TorchModel:
    """A torch module traced with forward hooks on every submodule, in the order their calls end
    (a submodule before the module that holds it)."""

    framework = "torch"

    def __init__(self, model: Any, optimizer: Any, input_shape: tuple[int, ...] | None) -> None:
        import torch

        if input_shape is None:
            raise UsageError("a torch model needs --input-shape C,H,W (one sample's shape)")
        self.model, self.optimizer, self.input_shape = model, optimizer, tuple(input_shape)
        self._torch = torch
        self._names = {module: name for name, module in model.named_modules() if name}

    def _run(self, x: np.ndarray, training: bool, grad: bool = False) -> Any:
        self.model.train(training)
        with self._torch.set_grad_enabled(grad):
            return self.model(self._torch.from_numpy(np.ascontiguousarray(x)))

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return _numpy(self._run(x, training))

    def trace(self, x: np.ndarray, training: bool = False) -> list[LayerCall]:
        calls: list[LayerCall] = []
        norms = (self._torch.nn.modules.batchnorm._NormBase,)

        def record(module: Any, inputs: tuple, output: Any) -> None:
            if not inputs or not hasattr(inputs[0], "shape") or not hasattr(output, "shape"):
                return
            batch_dependent = any(isinstance(m, norms) for m in module.modules())
            calls.append(
                LayerCall(
                    self._names[module],
                    type(module).__name__,
                    _numpy(inputs[0]),
                    _numpy(output),
                    batch_dependent,
                    any(True for _ in module.parameters()),
                )
            )

        hooks = [module.register_forward_hook(record) for module in self._names]
        try:
            whole = self.forward(x, training)
        finally:
            for hook in hooks:
                hook.remove()
        return calls or [LayerCall("model", type(self.model).__name__, x, whole, False, True)]

    def layer_function(self, name: str) -> Callable[[Any], Any]:
        return self.model.get_submodule(name)

    def call_layer(self, name: str, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.model.train(training)
        with self._torch.no_grad():
            return _numpy(self.model.get_submodule(name)(self._torch.from_numpy(x)))

    def frozen(self) -> list[str]:
        """Frozen submodules, named at the highest level that is frozen throughout."""
        names = []
        for name, module in self.model.named_children():
            flags = [p.requires_grad for p in module.parameters()]
            if flags and not any(flags):
                names.append(name)
            else:
                names += [
                    f"{name}.{n}" for n, p in module.named_parameters() if not p.requires_grad
                ]
        return names + [
            n for n, p in self.model.named_parameters(recurse=False) if not p.requires_grad
        ]

    def _loss(self, output: Any, labels: np.ndarray) -> Any:
        functional = self._torch.nn.functional
        target = self._torch.from_numpy(labels.astype(np.int64))
        if is_probabilities(output):
            return functional.nll_loss(self._torch.log(output), target)
        return functional.cross_entropy(output, target)

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray | None]:
        self.model.zero_grad(set_to_none=True)
        self._loss(self._run(x, training=True, grad=True), labels).backward()
        return {
            name: None if p.grad is None else _numpy(p.grad)
            for name, p in self.model.named_parameters()
            if p.requires_grad
        }

    def step(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.optimizer.zero_grad()
        self._loss(self._run(x, training=True, grad=True), labels).backward()
        self.optimizer.step()

    def learning_rates(self) -> list[float]:
        return sorted({float(group["lr"]) for group in self.optimizer.param_groups})


def build(
    target: str, framework: str | None, input_shape: tuple[int, ...] | None, seed: int
) -> TorchModel | KerasModel:
    """The model `target` names, built afresh with every random generator seeded."""
    framework = framework or framework_of(target)
    if framework == "torch":
        import torch

        torch.manual_seed(seed)
    else:
        import keras

        keras.utils.set_random_seed(seed)
    _, function = load(target)
    built = function()
    model, optimizer = built if isinstance(built, tuple) and len(built) == 2 else (built, None)
    if framework == "torch":
        import torch

        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{target} returned a {type(model).__name__}, not a torch nn.Module")
        return TorchModel(model, optimizer, input_shape)
    import keras

    if not isinstance(model, keras.Model):
        raise UsageError(f"{target} returned a {type(model).__name__}, not a Keras model")
    return KerasModel(model, optimizer)


def single_threaded(framework: str) -> None:
    """One intra-op thread, in the checker's child processes only. The checks run one small model
    at a time, and thread pools that oversubscribe a shared CPU run far slower: a forward pass of
    the question's torch model at batch 16 took 1.65 s with 2 threads and 0.13 s with 1 on 2
    loaded cores."""
    if framework == "torch":
        import torch

        torch.set_num_threads(1)
    else:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow is running already: its pools are fixed
            pass


def located_layer(
    target: str, framework: str, input_shape: tuple[int, ...] | None, seed: int, name: str
) -> Callable[[Any], Any]:
    """The layer `name` of the model `target` builds: the function the stage checks run on, in
    their child process."""
    single_threaded(framework)
    return build(target, framework, input_shape, seed).layer_function(name)
