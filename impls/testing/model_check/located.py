"""The IBP head's layers found in a model, from their traced inputs and outputs, and each one made
into a function the stage checks can call: the stage's own tensors (feature maps in the
framework's layout, matrices (B, C, C)) turned into what the layer gets in the model (its channel
count, map size, layout, a flattened (B, C*C)), and its output turned back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import reference
from impls.testing.check_options import ModelSettings
from impls.testing.diagnosis.deviations import explains
from impls.testing.model_check.traced_models import LayerCall, build, single_threaded
from reference.methods import centred_pool

FEATURE_MAP_STAGES = ("pool", "head")


@dataclasses.dataclass(frozen=True)
class LayerForm:
    """How a located layer gets and gives its tensors in the model, one sample at a time."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    channels: int
    #: A feature map's channel axis in `input_shape`; None for a matrix stage.
    channel_axis: int | None
    #: A feature map's (H, W) (N locations as (N, 1) where the layer gets (N, C) or (C, N)).
    map_shape: tuple[int, int] | None
    dtype: str  # of its input in the model


@dataclasses.dataclass(frozen=True)
class Located:
    """A layer of the head: where it sits, its name, the stage it computes, its form, whether a
    parameter below it trains (else only its forward matters); and the method of the head it
    belongs to (`model_check.recognised`), with its parameters and how it was told."""

    path: str
    name: str
    stage: str
    form: LayerForm
    trains_below: bool
    method: str = "ibp"
    parameters: tuple[tuple[str, Any], ...] = ()
    recognised: str = ""


def _square_side(size: int) -> int | None:
    side = math.isqrt(size)
    return side if side >= 2 and side * side == size else None


def triangle_side(size: int) -> int | None:
    """C where `size` is C(C+1)/2, C >= 2 (the upper triangle of a C x C matrix); else None."""
    side = (math.isqrt(8 * size + 1) - 1) // 2
    return side if side >= 2 and side * (side + 1) // 2 == size else None


def _matrices(output: np.ndarray) -> np.ndarray | None:
    """(B, C, C) of an output that is one, or its (B, C*C) flattening; else None."""
    if output.ndim == 3 and output.shape[1] == output.shape[2] and output.shape[1] >= 2:
        return output
    if output.ndim == 2:
        side = _square_side(output.shape[1])
        if side is not None:
            return output.reshape(len(output), side, side)
    return None


def _symmetric(m: np.ndarray) -> bool:
    m = m.astype(np.float64)
    return bool(np.allclose(m, np.swapaxes(m, 1, 2), rtol=1e-3, atol=1e-6 * np.abs(m).max()))


def _reshaped(call: LayerCall) -> bool:
    """The output holds the input's values in another shape (Flatten, Reshape, an identity)."""
    return call.input.size == call.output.size and np.array_equal(
        call.input.ravel(), call.output.ravel()
    )


def _channel_axis(shape: tuple[int, ...], channels: int, framework: str) -> int | None:
    """The axis of one sample's feature map (3-D, or 2-D locations x channels) that holds the
    channels: the framework's usual one where its size fits."""
    usual = 0 if framework == "torch" else len(shape) - 1
    fitting = [axis for axis, size in enumerate(shape) if size == channels]
    if not fitting:
        return None
    return usual if usual in fitting else fitting[0]


def channels_first(x: np.ndarray, axis: int) -> np.ndarray:
    """A traced feature map (B, ...) as channels-first (B, C, H, W) float64."""
    x = np.moveaxis(x.astype(np.float64), axis + 1, 1)
    return x if x.ndim == 4 else x[..., None]


def _pooling_form(call: LayerCall, framework: str) -> tuple[str, LayerForm] | None:
    """(stage, form) where the call turns a feature map into (B, C, C) or (B, C*C): the pooling,
    or, with unit-norm samples, the whole head; or into (B, C(C+1)/2), an upper triangle: the
    whole head of MPN-COV or iSQRT-COV."""
    x = call.input
    if len(call.arguments) != 1 or x.ndim not in (3, 4) or _reshaped(call):
        return None
    matrices = _matrices(call.output)
    channels = 0 if matrices is None else matrices.shape[1]
    axis = None if matrices is None else _channel_axis(x.shape[1:], channels, framework)
    if (
        matrices is None
        or axis is None
        or not _symmetric(matrices)
        or not np.all(np.isfinite(matrices))
    ):
        # Not a C x C matrix: an upper triangle, where the size is one (C(C+1)/2 may be a square).
        triangle = _triangle_form(call, framework)
        return None if triangle is None else ("head", triangle)
    form = _feature_map_form(call, channels, axis)
    norms = np.linalg.norm(call.output.reshape(len(x), -1).astype(np.float64), axis=1)
    if np.allclose(norms, 1.0, rtol=1e-3):
        return "head", form
    maps = channels_first(x, axis)
    for pooled in (reference.bilinear_pool(maps), centred_pool(maps)):
        if explains(_flat(matrices), _flat(reference.sqrtm(pooled)), 5e-3, up_to_scale=True):
            return "pool+sqrtm", form
    return "pool", form


def _feature_map_form(call: LayerCall, channels: int, axis: int) -> LayerForm:
    rest = [size for a, size in enumerate(call.input.shape[1:]) if a != axis]
    map_shape = (rest[0], rest[1]) if len(rest) == 2 else (rest[0], 1)
    return LayerForm(
        call.input.shape[1:], call.output.shape[1:], channels, axis, map_shape, call.dtype
    )


def _triangle_form(call: LayerCall, framework: str) -> LayerForm | None:
    """The form of a call from a feature map of C channels to (B, C(C+1)/2) finite values."""
    output = call.output
    if output.ndim != 2 or not np.all(np.isfinite(output)):
        return None
    channels = triangle_side(output.shape[1])
    if channels is None:
        return None
    axis = _channel_axis(call.input.shape[1:], channels, framework)
    return None if axis is None else _feature_map_form(call, channels, axis)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


def _signed_square_root(call: LayerCall) -> bool:
    x, y = call.input.astype(np.float64), call.output.astype(np.float64)
    if x.shape != y.shape:
        return False
    large = np.abs(x) > 1e-2 * np.abs(x).max()
    ratio = np.abs(y[large]) / np.sqrt(np.abs(x[large]))
    same_sign = np.all(np.sign(y[large]) == np.sign(x[large]))
    return bool(large.any() and same_sign and np.allclose(ratio, 1.0, rtol=0.1))


def _rescaled(call: LayerCall) -> bool:
    """The output is the input times positive numbers that do not change along the last axis: an
    L2 normalisation per sample, per batch, or (a mistake) per row."""
    x, y = call.input.astype(np.float64), call.output.astype(np.float64)
    if x.shape != y.shape or not np.any(x):
        return False
    ratio = np.einsum("...i,...i->...", x, y) / np.maximum(
        np.einsum("...i,...i->...", x, x), 1e-300
    )
    return bool(np.all(ratio > 0) and np.allclose(y, ratio[..., None] * x, rtol=1e-3, atol=1e-7))


def _matrix_form(call: LayerCall, channels: int) -> LayerForm | None:
    """The form of a call on (B, C, C) or (B, C*C) with the head's C, giving the same shape."""
    x = call.input
    if len(call.arguments) != 1 or call.output.shape != x.shape:
        return None
    if x.shape[1:] not in ((channels, channels), (channels * channels,)):
        return None
    return LayerForm(x.shape[1:], x.shape[1:], channels, None, None, call.dtype)


def locate_head(calls: Sequence[LayerCall], framework: str) -> list[Located]:
    """The IBP head's layers, from their inputs and outputs: a feature map to (B, C, C) or
    (B, C*C) is the pooling (or, unit-norm, the whole head); after it, a reshape is skipped,
    sign(x) sqrt|x| is the signed square root, a rescaling the L2 normalisation, and another
    symmetric (B, C, C) -> (B, C, C) map before those the matrix square root. The search ends at
    the next layer with parameters (the classifier)."""
    located: list[Located] = []
    trains_below = False
    for call in calls:
        if not located:
            found = _pooling_form(call, framework)
            if found is None:
                trains_below = trains_below or call.trainable
                continue
            stage, form = found
            located.append(Located(call.path, call.name, stage, form, trains_below))
            if stage == "head":
                break
            continue
        if call.parametrised:
            break
        matrix_form = _matrix_form(call, located[0].form.channels)
        if matrix_form is None or _reshaped(call):
            continue
        stages = {one.stage for one in located}
        if "signed-sqrt" not in stages and _signed_square_root(call):
            stage = "signed-sqrt"
        elif "l2" not in stages and _rescaled(call):
            stage = "l2"
        elif stages <= {"pool"} and _symmetric(_matrices(call.input)):  # type: ignore[arg-type]
            stage = "sqrtm"
        else:
            continue
        located.append(Located(call.path, call.name, stage, matrix_form, trains_below))
    return located


# -- in the stage checks' child process ---------------------------------------------------------


def _adapted(
    function: Callable[[Any], Any], stage: str, form: LayerForm, framework: str
) -> Callable[[Any], Any]:
    """`function` (the layer) called as the stage check calls a stage function: the stage's
    tensor in, the stage's tensor out."""
    if framework == "torch":
        import torch

        def transpose(x: Any, axes: Sequence[int]) -> Any:
            return torch.permute(x, tuple(axes))

        reshape: Callable[[Any, Sequence[int]], Any] = torch.reshape
    else:
        import tensorflow as tf

        def transpose(x: Any, axes: Sequence[int]) -> Any:
            return tf.transpose(x, axes)

        reshape = tf.reshape

    def to_layer(x: Any) -> Any:
        batch = x.shape[0]
        if stage not in FEATURE_MAP_STAGES:
            return reshape(x, (batch, *form.input_shape))
        # The stage's map as channels-last (B, H, W, C), then as the layer gets it.
        last = transpose(x, (0, 2, 3, 1)) if framework == "torch" else x
        if len(form.input_shape) == 2:
            locations = reshape(last, (batch, -1, form.channels))
            return locations if form.channel_axis == 1 else transpose(locations, (0, 2, 1))
        axes = [1, 2]
        axes.insert(form.channel_axis or 0, 3)
        return transpose(last, (0, *axes))

    def from_layer(y: Any) -> Any:
        c = form.channels
        size = int(np.prod(y.shape[1:])) if len(y.shape) > 1 else 0
        if stage == "head" or len(y.shape) != 2 or size != c * c:
            return y  # a wrong shape is left for the shape check to name
        return reshape(y, (y.shape[0], c, c))

    def layer(x: Any) -> Any:
        return from_layer(function(to_layer(x)))

    return layer


def located_layer(
    target: str, settings: ModelSettings, path: str, stage: str, form: LayerForm
) -> Callable[[Any], Any]:
    """The layer at `path` of the model `target` builds, as a function of the stage's tensors:
    what the stage checks run on, in their child process."""
    model = build(target, settings)
    single_threaded(model.framework)
    return _adapted(model.layer_function(path), stage, form, model.framework)
