"""Buggy IBP layers in PyTorch, written the way users write them (channels-first). Each is a
function of one tensor; `impls.testing.bug_catalogue.BUGS` says what ibp-check must say of it.
"Bug N" is the bug's number in impls.testing.founding_question."""

import torch

from impls.testing.founding_question import BATCH_SIZE, KERAS_EPSILON, SINGULAR_VALUE_CUT

EPS = 1e-5


def _eye(c, like):
    return torch.eye(c, dtype=like.dtype, device=like.device)


def pool_summed_over_batch(x):
    """Bug 1: (C x B) times (B x C) at every location sums over the batch."""
    b, c, h, w = x.shape
    a = torch.zeros(c, c, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            location = x[:, :, i, j]
            a = a + location.T @ location
    return (a / (h * w) + EPS * _eye(c, x)).expand(b, c, c)


def fourth_root(a):
    """Bug 2: the singular values are square-rooted, then square-rooted again inside diag."""
    u, s, vh = torch.linalg.svd(a)
    s = torch.where(s < SINGULAR_VALUE_CUT, s, torch.sqrt(s))
    return u @ torch.diag_embed(torch.sqrt(s)) @ vh


def pool_fixed_batch_size(x):
    """Bug 3: the batch size is written into the layer."""
    c, h, w = x.shape[1:]
    features = x.reshape(BATCH_SIZE, c, h * w)
    return features @ features.mT / (h * w) + EPS * _eye(c, x)


def pool_eps_times_ones(x):
    """Bug 4: eps (Keras's 1e-7) added to every entry instead of the diagonal."""
    features = x.flatten(2)
    c = x.shape[1]
    ones = torch.ones(c, c, dtype=x.dtype)
    return features @ features.mT / features.shape[-1] + KERAS_EPSILON * ones


def sqrtm_autodiff_through_svd(a):
    """Bug 6: autograd differentiates through the SVD."""
    u, s, vh = torch.linalg.svd(a)
    return u @ torch.diag_embed(torch.sqrt(s)) @ vh


class _SqrtSvdLyap(torch.autograd.Function):
    """Bug 7: the authors' sqrt_svd_lyap, whose backward solves Z X + X Z = -C (MATLAB's
    lyap), wired in with +dL/dZ."""

    @staticmethod
    def forward(ctx, a):
        u, s, vh = torch.linalg.svd(a)
        ctx.save_for_backward(u, s)
        return u @ torch.diag_embed(s.sqrt()) @ vh

    @staticmethod
    def backward(ctx, dldz):
        u, s = ctx.saved_tensors
        root = s.sqrt()
        return -u @ ((u.mT @ dldz @ u) / (root[..., :, None] + root[..., None, :])) @ u.mT


def sqrtm_negated_lyapunov_gradient(a):
    return _SqrtSvdLyap.apply(a)


class _L2RescaleOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        norms = y.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1)
        ctx.save_for_backward(norms)
        return y / norms

    @staticmethod
    def backward(ctx, g):
        (norms,) = ctx.saved_tensors
        return g / norms


def l2_backward_rescale_only(y):
    """A hand-written backward that treats the norm as a constant."""
    return _L2RescaleOnly.apply(y)


def l2_over_whole_batch(y):
    """The question's tf.math.l2_normalize(x, axis=None), in PyTorch."""
    return y / y.norm()


def signed_sqrt_without_regulariser(z):
    return torch.sign(z) * torch.sqrt(torch.abs(z))


def sqrtm_newton_schulz_five_iterations(a):
    """The paper's 5 iterations, autograd through them: not converged on ReLU covariances."""
    norm = torch.linalg.matrix_norm(a).reshape(-1, 1, 1)
    eye = _eye(a.shape[-1], a).expand_as(a)
    y, z = a / norm, eye
    for _ in range(5):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def pool_wrong_axis(x):
    """A channels-last spelling kept for a channels-first map: reshape without a permute."""
    b, c, h, w = x.shape
    features = x.reshape(b, h * w, c)
    return features.mT @ features / (h * w) + EPS * _eye(c, x)


def pool_outer_product_over_locations(x):
    """X^T X (N x N) instead of X X^T (C x C)."""
    features = x.flatten(2)
    n = features.shape[-1]
    return features.mT @ features / n + EPS * _eye(n, x)
