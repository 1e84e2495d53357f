"""MPN-COV (Li, Xie, Wang, Zuo, "Is Second-order Information Helpful for Large-scale Visual
Recognition?", ICCV 2017): the centred covariance raised to the power alpha by its
eigendecomposition, then its upper triangle as a vector."""

import numpy as np

from reference.contracts import check_square_batch
from reference.methods.pooling import (
    DEFAULT_TRIU_ORDER,
    centred_pool,
    centred_pool_vjp,
    triu_vec,
    triu_vec_vjp,
)
from reference.stages import Array, ArrayLike, _float64

#: The paper's power, the matrix square root.
DEFAULT_ALPHA = 0.5
#: eps I added to the centred covariance: the paper adds none (the released MATLAB code adds
#: 1e-12 to the eigenvalues, which is the same as eps = 1e-12 here).
DEFAULT_EPS = 0.0

UNIT_ROUNDOFF = float(np.finfo(np.float64).eps) / 2
TINY = float(np.finfo(np.float64).tiny)


def _symmetric_part(m: Array) -> Array:
    return (m + m.transpose(0, 2, 1)) / 2


def _eigh(a: ArrayLike) -> tuple[Array, Array]:
    a = _float64(a, "matrix")
    check_square_batch(a.shape)
    eigenvalues, vectors = np.linalg.eigh(_symmetric_part(a))
    return eigenvalues, vectors


def matrix_power(a: ArrayLike, alpha: float = DEFAULT_ALPHA) -> Array:
    """U max(Lambda, 0)^alpha U^T of the symmetric part (A + A^T)/2 of each matrix.

    The conventions of the IBP root (`reference.conventions`): the symmetric part, so that every
    entry of the input has a derivative, and negative eigenvalues (round-off of a PSD covariance)
    counted as 0."""
    eigenvalues, vectors = _eigh(a)
    powered = np.maximum(eigenvalues, 0.0) ** alpha
    return _symmetric_part((vectors * powered[:, None, :]) @ vectors.transpose(0, 2, 1))


def _divided_differences(eigenvalues: Array, alpha: float) -> Array:
    """d_ij = (f(l_i) - f(l_j)) / (l_i - l_j) of f(l) = max(l, 0)^alpha, f'(l_i) where equal.

    Both positive: l_j^(alpha-1) expm1(alpha t) / expm1(t), t = log(l_i / l_j), exact to
    round-off for every pair (alpha where t = 0; at alpha = 1/2 it is 1 / (sqrt l_i + sqrt l_j),
    the Lyapunov solution of the root). Positive eigenvalues are floored at
    max(u^2 l_max, tiny), as the IBP root floors its roots at u s_max: the slope alpha l^(alpha-1)
    is infinite at 0 for alpha < 1 and stays huge, not infinite. One positive: f(l_i) / |l_i - l_j|.
    Neither: 0 (the clamped power is flat there)."""
    largest = np.maximum(eigenvalues.max(axis=-1, keepdims=True), 0.0)
    floor = np.maximum(UNIT_ROUNDOFF**2 * largest, TINY)
    positive = eigenvalues > 0
    floored = np.where(positive, np.maximum(eigenvalues, floor), 1.0)
    li, lj = floored[:, :, None], floored[:, None, :]
    both = positive[:, :, None] & positive[:, None, :]
    t = np.log(li / lj)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(t == 0, alpha, np.expm1(alpha * t) / np.expm1(t))
    both_positive = lj ** (alpha - 1) * ratio
    powered = np.where(positive, floored**alpha, 0.0)
    gap = np.abs(eigenvalues[:, :, None] - eigenvalues[:, None, :])
    one = positive[:, :, None] ^ positive[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        one_positive = (powered[:, :, None] + powered[:, None, :]) / gap
    return np.where(both, both_positive, np.where(one, one_positive, 0.0))


def matrix_power_vjp(a: ArrayLike, g: ArrayLike, alpha: float = DEFAULT_ALPHA) -> Array:
    """U [(U^T sym(G) U) * D] U^T, D the divided differences of the clamped power at the
    eigenvalues (Daleckii-Krein): the gradient through the eigendecomposition, never through
    1 / (l_i - l_j) of close eigenvalues."""
    eigenvalues, vectors = _eigh(a)
    g = _symmetric_part(np.asarray(g, dtype=np.float64))
    inner = vectors.transpose(0, 2, 1) @ g @ vectors
    return _symmetric_part(
        vectors @ (inner * _divided_differences(eigenvalues, alpha)) @ vectors.transpose(0, 2, 1)
    )


def mpn_cov_head(
    x: ArrayLike,
    eps: float = DEFAULT_EPS,
    alpha: float = DEFAULT_ALPHA,
    order: str = DEFAULT_TRIU_ORDER,
) -> Array:
    """Feature map (B, C, H, W) -> (B, C(C+1)/2): triu(S^alpha), S the centred covariance."""
    return triu_vec(matrix_power(centred_pool(x, eps), alpha), order)


def mpn_cov_head_vjp(
    x: ArrayLike,
    g: ArrayLike,
    eps: float = DEFAULT_EPS,
    alpha: float = DEFAULT_ALPHA,
    order: str = DEFAULT_TRIU_ORDER,
) -> Array:
    s = centred_pool(x, eps)
    z = matrix_power(s, alpha)
    return centred_pool_vjp(x, matrix_power_vjp(s, triu_vec_vjp(z, g, order), alpha))
