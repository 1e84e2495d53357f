"""TensorFlow/Keras implementation of Improved Bilinear Pooling (channels-last)."""

from impls.tf.layers import IBPHead
from impls.tf.stages import bilinear_pool, l2_normalize, signed_sqrt, sqrtm

__all__ = ["IBPHead", "bilinear_pool", "l2_normalize", "signed_sqrt", "sqrtm"]
