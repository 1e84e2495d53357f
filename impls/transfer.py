"""Copy every weight between a PyTorch model and a Keras model built with the same arguments.

Both sides are read into one neutral form, {layer name: (kind, {role: array in torch's
layout})}, compared, and written out: conv kernels OIHW <-> HWIO, Linear (K, C*C) <->
Dense (C*C, K), BatchNorm scale, shift, running statistics and epsilon, biases, and the
preprocessing constants. Layer names agree because both frameworks build from
`impls.architectures` with torchvision's module names; Keras' nested "backbone" model and
the head's classifier appear as "backbone.<layer>" and "head.classifier", as in torch.
"""

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

#: A torch module or a Keras layer or model (neither framework is imported here).
Module: TypeAlias = Any
#: (kind, {role: weight}): a layer's kind ("conv", "dense", ...) and its weights by role.
Roles: TypeAlias = tuple[str | None, dict[str, Any]]


class WeightTransferError(ValueError):
    """The two models do not have the same architecture, so no weight-for-weight copy exists."""


def transfer_weights(src: Module, dst: Module) -> Module:
    """Copy all weights of `src` into `dst`: a torch model into a Keras one or the reverse.

    Raises WeightTransferError when the layers, their kinds or their shapes differ.
    """
    src_is_torch, dst_is_torch = _is_torch(src), _is_torch(dst)
    if src_is_torch == dst_is_torch:
        raise WeightTransferError("transfer_weights copies between one torch and one Keras model")
    source = {name: _read_layer(layer) for name, layer in _layers(src).items()}
    target = _layers(dst)
    _check_same_layout(source, {name: _read_layer(layer) for name, layer in target.items()})
    write = _write_torch_layer if dst_is_torch else _write_keras_layer
    for name, layer in target.items():
        write(layer, source[name][1])
    if not dst_is_torch:
        _forget_traced_functions(dst)
    return dst


def _forget_traced_functions(model: Module) -> None:
    """Epsilon is a Python attribute of a Keras BatchNorm, so `predict`/`fit`/`evaluate`
    functions traced before the copy would keep the old value."""
    import keras

    model.predict_function = model.train_function = model.test_function = None
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _forget_traced_functions(layer)


def _is_torch(model_or_layer: Module) -> bool:
    return hasattr(model_or_layer, "named_modules")


def _layers(model: Module) -> dict[str, Module]:
    """{torchvision-style name: torch module or Keras layer} of everything that holds weights."""
    return _torch_layers(model) if _is_torch(model) else _keras_layers(model)


# ----- torch side -----


def _torch_kind(module: Module) -> str | None:
    from torch import nn

    from impls.torch.models import ImageNormalization

    kinds = {
        nn.Conv2d: "conv",
        nn.Linear: "dense",
        nn.BatchNorm2d: "batch_norm",
        ImageNormalization: "normalization",
    }
    return kinds.get(type(module))


def _torch_layers(model: Module) -> dict[str, Module]:
    layers = {name: m for name, m in model.named_modules() if _torch_kind(m) is not None}
    unknown = [
        name
        for name, m in model.named_modules()
        if name not in layers and any(True for _ in m.parameters(recurse=False))
    ]
    if unknown:
        raise WeightTransferError(f"torch modules with weights of unknown kind: {unknown}")
    return layers


def _torch_roles(module: Module) -> Roles:
    kind = _torch_kind(module)
    if kind == "normalization":
        return kind, {"mean": module.mean.reshape(-1), "std": module.std.reshape(-1)}
    if kind == "batch_norm":
        roles = {
            "weight": module.weight,
            "bias": module.bias,
            "running_mean": module.running_mean,
            "running_var": module.running_var,
        }
        return kind, {**roles, "eps": module.eps}
    roles = {"weight": module.weight}
    if module.bias is not None:
        roles["bias"] = module.bias
    return kind, roles


def _write_torch_layer(module: Module, values: dict[str, Any]) -> None:
    import torch

    kind, roles = _torch_roles(module)
    if kind == "batch_norm":
        module.eps = values["eps"]
    with torch.no_grad():
        for role, tensor in roles.items():
            if role != "eps":
                tensor.copy_(torch.from_numpy(values[role]).reshape(tensor.shape))


# ----- Keras side -----


def _keras_kind(layer: Module) -> str | None:
    import keras

    from impls.tf.models import ImageNormalization

    kinds = {
        keras.layers.Conv2D: "conv",
        keras.layers.Dense: "dense",
        keras.layers.BatchNormalization: "batch_norm",
        ImageNormalization: "normalization",
    }
    return kinds.get(type(layer))


def _keras_layers(model: Module, prefix: str = "") -> dict[str, Module]:
    import keras

    layers: dict[str, Module] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.update(_keras_layers(layer, f"{prefix}{layer.name}."))
        elif getattr(layer, "classifier", None) is not None:  # the IBP head
            layers[f"{prefix}{layer.name}.classifier"] = layer.classifier
        elif _keras_kind(layer) is not None:
            layers[f"{prefix}{layer.name}"] = layer
        elif layer.weights:
            raise WeightTransferError(
                f"Keras layer {prefix}{layer.name} has weights of unknown kind"
            )
    return layers


def _keras_roles(layer: Module) -> Roles:
    kind = _keras_kind(layer)
    if kind == "normalization":
        return kind, {"mean": layer.mean, "std": layer.std}
    if kind == "batch_norm":
        roles = {
            "weight": layer.gamma,
            "bias": layer.beta,
            "running_mean": layer.moving_mean,
            "running_var": layer.moving_variance,
        }
        return kind, {**roles, "eps": layer.epsilon}
    roles = {"weight": layer.kernel}
    if layer.use_bias:
        roles["bias"] = layer.bias
    return kind, roles


#: torch's layout -> Keras' and back, for the weights whose layouts differ.
_TO_KERAS: dict[tuple[str | None, str], Callable[[np.ndarray], np.ndarray]] = {
    ("conv", "weight"): lambda w: np.transpose(w, (2, 3, 1, 0)),  # OIHW -> HWIO
    ("dense", "weight"): np.transpose,  # (K, C*C) -> (C*C, K)
}
_FROM_KERAS: dict[tuple[str | None, str], Callable[[np.ndarray], np.ndarray]] = {
    ("conv", "weight"): lambda w: np.transpose(w, (3, 2, 0, 1)),
    ("dense", "weight"): np.transpose,
}


def _write_keras_layer(layer: Module, values: dict[str, Any]) -> None:
    kind, roles = _keras_roles(layer)
    if kind == "batch_norm":
        layer.epsilon = values["eps"]
    for role, variable in roles.items():
        if role != "eps":
            value = _TO_KERAS.get((kind, role), np.asarray)(values[role])
            variable.assign(value.astype(variable.dtype))


# ----- both -----


def _read_layer(layer: Module) -> Roles:
    """(kind, {role: value in torch's layout}) of a torch module or Keras layer."""
    if _is_torch(layer):
        kind, roles = _torch_roles(layer)
        return kind, {
            role: value if role == "eps" else value.detach().cpu().numpy()
            for role, value in roles.items()
        }
    kind, roles = _keras_roles(layer)
    from_keras = {role: _FROM_KERAS.get((kind, role), np.asarray) for role in roles}
    return kind, {
        role: value if role == "eps" else from_keras[role](np.asarray(value))
        for role, value in roles.items()
    }


def _check_same_layout(source: dict[str, Roles], target: dict[str, Roles]) -> None:
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    if missing or extra:
        raise WeightTransferError(
            "the models have different layers (built from different arguments?): "
            f"only in the destination {missing[:8]}, only in the source {extra[:8]}"
        )
    for name, (kind, roles) in target.items():
        source_kind, source_roles = source[name]
        if source_kind != kind or set(source_roles) != set(roles):
            raise WeightTransferError(
                f"layer {name}: {source_kind} with {sorted(source_roles)} in the source, "
                f"{kind} with {sorted(roles)} in the destination"
            )
        for role, value in roles.items():
            if role != "eps" and np.shape(source_roles[role]) != np.shape(value):
                raise WeightTransferError(
                    f"layer {name}, {role}: shape {np.shape(source_roles[role])} in the source, "
                    f"{np.shape(value)} in the destination"
                )
