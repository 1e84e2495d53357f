"""The founding question's whole model in PyTorch, rebuilt in our own words. DELIBERATELY WRONG.

The same model as examples/question_model_keras.py, channels-first: a frozen backbone, bilinear
pooling summed over the batch with eps * ones and a batch size of 16 written in, an SVD fourth
root, a signed square root, one L2 norm for the whole batch, and a 7-way classifier trained with
SGD at lr 0.001 (impls.testing.founding_question numbers the bugs).

    ibp-check model examples/question_model_torch.py:question_model --input-shape 3,32,32
"""

import torch
from torch import nn

from impls.testing import founding_question as question
from impls.torch.models import build_backbone

IMAGE_SIZE = 32


class BilinearPool(nn.Module):
    """Bugs 1, 3, 4: summed over the batch, batch size written in, eps added to every entry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        locations = x.shape[2] * x.shape[3]
        summed_over_batch = torch.einsum("bchw,bdhw->cd", x, x)
        regulariser = question.KERAS_EPSILON * torch.ones(question.BATCH_SIZE, channels, channels)
        return summed_over_batch / locations + regulariser


class SvdSquareRoot(nn.Module):
    """Bug 2: the singular values are rooted twice (A^(1/4)); bug 6: autodiff through the SVD."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        roots = []
        for i in range(question.BATCH_SIZE):
            u, s, vh = torch.linalg.svd(a[i])
            s = torch.where(s < question.SINGULAR_VALUE_CUT, s, torch.sqrt(s))
            roots.append(u @ torch.diag(torch.sqrt(s)) @ vh)
        return torch.stack(roots)


class SignedSqrt(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sign(z) * torch.sqrt(torch.abs(z))


class L2Normalise(nn.Module):
    """Bug 8: one norm for the whole batch."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y / torch.clamp(torch.linalg.vector_norm(y), min=question.L2_EPSILON)


def question_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    backbone = build_backbone("small").requires_grad_(False)  # bug 9: only the classifier trains
    channels = 64
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    model.add_module("bilinear_pool", BilinearPool())
    model.add_module("svd_square_root", SvdSquareRoot())
    model.add_module("signed_sqrt", SignedSqrt())
    model.add_module("l2_normalise", L2Normalise())
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(channels * channels, question.NUM_CLASSES))
    optimizer = torch.optim.SGD(model.classifier.parameters(), lr=question.LEARNING_RATE)  # bug 5
    return model, optimizer
