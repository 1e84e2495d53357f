"""Buggy layers of the second-order pooling family in PyTorch, written the way users write them
(channels-first). Each is a function of one tensor; `impls.testing.method_catalogue.BUGS` says what
ibp-check --method must say of it, and `causes` computes what it computes."""

import torch
import torch.nn.functional as F

from impls.testing.method_catalogue.causes import DECLARED_ITERATIONS, SQRT_EPS
from reference.conventions import SIGNED_SQRT_DELTA as DELTA


def _eye(c: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(c, dtype=like.dtype, device=like.device)


def _newton_schulz(normalised: torch.Tensor, iterations: int) -> torch.Tensor:
    eye = _eye(normalised.shape[-1], normalised).expand_as(normalised)
    y, z = normalised, eye
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y


def isqrt_cov_root_no_post_compensation(a: torch.Tensor) -> torch.Tensor:
    """The iteration's Y returned as it is: the multiplication by sqrt(tr A) is missing."""
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    return _newton_schulz(a / trace, DECLARED_ITERATIONS)


def isqrt_cov_root_batch_trace(a: torch.Tensor) -> torch.Tensor:
    """`.sum()` without a dim: the trace of the whole batch, one number for every sample."""
    trace = a.diagonal(dim1=-2, dim2=-1).sum()
    return _newton_schulz(a / trace, DECLARED_ITERATIONS) * trace.sqrt()


def isqrt_cov_pool_uncentred(x: torch.Tensor) -> torch.Tensor:
    """The bilinear pooling where iSQRT-COV's covariance is meant."""
    features = x.flatten(2)
    return features @ features.mT / features.shape[-1]


def isqrt_cov_root_off_by_two(a: torch.Tensor, iter_n: int = DECLARED_ITERATIONS) -> torch.Tensor:
    """The released loop `for i in range(1, iterN - 1)` copied without the first and last steps
    written around it: iter_n - 2 iterations."""
    norm = a.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    i3 = 3 * _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, _eye(a.shape[-1], a).expand_as(a)
    for _ in range(1, iter_n - 1):
        zy = 0.5 * (i3 - z @ y)
        y, z = y @ zy, zy @ z
    return y * norm.sqrt()


def mpn_cov_power_svd(a: torch.Tensor) -> torch.Tensor:
    """The power of the singular values, U S^(1/2) V^T, differentiated by autograd."""
    u, s, vh = torch.linalg.svd(a)
    return u @ torch.diag_embed(s.sqrt()) @ vh


def bcnn_head_signed_sqrt_after_l2(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    features = x.reshape(b, c, h * w)
    y = F.normalize((features @ features.mT / (h * w)).reshape(b, -1), dim=1)
    return y / (torch.sqrt(y.abs() + DELTA) + DELTA**0.5)


def bcnn_sqrt_plus_eps(z: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(z + SQRT_EPS)
