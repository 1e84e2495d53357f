"""Matrix square root from matrix products only: the coupled Newton-Schulz iteration with the
minimax quintic steps of `impls.minimax_polynomials`, and a backward that reuses its iterates.

Products per call, K steps: forward 4K - 1 (two of them for the check that no negative eigenvalue
is at work), iterative backward 5K - 1 (61 in all at K = 7).
Input: a symmetric (B, C, C) float tensor, already validated by `impls.torch.stages.sqrtm`.

Backward options, and why "newton_schulz" is this method's matmul-only choice: it reuses the
forward's squared iterates and step polynomials (2K + 1 saved matrices) and costs 5K - 1 products;
"autograd" differentiates through the steps, 8K - 6 products (50 at K = 7) and every intermediate
kept; "lyapunov" is exact for the computed root at 4 products, but through an eigendecomposition,
which is what a GPU path avoids.

Like every Newton-Schulz root it needs A positive semidefinite: a negative eigenvalue -mu of
A / ||A||_F is multiplied by h_k(-mu)^2 > 1 in every step instead of converging. Round-off of a
covariance (mu ~ 1e-8) stays harmless at K = 7; mu ~ 1e-6 (a covariance pooled in float16) leaves
a wrong root, and 1e-5 overflows. So the forward also forms the last squared iterate M_K and
returns NaN in the samples where it shows a negative eigenvalue at work
(`impls.torch.linalg.nan_where_wrong`); `impls.torch.stages.sqrtm` recomputes them by eigh.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from impls.minimax_polynomials import quintic_schedule
from impls.torch.linalg import (
    autograd_root,
    clamp_wrong,
    gradient_where_wrong,
    nan_where_wrong,
    root_gradient,
    symmetric_part,
    went_wrong,
)
from reference.contracts import IBPInputError

#: Backward passes of the minimax root; "newton_schulz" is the iterate-reusing sign iteration.
MINIMAX_BACKWARDS = ("newton_schulz", "autograd", "lyapunov")


def _minimax_iterates(
    a: torch.Tensor, num_iters: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(Y_K, s, [M_k], [T_k]): Y_K ~ (A / s)^(1/2), s = ||A||_F, M_k = Z_k Y_k = S_k^2 and
    T_k = h_k(M_k), the squared sign iterates and step polynomials that the backward reuses; Y_K
    is NaN in the samples where M_K shows a negative eigenvalue of A at work."""
    scale = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / scale, None
    squares: list[torch.Tensor] = []
    polynomials: list[torch.Tensor] = []
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


def minimax_root(a: torch.Tensor, num_iters: int) -> torch.Tensor:
    """A^(1/2) by `num_iters` minimax steps; differentiable by autograd (backward "autograd")."""
    y, scale, _, _ = _minimax_iterates(a, num_iters)
    return y * scale.sqrt()


def _lyapunov_from_iterates(
    root: torch.Tensor,
    scale: torch.Tensor,
    squares: Sequence[torch.Tensor],
    polynomials: Sequence[torch.Tensor],
    g: torch.Tensor,
    num_iters: int,
) -> torch.Tensor:
    """Symmetric part of X solving Z X + X Z = G by the same steps on [[Z, G], [0, -Z]].

    The block's sign is [[I, 2X], [0, -I]]. Scaled by 1 / sqrt(s), its diagonal blocks are +-S_k,
    the forward's sign iterates, so P = S_k advances by one product (P T_k) and P^2 = M_k is saved;
    only the corner Q is new: with D = P Q - Q P, the corner of X^2, and M D + D M that of X^4,
    Q <- P (c3 D + c5 (M D + D M)) + Q T_k. P and Q are symmetric, so Q P = (P Q)^T and
    D M = -(M D)^T: 4 products per step.
    """
    p, q = root, symmetric_part(g) / scale.sqrt()
    for k, (_, c3, c5) in enumerate(quintic_schedule(num_iters).coefficients):
        if k:
            p = p @ polynomials[k - 1]
        pq = p @ q
        d = pq - pq.mT
        md = squares[k] @ d
        q = p @ (c3 * d + c5 * (md - md.mT)) + q @ polynomials[k]
    return symmetric_part(q) / 2


class MinimaxSqrtm(torch.autograd.Function):
    """Minimax Newton-Schulz root; backward "newton_schulz" (iterative, matrix products only) or
    "lyapunov" (exact for the computed root, by eigendecomposition). With `clamp`, the samples
    where the iteration went wrong get eigh's root and its exact backward instead."""

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, num_iters: int, backward: str, clamp: bool
    ) -> torch.Tensor:
        y, scale, squares, polynomials = _minimax_iterates(a, num_iters)
        z = y * scale.sqrt()
        wrong = went_wrong(z)
        if clamp:
            z = clamp_wrong(a, z)
        ctx.num_iters, ctx.backward_method, ctx.clamp = num_iters, backward, clamp
        ctx.save_for_backward(a, z, scale, wrong, *squares, *polynomials)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        a, z, scale, wrong, *iterates = ctx.saved_tensors
        if ctx.backward_method == "lyapunov":
            x = root_gradient(z, g)
        else:
            squares, polynomials = iterates[: ctx.num_iters], iterates[ctx.num_iters :]
            y = z / scale.sqrt()
            x = _lyapunov_from_iterates(y, scale, squares, polynomials, g, ctx.num_iters)
        if ctx.clamp:
            x = gradient_where_wrong(wrong, a, g, x)
        return x, None, None, None


def minimax_sqrtm(
    a: torch.Tensor, num_iters: int, backward: str, clamp: bool = False
) -> torch.Tensor:
    """The minimax root of a symmetric (B, C, C) batch; `backward` one of MINIMAX_BACKWARDS.
    Without `clamp`, a sample where the iteration went wrong is NaN; with it, eigh's root."""
    if num_iters < 1:
        raise IBPInputError(f"the minimax root needs at least one step, got num_iters={num_iters}")
    if backward == "autograd":
        return autograd_root(lambda m: minimax_root(m, num_iters), a, clamp)
    return MinimaxSqrtm.apply(a, num_iters, backward, clamp)
