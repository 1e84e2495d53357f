"""The input contract of every public function and constructor, checked on plain Python values
(shape tuples, dtype names, numbers) so that every framework raises the same errors.

Frameworks only extract those values; data-dependent checks (finiteness) run in the framework,
with the messages defined here, so that eager code and graph assertion ops say the same words.
"""

import math
import numbers
from collections.abc import Sequence
from typing import Any

from reference.conventions import ITERATIVE_DEFAULTS, NEWTON_SCHULZ_BACKWARDS, SQRTM_METHODS

LAYOUT_AXES = {"channels_first": "(B, C, H, W)", "channels_last": "(B, H, W, C)"}

#: dtypes the stages compute in; half precision is widened to float32 inside.
FLOATING_DTYPES = ("float16", "bfloat16", "float32", "float64")

NON_FINITE_MESSAGE = "{name} holds non-finite values (NaN or inf)"
#: A finite map whose covariance does not fit the dtype: X X^T squares the entries, so a map
#: with entries near sqrt(max) of its dtype (1e19 in float32) overflows. Static text: graph-mode
#: assertion ops carry it too.
OVERFLOW_MESSAGE = (
    "overflow: the covariance X X^T / N of the finite feature map exceeds the range of its dtype; "
    "scale the feature map down"
)


#: A tensor's static shape: None where even the rank is unknown, an axis None where its size is
#: (a traced TensorFlow input).
Shape = Sequence[int | None] | None


class IBPInputError(ValueError):
    """An input that the IBP stages cannot give a meaningful answer for."""


def check_dtype(dtype_name: str, name: str) -> None:
    """Floating point only: integer maps would be pooled in integer arithmetic (7 // 2 = 3),
    bool has no covariance, and complex inputs have no real square root."""
    if dtype_name not in FLOATING_DTYPES:
        raise IBPInputError(
            f"{name} must be a floating-point tensor ({', '.join(FLOATING_DTYPES)}), "
            f"got dtype {dtype_name}; cast it to a float dtype first"
        )


#: The words of every shape check, as templates with named fields: eager code formats them with
#: the static shape; a traced graph whose shape is unknown passes them to its assertion ops with
#: the runtime shape in the fields (impls.tf.stages), so both say the same thing.
FEATURE_MAP_RANK = (
    "expected a batch of feature maps {axes} ({layout}), got a tensor of rank {rank} with shape "
    "{shape}"
)
CHANNELS = "expected {channels} channels on axis {axis} of {axes} ({layout}), got shape {shape}"
EMPTY_AXIS = "{name} has an empty axis: shape {shape}"
MATRIX_RANK = "expected a batch of square matrices (B, C, C), got rank {rank} with shape {shape}"
NOT_SQUARE = "{name} must be square, got shape {shape} ({rows} x {columns})"
SAMPLE_RANK = (
    "expected a batch of samples (B, ...) of rank 2 or more for {name}, got rank {rank} with "
    "shape {shape}"
)


def _known(shape: Shape) -> tuple[int | None, ...] | None:
    """`shape` as a tuple, or None when even its rank is unknown (a traced TensorFlow input)."""
    return None if shape is None else tuple(shape)


def check_feature_map(shape: Shape, layout: str, channels: int | None = None) -> None:
    """Raise IBPInputError unless `shape` is a batch of feature maps in `layout`."""
    shape = _known(shape)
    if shape is None:
        return
    axes = LAYOUT_AXES[layout]
    if len(shape) != 4:
        raise IBPInputError(
            FEATURE_MAP_RANK.format(axes=axes, layout=layout, rank=len(shape), shape=shape)
        )
    channel_axis = channel_axis_of(layout)
    other_axis = 3 if layout == "channels_first" else 1
    if channels is not None and shape[channel_axis] is not None and shape[channel_axis] != channels:
        hint = ""
        if shape[other_axis] == channels:
            other = "channels_last" if layout == "channels_first" else "channels_first"
            hint = f"; the channels sit on axis {other_axis}: the input looks {other}"
        message = CHANNELS.format(
            channels=channels, axis=channel_axis, axes=axes, layout=layout, shape=shape
        )
        raise IBPInputError(message + hint)
    _check_not_empty(shape, "feature map")


def channel_axis_of(layout: str) -> int:
    return 1 if layout == "channels_first" else 3


def _check_not_empty(shape: tuple[int | None, ...], name: str) -> None:
    if any(d == 0 for d in shape):
        raise IBPInputError(EMPTY_AXIS.format(name=name, shape=shape))


def check_square_batch(shape: Shape, name: str = "matrix") -> None:
    """Raise IBPInputError unless `shape` is a batch of non-empty square matrices (B, C, C)."""
    shape = _known(shape)
    if shape is None:
        return
    if len(shape) != 3:
        raise IBPInputError(MATRIX_RANK.format(rank=len(shape), shape=shape))
    if shape[1] is not None and shape[2] is not None and shape[1] != shape[2]:
        raise IBPInputError(
            NOT_SQUARE.format(name=name, shape=shape, rows=shape[1], columns=shape[2])
        )
    _check_not_empty(shape, name)


def check_sample_batch(shape: Shape, name: str) -> None:
    """A batch (B, ...) of samples with at least one entry each: rank 2 or more."""
    shape = _known(shape)
    if shape is None:
        return
    if len(shape) < 2:
        raise IBPInputError(SAMPLE_RANK.format(name=name, rank=len(shape), shape=shape))
    _check_not_empty(shape, name)


def check_choice(value: Any, choices: Sequence[Any], name: str) -> None:
    if value not in choices:
        raise IBPInputError(
            f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}"
        )


def check_non_negative(value: Any, name: str) -> None:
    """eps and delta: finite real numbers >= 0 (a negative one makes the square roots complex)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise IBPInputError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    """Counts (num_iters, in_channels, num_classes): an int >= 1, not a float or a string."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        accepted = "an int >= 1" + (" or None" if allow_none else "")
        raise IBPInputError(f"{name} must be {accepted}, got {value!r}")


def check_images(shape: Shape, dtype_name: str, layout: str, min_side: int) -> None:
    """What a model's first layer takes: RGB images scaled to [0, 1] floats, at least `min_side`
    pixels per side (the backbone's total stride: smaller images leave no feature map)."""
    if dtype_name not in FLOATING_DTYPES:
        hint = "; scale to [0, 1] floats (x / 255 for 8-bit images)"
        raise IBPInputError(f"images must be floating point, got dtype {dtype_name}{hint}")
    shape = _known(shape)
    if shape is None:
        return
    expected = LAYOUT_AXES[layout].replace("C", "3")
    if len(shape) != 4:
        raise IBPInputError(
            f"expected a batch of RGB images {expected} ({layout}), got rank {len(shape)} with "
            f"shape {shape}"
        )
    channel_axis, spatial = (1, shape[2:]) if layout == "channels_first" else (3, shape[1:3])
    if shape[channel_axis] is not None and shape[channel_axis] != 3:
        raise IBPInputError(
            f"expected 3 (RGB) channels on axis {channel_axis} of {expected} ({layout}), got "
            f"shape {shape}; repeat a grey channel 3 times if that is what you mean"
        )
    if any(side is not None and side < min_side for side in spatial):
        raise IBPInputError(
            f"images of {spatial[0]} x {spatial[1]} pixels are too small for this backbone: it "
            f"needs at least {min_side} x {min_side} (its total stride)"
        )


def check_sqrtm_options(
    method: str, num_iters: int | None, backward: str | None, check_range: bool | None = None
) -> None:
    """sqrtm's options; None for num_iters or backward means the method's default."""
    check_choice(method, SQRTM_METHODS, "sqrtm method")
    check_positive_int(num_iters, "num_iters", allow_none=True)
    if backward is not None:
        check_choice(backward, NEWTON_SCHULZ_BACKWARDS, "Newton-Schulz backward")
    if check_range is not None and not isinstance(check_range, bool):
        raise IBPInputError(f"check_range must be True, False or None, got {check_range!r}")


def with_method_defaults(
    method: str, num_iters: int | None, backward: str | None
) -> tuple[int | None, str | None]:
    """(num_iters, backward) with None replaced by `method`'s default (ITERATIVE_DEFAULTS); eigh
    has neither and ignores both."""
    default_iters, default_backward = ITERATIVE_DEFAULTS.get(method, (None, None))
    return (
        default_iters if num_iters is None else num_iters,
        default_backward if backward is None else backward,
    )
