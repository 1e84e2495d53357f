"""The IBP stages in PyTorch, channels-first; each function mirrors `reference.stages`."""

from collections.abc import Sequence
from typing import Any

import torch

from impls import auto_table
from impls.torch.linalg import (
    EighSqrtm,
    NewtonSchulzSqrtm,
    autograd_root,
    condition_numbers,
    eigh,
    newton_schulz_root,
    symmetric_part,
)
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


def _resolve_auto(
    method: str, backward: str | None, device_type: str, channels: int | None = None
) -> tuple[str, str | None, torch.dtype | None, auto_table.Choice | None]:
    """(method, backward, dtype of the eigendecomposition or None, auto's choice or None): "auto"
    is the measured choice for this device and C (impls.auto_table), read from the static shape
    without a host read."""
    if method != "auto":
        return method, backward, None, None
    choice = auto_table.choose("torch", device_type, channels)
    eigh_dtype = None if choice.eigh_dtype is None else getattr(torch, choice.eigh_dtype)
    return choice.method, backward, eigh_dtype, choice


def _accurate_beyond(
    z: torch.Tensor, symmetric: torch.Tensor, beyond: torch.Tensor
) -> torch.Tensor:
    """`z` with the samples flagged in `beyond` (B, 1, 1) computed again by the eigendecomposition
    in float64, accurate to condition numbers of 1e8 and beyond (impls.auto_table.BEYOND_RANGE)."""
    wide = EighSqrtm.apply(symmetric.double(), symmetric.dtype)[0]
    return torch.where(beyond, wide.to(symmetric.dtype), z)


def _root(
    a: torch.Tensor,
    method: str,
    num_iters: int | None,
    backward: str | None,
    checks: Checks,
    check_range: bool | None = None,
) -> torch.Tensor:
    """The root of the symmetric part of `a`, then one finiteness check of it (one host read):
    NaN or inf in anything it came from (`checks`, (tensor, message) pairs, first cause first)
    shows there, and so does an iteration that went wrong on negative eigenvalues (its samples
    are NaN, `impls.torch.linalg.nan_where_wrong`), which is then computed again with those
    samples clamped by eigh. Under torch.compile the checks are assertion ops and each root clamps
    its wrong samples itself, in a torch.cond that runs eigh only when some sample went wrong.

    `check_range` (method "auto" only): whether samples beyond the measured accuracy range of
    auto's choice are computed again accurately (`_within_range`). None: where the eigenvalues
    come free (auto chose an eigendecomposition: the CPU); True: also after an iterative root, at
    the cost of one eigenvalue decomposition (and a host read on a GPU); False: never."""
    method, backward, eigh_dtype, choice = _resolve_auto(
        method, backward, a.device.type, a.shape[-1]
    )
    num_iters, backward = with_method_defaults(method, num_iters, backward)
    bound = None if choice is None else choice.max_condition
    if check_range is False or (check_range is None and method != "eigh"):
        bound = None
    if choice is not None and choice.candidate == auto_table.BEYOND_RANGE:
        bound = None  # already the accurate choice
    compiling = torch.compiler.is_compiling()
    if compiling:
        check_all_finite(checks)  # before the eigensolver, which would refuse NaN in its own words
    with torch.autocast(a.device.type, enabled=False):
        symmetric = symmetric_part(a.to(compute_dtype(a)))
        spectrum: list[torch.Tensor] = []  # the eigenvalues an eigendecomposition gave on the way

        def root(clamp: bool) -> torch.Tensor:
            if method == "eigh":
                wide = symmetric if eigh_dtype is None else symmetric.to(eigh_dtype)
                z, eigenvalues = EighSqrtm.apply(wide, symmetric.dtype)
                spectrum.append(eigenvalues)
                return z.to(symmetric.dtype)
            # Every iterative method has both defaults (reference.conventions.ITERATIVE_DEFAULTS).
            assert num_iters is not None and backward is not None
            k = num_iters
            if method == "minimax_newton_schulz":
                return minimax_sqrtm(symmetric, k, backward, clamp)
            if backward == "autograd":
                return autograd_root(lambda m: newton_schulz_root(m, k), symmetric, clamp)
            return NewtonSchulzSqrtm.apply(symmetric, k, backward, clamp)

        try:
            # A compiled graph cannot branch on a host read: it clamps inside the root.
            z = root(clamp=compiling)
        except torch.linalg.LinAlgError:
            check_all_finite(checks)  # the eigensolver refused NaN or inf: name it
            raise
        wrong_root = NON_FINITE_MESSAGE.format(name="square root")
        beyond = None
        if bound is not None:
            if not spectrum:
                with torch.no_grad():
                    spectrum.append(eigh(symmetric)[0])
            beyond = (condition_numbers(spectrum[-1]) > bound)[:, None, None]
        if compiling:
            check_all_finite([(z, wrong_root)])
            if beyond is not None:
                flags, narrow = beyond, z
                z = torch.cond(
                    flags.any(),
                    lambda: _accurate_beyond(narrow, symmetric, flags),
                    lambda: narrow.clone(),
                    (),
                )
            return z.to(a.dtype)
        # One host read when all is well: a finite root, within the range where checked.
        healthy = torch.isfinite(z).all()
        if beyond is not None:
            healthy = healthy & ~beyond.any()
        if not bool(healthy):
            if not bool(torch.isfinite(z).all()):
                check_all_finite(checks)
                z = root(clamp=True)
                check_all_finite([(z, wrong_root)])
            if beyond is not None and bool(beyond.any()):
                z = _accurate_beyond(z, symmetric, beyond)
    return z.to(a.dtype)


def sqrtm(
    a: torch.Tensor,
    method: str = DEFAULT_SQRTM_METHOD,
    num_iters: int | None = None,
    backward: str | None = None,
    check_range: bool | None = None,
) -> torch.Tensor:
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch;
    negative eigenvalues count as 0, for every method (reference.conventions).

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact), "newton_schulz" (`num_iters` coupled iterations, default 20, matrix products only)
    or "minimax_newton_schulz" (the same iteration with minimax quintic steps, default 7).
    backward (iterative methods only): "lyapunov" (exact, eigenbasis), "newton_schulz"
    (iterative, same steps; minimax's default) or "autograd" (through the iterations).
    None means the method's default (reference.conventions.ITERATIVE_DEFAULTS).
    check_range (method "auto" only): recompute the samples whose condition number lies beyond
    the measured accuracy range of auto's choice by the eigendecomposition in float64. None: where
    the eigenvalues come free (auto runs an eigendecomposition, as on a CPU); True: always (one
    more eigenvalue decomposition after an iterative root, as on a GPU); False: never.
    """
    check_dtype(dtype_name(a), "matrix")
    check_square_batch(a.shape)
    check_sqrtm_options(method, num_iters, backward, check_range)
    checks = [(a, NON_FINITE_MESSAGE.format(name="matrix"))]
    return _root(a, method, num_iters, backward, checks, check_range)


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
