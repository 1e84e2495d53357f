"""The matrix square roots behind `impls.tf.stages.sqrtm`, with their hand-written gradients.

Inputs are symmetric (B, C, C) float tensors, already validated. Every root here returns the
principal root with negative eigenvalues counted as 0 (reference.conventions), or NaN in the
samples where an iteration went wrong, which `clamp_wrong` and `eigh_if_wrong` recompute by eigh.
Mirrors `impls.torch.linalg`.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from impls.minimax_polynomials import Steps, cubic_schedule, wrong_iterate_slack


def finfo(dtype: tf.DType) -> np.finfo[Any]:
    return np.finfo(dtype.as_numpy_dtype)


def transpose(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(m)


def symmetric_part(m: tf.Tensor) -> tf.Tensor:
    return (m + transpose(m)) / 2


def eye_like(m: tf.Tensor) -> tf.Tensor:
    return tf.eye(tf.shape(m)[-1], batch_shape=tf.shape(m)[:-2], dtype=m.dtype)


def frobenius_norm(m: tf.Tensor) -> tf.Tensor:
    norm = tf.norm(m, ord="fro", axis=(-2, -1), keepdims=True)
    return tf.maximum(norm, finfo(m.dtype).tiny)


def root_floor(s: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Smallest root the Lyapunov denominators s_i + s_j are allowed to see, per matrix; `dtype`
    is the one the gradient is returned in. See reference.conventions: u s_max relative,
    sqrt(tiny) absolute."""
    info = finfo(dtype)
    largest = tf.reduce_max(s, axis=-1)[..., None, None]
    return tf.maximum(info.eps * largest, tf.cast(info.tiny**0.5, s.dtype))


def _in_eigenbasis(u: tf.Tensor, d: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """U [(U^T sym(G) U)_ij d_ij] U^T."""
    return u @ ((transpose(u) @ symmetric_part(g) @ u) * d) @ transpose(u)


def clamped_root_gradient(
    u: tf.Tensor, eigenvalues: tf.Tensor, g: tf.Tensor, result_dtype: tf.DType | None = None
) -> tf.Tensor:
    """The gradient of <G, U sqrt(max(lambda, 0)) U^T> with respect to A = U diag(lambda) U^T: the
    divided differences of sqrt(max(., 0)) in the eigenbasis, floored where both roots are tiny.
    See `impls.torch.linalg.clamped_root_gradient`."""
    s = tf.sqrt(tf.maximum(eigenvalues, 0))
    positive = eigenvalues > 0
    both = positive[..., :, None] & positive[..., None, :]
    one = tf.math.logical_xor(positive[..., :, None], positive[..., None, :])
    # Two zero roots (eps = 0 on rank-deficient input) make the true gradient infinite.
    floor = 2 * root_floor(s, result_dtype or s.dtype)
    lyapunov = 1 / tf.maximum(s[..., :, None] + s[..., None, :], floor)
    gap = tf.abs(eigenvalues[..., :, None] - eigenvalues[..., None, :])
    cross = (s[..., :, None] + s[..., None, :]) / tf.where(one, gap, tf.ones_like(gap))
    zero = tf.zeros_like(lyapunov)
    d = tf.where(both, lyapunov, tf.where(one, tf.minimum(cross, lyapunov), zero))
    return _in_eigenbasis(u, d, g)


def signed_squares(s: tf.Tensor) -> tf.Tensor:
    """The eigenvalues of Z^2 with the sign of Z's: a root's eigenvalue below 0 (an iteration's
    round-off on a negative eigenvalue) reads as a negative eigenvalue of A."""
    return s * tf.abs(s)


def root_gradient(z: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """The exact gradient for the computed root Z, through its eigendecomposition."""
    s, u = eigh(symmetric_part(z))
    return clamped_root_gradient(u, signed_squares(s), g)


def eigh(a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.linalg.eigh that survives convergence failures on finite input in eager mode (clusters
    of repeated eigenvalues): retry in float64, then with a jitter of a few units of round-off
    that splits the clusters. A graph cannot catch the error; non-finite input is the caller's."""
    if not tf.executing_eagerly():
        return tf.linalg.eigh(a)
    try:
        return tf.linalg.eigh(a)
    except tf.errors.InvalidArgumentError:
        if not bool(tf.reduce_all(tf.math.is_finite(a))):
            raise
    wide = tf.cast(a, tf.float64)
    try:
        eigenvalues, u = tf.linalg.eigh(wide)
    except tf.errors.InvalidArgumentError:
        scale = frobenius_norm(wide)
        c = tf.shape(a)[-1]
        steps = tf.cast(tf.range(c), tf.float64) / tf.cast(c, tf.float64)
        jitter = finfo(a.dtype).eps * scale * tf.linalg.diag(steps)
        eigenvalues, u = tf.linalg.eigh(wide + jitter)
    return tf.cast(eigenvalues, a.dtype), tf.cast(u, a.dtype)


def _root_from(eigenvalues: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """U sqrt(max(lambda, 0)) U^T: negative eigenvalues are clamped at 0 (reference.conventions)."""
    return (u * tf.sqrt(tf.maximum(eigenvalues, 0))[..., None, :]) @ transpose(u)


def eigh_sqrtm_and_spectrum(
    a: tf.Tensor, result_dtype: tf.DType | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact root by eigendecomposition, and the eigenvalues (not differentiated: what `auto`'s
    range check reads); backward by the closed-form gradient of the clamped root (the Lyapunov
    solution where A is positive definite)."""
    eigenvalues, u = eigh(tf.stop_gradient(a))

    @tf.custom_gradient
    def root(a: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def grad(g: tf.Tensor) -> tf.Tensor:
            return clamped_root_gradient(u, eigenvalues, g, result_dtype)

        return _root_from(eigenvalues, u), grad

    return root(a), eigenvalues


def eigh_sqrtm(a: tf.Tensor, result_dtype: tf.DType | None = None) -> tf.Tensor:
    """Exact root by eigendecomposition (`eigh_sqrtm_and_spectrum`)."""
    return eigh_sqrtm_and_spectrum(a, result_dtype)[0]


def condition_numbers(eigenvalues: tf.Tensor) -> tf.Tensor:
    """Largest over smallest eigenvalue of each sample, inf where the smallest is not positive."""
    smallest, largest = eigenvalues[..., 0], eigenvalues[..., -1]
    ratio = largest / tf.maximum(smallest, finfo(eigenvalues.dtype).tiny)
    return tf.where(smallest > 0, ratio, tf.cast(np.inf, eigenvalues.dtype))


def nan_where_wrong(root: tf.Tensor, z: tf.Tensor, y: tf.Tensor, steps: Steps) -> tf.Tensor:
    """`root` with NaN in every sample where the last iterates Z = Z_K and Y = Y_K show a negative
    eigenvalue of A at work: see `impls.torch.linalg.nan_where_wrong`."""
    m = symmetric_part(z @ y)
    # C is known once traced with a shape; a graph traced without one reads it when it runs.
    channels = m.shape[-1] or tf.cast(tf.shape(m)[-1], m.dtype)
    kappa = wrong_iterate_slack(steps, channels, finfo(m.dtype).eps / 2)
    slack = kappa * tf.norm(z, ord="fro", axis=(-2, -1)) * tf.norm(y, ord="fro", axis=(-2, -1))
    excess = tf.reduce_sum(tf.square(m), axis=(-2, -1)) - steps.square_bound * tf.linalg.trace(m)
    # An iterate that overflowed makes the slack inf too: a finite slack is part of the test.
    wrong = tf.logical_not((excess <= slack) & tf.math.is_finite(slack))[..., None, None]
    return tf.where(wrong, tf.cast(np.nan, root.dtype), root)


def newton_schulz_root(a: tf.Tensor, num_iters: int) -> tf.Tensor:
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F; NaN in the samples
    where a negative eigenvalue of A made it go wrong (`nan_where_wrong`: one product more)."""
    norm = frobenius_norm(a)
    eye = eye_like(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return nan_where_wrong(y * tf.sqrt(norm), z, y, cubic_schedule(num_iters))


def newton_schulz_lyapunov(z: tf.Tensor, g: tf.Tensor, num_iters: int) -> tf.Tensor:
    """Coupled Newton-Schulz sign iteration on [[Z, G], [0, -Z]] / ||Z||_F; its corner is 2X.

    Z is shifted by the same floor as the eigenbasis solver's roots: Z = 0 (eps = 0 on a dead map)
    would leave the sign iteration nothing to converge to and grow G by 3/2 per step."""
    eye = eye_like(z)
    info = finfo(z.dtype)
    norm = tf.norm(z, ord="fro", axis=(-2, -1), keepdims=True)
    shifted = z + tf.maximum(info.eps * norm, info.tiny**0.5) * eye
    norm = tf.norm(shifted, ord="fro", axis=(-2, -1), keepdims=True)
    p, q = shifted / norm, g / norm
    for _ in range(num_iters):
        p_squared = p @ p
        q = (q @ (3 * eye - p_squared) - p @ (p @ q - q @ p)) / 2
        p = p @ (3 * eye - p_squared) / 2
    return symmetric_part(q / 2)


def went_wrong(z: tf.Tensor) -> tf.Tensor:
    """Samples (B, 1, 1) whose root holds NaN or inf: an iteration that went wrong on negative
    eigenvalues (`nan_where_wrong`) or blew up on them."""
    return tf.logical_not(tf.reduce_all(tf.math.is_finite(z), axis=(-2, -1), keepdims=True))


def _if_any(
    flags: tf.Tensor, then: Callable[[], tf.Tensor], otherwise: Callable[[], tf.Tensor]
) -> tf.Tensor:
    """then() when any of `flags` is set, else otherwise(): a tf.cond in a graph (which runs one
    branch, and whose gradient flows through that branch only), a Python branch eagerly."""
    if tf.executing_eagerly():
        return then() if bool(tf.reduce_any(flags)) else otherwise()
    return tf.cond(tf.reduce_any(flags), then, otherwise)


def clamp_wrong(a: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """`z` with the samples where the iteration went wrong replaced by eigh's clamped root (for
    roots whose gradient is written by hand: nothing differentiates through this)."""
    wrong = went_wrong(z)
    return _if_any(wrong, lambda: tf.where(wrong, _root_from(*eigh(a)), z), lambda: z)


def autograd_root(iterate: Callable[[tf.Tensor], tf.Tensor], a: tf.Tensor) -> tf.Tensor:
    """An iteration differentiated through its steps, with the samples where it went wrong
    recomputed by eigh (whose gradient is the clamped root's) and the others by a fresh iteration
    on an input whose wrong samples are I, so that no NaN or inf of a wrong sample sits in the
    graph that the gradient walks back (a zero cotangent times inf is NaN). Which samples went
    wrong is known from an iteration without gradient; eagerly, that one is the answer when none
    did."""
    probe = iterate(tf.stop_gradient(a))
    bad = went_wrong(probe)

    def clamped() -> tf.Tensor:
        eye = eye_like(a)
        converging = iterate(tf.where(bad, eye, a))
        return tf.where(bad, eigh_sqrtm(tf.where(bad, a, eye)), converging)

    return _if_any(bad, clamped, lambda: iterate(a))


def eigh_if_wrong(a: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """A minimax root that went wrong on negative eigenvalues is recomputed by eigh (which
    clamps), the whole batch, as torch does; its gradient there is 0 (`zero_where_wrong`)."""
    return _if_any(went_wrong(tf.stop_gradient(z)), lambda: eigh_sqrtm(a), lambda: z)


def zero_where_wrong(root: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
    """A hand-written gradient with 0 for the samples whose root went wrong: those samples are
    recomputed by eigh, in a tf.cond whose gradient still reaches the iteration with a zero
    cotangent, which its iterates (NaN or inf) would turn into NaN."""
    return tf.where(went_wrong(root), tf.zeros_like(gradient), gradient)


def newton_schulz_sqrtm(a: tf.Tensor, num_iters: int, backward: str) -> tf.Tensor:
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward; the
    samples where it went wrong get eigh's root and its gradient instead."""

    @tf.custom_gradient
    def root(a: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        iterated = newton_schulz_root(a, num_iters)
        wrong = went_wrong(iterated)
        z = clamp_wrong(a, iterated)

        def grad(g: tf.Tensor) -> tf.Tensor:
            if backward == "newton_schulz":
                x = newton_schulz_lyapunov(z, g, num_iters)
            else:
                x = root_gradient(z, g)

            def exact() -> tf.Tensor:
                eigenvalues, u = eigh(a)
                return tf.where(wrong, clamped_root_gradient(u, eigenvalues, g), x)

            return _if_any(wrong, exact, lambda: x)

        return z, grad

    return root(a)
