"""Buggy IBP layers in PyTorch, written the way users write them (channels-first). Each is a
function of one tensor; `impls.testing.bug_catalogue.BUGS` says what ibp-check must say of it.
"Bug N" is the bug's number in impls.testing.founding_question."""

import sys
import time
from typing import Any

import torch

from impls.testing.founding_question import BATCH_SIZE, KERAS_EPSILON, SINGULAR_VALUE_CUT

EPS = 1e-5


def _eye(c: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(c, dtype=like.dtype, device=like.device)


def pool_summed_over_batch(x: torch.Tensor) -> torch.Tensor:
    """Bug 1: (C x B) times (B x C) at every location sums over the batch."""
    b, c, h, w = x.shape
    a = torch.zeros(c, c, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            location = x[:, :, i, j]
            a = a + location.T @ location
    return (a / (h * w) + EPS * _eye(c, x)).expand(b, c, c)


def fourth_root(a: torch.Tensor) -> torch.Tensor:
    """Bug 2: the singular values are square-rooted, then square-rooted again inside diag."""
    u, s, vh = torch.linalg.svd(a)
    s = torch.where(s < SINGULAR_VALUE_CUT, s, torch.sqrt(s))
    return u @ torch.diag_embed(torch.sqrt(s)) @ vh


def pool_fixed_batch_size(x: torch.Tensor) -> torch.Tensor:
    """Bug 3: the batch size is written into the layer."""
    c, h, w = x.shape[1:]
    features = x.reshape(BATCH_SIZE, c, h * w)
    return features @ features.mT / (h * w) + EPS * _eye(c, x)


def pool_eps_times_ones(x: torch.Tensor) -> torch.Tensor:
    """Bug 4: eps (Keras's 1e-7) added to every entry instead of the diagonal."""
    features = x.flatten(2)
    c = x.shape[1]
    ones = torch.ones(c, c, dtype=x.dtype)
    return features @ features.mT / features.shape[-1] + KERAS_EPSILON * ones


def sqrtm_autodiff_through_svd(a: torch.Tensor) -> torch.Tensor:
    """Bug 6: autograd differentiates through the SVD."""
    u, s, vh = torch.linalg.svd(a)
    return u @ torch.diag_embed(torch.sqrt(s)) @ vh


class _SqrtSvdLyap(torch.autograd.Function):
    """Bug 7: the authors' sqrt_svd_lyap, whose backward solves Z X + X Z = -C (MATLAB's
    lyap), wired in with +dL/dZ."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        u, s, vh = torch.linalg.svd(a)
        ctx.save_for_backward(u, s)
        return u @ torch.diag_embed(s.sqrt()) @ vh

    @staticmethod
    def backward(ctx: Any, dldz: torch.Tensor) -> torch.Tensor:
        u, s = ctx.saved_tensors
        root = s.sqrt()
        return -u @ ((u.mT @ dldz @ u) / (root[..., :, None] + root[..., None, :])) @ u.mT


def sqrtm_negated_lyapunov_gradient(a: torch.Tensor) -> torch.Tensor:
    return _SqrtSvdLyap.apply(a)


class _L2RescaleOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        norms = y.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1)
        ctx.save_for_backward(norms)
        return y / norms

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (norms,) = ctx.saved_tensors
        return g / norms


def l2_backward_rescale_only(y: torch.Tensor) -> torch.Tensor:
    """A hand-written backward that treats the norm as a constant."""
    return _L2RescaleOnly.apply(y)


def l2_over_whole_batch(y: torch.Tensor) -> torch.Tensor:
    """The question's tf.math.l2_normalize(x, axis=None), in PyTorch."""
    return y / y.norm()


def signed_sqrt_without_regulariser(z: torch.Tensor) -> torch.Tensor:
    return torch.sign(z) * torch.sqrt(torch.abs(z))


def sqrtm_newton_schulz_five_iterations(a: torch.Tensor) -> torch.Tensor:
    """The paper's 5 iterations, autograd through them: not converged on ReLU covariances."""
    norm = torch.linalg.matrix_norm(a).reshape(-1, 1, 1)
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, eye
    for _ in range(5):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def pool_wrong_axis(x: torch.Tensor) -> torch.Tensor:
    """A channels-last spelling kept for a channels-first map: reshape without a permute."""
    b, c, h, w = x.shape
    features = x.reshape(b, h * w, c)
    return features.mT @ features / (h * w) + EPS * _eye(c, x)


def pool_outer_product_over_locations(x: torch.Tensor) -> torch.Tensor:
    """X^T X (N x N) instead of X X^T (C x C)."""
    features = x.flatten(2)
    n = features.shape[-1]
    return features.mT @ features / n + EPS * _eye(n, x)


def _newton_schulz(a: torch.Tensor, iterations: int, norm: torch.Tensor) -> torch.Tensor:
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, eye
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def _trace(a: torch.Tensor) -> torch.Tensor:
    return a.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]


def sqrtm_trace_newton_schulz_3(a: torch.Tensor) -> torch.Tensor:
    """iSQRT-COV's trace-normalised Newton-Schulz with 3 iterations, autograd through them."""
    return _newton_schulz(a, 3, _trace(a))


def sqrtm_trace_newton_schulz_10(a: torch.Tensor) -> torch.Tensor:
    """The same with 10 iterations: close on small matrices, ~1 % off on ReLU covariances."""
    return _newton_schulz(a, 10, _trace(a))


class _EighRootIterativeBackward(torch.autograd.Function):
    """An exact eigh root with the authors' iterative backward stopped at 10 iterations: the
    coupled Newton-Schulz iteration on [[Z, dZ], [0, -Z]], whose top-right block tends to 2X with
    Z X + X Z = dZ."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        eigenvalues, u = torch.linalg.eigh(a)
        root = (u * eigenvalues.clamp_min(0).sqrt()[..., None, :]) @ u.mT
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx: Any, dz: torch.Tensor) -> torch.Tensor:
        (root,) = ctx.saved_tensors
        norm = torch.linalg.matrix_norm(root, keepdim=True)
        b, c = root / norm, dz / norm
        for _ in range(10):
            b2 = b @ b
            b, c = (3 * b - b2 @ b) / 2, (3 * c - b2 @ c + b @ c @ b - c @ b2) / 2
        return c / 2


def sqrtm_eigh_iterative_backward_10(a: torch.Tensor) -> torch.Tensor:
    return _EighRootIterativeBackward.apply(a)


def pool_centred(x: torch.Tensor) -> torch.Tensor:
    """A covariance in the statistician's sense: the mean feature subtracted first."""
    features = x.flatten(2)
    features = features - features.mean(-1, keepdim=True)
    return features @ features.mT / features.shape[-1] + EPS * _eye(x.shape[1], x)


def sqrtm_exits(a: torch.Tensor) -> torch.Tensor:
    """A layer that ends the program, as a stray sys.exit() left from debugging does."""
    sys.exit(0)


def sqrtm_hangs(a: torch.Tensor) -> torch.Tensor:
    """A layer that never returns (an iteration whose stopping test is never met)."""
    while True:
        time.sleep(0.05)


def sqrtm_returns_float64(a: torch.Tensor) -> torch.Tensor:
    """An eigh root computed and returned in float64, whatever the input's dtype (its autodiff
    gradient is wrong on repeated eigenvalues too)."""
    eigenvalues, u = torch.linalg.eigh(a.double())
    return (u * eigenvalues.clamp_min(0).sqrt()[..., None, :]) @ u.mT


def sqrtm_overwrites_saved_tensor(a: torch.Tensor) -> torch.Tensor:
    """A root whose eigenvectors, saved by autograd for the backward, are then scaled in place."""
    eigenvalues, u = torch.linalg.eigh(a)
    root = (u * eigenvalues.clamp_min(0).sqrt()[..., None, :]) @ u.mT
    u.mul_(1.0)
    return root


def sqrtm_entrywise(a: torch.Tensor) -> torch.Tensor:
    """The signed square root of each entry, where the matrix root is meant."""
    return torch.sign(a) * torch.sqrt(a.abs())


def pool_divided_twice(x: torch.Tensor) -> torch.Tensor:
    """The mean over locations divided by their number once more."""
    features = x.flatten(2)
    n = features.shape[-1]
    return features @ features.mT / n / n + EPS * _eye(x.shape[1], x)


def sqrtm_frobenius_newton_schulz_10(a: torch.Tensor) -> torch.Tensor:
    """Published Newton-Schulz code (Frobenius scaling), run for 10 iterations."""
    return _newton_schulz(a, 10, torch.linalg.matrix_norm(a).reshape(-1, 1, 1))


def signed_sqrt_of_negative(z: torch.Tensor) -> torch.Tensor:
    """sqrt of the entries with the sign put outside: NaN for every negative entry."""
    return torch.sign(z) * torch.sqrt(z)
