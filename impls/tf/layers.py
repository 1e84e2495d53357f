"""The IBP head as a Keras layer (serialisable: saves and loads as .keras)."""

import keras
import tensorflow as tf

from impls.tf.stages import bilinear_pool, compute_dtype, l2_normalize, signed_sqrt, sqrtm
from reference.contracts import check_choice, check_feature_map
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_NEWTON_SCHULZ_BACKWARD,
    DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    DEFAULT_SQRTM_METHOD,
    NEWTON_SCHULZ_BACKWARDS,
    SIGNED_SQRT_DELTA,
    SQRTM_METHODS,
)


@keras.saving.register_keras_serializable(package="ibp")
class IBPHead(keras.layers.Layer):
    """(B, H, W, C) feature map -> pool -> sqrtm -> signed sqrt -> L2 -> (B, C*C) [-> logits].

    `in_channels` is inferred when the layer is built unless given. With `num_classes`, a Dense
    classifier on the flattened (row-major) normalised matrix follows and the layer returns logits.
    """

    def __init__(
        self,
        in_channels=None,
        num_classes=None,
        eps=DEFAULT_EPS,
        method=DEFAULT_SQRTM_METHOD,
        num_iters=DEFAULT_NEWTON_SCHULZ_ITERATIONS,
        backward=DEFAULT_NEWTON_SCHULZ_BACKWARD,
        delta=SIGNED_SQRT_DELTA,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice(method, SQRTM_METHODS, "sqrtm method")
        check_choice(backward, NEWTON_SCHULZ_BACKWARDS, "Newton-Schulz backward")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.eps, self.method, self.num_iters = eps, method, num_iters
        self.backward, self.delta = backward, delta
        self.classifier = (
            keras.layers.Dense(num_classes, name="classifier", dtype=self.dtype_policy)
            if num_classes
            else None
        )

    def build(self, input_shape):
        check_feature_map(input_shape, "channels_last", self.in_channels)
        self.in_channels = self.in_channels or input_shape[-1]
        if self.classifier is not None:
            self.classifier.build((None, self.in_channels**2))

    def call(self, inputs):
        check_feature_map(inputs.shape, "channels_last", self.in_channels)
        # One rounding at the end instead of one per stage for half precision input.
        wide = tf.cast(inputs, compute_dtype(inputs))
        z = sqrtm(
            bilinear_pool(wide, self.eps),
            method=self.method,
            num_iters=self.num_iters,
            backward=self.backward,
        )
        y = l2_normalize(signed_sqrt(z, self.delta))
        v = tf.cast(tf.reshape(y, (tf.shape(y)[0], self.in_channels**2)), inputs.dtype)
        return v if self.classifier is None else self.classifier(v)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes or self.in_channels**2)

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "eps": self.eps,
            "method": self.method,
            "num_iters": self.num_iters,
            "backward": self.backward,
            "delta": self.delta,
        }
