"""The founding question's head (examples/seed_question_tf.py), transliterated to PyTorch.
DELIBERATELY WRONG.

This reproduces the question's Keras Lambda layers so that the suite can show what each of their
bugs costs; do not use it as an IBP layer (that is `impls.torch.IBPHead`). Each bug can be
switched off alone (`bugs` holds the names of configurations.SEED_BUGS that stay); with all of
them off the head computes what IBPHead computes with eps = Keras' epsilon and no signed-sqrt
regulariser. Channels-first: (B, C, H, W).
"""

import torch
from torch import nn

from bench.accuracy.configurations import SEED_BUGS
from impls.testing import founding_question as question


def seed_bilinear_pool(
    x: torch.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)
) -> torch.Tensor:
    """The question's BILINEAR_POOLING: (B, C, H, W) -> (16, C, C), batch size hard-coded (bug 3).

    Wrong on purpose: with "batch_sum", matmul(F[:, i, j, :], F[:, i, j, :], transpose_a=True) is
    (C x B)(B x C), a sum over the batch, broadcast to all 16 samples (bug 1); with "eps_ones",
    eps * ones(C, C) is added instead of eps * I (bug 4).
    """
    _, channels, height, width = x.shape
    if "batch_sum" in bugs:
        outer = torch.einsum("bchw,bdhw->cd", x, x)  # the question's loop over (i, j), summed
    else:
        outer = torch.einsum("bchw,bdhw->bcd", x, x)
    ones_or_eye = torch.ones(channels, channels) if "eps_ones" in bugs else torch.eye(channels)
    epsilon = question.KERAS_EPSILON * ones_or_eye.to(x)
    return (
        torch.zeros(question.BATCH_SIZE, channels, channels).to(x)
        + outer / (height * width)
        + epsilon
    )


def seed_sqrtm(a: torch.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)) -> torch.Tensor:
    """The question's Sqrt_Root_SVD_Lyapunov: an SVD per sample of a hard-coded 16 (bug 3).

    Wrong on purpose: with "fourth_root", tf.where(S < 1e-10, S, sqrt(S)) roots the singular
    values once and U diag(sqrt(S)) V^T roots them again: A^(1/4) (bug 2). Its gradient is
    autograd's through the SVD, which divides by differences of singular values (bug 6).
    """
    roots = []
    for i in range(question.BATCH_SIZE):
        u, s, vh = torch.linalg.svd(a[i], full_matrices=False)
        if "fourth_root" in bugs:
            s = torch.where(s < question.SINGULAR_VALUE_CUT, s, torch.sqrt(s))
        roots.append(u @ torch.diag(torch.sqrt(s)) @ vh)
    return torch.stack(roots)


def seed_l2_normalize(y: torch.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)) -> torch.Tensor:
    """tf.math.l2_normalize(y, axis=None): with "batch_l2", one norm for the whole batch (wrong on
    purpose: a sample's features then depend on the rest of its batch)."""
    axes = tuple(range(y.dim())) if "batch_l2" in bugs else tuple(range(1, y.dim()))
    squared_norm = (y * y).sum(dim=axes, keepdim=True)
    return y * torch.rsqrt(squared_norm.clamp_min(question.L2_EPSILON))


class SeedHead(nn.Module):
    """pool -> SVD root -> sign(z) sqrt(|z|) -> L2 -> Flatten -> Dense, as the question stacks its
    Lambda layers; `bugs` selects which of its bugs stay (all by default)."""

    def __init__(
        self, in_channels: int, num_classes: int, bugs: frozenset[str] = frozenset(SEED_BUGS)
    ) -> None:
        super().__init__()
        self.bugs = frozenset(bugs)
        self.classifier = nn.Linear(in_channels**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = seed_sqrtm(seed_bilinear_pool(x, self.bugs), self.bugs)
        y = torch.sign(z) * torch.sqrt(torch.abs(z))
        return self.classifier(torch.flatten(seed_l2_normalize(y, self.bugs), 1))
