"""Shape contracts, checked on plain shape tuples so that every framework raises the same errors."""

LAYOUT_AXES = {"channels_first": "(B, C, H, W)", "channels_last": "(B, H, W, C)"}


class IBPInputError(ValueError):
    """An input that the IBP stages cannot give a meaningful answer for."""


def check_feature_map(shape, layout, channels=None):
    """Raise IBPInputError unless `shape` is a batch of feature maps in `layout`."""
    expected = LAYOUT_AXES[layout]
    shape = tuple(shape)
    if len(shape) != 4:
        raise IBPInputError(
            f"expected a batch of feature maps {expected} ({layout}), got a tensor of rank "
            f"{len(shape)} with shape {shape}"
        )
    channel_axis = 1 if layout == "channels_first" else 3
    other_axis = 3 if layout == "channels_first" else 1
    if channels is not None and shape[channel_axis] is not None and shape[channel_axis] != channels:
        hint = ""
        if shape[other_axis] == channels:
            other = "channels_last" if layout == "channels_first" else "channels_first"
            hint = f"; the channels sit on axis {other_axis}: the input looks {other}"
        raise IBPInputError(
            f"expected {channels} channels on axis {channel_axis} of {expected} ({layout}), "
            f"got shape {shape}{hint}"
        )
    if any(d == 0 for d in shape):
        raise IBPInputError(f"feature map has an empty axis: shape {shape}")


def check_square_batch(shape, name="matrix"):
    """Raise IBPInputError unless `shape` is a batch of square matrices (B, C, C)."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise IBPInputError(
            "expected a batch of square matrices (B, C, C), "
            f"got rank {len(shape)} with shape {shape}"
        )
    if shape[1] is not None and shape[2] is not None and shape[1] != shape[2]:
        raise IBPInputError(f"{name} must be square, got shape {shape} ({shape[1]} x {shape[2]})")


def check_choice(value, choices, name):
    if value not in choices:
        raise IBPInputError(
            f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}"
        )


NON_FINITE_MESSAGE = "{name} holds non-finite values (NaN or inf)"
