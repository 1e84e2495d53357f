"""Float64 NumPy/SciPy forward and vector-Jacobian product of every IBP stage.

Layout: feature maps are channels-first (B, C, H, W); matrices are (B, C, C).
Each `*_vjp(inputs..., g)` returns the gradient of <g, stage(inputs...)> with respect to the inputs.
"""

import numpy as np
import numpy.typing as npt
import scipy.linalg

from reference.contracts import IBPInputError, check_feature_map, check_square_batch
from reference.conventions import DEFAULT_EPS, L2_NORM_FLOOR, SIGNED_SQRT_DELTA

#: Anything NumPy turns into an array: the stages take arrays of any framework's values.
ArrayLike = npt.ArrayLike
#: What every stage returns: float64 arrays.
Array = npt.NDArray[np.float64]


def _float64(x: ArrayLike, name: str) -> Array:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise IBPInputError(f"{name} holds non-finite values (NaN or inf)")
    return x


def bilinear_pool(x: ArrayLike, eps: float = DEFAULT_EPS) -> Array:
    """A = X X^T / N + eps I per sample, X the (C, N) matrix of one feature map."""
    x = _float64(x, "feature map")
    check_feature_map(x.shape, "channels_first")
    b, c, h, w = x.shape
    features = x.reshape(b, c, h * w)
    return features @ features.transpose(0, 2, 1) / (h * w) + eps * np.eye(c)


def bilinear_pool_vjp(x: ArrayLike, g: ArrayLike) -> Array:
    """dX = (G + G^T) X / N."""
    x = _float64(x, "feature map")
    b, c, h, w = x.shape
    features = x.reshape(b, c, h * w)
    g = np.asarray(g, dtype=np.float64)
    return ((g + g.transpose(0, 2, 1)) @ features / (h * w)).reshape(x.shape)


def _symmetric_part(m: Array) -> Array:
    return (m + m.transpose(0, 2, 1)) / 2


def sqrtm(a: ArrayLike) -> Array:
    """The principal square root of the symmetric part of each matrix (scipy.linalg.sqrtm)."""
    a = _float64(a, "matrix")
    check_square_batch(a.shape)
    a = _symmetric_part(a)
    roots = np.stack([np.real(scipy.linalg.sqrtm(m)) for m in a])
    # A symmetric input has a symmetric root; SciPy's Schur method leaves round-off asymmetry.
    return _symmetric_part(roots)


def sqrtm_vjp(z: ArrayLike, g: ArrayLike) -> Array:
    """Symmetric part of X solving Z X + X Z = G per sample (Z = sqrtm(A), the forward's output)."""
    z = np.asarray(z, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    x = np.stack(
        [scipy.linalg.solve_continuous_lyapunov(zi, gi) for zi, gi in zip(z, g, strict=True)]
    )
    return _symmetric_part(x)


def signed_sqrt(z: ArrayLike, delta: float = SIGNED_SQRT_DELTA) -> Array:
    """y = sign(z) (sqrt(|z| + delta) - sqrt(delta)): continuous, odd, finite slope at 0."""
    z = np.asarray(z, dtype=np.float64)
    # The same function spelled without cancellation: |z| << delta keeps every digit.
    # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
    denominator = np.sqrt(np.abs(z) + delta) + np.sqrt(delta)
    return z / np.maximum(denominator, np.finfo(np.float64).tiny)


def signed_sqrt_vjp(z: ArrayLike, g: ArrayLike, delta: float = SIGNED_SQRT_DELTA) -> Array:
    z = np.asarray(z, dtype=np.float64)
    # delta = 0 makes the slope at z = 0 infinite: held at 1 / (2 sqrt(u)) below |z| + delta = u.
    shifted = np.maximum(np.abs(z) + delta, np.finfo(np.float64).eps)
    return np.asarray(g, dtype=np.float64) / (2 * np.sqrt(shifted))


def _sample_norms(y: Array) -> Array:
    flat = y.reshape(y.shape[0], -1)
    return np.maximum(np.linalg.norm(flat, axis=1), L2_NORM_FLOOR)


def l2_normalize(y: ArrayLike) -> Array:
    """v = y / max(||y||, floor), the norm over all entries of one sample."""
    y = np.asarray(y, dtype=np.float64)
    norms = _sample_norms(y).reshape((-1,) + (1,) * (y.ndim - 1))
    return y / norms


def l2_normalize_vjp(y: ArrayLike, g: ArrayLike) -> Array:
    """(I - v v^T) g / ||y|| per sample: the full Jacobian, not a rescale."""
    y = np.asarray(y, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    shape = (-1,) + (1,) * (y.ndim - 1)
    norms = _sample_norms(y).reshape(shape)
    v = y / norms
    along = np.sum((v * g).reshape(y.shape[0], -1), axis=1).reshape(shape)
    return (g - v * along) / norms


def linear(v: ArrayLike, weight: ArrayLike, bias: ArrayLike) -> Array:
    """logits = vec(v) W^T + b, vec flattening each (C, C) sample row by row; W is (K, C*C)."""
    v = np.asarray(v, dtype=np.float64)
    flat = v.reshape(len(v), -1)
    return flat @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)


def linear_vjp(v: ArrayLike, weight: ArrayLike, g: ArrayLike) -> tuple[Array, Array, Array]:
    """Gradients (dv, dW, db) of <g, linear(v, W, b)>."""
    v = np.asarray(v, dtype=np.float64)
    flat = v.reshape(len(v), -1)
    g = np.asarray(g, dtype=np.float64)
    return (g @ np.asarray(weight, dtype=np.float64)).reshape(v.shape), g.T @ flat, g.sum(axis=0)


def ibp_head(x: ArrayLike, eps: float = DEFAULT_EPS, delta: float = SIGNED_SQRT_DELTA) -> Array:
    """Feature map (B, C, H, W) -> normalised second-order vector (B, C*C)."""
    v = l2_normalize(signed_sqrt(sqrtm(bilinear_pool(x, eps)), delta))
    return v.reshape(len(v), -1)


def ibp_head_vjp(
    x: ArrayLike, g: ArrayLike, eps: float = DEFAULT_EPS, delta: float = SIGNED_SQRT_DELTA
) -> Array:
    """The chain of the stages' VJPs, last stage first."""
    a = bilinear_pool(x, eps)
    z = sqrtm(a)
    y = signed_sqrt(z, delta)
    g = np.asarray(g, dtype=np.float64).reshape(y.shape)
    return bilinear_pool_vjp(x, sqrtm_vjp(z, signed_sqrt_vjp(z, l2_normalize_vjp(y, g), delta)))
