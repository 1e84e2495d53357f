"""The matrix square roots behind `impls.torch.stages.sqrtm`, with their hand-written backwards.

Inputs are symmetric (B, C, C) float tensors, already validated. Every root here returns the
principal root with negative eigenvalues counted as 0 (reference.conventions), or NaN in the
samples where an iteration went wrong, for the caller to recompute by eigh.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from impls.minimax_polynomials import Steps, cubic_schedule, wrong_iterate_slack


def symmetric_part(m: torch.Tensor) -> torch.Tensor:
    return (m + m.mT) / 2


def root_floor(s: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Smallest root the Lyapunov denominators s_i + s_j are allowed to see, per matrix.

    Relative: roots below round-off of the largest are noise. Absolute: sqrt(tiny), the root of
    the smallest normal number; an eigenvalue below it has no significant digits left, and the
    relative floor is 0 for the all-zero matrix (eps = 0 on a dead map). The true gradient there
    is infinite; this floor makes it finite, and large: 1 / (2 sqrt(tiny)) is 5e18 in float32,
    small enough that the pooling's backward (times X / N) stays finite for any unit cotangent.
    `dtype`: the one the gradient is returned in, when the roots were computed wider.
    """
    info = torch.finfo(dtype or s.dtype)
    return (info.eps * s.amax(-1, keepdim=True).unsqueeze(-1)).clamp_min(info.tiny**0.5)


def _in_eigenbasis(u: torch.Tensor, d: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """U [(U^T sym(G) U)_ij d_ij] U^T."""
    return u @ ((u.mT @ symmetric_part(g) @ u) * d) @ u.mT


def _lyapunov_factors(s: torch.Tensor, result_dtype: torch.dtype | None) -> torch.Tensor:
    # Two zero roots (eps = 0 on rank-deficient input) make the true gradient infinite.
    denominator = torch.maximum(s.unsqueeze(-1) + s.unsqueeze(-2), 2 * root_floor(s, result_dtype))
    return 1 / denominator


def clamped_root_gradient(
    u: torch.Tensor,
    eigenvalues: torch.Tensor,
    g: torch.Tensor,
    result_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The gradient of <G, U sqrt(max(lambda, 0)) U^T> with respect to A = U diag(lambda) U^T:
    the divided differences (f(l_i) - f(l_j)) / (l_i - l_j) of f = sqrt(max(., 0)) in the
    eigenbasis (Daleckii and Krein). Where both eigenvalues are positive that is 1 / (s_i + s_j),
    the Lyapunov solution, floored like it; where one is not, s / |l_i - l_j| with s the other's
    root (finite, and capped at the same floor); where neither is, 0: the root is 0 all around.
    So a negative eigenvalue (round-off of a covariance) adds no gradient of its own, where the
    floored Lyapunov solution of the clamped root would send 1 / (2 floor) into that direction."""
    s = eigenvalues.clamp_min(0).sqrt()
    positive = eigenvalues > 0
    both = positive.unsqueeze(-1) & positive.unsqueeze(-2)
    one = positive.unsqueeze(-1) ^ positive.unsqueeze(-2)
    lyapunov = _lyapunov_factors(s, result_dtype)
    gap = (eigenvalues.unsqueeze(-1) - eigenvalues.unsqueeze(-2)).abs()
    cross = (s.unsqueeze(-1) + s.unsqueeze(-2)) / torch.where(one, gap, torch.ones_like(gap))
    d = torch.where(both, lyapunov, torch.where(one, torch.minimum(cross, lyapunov), 0.0))
    return _in_eigenbasis(u, d, g)


def signed_squares(s: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of Z^2 with the sign of Z's: a root's eigenvalue below 0 (an iteration's
    round-off on a negative eigenvalue) reads as a negative eigenvalue of A."""
    return s * s.abs()


def eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh that survives LAPACK's convergence failures on finite input (clusters of
    repeated eigenvalues, as dead channels give): retry in float64, then with a jitter of a few
    units of round-off that splits the clusters. Non-finite input is the caller's to report."""
    try:
        return torch.linalg.eigh(a)
    except torch.linalg.LinAlgError:
        if not bool(torch.isfinite(a).all()):
            raise
    wide = a.double()
    try:
        eigenvalues, u = torch.linalg.eigh(wide)
    except torch.linalg.LinAlgError:
        scale = torch.linalg.matrix_norm(wide).clamp_min(torch.finfo(wide.dtype).tiny)
        steps = torch.arange(a.shape[-1], dtype=wide.dtype, device=a.device) / a.shape[-1]
        jitter = torch.finfo(a.dtype).eps * scale[..., None, None] * torch.diag_embed(steps)
        eigenvalues, u = torch.linalg.eigh(wide + jitter)
    return eigenvalues.to(a.dtype), u.to(a.dtype)


def eigh_root(a: torch.Tensor) -> torch.Tensor:
    """U sqrt(max(lambda, 0)) U^T: negative eigenvalues are clamped at 0."""
    eigenvalues, u = eigh(a)
    return (u * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)) @ u.mT


class EighSqrtm(torch.autograd.Function):
    """Exact root by eigendecomposition, and the eigenvalues (not differentiated: what `auto`'s
    range check reads); backward by the closed-form gradient of the clamped root (the Lyapunov
    solution where A is positive definite)."""

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, result_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eigenvalues, u = eigh(a)
        s = eigenvalues.clamp_min(0).sqrt()
        ctx.result_dtype = result_dtype
        ctx.save_for_backward(u, eigenvalues)
        ctx.mark_non_differentiable(eigenvalues)
        return (u * s.unsqueeze(-2)) @ u.mT, eigenvalues

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, eigenvalues = ctx.saved_tensors
        return clamped_root_gradient(u, eigenvalues, g, ctx.result_dtype), None


def condition_numbers(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Largest over smallest eigenvalue of each sample, inf where the smallest is not positive."""
    smallest, largest = eigenvalues[..., 0], eigenvalues[..., -1]
    ratio = largest / smallest.clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    return torch.where(smallest > 0, ratio, torch.inf)


def nan_where_wrong(
    root: torch.Tensor, z: torch.Tensor, y: torch.Tensor, steps: Steps
) -> torch.Tensor:
    """`root` with NaN in every sample where the last iterates Z = Z_K and Y = Y_K show a negative
    eigenvalue of A at work, for the caller's finiteness check to recompute by eigh: the sum
    Sum_i m_i (m_i - b) over the eigenvalues of M = Z Y (impls.minimax_polynomials), above its
    round-off slack. One product and a few reductions, no host read; NaN or inf iterates fail the
    test too."""
    m = symmetric_part(z @ y)
    kappa = wrong_iterate_slack(steps, m.shape[-1], torch.finfo(m.dtype).eps / 2)
    slack = kappa * torch.linalg.matrix_norm(z) * torch.linalg.matrix_norm(y)
    trace = m.diagonal(dim1=-2, dim2=-1).sum(-1)
    excess = m.square().sum((-2, -1)) - steps.square_bound * trace
    # An iterate that overflowed makes the slack inf too: a finite slack is part of the test.
    wrong = ~((excess <= slack) & torch.isfinite(slack))
    return torch.where(wrong[..., None, None], torch.full_like(root, torch.nan), root)


def newton_schulz_root(a: torch.Tensor, num_iters: int) -> torch.Tensor:
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F; NaN in the samples
    where a negative eigenvalue of A made it go wrong (`nan_where_wrong`: one product more)."""
    norm = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return nan_where_wrong(y * norm.sqrt(), z, y, cubic_schedule(num_iters))


def newton_schulz_lyapunov(z: torch.Tensor, g: torch.Tensor, num_iters: int) -> torch.Tensor:
    """Coupled Newton-Schulz sign iteration on [[Z, G], [0, -Z]] / ||Z||_F; its corner is 2X.

    Z is shifted by the same floor as the eigenbasis solver's roots: Z = 0 (eps = 0 on a dead map)
    would leave the sign iteration nothing to converge to and grow G by 3/2 per step."""
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand_as(z)
    info = torch.finfo(z.dtype)
    floor = (info.eps * torch.linalg.matrix_norm(z)).clamp_min(info.tiny**0.5)[..., None, None]
    shifted = z + floor * eye
    norm = torch.linalg.matrix_norm(shifted)[..., None, None]
    p, q = shifted / norm, g / norm
    for _ in range(num_iters):
        p_squared = p @ p
        q = (q @ (3 * eye - p_squared) - p @ (p @ q - q @ p)) / 2
        p = p @ (3 * eye - p_squared) / 2
    return symmetric_part(q / 2)


def went_wrong(z: torch.Tensor) -> torch.Tensor:
    """Samples (B, 1, 1) whose root holds NaN or inf: an iteration that went wrong on negative
    eigenvalues (`nan_where_wrong`) or blew up on them."""
    return ~torch.isfinite(z).flatten(1).all(1)[:, None, None]


def if_any(
    flags: torch.Tensor, then: Callable[[], torch.Tensor], otherwise: torch.Tensor
) -> torch.Tensor:
    """`then()` when any of `flags` is set, else `otherwise`: a torch.cond in a compiled graph (no
    host read, no graph break), a Python branch (one host read) in eager code. Only for code that
    autograd does not walk through (a Function's forward or backward): the backward of a
    torch.cond would also reach what the branch not taken was computed from."""
    if torch.compiler.is_compiling():
        return torch.cond(flags.any(), then, lambda: otherwise.clone(), ())
    return then() if bool(flags.any()) else otherwise


def root_gradient(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The exact gradient for the computed root Z, through its eigendecomposition."""
    s, u = eigh(symmetric_part(z))
    return clamped_root_gradient(u, signed_squares(s), g)


def gradient_where_wrong(
    wrong: torch.Tensor, a: torch.Tensor, g: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """`x` with the samples whose root came from eigh (`clamp_wrong`) given eigh's gradient: the
    iteration's own is of no use there."""

    def exact() -> torch.Tensor:
        eigenvalues, u = eigh(a)
        return torch.where(wrong, clamped_root_gradient(u, eigenvalues, g), x)

    return if_any(wrong, exact, x)


def clamp_wrong(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`z` with the samples where the iteration went wrong replaced by eigh's clamped root."""
    wrong = went_wrong(z)
    return if_any(wrong, lambda: torch.where(wrong, eigh_root(a), z), z)


class NewtonSchulzSqrtm(torch.autograd.Function):
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward;
    with `clamp`, the samples where it went wrong are computed by eigh instead."""

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, num_iters: int, backward: str, clamp: bool
    ) -> torch.Tensor:
        z = newton_schulz_root(a, num_iters)
        wrong = went_wrong(z)
        if clamp:
            z = clamp_wrong(a, z)
        ctx.num_iters, ctx.backward_method, ctx.clamp = num_iters, backward, clamp
        ctx.save_for_backward(a, z, wrong)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        a, z, wrong = ctx.saved_tensors
        if ctx.backward_method == "newton_schulz":
            x = newton_schulz_lyapunov(z, g, ctx.num_iters)
        else:
            x = root_gradient(z, g)
        if ctx.clamp:
            x = gradient_where_wrong(wrong, a, g, x)
        return x, None, None, None


def autograd_root(
    iterate: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, clamp: bool
) -> torch.Tensor:
    """An iteration differentiated through its steps. With `clamp`, the samples where it went wrong
    are recomputed by eigh (whose gradient is the Lyapunov solution), the others by a fresh
    iteration on an input whose wrong samples are I, so that no NaN of a wrong sample sits in the
    graph that autograd walks back. A compiled graph cannot look first: it runs the iteration once
    without gradient to decide, then the chosen computation inside a torch.cond."""
    if not clamp:
        return iterate(a)

    def clamped(bad: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
        converging = iterate(torch.where(bad, eye, a))
        return torch.where(bad, EighSqrtm.apply(torch.where(bad, a, eye))[0], converging)

    with torch.no_grad():
        bad = went_wrong(iterate(a))
    if torch.compiler.is_compiling():
        return torch.cond(bad.any(), lambda: clamped(bad), lambda: iterate(a), ())
    return clamped(bad)
