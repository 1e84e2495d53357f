"""Matrix square root from matrix products only: the coupled Newton-Schulz iteration with the
minimax quintic steps of `impls.minimax_polynomials`, and a backward that reuses its iterates.

Products per call, K steps: forward 4K - 1 (two of them for the check that no negative eigenvalue
is at work), iterative backward 5K - 1 (61 in all at K = 7).
Input: a symmetric (B, C, C) float tensor, already validated by `impls.tf.stages.sqrtm`.
Mirrors `impls.torch.minimax_newton_schulz` line by line; its docstring compares the backwards.
"""

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from impls.minimax_polynomials import quintic_schedule
from impls.tf.linalg import (
    nan_where_wrong,
    root_gradient,
    symmetric_part,
    transpose,
    went_wrong,
    zero_where_wrong,
)
from reference.contracts import IBPInputError

#: Backward passes of the minimax root; "newton_schulz" is the iterate-reusing sign iteration.
MINIMAX_BACKWARDS = ("newton_schulz", "autograd", "lyapunov")


def _minimax_iterates(
    a: tf.Tensor, num_iters: int
) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
    """(Y_K, s, [M_k], [T_k]): Y_K ~ (A / s)^(1/2), s = ||A||_F, M_k = Z_k Y_k = S_k^2 and
    T_k = h_k(M_k), the squared sign iterates and step polynomials that the backward reuses; Y_K
    is NaN in the samples where M_K shows a negative eigenvalue of A at work."""
    norm = tf.norm(a, ord="fro", axis=(-2, -1), keepdims=True)
    scale = tf.maximum(norm, np.finfo(a.dtype.as_numpy_dtype).tiny)
    eye = tf.eye(tf.shape(a)[-1], batch_shape=tf.shape(a)[:-2], dtype=a.dtype)
    y, z = a / scale, None
    squares: list[tf.Tensor] = []
    polynomials: list[tf.Tensor] = []
    steps = quintic_schedule(num_iters)
    for c1, c3, c5 in steps.coefficients:
        # Z_0 = I: the first step needs neither Z Y nor T Z.
        m = y if z is None else z @ y
        t = c1 * eye + m @ (c3 * eye + c5 * m)
        squares.append(m)
        polynomials.append(t)
        y = y @ t
        z = t if z is None else t @ z
    assert z is not None  # num_iters >= 1
    return nan_where_wrong(y, z, y, steps), scale, squares, polynomials


def minimax_root(a: tf.Tensor, num_iters: int) -> tf.Tensor:
    """A^(1/2) by `num_iters` minimax steps; differentiable by autodiff (backward "autograd")."""
    y, scale, _, _ = _minimax_iterates(a, num_iters)
    return y * tf.sqrt(scale)


def _lyapunov_from_iterates(
    root: tf.Tensor,
    scale: tf.Tensor,
    squares: Sequence[tf.Tensor],
    polynomials: Sequence[tf.Tensor],
    g: tf.Tensor,
    num_iters: int,
) -> tf.Tensor:
    """Symmetric part of X solving Z X + X Z = G by the same steps on [[Z, G], [0, -Z]]: see
    `impls.torch.minimax_newton_schulz._lyapunov_from_iterates` for the derivation."""
    p, q = root, symmetric_part(g) / tf.sqrt(scale)
    for k, (_, c3, c5) in enumerate(quintic_schedule(num_iters).coefficients):
        if k:
            p = p @ polynomials[k - 1]
        pq = p @ q
        d = pq - transpose(pq)
        md = squares[k] @ d
        q = p @ (c3 * d + c5 * (md - transpose(md))) + q @ polynomials[k]
    return symmetric_part(q) / 2


def _minimax_with_gradient(a: tf.Tensor, num_iters: int, backward: str) -> tf.Tensor:
    """Minimax Newton-Schulz root; backward "newton_schulz" (iterative, matrix products only) or
    "lyapunov" (exact for the computed root, by eigendecomposition). A sample where the iteration
    went wrong is NaN, with gradient 0: the caller recomputes it (`impls.tf.linalg`)."""

    @tf.custom_gradient
    def root(a: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        y, scale, squares, polynomials = _minimax_iterates(a, num_iters)
        z = y * tf.sqrt(scale)

        def grad(g: tf.Tensor) -> tf.Tensor:
            if backward == "newton_schulz":
                x = _lyapunov_from_iterates(y, scale, squares, polynomials, g, num_iters)
            else:  # an eigensolver refuses NaN: a wrong sample's root is replaced first
                x = root_gradient(tf.where(went_wrong(z), tf.zeros_like(z), z), g)
            return zero_where_wrong(z, x)

        return z, grad

    return root(a)


def minimax_sqrtm(a: tf.Tensor, num_iters: int, backward: str) -> tf.Tensor:
    """The minimax root of a symmetric (B, C, C) batch; `backward` one of MINIMAX_BACKWARDS."""
    if num_iters < 1:
        raise IBPInputError(f"the minimax root needs at least one step, got num_iters={num_iters}")
    if backward == "autograd":
        return minimax_root(a, num_iters)
    return _minimax_with_gradient(a, num_iters, backward)
