"""The IBP head as a Keras layer (serialisable: saves and loads as .keras)."""

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from impls.tf.stages import (
    _l2_normalize,
    _pool,
    _root,
    _signed_sqrt,
    as_tensor,
    assert_finite,
    check_sqrtm_options,
    compute_dtype,
    in_contract,
    static_shape,
)
from reference.contracts import (
    NON_FINITE_MESSAGE,
    OVERFLOW_MESSAGE,
    IBPInputError,
    check_feature_map,
    check_non_negative,
    check_positive_int,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_SQRTM_METHOD,
    SIGNED_SQRT_DELTA,
)


@keras.saving.register_keras_serializable(package="ibp")
class IBPHead(keras.layers.Layer):
    """(B, H, W, C) feature map -> pool -> sqrtm -> signed sqrt -> L2 -> (B, C*C) [-> logits].

    `in_channels` is inferred when the layer is built unless given. With `num_classes`, a Dense
    classifier on the flattened (row-major) normalised matrix follows and the layer returns logits.
    The layer does not autocast: float64 input is computed in float64, and half precision in
    float32 inside and returned in its dtype (the classifier follows the layer's dtype policy).
    """

    def __init__(
        self,
        in_channels: int | None = None,
        num_classes: int | None = None,
        eps: float = DEFAULT_EPS,
        method: str = DEFAULT_SQRTM_METHOD,
        num_iters: int | None = None,
        backward: str | None = None,
        delta: float = SIGNED_SQRT_DELTA,
        check_range: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        check_positive_int(in_channels, "in_channels", allow_none=True)
        check_positive_int(num_classes, "num_classes", allow_none=True)
        check_non_negative(eps, "eps")
        check_non_negative(delta, "delta")
        check_sqrtm_options(method, num_iters, backward, check_range)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.check_range = check_range
        self.eps, self.method, self.num_iters = eps, method, num_iters
        self.backward, self.delta = backward, delta
        self.classifier = (
            keras.layers.Dense(num_classes, name="classifier", dtype=self.dtype_policy)
            if num_classes is not None
            else None
        )

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        # Keras cannot build a layer on a tensor of unknown rank (a tf.function traced without a
        # shape): give it rank 4, checked when the graph runs.
        if isinstance(inputs, tf.Tensor) and inputs.shape.rank is None:
            inputs = in_contract(inputs, "feature map", "feature map", self.in_channels)
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape: Sequence[int | None]) -> None:
        check_feature_map(input_shape, "channels_last", self.in_channels)
        self.in_channels = self.in_channels or input_shape[-1]
        channels = self._channels()
        if self.classifier is not None:
            self.classifier.build((None, channels**2))

    def _channels(self) -> int:
        if self.in_channels is None:
            raise IBPInputError(
                "the channel count of the input is unknown: give IBPHead(in_channels=...)"
            )
        return self.in_channels

    def call(self, inputs: Any) -> tf.Tensor:
        inputs = as_tensor(inputs, "feature map")
        check_feature_map(static_shape(inputs), "channels_last", self.in_channels)
        inputs = in_contract(inputs, "feature map", "feature map", self._channels())
        # One rounding at the end instead of one per stage for half precision input.
        wide = tf.cast(inputs, compute_dtype(inputs))
        # One finiteness check per call, after the root (eager; a graph asserts in line).
        checks = [(wide, NON_FINITE_MESSAGE.format(name="feature map"))]
        a = assert_finite(_pool(assert_finite(wide, checks[0][1]), self.eps), OVERFLOW_MESSAGE)
        checks.append((a, OVERFLOW_MESSAGE))
        z = _root(a, self.method, self.num_iters, self.backward, checks, self.check_range)
        y = _l2_normalize(_signed_sqrt(z, self.delta))
        v = tf.cast(tf.reshape(y, (tf.shape(y)[0], self._channels() ** 2)), inputs.dtype)
        return v if self.classifier is None else self.classifier(v)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, int]:
        return (input_shape[0], self.num_classes or self._channels() ** 2)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "eps": self.eps,
            "method": self.method,
            "num_iters": self.num_iters,
            "backward": self.backward,
            "delta": self.delta,
            "check_range": self.check_range,
        }
