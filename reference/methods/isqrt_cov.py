"""iSQRT-COV (Li, Xie, Wang, Gao, "Towards Faster Training of Global Covariance Pooling Networks by
Iterative Matrix Square Root Normalization", CVPR 2018): the centred covariance, trace
pre-normalisation, exactly N coupled Newton-Schulz iterations, post-compensation, then the upper
triangle as a vector.

The reference of a layer of this method is these N iterations in float64, not the exact root: on the
centred covariance of 28 x 28 ReLU maps five iterations are 21 % off the root at C = 64 and 42 % at
C = 256 (relative Frobenius error), and that is the method.

Read off the authors' released PyTorch code (fast-MPN-COV, src/representation/MPNCOV.py):
- Covpool: X Ibar X^T, Ibar = (1/M)(I - (1/M) 1 1^T), M = H W; no eps.
- Sqrtm: normA = tr(S) per sample; A = S / normA; its first step is Y = A T_0, Z = T_0 with
  T_0 = (3 I - A) / 2 (that is Y_1, Z_1 from Y_0 = A, Z_0 = I), iterN - 2 steps in its loop, and a
  last step that forms only Y: iterN steps in all (iterN = 1: the first step alone). Output
  sqrt(normA) Y_iterN. The module's default iterNum is 3; its training script sets 5.
- Triuvec: the upper triangle row by row (`pooling.TRIU_ORDERS`), off-diagonal entries unscaled.
"""

import numpy as np

from reference.contracts import IBPInputError, check_square_batch
from reference.methods.pooling import (
    DEFAULT_TRIU_ORDER,
    centred_pool,
    centred_pool_vjp,
    triu_vec,
    triu_vec_vjp,
)
from reference.stages import Array, ArrayLike, _float64

#: The authors' training script (main.py: iterNum 5).
DEFAULT_ITERATIONS = 5

TINY = float(np.finfo(np.float64).tiny)


def _traces(a: Array) -> tuple[Array, Array]:
    """(tr(A), the trace the iteration divides by) per sample. tr(S) = 0 only for S = 0 (a map
    constant over its locations, or one location), where the method is 0 / 0: the divisor is
    floored at the smallest normal number, so the output is 0 and the gradient huge, not NaN."""
    traces = np.trace(a, axis1=1, axis2=2)
    if np.any(traces < 0):
        raise IBPInputError(
            "iSQRT-COV's root needs matrices with a trace >= 0 (covariances); got traces "
            f"{traces[traces < 0][:3].tolist()}"
        )
    return traces, np.maximum(traces, TINY)


def _iterate(a: Array, iterations: int) -> tuple[Array, list[tuple[Array, Array, Array]]]:
    """Y_N and the (Y_k, Z_k, T_k) of every step, from Y_0 = A, Z_0 = I."""
    eye = np.eye(a.shape[-1])
    y, z = a, np.broadcast_to(eye, a.shape)
    steps = []
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        steps.append((y, z, t))
        y, z = y @ t, t @ z
    return y, steps


def newton_schulz_iterations(a: ArrayLike, iterations: int = DEFAULT_ITERATIONS) -> Array:
    """Y_N of N coupled iterations from Y_0 = A, Z_0 = I, on A as given (no normalisation): the
    core of the root, and what a layer that normalises or compensates wrongly still computes."""
    a = _float64(a, "matrix")
    check_square_batch(a.shape)
    y, _ = _iterate(a, iterations)
    return y


def isqrt_cov_root(a: ArrayLike, iterations: int = DEFAULT_ITERATIONS) -> Array:
    """sqrt(tr A) Y_N with Y_N from N coupled Newton-Schulz iterations on A / tr(A).

    Defined on every square matrix with tr(A) >= 0 as the iterations are written: no symmetric part
    is taken, and the VJP is what autodiff through the iterations gives (symmetric for a symmetric
    A and G)."""
    a = _float64(a, "matrix")
    check_square_batch(a.shape)
    _, divisor = _traces(a)
    y = newton_schulz_iterations(a / divisor[:, None, None], iterations)
    return y * np.sqrt(divisor)[:, None, None]


def isqrt_cov_root_vjp(a: ArrayLike, g: ArrayLike, iterations: int = DEFAULT_ITERATIONS) -> Array:
    """Reverse mode through the N iterations, the trace pre-normalisation and the
    post-compensation."""
    a = _float64(a, "matrix")
    traces, divisor = _traces(a)
    normalised = a / divisor[:, None, None]
    y, steps = _iterate(normalised, iterations)
    g = np.asarray(g, dtype=np.float64)
    root_divisor = np.sqrt(divisor)
    # C = sqrt(d) Y_N
    dy = g * root_divisor[:, None, None]
    dz = np.zeros_like(dy)
    ddivisor = np.sum(g * y, axis=(1, 2)) / (2 * root_divisor)
    for y_k, z_k, t_k in reversed(steps):
        # Y' = Y T, Z' = T Z, T = (3 I - Z Y) / 2
        dt = y_k.transpose(0, 2, 1) @ dy + dz @ z_k.transpose(0, 2, 1)
        dy, dz = (
            dy @ t_k.transpose(0, 2, 1) - z_k.transpose(0, 2, 1) @ dt / 2,
            t_k.transpose(0, 2, 1) @ dz - dt @ y_k.transpose(0, 2, 1) / 2,
        )
    # Y_0 = A / d, d = tr(A) where above the floor
    ddivisor -= np.sum(dy * normalised, axis=(1, 2)) / divisor
    dtrace = np.where(traces > TINY, ddivisor, 0.0)
    return dy / divisor[:, None, None] + dtrace[:, None, None] * np.eye(a.shape[-1])


def isqrt_cov_head(
    x: ArrayLike, iterations: int = DEFAULT_ITERATIONS, order: str = DEFAULT_TRIU_ORDER
) -> Array:
    """Feature map (B, C, H, W) -> (B, C(C+1)/2): triu of the root of the centred covariance."""
    return triu_vec(isqrt_cov_root(centred_pool(x), iterations), order)


def isqrt_cov_head_vjp(
    x: ArrayLike,
    g: ArrayLike,
    iterations: int = DEFAULT_ITERATIONS,
    order: str = DEFAULT_TRIU_ORDER,
) -> Array:
    s = centred_pool(x)
    root_g = triu_vec_vjp(s, g, order)
    return centred_pool_vjp(x, isqrt_cov_root_vjp(s, root_g, iterations))
