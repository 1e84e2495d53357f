"""The IBP stages in PyTorch, channels-first; each function mirrors `reference.stages`."""

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from impls import auto_table
from impls.torch.minimax_newton_schulz import minimax_sqrtm
from reference.contracts import (
    NON_FINITE_MESSAGE,
    OVERFLOW_MESSAGE,
    IBPInputError,
    check_dtype,
    check_feature_map,
    check_non_negative,
    check_sample_batch,
    check_sqrtm_options,
    check_square_batch,
    with_method_defaults,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_SQRTM_METHOD,
    L2_NORM_FLOOR,
    SIGNED_SQRT_DELTA,
)

_HALF_DTYPES = (torch.float16, torch.bfloat16)

# (tensor, message) pairs, first cause first: the message names what the tensor holds.
Checks = Sequence[tuple[torch.Tensor, str]]


def dtype_name(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def check_all_finite(checks: Checks) -> None:
    """Raise the message of the first (tensor, message) pair whose tensor holds NaN or inf.

    Eager: one host read for the common case (everything finite), more only to name the culprit.
    Under torch.compile a branch on data would break the graph: an assertion op with the same
    message checks each tensor instead (it raises a RuntimeError, not IBPInputError).
    """
    if torch.compiler.is_compiling():
        for tensor, message in checks:
            torch._assert_async(torch.isfinite(tensor).all(), message)
        return
    if bool(torch.isfinite(checks[-1][0]).all()):
        return
    for tensor, message in checks:
        if not bool(torch.isfinite(tensor).all()):
            raise IBPInputError(message)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Half precision is too coarse for a covariance or an eigendecomposition: work in float32."""
    return torch.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _symmetric_part(m: torch.Tensor) -> torch.Tensor:
    return (m + m.mT) / 2


def _pool(x: torch.Tensor, eps: float) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        features = x.flatten(2).to(compute_dtype(x))
        n = features.shape[-1]
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
        a = features @ features.mT / n + eps * eye
    return a.to(x.dtype)


def bilinear_pool(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """A = X X^T / N + eps I per sample, x of shape (B, C, H, W) -> (B, C, C)."""
    check_dtype(dtype_name(x), "feature map")
    check_feature_map(x.shape, "channels_first")
    check_non_negative(eps, "eps")
    a = _pool(x, eps)
    check_all_finite([(x, NON_FINITE_MESSAGE.format(name="feature map")), (a, OVERFLOW_MESSAGE)])
    return a


def _root_floor(s: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
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


def _lyapunov_in_eigenbasis(
    u: torch.Tensor, s: torch.Tensor, g: torch.Tensor, result_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Symmetric part of X solving Z X + X Z = G, Z = U diag(s) U^T with s >= 0."""
    denominator = s.unsqueeze(-1) + s.unsqueeze(-2)
    # Two zero eigenvalues (eps = 0 on rank-deficient input) make the true gradient infinite.
    denominator = torch.maximum(denominator, 2 * _root_floor(s, result_dtype))
    x = u @ ((u.mT @ _symmetric_part(g) @ u) / denominator) @ u.mT
    return x


def _eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _eigh_root(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U sqrt(max(lambda, 0)) U^T: negative eigenvalues are clamped at 0 (README, "sqrtm")."""
    eigenvalues, u = _eigh(a)
    s = eigenvalues.clamp_min(0).sqrt()
    return (u * s.unsqueeze(-2)) @ u.mT, u, s


class _EighSqrtm(torch.autograd.Function):
    """Exact root by eigendecomposition; backward by the closed-form Lyapunov solution."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, result_dtype: torch.dtype | None = None) -> torch.Tensor:
        z, u, s = _eigh_root(a)
        ctx.result_dtype = result_dtype
        ctx.save_for_backward(u, s)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, s = ctx.saved_tensors
        return _lyapunov_in_eigenbasis(u, s, g, ctx.result_dtype), None


def _newton_schulz_root(a: torch.Tensor, num_iters: int) -> torch.Tensor:
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F."""
    norm = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def _newton_schulz_lyapunov(z: torch.Tensor, g: torch.Tensor, num_iters: int) -> torch.Tensor:
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
    return _symmetric_part(q / 2)


def _diverged(z: torch.Tensor) -> torch.Tensor:
    """Samples whose Newton-Schulz iterates blew up: the iteration converges on eigenvalues in
    (0, 1] of A / ||A||_F and diverges on negative ones (non-PSD input, or round-off below zero
    with eps = 0 and many iterations)."""
    return ~torch.isfinite(z).flatten(1).all(1)[:, None, None]


class _NewtonSchulzSqrtm(torch.autograd.Function):
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward."""

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, num_iters: int, backward: str, clamp: bool
    ) -> torch.Tensor:
        z = _newton_schulz_root(a, num_iters)
        if clamp:
            z = torch.where(_diverged(z), _eigh_root(a)[0], z)
        ctx.num_iters, ctx.backward_method = num_iters, backward
        ctx.save_for_backward(z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (z,) = ctx.saved_tensors
        if ctx.backward_method == "newton_schulz":
            return _newton_schulz_lyapunov(z, g, ctx.num_iters), None, None, None
        eigenvalues, u = _eigh(_symmetric_part(z))
        return _lyapunov_in_eigenbasis(u, eigenvalues.clamp_min(0), g), None, None, None


def _autograd_newton_schulz(a: torch.Tensor, num_iters: int, clamp: bool) -> torch.Tensor:
    """Newton-Schulz differentiated through its iterations. With `clamp`, samples that diverge are
    recomputed by eigh (whose gradient is the Lyapunov solution), the others by a fresh iteration,
    so that no NaN of a diverged sample sits in the graph that autograd walks back."""
    z = _newton_schulz_root(a, num_iters)
    if not clamp:
        return z
    bad = _diverged(z.detach())
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    converging = _newton_schulz_root(torch.where(bad, eye, a), num_iters)
    return torch.where(bad, _EighSqrtm.apply(torch.where(bad, a, eye)), converging)


def _resolve_auto(
    method: str, backward: str | None, device_type: str, channels: int | None = None
) -> tuple[str, str | None, torch.dtype | None]:
    """(method, backward, dtype of the eigendecomposition or None): "auto" is the measured choice
    for this device and C (impls.auto_table), read from the static shape without a host read."""
    if method != "auto":
        return method, backward, None
    choice = auto_table.choose("torch", device_type, channels)
    eigh_dtype = None if choice.eigh_dtype is None else getattr(torch, choice.eigh_dtype)
    return choice.method, backward, eigh_dtype


def _root(
    a: torch.Tensor, method: str, num_iters: int | None, backward: str | None, checks: Checks
) -> torch.Tensor:
    """The root of the symmetric part of `a`, then one finiteness check of it (one host read):
    NaN or inf in anything it came from (`checks`, (tensor, message) pairs, first cause first)
    shows there, and so does a Newton-Schulz iteration that diverged on negative eigenvalues,
    which is then computed again with those samples clamped. Under torch.compile the checks are
    assertion ops, and a diverged iteration fails the last one instead of being recomputed."""
    method, backward, eigh_dtype = _resolve_auto(method, backward, a.device.type, a.shape[-1])
    num_iters, backward = with_method_defaults(method, num_iters, backward)
    compiling = torch.compiler.is_compiling()
    if compiling:
        check_all_finite(checks)  # before the eigensolver, which would refuse NaN in its own words
    with torch.autocast(a.device.type, enabled=False):
        symmetric = _symmetric_part(a.to(compute_dtype(a)))

        def root(clamp: bool) -> torch.Tensor:
            if method == "eigh" and eigh_dtype is not None:
                wide = symmetric.to(eigh_dtype)
                return _EighSqrtm.apply(wide, symmetric.dtype).to(symmetric.dtype)
            if method == "eigh" or (method == "minimax_newton_schulz" and clamp):
                return _EighSqrtm.apply(symmetric)
            # Every iterative method has both defaults (reference.conventions.ITERATIVE_DEFAULTS).
            assert num_iters is not None and backward is not None
            if method == "minimax_newton_schulz":
                return minimax_sqrtm(symmetric, num_iters, backward)
            if backward == "autograd":
                return _autograd_newton_schulz(symmetric, num_iters, clamp)
            return _NewtonSchulzSqrtm.apply(symmetric, num_iters, backward, clamp)

        try:
            z = root(clamp=False)
        except torch.linalg.LinAlgError:
            check_all_finite(checks)  # the eigensolver refused NaN or inf: name it
            raise
        diverged = NON_FINITE_MESSAGE.format(name="Newton-Schulz root (negative eigenvalues)")
        if compiling:
            check_all_finite([(z, diverged)])
        elif not bool(torch.isfinite(z).all()):
            check_all_finite(checks)
            z = root(clamp=True)
            check_all_finite([(z, diverged)])
    return z.to(a.dtype)


def sqrtm(
    a: torch.Tensor,
    method: str = DEFAULT_SQRTM_METHOD,
    num_iters: int | None = None,
    backward: str | None = None,
) -> torch.Tensor:
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch;
    negative eigenvalues count as 0, for every method (reference.conventions).

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact), "newton_schulz" (`num_iters` coupled iterations, default 20, matrix products only)
    or "minimax_newton_schulz" (the same iteration with minimax quintic steps, default 7).
    backward (iterative methods only): "lyapunov" (exact, eigenbasis), "newton_schulz"
    (iterative, same steps; minimax's default) or "autograd" (through the iterations).
    None means the method's default (reference.conventions.ITERATIVE_DEFAULTS).
    """
    check_dtype(dtype_name(a), "matrix")
    check_square_batch(a.shape)
    check_sqrtm_options(method, num_iters, backward)
    return _root(a, method, num_iters, backward, [(a, NON_FINITE_MESSAGE.format(name="matrix"))])


class _SignedSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, delta: float) -> torch.Tensor:
        ctx.delta = delta
        ctx.save_for_backward(z)
        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) spelled without cancellation for |z| << delta
        # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
        denominator = torch.sqrt(z.abs() + delta) + delta**0.5
        return z / denominator.clamp_min(torch.finfo(z.dtype).tiny)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        # delta = 0 makes the slope at z = 0 infinite: held at 1 / (2 sqrt(u)) below
        # |z| + delta = u (reference.conventions).
        shifted = (z.abs() + ctx.delta).clamp_min(torch.finfo(z.dtype).eps)
        return g / (2 * torch.sqrt(shifted)), None


def _signed_sqrt(z: torch.Tensor, delta: float) -> torch.Tensor:
    with torch.autocast(z.device.type, enabled=False):
        y = _SignedSqrt.apply(z.to(compute_dtype(z)), delta)
    return y.to(z.dtype)


def signed_sqrt(z: torch.Tensor, delta: float = SIGNED_SQRT_DELTA) -> torch.Tensor:
    """y = sign(z) (sqrt(|z| + delta) - sqrt(delta)), elementwise."""
    check_dtype(dtype_name(z), "signed sqrt input")
    check_non_negative(delta, "delta")
    check_all_finite([(z, NON_FINITE_MESSAGE.format(name="signed sqrt input"))])
    return _signed_sqrt(z, delta)


def _l2_normalize(y: torch.Tensor) -> torch.Tensor:
    with torch.autocast(y.device.type, enabled=False):
        wide = y.to(compute_dtype(y))
        norms = wide.flatten(1).norm(dim=1).clamp_min(L2_NORM_FLOOR)
        v = wide / norms.reshape((-1,) + (1,) * (y.dim() - 1))
    return v.to(y.dtype)


def l2_normalize(y: torch.Tensor) -> torch.Tensor:
    """v = y / max(||y||, floor), the norm over all non-batch entries of each sample."""
    check_dtype(dtype_name(y), "L2 input")
    check_sample_batch(y.shape, "L2 input")
    check_all_finite([(y, NON_FINITE_MESSAGE.format(name="L2 input"))])
    return _l2_normalize(y)
