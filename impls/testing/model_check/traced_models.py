"""A user's model as the model checks see it, in PyTorch or Keras: each layer's call during a
forward pass (its inputs and output), the logits among the model's outputs, its gradients, one step
of its optimizer. Everything crosses this boundary as NumPy, inputs in the model's own layout.

Layers are identified by where they sit (`LayerCall.path`: the module path in torch, the
positions of the layers in Keras), never by their names, which Keras numbers anew each time a model
is built. Any model is traced: Keras Sequential, functional models with branches and skips,
subclassed models; torch modules with any forward.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from impls.testing.check_options import ModelSettings
from impls.testing.check_target import framework_of, load
from impls.testing.command_line import UsageError

#: A layer's positional arguments as NumPy: arrays, or lists of arrays (a Keras Add's inputs).
Arguments = tuple[Any, ...]


@dataclasses.dataclass
class LayerCall:
    """One layer's call during a forward pass."""

    path: str  # where the layer sits in the model (see the module's docstring)
    name: str  # its name, for the report
    kind: str  # the class, and the function of a Lambda layer
    arguments: Arguments
    output: np.ndarray
    dtype: str  # of its (first) input
    batch_dependent: bool  # holds a BatchNorm, whose training mode mixes samples on purpose
    parametrised: bool
    trainable: bool  # has parameters that train

    @property
    def input(self) -> np.ndarray:
        """The first input array."""
        first = self.arguments[0]
        return first[0] if isinstance(first, list) else first


@dataclasses.dataclass
class Outputs:
    """A forward pass's logits, and the model's other outputs by key."""

    logits: np.ndarray
    extras: dict[str, np.ndarray]


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)


def dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.").removeprefix("<dtype: '").rstrip("'>")


def numpy(value: Any) -> np.ndarray:
    """A copy of a tensor's values (an in-place layer later in the model cannot change it); half
    precision that NumPy cannot hold (bfloat16) widened to float32."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return (value.float() if dtype_name(value) == "bfloat16" else value).numpy().copy()
    values = np.array(value.numpy() if hasattr(value, "numpy") else value, copy=True)
    return values.astype(np.float32) if dtype_name(value) == "bfloat16" else values


def _numpy_arguments(arguments: Sequence[Any]) -> Arguments | None:
    """The positional arguments as arrays (lists of arrays kept as lists), or None where one is
    not a tensor: such a call is not traced."""
    converted: list[Any] = []
    for argument in arguments:
        if isinstance(argument, list | tuple) and argument and all(map(_is_tensor, argument)):
            converted.append([numpy(a) for a in argument])
        elif _is_tensor(argument):
            converted.append(numpy(argument))
        else:
            return None
    return tuple(converted) if converted else None


def is_probabilities(output: np.ndarray) -> bool:
    """Whether a model's output rows are probabilities (a softmax last layer), not logits."""
    values = np.asarray(output, dtype=np.float64)
    return bool(np.all(values >= 0) and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def select_logits(raw: Any, key: int | str | None) -> tuple[Any, dict[str, Any]]:
    """(logits, the other outputs by key) of what a model returns: a tensor, or a tuple, list or
    dict of them. `key` names the logits (--logits); without it, the one 2-D output, or 'logits'.
    Raises UsageError where that does not decide."""
    if _is_tensor(raw):
        if key is not None and key not in (0, "0"):
            raise UsageError(f"--logits {key}: the model returns one tensor")
        return raw, {}
    if isinstance(raw, Mapping):
        items = {str(k): v for k, v in raw.items()}
    elif isinstance(raw, list | tuple):
        items = {str(i): v for i, v in enumerate(raw)}
    else:
        raise UsageError(f"the model returns a {type(raw).__name__}, not a tensor, tuple or dict")
    tensors = {k: v for k, v in items.items() if _is_tensor(v)}
    shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in tensors.items())
    if key is not None:
        if str(key) not in tensors:
            raise UsageError(f"--logits {key}: the model's outputs are {shapes}")
        chosen = str(key)
    else:
        two_dimensional = [k for k, v in tensors.items() if len(v.shape) == 2]
        if len(two_dimensional) == 1:
            chosen = two_dimensional[0]
        elif "logits" in tensors:
            chosen = "logits"
        else:
            raise UsageError(
                f"the model returns several outputs ({shapes}): pass --logits with the index or "
                "key of the one that holds the logits"
            )
    return tensors[chosen], {k: v for k, v in tensors.items() if k != chosen}


def _outputs(raw: Any, key: int | str | None) -> Outputs:
    logits, extras = select_logits(raw, key)
    return Outputs(numpy(logits), {k: numpy(v) for k, v in extras.items()})


def _changed_last_sample(value: Any) -> Any:
    """The value with its last sample changed (2 x itself + the first): what the independence
    checks feed."""
    if isinstance(value, list):
        return [_changed_last_sample(v) for v in value]
    changed = value.copy()
    changed[-1] = 2.0 * value[-1] + value[0]
    return changed


def changed_last_sample(arguments: Arguments) -> Arguments:
    return tuple(_changed_last_sample(argument) for argument in arguments)


class TorchModel:
    """A torch module traced with forward hooks on every submodule, in the order their calls end
    (a submodule before the module that holds it). A module compiled with torch.compile is
    checked as the module it compiles (the same parameters and function; compiling it anew for
    every check would take minutes)."""

    framework = "torch"

    def __init__(self, model: Any, optimizer: Any, settings: ModelSettings) -> None:
        import torch

        if settings.input_shape is None:
            raise UsageError("a torch model needs --input-shape C,H,W (one sample's shape)")
        self._torch = torch
        self.compiled = _is_compiled(model) or any(map(_is_compiled, model.modules()))
        self.model = _uncompiled(model)
        self.optimizer, self.input_shape = optimizer, tuple(settings.input_shape)
        self.logits_key = settings.logits
        self._modules = {name: module for name, module in self.model.named_modules() if name}
        self._paths = {module: name for name, module in self._modules.items()}

    def _tensor(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(x))

    def _run(self, x: np.ndarray, training: bool, grad: bool = False) -> Any:
        self.model.train(training)
        with self._torch.set_grad_enabled(grad):
            return self.model(self._tensor(x))

    def forward(self, x: np.ndarray, training: bool = False) -> Outputs:
        return _outputs(self._run(x, training), self.logits_key)

    def trace(self, x: np.ndarray, training: bool = False) -> tuple[list[LayerCall], Outputs]:
        """Each layer's call in the order the calls end, and the model's outputs."""
        calls: list[LayerCall] = []
        norms = (self._torch.nn.modules.batchnorm._NormBase,)

        # Inputs are copied before the call: an in-place layer (ReLU(inplace=True)) overwrites
        # them. A module may run inside itself (recursion), hence a stack per module.
        started: dict[Any, list[tuple[Arguments | None, str]]] = {}

        def start(module: Any, inputs: tuple) -> None:
            arguments = _numpy_arguments(inputs)
            first = inputs[0] if inputs and _is_tensor(inputs[0]) else None
            dtype = dtype_name(first) if first is not None else ""
            started.setdefault(module, []).append((arguments, dtype))

        def record(module: Any, inputs: tuple, output: Any) -> None:
            arguments, dtype = started[module].pop()
            if arguments is None or not _is_tensor(output):
                return
            calls.append(
                LayerCall(
                    self._paths[module],
                    self._paths[module],
                    type(module).__name__,
                    arguments,
                    numpy(output),
                    dtype or dtype_name(inputs[0][0]),
                    any(isinstance(m, norms) for m in module.modules()),
                    any(True for _ in module.parameters()),
                    any(p.requires_grad for p in module.parameters()),
                )
            )

        hooks = [module.register_forward_pre_hook(start) for module in self._modules.values()]
        hooks += [module.register_forward_hook(record) for module in self._modules.values()]
        try:
            raw = self._run(x, training)
        finally:
            for hook in hooks:
                hook.remove()
        return calls, _outputs(raw, self.logits_key)

    def layer_function(self, path: str) -> Callable[..., Any]:
        return self._modules[path]

    def call_layer(self, path: str, arguments: Arguments, training: bool = False) -> np.ndarray:
        module = self._modules[path]
        module.train(training)
        native = [
            [self._tensor(a) for a in argument]
            if isinstance(argument, list)
            else self._tensor(argument)
            for argument in arguments
        ]
        with self._torch.no_grad():
            return numpy(module(*native))

    def reseed(self, seed: int) -> None:
        """The same random numbers from here on (Dropout masks), as after the last reseed(seed)."""
        self._torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (a user's layer may draw from NumPy's global one)

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
        output = output.float()
        if is_probabilities(numpy(output)):
            return functional.nll_loss(self._torch.log(output), target)
        return functional.cross_entropy(output, target)

    def _parameter_gradients(self, loss: Any) -> dict[str, np.ndarray | None]:
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        return {
            name: None if p.grad is None else numpy(p.grad)
            for name, p in self.model.named_parameters()
            if p.requires_grad
        }

    def gradients(
        self, x: np.ndarray, labels: np.ndarray
    ) -> tuple[dict[str, np.ndarray | None], dict[str, np.ndarray | None]]:
        """(the loss's gradient per trainable parameter, the extra outputs' sum's)."""
        logits, _ = select_logits(self._run(x, training=True, grad=True), self.logits_key)
        of_loss = self._parameter_gradients(self._loss(logits, labels))
        _, extras = select_logits(self._run(x, training=True, grad=True), self.logits_key)
        of_extras: dict[str, np.ndarray | None] = {name: None for name in of_loss}
        if extras:
            of_extras = self._parameter_gradients(sum(v.float().sum() for v in extras.values()))
        return of_loss, of_extras

    def step(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.optimizer.zero_grad()
        logits, _ = select_logits(self._run(x, training=True, grad=True), self.logits_key)
        self._loss(logits, labels).backward()
        self.optimizer.step()

    def learning_rates(self) -> list[float]:
        return sorted({float(group["lr"]) for group in self.optimizer.param_groups})


def _is_compiled(module: Any) -> bool:
    return hasattr(module, "_orig_mod")


def _uncompiled(model: Any) -> Any:
    """The module with every torch.compile wrapper replaced by the module it wraps."""
    model = getattr(model, "_orig_mod", model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_compiled(child):
                setattr(parent, name, _uncompiled(child))
    return model


class KerasModel:
    """A Keras model traced by recording each layer's `call` during a forward pass of the whole
    model: Sequential, functional (branches and skips included) or subclassed."""

    framework = "tf"

    def __init__(self, model: Any, optimizer: Any, settings: ModelSettings) -> None:
        import keras

        self._keras = keras
        self.model, self.compiled = model, False
        self.optimizer: Any = (
            optimizer if optimizer is not None else getattr(model, "optimizer", None)
        )
        self.logits_key = settings.logits
        self.input_shape = _keras_input_shape(model, settings.input_shape)
        self._paths: dict[Any, str] = {}
        for layer, path in _keras_paths(model):
            self._paths.setdefault(layer, path)  # a layer used twice: where it first sits
        self._layers = {path: layer for layer, path in self._paths.items()}
        self._generators = [
            generator
            for layer in [model, *self._paths]
            for generator in getattr(layer, "_seed_generators", [])
        ]
        self._generator_states = [numpy(g.state) for g in self._generators]

    def _batch_dependent(self, layer: Any) -> bool:
        inner = layer._flatten_layers(include_self=True, recursive=True)
        return any(isinstance(one, self._keras.layers.BatchNormalization) for one in inner)

    @staticmethod
    def _kind(layer: Any) -> str:
        function = getattr(layer, "function", None)
        if function is not None:
            return f"{type(layer).__name__}({getattr(function, '__name__', 'function')})"
        return type(layer).__name__

    def _run(self, x: np.ndarray, training: bool) -> Any:
        return self.model(x, training=training)

    def forward(self, x: np.ndarray, training: bool = False) -> Outputs:
        return _outputs(self._run(x, training), self.logits_key)

    def trace(self, x: np.ndarray, training: bool = False) -> tuple[list[LayerCall], Outputs]:
        """Each layer's call in the order the calls end, and the model's outputs."""
        calls: list[LayerCall] = []
        with self._recording(calls):
            raw = self._run(x, training)
        return calls, _outputs(raw, self.logits_key)

    @staticmethod
    def _call_tensors(arguments: Sequence[Any], keywords: Mapping[str, Any]) -> Sequence[Any]:
        """The tensors a `call` gets: its positional arguments, or `inputs=` given by keyword."""
        if arguments:
            return arguments
        return [keywords["inputs"]] if "inputs" in keywords else []

    def _recorder(self, layer: Any, calls: list[LayerCall]) -> Callable[..., Any]:
        original = layer.call

        def call(*arguments: Any, **keywords: Any) -> Any:
            output = original(*arguments, **keywords)
            tensors = self._call_tensors(arguments, keywords)
            recorded = _numpy_arguments(tensors)
            if recorded is not None and _is_tensor(output):
                first = tensors[0] if _is_tensor(tensors[0]) else tensors[0][0]
                calls.append(
                    LayerCall(
                        self._paths[layer],
                        layer.name,
                        self._kind(layer),
                        recorded,
                        numpy(output),
                        dtype_name(first),
                        self._batch_dependent(layer),
                        bool(layer.weights),
                        bool(layer.trainable_weights),
                    )
                )
            return output

        return call

    def _recording(self, calls: list[LayerCall]) -> Any:
        import contextlib

        @contextlib.contextmanager
        def recording() -> Iterator[None]:
            # The instance's `call` stands in for the class's; Keras calls `self.call` for every
            # layer, inside any model. object.__setattr__ keeps Keras from tracking the function.
            for layer in self._paths:
                object.__setattr__(layer, "call", self._recorder(layer, calls))
            try:
                yield
            finally:
                for layer in self._paths:
                    object.__delattr__(layer, "call")

        return recording()

    def layer_function(self, path: str) -> Callable[..., Any]:
        # `call`, not the layer itself: calling a Keras layer casts its input to the layer's
        # dtype (float32), which would hide what the user's code does in float16 or float64.
        return self._layers[path].call

    def call_layer(self, path: str, arguments: Arguments, training: bool = False) -> np.ndarray:
        return numpy(self._layers[path](*arguments, training=training))

    def reseed(self, seed: int) -> None:
        """The same random numbers from here on (Dropout masks, augmentation), as after the last
        reseed(seed): the global generators seeded, each layer's own generator set back."""
        self._keras.utils.set_random_seed(seed)
        for generator, state in zip(self._generators, self._generator_states, strict=True):
            generator.state.assign(state)

    def frozen(self) -> list[str]:
        return [
            layer.name
            for layer in self.model._flatten_layers(include_self=False, recursive=False)
            if layer.weights and not layer.trainable
        ]

    def _loss(self, output: Any, labels: np.ndarray) -> Any:
        keras = self._keras
        output = keras.ops.cast(output, "float32")
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, output, from_logits=not is_probabilities(numpy(output))
            )
        )

    def gradients(
        self, x: np.ndarray, labels: np.ndarray
    ) -> tuple[dict[str, np.ndarray | None], dict[str, np.ndarray | None]]:
        """(the loss's gradient per trainable variable, the extra outputs' sum's)."""
        import tensorflow as tf

        variables = self.model.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            logits, extras = select_logits(self._run(x, training=True), self.logits_key)
            loss = self._loss(logits, labels)
            extra = sum(tf.reduce_sum(tf.cast(v, tf.float32)) for v in extras.values())
        of_loss = tape.gradient(loss, variables)
        of_extras = tape.gradient(extra, variables) if extras else [None] * len(variables)
        return (
            {
                v.path: None if g is None else numpy(g)
                for v, g in zip(variables, of_loss, strict=True)
            },
            {
                v.path: None if g is None else numpy(g)
                for v, g in zip(variables, of_extras, strict=True)
            },
        )

    def step(self, x: np.ndarray, labels: np.ndarray) -> None:
        import tensorflow as tf

        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits, _ = select_logits(self._run(x, training=True), self.logits_key)
            loss = self._loss(logits, labels)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    def learning_rates(self) -> list[float]:
        return [float(np.asarray(self.optimizer.learning_rate))]


def _keras_paths(model: Any, prefix: str = "") -> Iterator[tuple[Any, str]]:
    """(layer, path) of every layer inside `model`, the path its positions among the layers of
    each level ("3/1": the second layer of the fourth); InputLayers are left out."""
    import keras

    for index, layer in enumerate(model._flatten_layers(include_self=False, recursive=False)):
        path = f"{prefix}{index}"
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield layer, path
        yield from _keras_paths(layer, f"{path}/")


def _keras_input_shape(model: Any, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """One sample's input shape: the model's, its unknown sizes filled from --input-shape."""
    try:
        inputs = list(model.inputs or [])
    except AttributeError:  # a subclassed model has no inputs
        inputs = []
    if len(inputs) > 1:
        raise UsageError(
            f"the model takes {len(inputs)} inputs; ibp-check model checks models of one image "
            "input"
        )
    if not inputs:
        if given is None:
            raise UsageError(
                "the Keras model does not fix its input shape (a subclassed model, or one built "
                "without keras.Input): pass --input-shape H,W,C"
            )
        return tuple(given)
    own = tuple(inputs[0].shape[1:])
    if given is None:
        if None in own:
            raise UsageError(
                f"the model's input shape {own} has unknown sizes: pass --input-shape H,W,C"
            )
        return tuple(int(d) for d in own)
    if len(own) != len(given) or any(
        d is not None and d != g for d, g in zip(own, given, strict=False)
    ):
        raise UsageError(
            f"--input-shape {','.join(map(str, given))} does not fit the model's input {own}"
        )
    return tuple(given)


TracedModel = TorchModel | KerasModel


def build(target: str, settings: ModelSettings) -> TracedModel:
    """The model `target` names, built afresh with every random generator seeded."""
    framework = settings.framework or framework_of(target)
    if framework == "torch":
        import torch

        torch.manual_seed(settings.seed)
    else:
        import keras

        keras.utils.set_random_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)  # noqa: NPY002 (a user's model may draw from NumPy's global one)
    _, function = load(target)
    built = function()
    model, optimizer = built if isinstance(built, tuple) and len(built) == 2 else (built, None)
    if framework == "torch":
        import torch

        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{target} returned a {type(model).__name__}, not a torch nn.Module")
        return TorchModel(model, optimizer, settings)
    import keras

    if not isinstance(model, keras.Model):
        raise UsageError(f"{target} returned a {type(model).__name__}, not a Keras model")
    return KerasModel(model, optimizer, settings)


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
