"""Correct layers of the second-order pooling family in PyTorch, written the way their users write
them (channels-first), independently of the reference. Each is a function of one tensor."""

from typing import Any

import torch
import torch.nn.functional as F

from reference.conventions import SIGNED_SQRT_DELTA as DELTA

ISQRT_ITERATIONS = 5  # the authors' training script
MPN_ALPHA = 0.5


def _eye(c: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(c, dtype=like.dtype, device=like.device)


# B-CNN


def bcnn_pool(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    features = x.reshape(b, c, h * w)
    return features.bmm(features.transpose(1, 2)) / (h * w)


def _signed_sqrt(z: torch.Tensor) -> torch.Tensor:
    """sign(z) (sqrt(|z| + d) - sqrt(d)) written as z / (sqrt(|z| + d) + sqrt(d)): autograd then
    gives the true slope at z = 0."""
    return z / (torch.sqrt(z.abs() + DELTA) + DELTA**0.5)


def bcnn_head(x: torch.Tensor) -> torch.Tensor:
    y = _signed_sqrt(bcnn_pool(x)).reshape(len(x), -1)
    return F.normalize(y, dim=1)


class _SignedSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return torch.sign(z) * (torch.sqrt(z.abs() + DELTA) - DELTA**0.5)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return g / (2 * torch.sqrt(z.abs() + DELTA))


def bcnn_head_einsum(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    y = _SignedSqrt.apply(torch.einsum("bchw,bdhw->bcd", x, x) / (h * w)).flatten(1)
    return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


# MPN-COV and iSQRT-COV share the centred pooling.


def centred_pool_i_hat(x: torch.Tensor) -> torch.Tensor:
    """X I_hat X^T, I_hat = (1/M) I - (1/M^2) 1 1^T, as the released Covpool builds it."""
    b, c, h, w = x.shape
    m = h * w
    features = x.reshape(b, c, m)
    ones = torch.ones(m, m, dtype=x.dtype, device=x.device)
    i_hat = (-1.0 / m / m) * ones + (1.0 / m) * _eye(m, x)
    return features.bmm(i_hat.expand(b, m, m)).bmm(features.transpose(1, 2))


def centred_pool_mean(x: torch.Tensor) -> torch.Tensor:
    features = x.flatten(2)
    centred = features - features.mean(dim=2, keepdim=True)
    return centred @ centred.mT / features.shape[-1]


def _divided_differences(eigenvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """D_ij = (f(l_i) - f(l_j)) / (l_i - l_j) of f(l) = max(l, 0)^alpha, f'(l) where they
    coincide; computed as l_j^(alpha - 1) expm1(alpha t) / expm1(t), t = log(l_i / l_j), which keeps
    its digits where l_i and l_j differ by round-off only (the quotient as written loses them all).
    Positive eigenvalues are floored at eps^2 l_max; where one is positive, f(l_i) / |l_i - l_j|;
    where neither, 0."""
    info = torch.finfo(eigenvalues.dtype)
    positive = eigenvalues > 0
    floor = (info.eps**2 * eigenvalues.amax(-1, keepdim=True)).clamp_min(info.tiny)
    floored = torch.where(positive, torch.maximum(eigenvalues, floor), torch.ones_like(eigenvalues))
    li, lj = floored[..., :, None], floored[..., None, :]
    t = torch.log(li) - torch.log(lj)
    same = t == 0
    ratio = torch.where(
        same,
        torch.full_like(t, alpha),
        torch.expm1(alpha * t) / torch.where(same, torch.ones_like(t), torch.expm1(t)),
    )
    both = positive[..., :, None] & positive[..., None, :]
    one = positive[..., :, None] ^ positive[..., None, :]
    powered = torch.where(positive, floored**alpha, torch.zeros_like(floored))
    gap = (eigenvalues[..., :, None] - eigenvalues[..., None, :]).abs()
    one_positive = (powered[..., :, None] + powered[..., None, :]) / torch.where(
        one, gap, torch.ones_like(gap)
    )
    zero = torch.zeros_like(gap)
    return torch.where(both, lj ** (alpha - 1) * ratio, torch.where(one, one_positive, zero))


def _power_backward(
    u: torch.Tensor, eigenvalues: torch.Tensor, alpha: float, g: torch.Tensor
) -> torch.Tensor:
    """U [(U^T sym(G) U) * D] U^T (Daleckii-Krein), D the divided differences of the power."""
    g = (g + g.mT) / 2
    return u @ ((u.mT @ g @ u) * _divided_differences(eigenvalues, alpha)) @ u.mT


class _MatrixPower(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, alpha: float) -> torch.Tensor:
        eigenvalues, u = torch.linalg.eigh((a + a.mT) / 2)
        ctx.save_for_backward(u, eigenvalues)
        ctx.alpha = alpha
        return u @ torch.diag_embed(eigenvalues.clamp_min(0) ** alpha) @ u.mT

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, eigenvalues = ctx.saved_tensors
        return _power_backward(u, eigenvalues, ctx.alpha, g), None


def mpn_cov_power(a: torch.Tensor) -> torch.Tensor:
    return _MatrixPower.apply(a, MPN_ALPHA)


def mpn_cov_power_quarter(a: torch.Tensor) -> torch.Tensor:
    return _MatrixPower.apply(a, 0.25)


def _triu(m: torch.Tensor) -> torch.Tensor:
    rows, columns = torch.triu_indices(m.shape[-1], m.shape[-1], device=m.device)
    return m[:, rows, columns]


def mpn_cov_head(x: torch.Tensor) -> torch.Tensor:
    return _triu(mpn_cov_power(centred_pool_mean(x)))


def _trace(a: torch.Tensor) -> torch.Tensor:
    return a.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]


def isqrt_cov_root(a: torch.Tensor, iterations: int = ISQRT_ITERATIONS) -> torch.Tensor:
    trace = _trace(a)
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / trace, eye
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * trace.sqrt()


def isqrt_cov_root_3(a: torch.Tensor) -> torch.Tensor:
    return isqrt_cov_root(a, iterations=3)


def isqrt_cov_root_unrolled(a: torch.Tensor, iter_n: int = ISQRT_ITERATIONS) -> torch.Tensor:
    """The released Sqrtm's forward: the first step from Z = I written out, iter_n - 2 steps in
    the loop, a last step that forms only Y."""
    norm = _trace(a)
    i3 = 3 * _eye(a.shape[-1], a).expand_as(a)
    normalised = a / norm
    zy = 0.5 * (i3 - normalised)
    y, z = normalised @ zy, zy
    for _ in range(1, iter_n - 1):
        zy = 0.5 * (i3 - z @ y)
        y, z = y @ zy, zy @ z
    y = 0.5 * y @ (i3 - z @ y)
    return y * norm.sqrt()


def isqrt_cov_head(x: torch.Tensor) -> torch.Tensor:
    return _triu(isqrt_cov_root(centred_pool_i_hat(x)))


def _triu_mask(m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The released Triuvec: the entries where the flattened mask is nonzero."""
    index = mask.reshape(-1).nonzero().squeeze(1).to(m.device)
    return m.reshape(len(m), -1)[:, index]


def isqrt_cov_head_mask(x: torch.Tensor) -> torch.Tensor:
    root = isqrt_cov_root_unrolled(centred_pool_i_hat(x))
    return _triu_mask(root, torch.ones(root.shape[-1], root.shape[-1]).triu())


def isqrt_cov_head_column_order(x: torch.Tensor) -> torch.Tensor:
    root = isqrt_cov_root_unrolled(centred_pool_i_hat(x))
    return _triu_mask(root, torch.ones(root.shape[-1], root.shape[-1]).triu().t())
