"""B-CNN (Lin, RoyChowdhury, Maji, "Bilinear CNN Models for Fine-grained Visual Recognition",
ICCV 2015): y = vec(X X^T / N), then the signed square root, then L2. No matrix root, no eps.

The signed square root is the suite's one (`reference.signed_sqrt`): sign(y) (sqrt(|y| + delta) -
sqrt(delta)), whose slope stays finite at 0. The paper's sign(y) sqrt(|y|) is delta = 0."""

import numpy as np

from reference.conventions import SIGNED_SQRT_DELTA
from reference.stages import (
    Array,
    ArrayLike,
    bilinear_pool,
    bilinear_pool_vjp,
    l2_normalize,
    l2_normalize_vjp,
    signed_sqrt,
    signed_sqrt_vjp,
)

DEFAULT_DELTA = SIGNED_SQRT_DELTA


def bcnn_pool(x: ArrayLike) -> Array:
    """X X^T / N per sample: the IBP pooling without eps."""
    return bilinear_pool(x, eps=0.0)


def bcnn_pool_vjp(x: ArrayLike, g: ArrayLike) -> Array:
    return bilinear_pool_vjp(x, g)


def bcnn_head(x: ArrayLike, delta: float = DEFAULT_DELTA) -> Array:
    """Feature map (B, C, H, W) -> (B, C*C): L2(signed sqrt(X X^T / N)), flattened row by row."""
    v = l2_normalize(signed_sqrt(bcnn_pool(x), delta))
    return v.reshape(len(v), -1)


def bcnn_head_vjp(x: ArrayLike, g: ArrayLike, delta: float = DEFAULT_DELTA) -> Array:
    pooled = bcnn_pool(x)
    y = signed_sqrt(pooled, delta)
    g = np.asarray(g, dtype=np.float64).reshape(y.shape)
    return bcnn_pool_vjp(x, signed_sqrt_vjp(pooled, l2_normalize_vjp(y, g), delta))
