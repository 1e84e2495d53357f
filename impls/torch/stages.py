"""The IBP stages in PyTorch, channels-first; each function mirrors `reference.stages`."""

import torch
from torch.autograd.function import once_differentiable

from reference.contracts import (
    NON_FINITE_MESSAGE,
    IBPInputError,
    check_choice,
    check_feature_map,
    check_square_batch,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_NEWTON_SCHULZ_BACKWARD,
    DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    DEFAULT_SQRTM_METHOD,
    L2_NORM_FLOOR,
    NEWTON_SCHULZ_BACKWARDS,
    SIGNED_SQRT_DELTA,
    SQRTM_METHODS,
)

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_finite(x, name):
    # A data-dependent check would break the graph under torch.compile; eager calls are checked.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise IBPInputError(NON_FINITE_MESSAGE.format(name=name))


def compute_dtype(x):
    """Half precision is too coarse for a covariance or an eigendecomposition: work in float32."""
    return torch.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _symmetric_part(m):
    return (m + m.mT) / 2


def bilinear_pool(x, eps=DEFAULT_EPS):
    """A = X X^T / N + eps I per sample, x of shape (B, C, H, W) -> (B, C, C)."""
    check_feature_map(x.shape, "channels_first")
    _check_finite(x, "feature map")
    with torch.autocast(x.device.type, enabled=False):
        features = x.flatten(2).to(compute_dtype(x))
        n = features.shape[-1]
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
        a = features @ features.mT / n + eps * eye
    return a.to(x.dtype)


def _lyapunov_in_eigenbasis(u, s, g):
    """Symmetric part of X solving Z X + X Z = G, Z = U diag(s) U^T with s >= 0."""
    denominator = s.unsqueeze(-1) + s.unsqueeze(-2)
    # Two zero eigenvalues (eps = 0 on rank-deficient input) make the true gradient infinite;
    # a floor at round-off of the largest root keeps it finite and large.
    floor = torch.finfo(s.dtype).eps * s.amax(-1, keepdim=True).unsqueeze(-1)
    denominator = torch.maximum(denominator, floor.clamp_min(torch.finfo(s.dtype).tiny))
    x = u @ ((u.mT @ _symmetric_part(g) @ u) / denominator) @ u.mT
    return x


class _EighSqrtm(torch.autograd.Function):
    """Exact root by eigendecomposition; backward by the closed-form Lyapunov solution."""

    @staticmethod
    def forward(ctx, a):
        eigenvalues, u = torch.linalg.eigh(a)
        s = eigenvalues.clamp_min(0).sqrt()
        ctx.save_for_backward(u, s)
        return (u * s.unsqueeze(-2)) @ u.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        u, s = ctx.saved_tensors
        return _lyapunov_in_eigenbasis(u, s, g)


def _newton_schulz_root(a, num_iters):
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F."""
    norm = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def _newton_schulz_lyapunov(z, g, num_iters):
    """Coupled Newton-Schulz sign iteration on [[Z, G], [0, -Z]] / ||Z||_F; its corner is 2X."""
    norm = torch.linalg.matrix_norm(z).clamp_min(torch.finfo(z.dtype).tiny)[..., None, None]
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand_as(z)
    p, q = z / norm, g / norm
    for _ in range(num_iters):
        p_squared = p @ p
        q = (q @ (3 * eye - p_squared) - p @ (p @ q - q @ p)) / 2
        p = p @ (3 * eye - p_squared) / 2
    return _symmetric_part(q / 2)


class _NewtonSchulzSqrtm(torch.autograd.Function):
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward."""

    @staticmethod
    def forward(ctx, a, num_iters, backward):
        z = _newton_schulz_root(a, num_iters)
        ctx.num_iters, ctx.backward_method = num_iters, backward
        ctx.save_for_backward(z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        if ctx.backward_method == "newton_schulz":
            return _newton_schulz_lyapunov(z, g, ctx.num_iters), None, None
        eigenvalues, u = torch.linalg.eigh(_symmetric_part(z))
        return _lyapunov_in_eigenbasis(u, eigenvalues.clamp_min(0), g), None, None


def _resolve_auto(method, backward, device_type):
    """(method, backward, dtype of the eigendecomposition or None): see DEFAULT_SQRTM_METHOD."""
    if method != "auto":
        return method, backward, None
    if device_type == "cpu":
        return "eigh", backward, torch.float64
    return "newton_schulz", "newton_schulz", None


def sqrtm(
    a,
    method=DEFAULT_SQRTM_METHOD,
    num_iters=DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    backward=DEFAULT_NEWTON_SCHULZ_BACKWARD,
):
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch.

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact) or "newton_schulz" (`num_iters` coupled iterations, matrix products only).
    backward (Newton-Schulz only): "lyapunov" (exact), "newton_schulz" (iterative, same
    iteration count) or "autograd" (through the iterations).
    """
    check_square_batch(a.shape)
    check_choice(method, SQRTM_METHODS, "sqrtm method")
    check_choice(backward, NEWTON_SCHULZ_BACKWARDS, "Newton-Schulz backward")
    _check_finite(a, "matrix")
    method, backward, eigh_dtype = _resolve_auto(method, backward, a.device.type)
    with torch.autocast(a.device.type, enabled=False):
        symmetric = _symmetric_part(a.to(compute_dtype(a)))
        if method == "eigh" and eigh_dtype is not None:
            z = _EighSqrtm.apply(symmetric.to(eigh_dtype)).to(symmetric.dtype)
        elif method == "eigh":
            z = _EighSqrtm.apply(symmetric)
        elif backward == "autograd":
            z = _newton_schulz_root(symmetric, num_iters)
        else:
            z = _NewtonSchulzSqrtm.apply(symmetric, num_iters, backward)
    return z.to(a.dtype)


class _SignedSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, delta):
        ctx.delta = delta
        ctx.save_for_backward(z)
        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) spelled without cancellation for |z| << delta
        # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
        denominator = torch.sqrt(z.abs() + delta) + delta**0.5
        return z / denominator.clamp_min(torch.finfo(z.dtype).tiny)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g / (2 * torch.sqrt(z.abs() + ctx.delta)), None


def signed_sqrt(z, delta=SIGNED_SQRT_DELTA):
    """y = sign(z) (sqrt(|z| + delta) - sqrt(delta)), elementwise."""
    with torch.autocast(z.device.type, enabled=False):
        y = _SignedSqrt.apply(z.to(compute_dtype(z)), delta)
    return y.to(z.dtype)


def l2_normalize(y):
    """v = y / max(||y||, floor), the norm over all non-batch entries of each sample."""
    with torch.autocast(y.device.type, enabled=False):
        wide = y.to(compute_dtype(y))
        norms = wide.flatten(1).norm(dim=1).clamp_min(L2_NORM_FLOOR)
        v = wide / norms.reshape((-1,) + (1,) * (y.dim() - 1))
    return v.to(y.dtype)
