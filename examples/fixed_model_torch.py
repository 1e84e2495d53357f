"""The founding question's model with every bug fixed, trained with the authors' recipe, in
PyTorch: the layout of examples/question_model_torch.py with this project's stages (each sample
pooled alone with eps * I, the true square root, each sample normalised), the classifier trained
with SGD at lr 1.0, momentum 0.9 (the recipe's first stage). `low_learning_rate_model` keeps one
bug only: SGD at lr 0.001.

    ibp-check model examples/fixed_model_torch.py:fixed_model --input-shape 3,32,32
    ibp-check model examples/fixed_model_torch.py:low_learning_rate_model --input-shape 3,32,32
"""

from collections.abc import Callable

import torch
from torch import nn

from impls.architectures import recipe_stage
from impls.testing import founding_question as question
from impls.torch import stages
from impls.torch.models import build_backbone

IMAGE_SIZE = 32
CHANNELS = 64  # the "small" backbone's


class Stage(nn.Module):
    """One IBP stage as a module, so that the check locates it as its own layer."""

    def __init__(self, stage: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)


def _model() -> nn.Sequential:
    model = nn.Sequential()
    model.add_module("backbone", build_backbone("small").requires_grad_(False))
    model.add_module("bilinear_pool", Stage(stages.bilinear_pool))
    model.add_module("matrix_square_root", Stage(stages.sqrtm))
    model.add_module("signed_sqrt", Stage(stages.signed_sqrt))
    model.add_module("l2_normalise", Stage(stages.l2_normalize))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(CHANNELS * CHANNELS, question.NUM_CLASSES))
    return model


def fixed_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model, recipe = _model(), recipe_stage(1)
    optimizer = torch.optim.SGD(
        model.classifier.parameters(), lr=recipe["head_lr"], momentum=recipe["momentum"]
    )
    return model, optimizer


def low_learning_rate_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _model()
    return model, torch.optim.SGD(model.classifier.parameters(), lr=question.LEARNING_RATE)
