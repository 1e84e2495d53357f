"""Correct IBP layers in PyTorch, written independently of `impls.torch`, on which ibp-check must
raise no alarm. Each is a function of one channels-first tensor."""

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from impls.torch import IBPHead, stages

EPS = 1e-5
DELTA = 1e-5


# Our own stages, under the names the catalogue lists them by.
ours_pool = stages.bilinear_pool
ours_sqrtm = stages.sqrtm
ours_sqrtm_newton_schulz = partial(stages.sqrtm, method="newton_schulz", backward="newton_schulz")
ours_signed_sqrt = stages.signed_sqrt
ours_l2 = stages.l2_normalize


def _eye(c: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(c, dtype=like.dtype, device=like.device)


def ours_head(x: torch.Tensor) -> torch.Tensor:
    return IBPHead(in_channels=x.shape[1])(x)


def pool_loop_over_locations(x: torch.Tensor) -> torch.Tensor:
    """The seed's loop over locations, each outer product taken per sample."""
    b, c, h, w = x.shape
    a = torch.zeros(b, c, c, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            location = x[:, :, i, j]
            a = a + location[:, :, None] * location[:, None, :]
    return a / (h * w) + EPS * _eye(c, x)


def pool_einsum(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    return torch.einsum("bchw,bdhw->bcd", x, x) / (h * w) + EPS * _eye(x.shape[1], x)


def _lyapunov(u: torch.Tensor, root: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Symmetric part of X with Z X + X Z = G, Z = U diag(root) U^T."""
    g = (g + g.mT) / 2
    denominator = (root[..., :, None] + root[..., None, :]).clamp_min(1e-30)
    return u @ ((u.mT @ g @ u) / denominator) @ u.mT


class _EighRoot(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        eigenvalues, u = torch.linalg.eigh((a + a.mT) / 2)
        root = eigenvalues.clamp_min(0).sqrt()
        ctx.save_for_backward(u, root)
        return u @ torch.diag_embed(root) @ u.mT

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        u, root = ctx.saved_tensors
        return _lyapunov(u, root, g)


def sqrtm_eigh_lyapunov(a: torch.Tensor) -> torch.Tensor:
    return _EighRoot.apply(a)


class _SvdRoot(torch.autograd.Function):
    """The authors' sqrt_svd_lyap with the sign of its backward fixed."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        u, s, vh = torch.linalg.svd(a)
        ctx.save_for_backward(u, s.sqrt())
        return u @ torch.diag_embed(s.sqrt()) @ vh

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        u, root = ctx.saved_tensors
        return _lyapunov(u, root, g)


def sqrtm_svd_lyapunov(a: torch.Tensor) -> torch.Tensor:
    return _SvdRoot.apply(a)


def sqrtm_newton_schulz_autograd(a: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """iSQRT-COV style: trace-free Frobenius scaling, autograd through the iterations."""
    norm = torch.linalg.matrix_norm(a).reshape(-1, 1, 1)
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, eye
    for _ in range(iterations):
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def signed_sqrt_rationalised(z: torch.Tensor) -> torch.Tensor:
    """sign(z) (sqrt(|z| + d) - sqrt(d)) written as z / (sqrt(|z| + d) + sqrt(d)): autograd then
    gives the true slope at z = 0."""
    return z / (torch.sqrt(z.abs() + DELTA) + DELTA**0.5)


class _SignedSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return torch.sign(z) * (torch.sqrt(z.abs() + DELTA) - DELTA**0.5)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return g / (2 * torch.sqrt(z.abs() + DELTA))


def signed_sqrt_custom_backward(z: torch.Tensor) -> torch.Tensor:
    return _SignedSqrt.apply(z)


def l2_library(y: torch.Tensor) -> torch.Tensor:
    return F.normalize(y.flatten(1), dim=1, eps=1e-12).reshape(y.shape)


def l2_by_hand(y: torch.Tensor) -> torch.Tensor:
    return y / y.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]


def head_composed(x: torch.Tensor) -> torch.Tensor:
    """einsum pool, eigh root with a Lyapunov backward, rationalised signed sqrt, F.normalize."""
    v = signed_sqrt_rationalised(sqrtm_eigh_lyapunov(pool_einsum(x)))
    return F.normalize(v.flatten(1), dim=1)


def head_newton_schulz(x: torch.Tensor) -> torch.Tensor:
    """Loop pool, Newton-Schulz (20 iterations, autograd), custom signed sqrt, by-hand L2:
    returns (B, C, C)."""
    return l2_by_hand(
        signed_sqrt_custom_backward(
            sqrtm_newton_schulz_autograd(pool_loop_over_locations(x), iterations=20)
        )
    )


# Conventions that L2 normalisation makes harmless: ibp-check passes them with a note.


def pool_sum_keras_epsilon(x: torch.Tensor) -> torch.Tensor:
    """No 1/N, Keras's eps 1e-7."""
    features = x.flatten(2)
    return features @ features.mT + 1e-7 * _eye(x.shape[1], x)


def signed_sqrt_bcnn(z: torch.Tensor) -> torch.Tensor:
    """The B-CNN spelling sign(z) sqrt(|z| + 1e-10)."""
    return torch.sign(z) * torch.sqrt(z.abs() + 1e-10)


def head_bcnn(x: torch.Tensor) -> torch.Tensor:
    """No 1/N, Keras's eps, the B-CNN signed sqrt."""
    y = signed_sqrt_bcnn(sqrtm_eigh_lyapunov(pool_sum_keras_epsilon(x)))
    return F.normalize(y.flatten(1), dim=1)


class _EighRootNonSymmetricBackward(_EighRoot):
    """The backward returns the Lyapunov solution X of Z X + X Z = G for the raw, non-symmetric
    G, as most published roots do: its symmetric part is the gradient of a symmetric input."""

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        u, root = ctx.saved_tensors
        denominator = (root[..., :, None] + root[..., None, :]).clamp_min(1e-30)
        return u @ ((u.mT @ g @ u) / denominator) @ u.mT


def sqrtm_eigh_nonsymmetric_lyapunov(a: torch.Tensor) -> torch.Tensor:
    return _EighRootNonSymmetricBackward.apply(a)


def sqrtm_trace_newton_schulz_30(a: torch.Tensor) -> torch.Tensor:
    """iSQRT-COV's trace-normalised Newton-Schulz, 30 iterations, autograd through them."""
    norm = a.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, eye
    for _ in range(30):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def pool_float32_eye(x: torch.Tensor) -> torch.Tensor:
    """The most common spelling: eps * torch.eye(c) built in float32, which promotes half
    precision to float32 (harmless; noted)."""
    v = x.flatten(2)
    return v @ v.mT / v.shape[-1] + EPS * torch.eye(x.shape[1])
