"""TensorFlow/Keras implementation of Improved Bilinear Pooling (channels-last)."""

from impls.tf.layers import IBPHead
from impls.tf.models import (
    ImageNormalization,
    build_backbone,
    build_model,
    freeze_backbone,
    recipe_optimizer,
)
from impls.tf.stages import bilinear_pool, l2_normalize, signed_sqrt, sqrtm

__all__ = [
    "IBPHead",
    "ImageNormalization",
    "bilinear_pool",
    "build_backbone",
    "build_model",
    "freeze_backbone",
    "l2_normalize",
    "recipe_optimizer",
    "signed_sqrt",
    "sqrtm",
]
