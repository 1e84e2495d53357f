"""Matrix square root from matrix products only: the coupled Newton-Schulz iteration with the
minimax quintic steps of `impls.minimax_polynomials`, and a backward that reuses its iterates.

Products per call, K steps: forward 4K - 3, iterative backward 5K - 1 (59 in all at K = 7).
Input: a symmetric (B, C, C) float tensor, already validated by `impls.torch.stages.sqrtm`.

Backward options, and why "newton_schulz" is this method's matmul-only choice: it reuses the
forward's squared iterates and step polynomials (2K + 1 saved matrices) and costs 5K - 1 products;
"autograd" differentiates through the steps, 8K - 6 products (50 at K = 7) and every intermediate
kept; "lyapunov" is exact for the computed root at 4 products, but through an eigendecomposition,
which is what a GPU path avoids.

Like every Newton-Schulz root it needs A positive semidefinite: a negative eigenvalue -mu of
A / ||A||_F is multiplied by h_k(-mu)^2 > 1 in every step instead of converging. Round-off of a
covariance (mu ~ 1e-8, also at C = 512 with eps = 0 and fewer locations than channels) stays
harmless at K = 7; mu ~ 1e-6 leaves a wrong root, and 1e-5 overflows to inf.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from impls.minimax_polynomials import quintic_schedule
from reference.contracts import IBPInputError

#: Backward passes of the minimax root; "newton_schulz" is the iterate-reusing sign iteration.
MINIMAX_BACKWARDS = ("newton_schulz", "autograd", "lyapunov")


def _symmetric_part(m: torch.Tensor) -> torch.Tensor:
    return (m + m.mT) / 2


def _minimax_iterates(
    a: torch.Tensor, num_iters: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(Y_K, s, [M_k], [T_k]): Y_K ~ (A / s)^(1/2), s = ||A||_F, M_k = Z_k Y_k = S_k^2 and
    T_k = h_k(M_k), the squared sign iterates and step polynomials that the backward reuses."""
    scale = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / scale, None
    squares: list[torch.Tensor] = []
    polynomials: list[torch.Tensor] = []
    for k, (c1, c3, c5) in enumerate(quintic_schedule(num_iters)):
        # Z_0 = I: the first step needs neither Z Y nor T Z.
        m = y if z is None else z @ y
        t = c1 * eye + m @ (c3 * eye + c5 * m)
        squares.append(m)
        polynomials.append(t)
        y = y @ t
        if k < num_iters - 1:  # the last Z would only feed a further step
            z = t if z is None else t @ z
    return y, scale, squares, polynomials


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
    p, q = root, _symmetric_part(g) / scale.sqrt()
    for k, (_, c3, c5) in enumerate(quintic_schedule(num_iters)):
        if k:
            p = p @ polynomials[k - 1]
        pq = p @ q
        d = pq - pq.mT
        md = squares[k] @ d
        q = p @ (c3 * d + c5 * (md - md.mT)) + q @ polynomials[k]
    return _symmetric_part(q) / 2


class MinimaxSqrtm(torch.autograd.Function):
    """Minimax Newton-Schulz root; backward "newton_schulz" (iterative, matrix products only) or
    "lyapunov" (exact for the computed root, by eigendecomposition)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, num_iters: int, backward: str) -> torch.Tensor:
        y, scale, squares, polynomials = _minimax_iterates(a, num_iters)
        ctx.num_iters, ctx.backward_method = num_iters, backward
        ctx.save_for_backward(y, scale, *squares, *polynomials)
        return y * scale.sqrt()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        y, scale, *iterates = ctx.saved_tensors
        squares, polynomials = iterates[: ctx.num_iters], iterates[ctx.num_iters :]
        if ctx.backward_method == "newton_schulz":
            x = _lyapunov_from_iterates(y, scale, squares, polynomials, g, ctx.num_iters)
            return x, None, None
        # stages imports this module for its sqrtm dispatch: import its solver at call time.
        from impls.torch.stages import _eigh, _lyapunov_in_eigenbasis

        eigenvalues, u = _eigh(_symmetric_part(y))
        s = eigenvalues.clamp_min(0) * scale.sqrt()[..., 0]
        return _lyapunov_in_eigenbasis(u, s, g), None, None


def minimax_sqrtm(a: torch.Tensor, num_iters: int, backward: str) -> torch.Tensor:
    """The minimax root of a symmetric (B, C, C) batch; `backward` one of MINIMAX_BACKWARDS."""
    if num_iters < 1:
        raise IBPInputError(f"the minimax root needs at least one step, got num_iters={num_iters}")
    if backward == "autograd":
        return minimax_root(a, num_iters)
    return MinimaxSqrtm.apply(a, num_iters, backward)
