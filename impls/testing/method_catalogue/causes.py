"""The cause of each catalogued bug of the family, in float64 NumPy: a function of the stage's input
(reference layout) that computes what the buggy layer computes. A bug is documented only if its
cause reproduces the layer's output (tests/test_method_catalogue.py), so the cause text cannot
drift from the code."""

import numpy as np

from reference.conventions import SIGNED_SQRT_DELTA
from reference.methods import bcnn, isqrt_cov
from reference.stages import Array, ArrayLike, l2_normalize, signed_sqrt

#: What the off-by-two layer declares, and what it runs.
DECLARED_ITERATIONS = isqrt_cov.DEFAULT_ITERATIONS
RUN_ITERATIONS = DECLARED_ITERATIONS - 2
#: sqrt(y + eps) as a public B-CNN PyTorch port spells the signed square root.
SQRT_EPS = 1e-5


def _traces(a: ArrayLike) -> Array:
    return np.trace(np.asarray(a, dtype=np.float64), axis1=1, axis2=2)[:, None, None]


def no_post_compensation(a: ArrayLike) -> Array:
    """Y_N of A / tr(A), not multiplied back by sqrt(tr A)."""
    a = np.asarray(a, dtype=np.float64)
    return isqrt_cov.newton_schulz_iterations(a / _traces(a), DECLARED_ITERATIONS)


def batch_trace(a: ArrayLike) -> Array:
    """Every sample divided by, and compensated with, the sum of the batch's traces."""
    a = np.asarray(a, dtype=np.float64)
    total = float(np.sum(_traces(a)))
    return isqrt_cov.newton_schulz_iterations(a / total, DECLARED_ITERATIONS) * np.sqrt(total)


def uncentred_pool(x: ArrayLike) -> Array:
    """X X^T / N: the mean feature stays in the covariance."""
    return bcnn.bcnn_pool(x)


def three_iterations(a: ArrayLike) -> Array:
    return isqrt_cov.isqrt_cov_root(a, RUN_ITERATIONS)


def svd_power(a: ArrayLike) -> Array:
    """U S^(1/2) V^T: the singular values powered, U and V kept apart. For a symmetric PSD matrix
    that is its root; for any other it is the polar factor times the root of (A^T A)^(1/2)."""
    u, s, vh = np.linalg.svd(np.asarray(a, dtype=np.float64))
    return (u * np.sqrt(s)[:, None, :]) @ vh


def signed_sqrt_after_l2(x: ArrayLike) -> Array:
    """signed sqrt(L2(X X^T / N)), flattened: the two normalisations in the wrong order."""
    y = signed_sqrt(l2_normalize(bcnn.bcnn_pool(x)), SIGNED_SQRT_DELTA)
    return y.reshape(len(y), -1)


def sqrt_plus_eps(z: ArrayLike) -> Array:
    """sqrt(z + eps): NaN wherever z < -eps."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.asarray(z, dtype=np.float64) + SQRT_EPS)
