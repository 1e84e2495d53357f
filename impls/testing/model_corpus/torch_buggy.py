"""Each of the founding question's bugs alone in an otherwise correct PyTorch model: `ibp-check
model` must fail every one with that bug's cause and no other's. The buggy layers are the bug
catalogue's (`impls.testing.bug_catalogue.torch_bugs`); the rest is this library's stages. Each
function returns (model, optimizer); one sample is (3, 32, 32), channels-first. Bug 9 (a frozen
backbone) is no defect on its own: the correct corpus has frozen backbones."""

from collections.abc import Callable

import torch
from torch import nn

from impls.testing.bug_catalogue import torch_bugs
from impls.testing.founding_question import LEARNING_RATE
from impls.testing.model_corpus.torch_correct import CHANNELS, CLASSES, _backbone, _frozen
from impls.torch import bilinear_pool, l2_normalize, signed_sqrt, sqrtm

Stage = Callable[[torch.Tensor], torch.Tensor]


class Layer(nn.Module):
    """One stage as a module of its own, as the question wrote one Lambda layer per stage."""

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)


def _model(
    pool: Stage = bilinear_pool,
    root: Stage = sqrtm,
    l2: Stage = l2_normalize,
    trained_backbone: bool = False,
    learning_rate: float = 1.0,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A backbone (frozen, unless something below the head must train), the head's stages as
    layers, and a classifier trained with the authors' first stage (SGD, lr 1.0, momentum 0.9),
    or everything with Adam where the backbone trains."""
    backbone = _backbone() if trained_backbone else _frozen(_backbone())
    classifier = nn.Linear(CHANNELS**2, CLASSES)
    model = nn.Sequential(
        backbone,
        Layer(pool),
        Layer(root),
        Layer(signed_sqrt),
        Layer(l2),
        nn.Flatten(),
        classifier,
    )
    if trained_backbone:
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, torch.optim.SGD(classifier.parameters(), lr=learning_rate, momentum=0.9)


def batch_sum() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(pool=torch_bugs.pool_summed_over_batch)


def fourth_root() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(root=torch_bugs.fourth_root)


def fixed_batch_size() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(pool=torch_bugs.pool_fixed_batch_size)


def eps_ones() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(pool=torch_bugs.pool_eps_times_ones)


def low_lr() -> tuple[nn.Module, torch.optim.Optimizer]:
    """The question's SGD at lr 0.001, without momentum."""
    model, _ = _model()
    return model, torch.optim.SGD(model[-1].parameters(), lr=LEARNING_RATE)


def svd_autodiff() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Autodiff through the SVD, with the backbone training (else no gradient flows there)."""
    return _model(root=torch_bugs.sqrtm_autodiff_through_svd, trained_backbone=True)


def negated_lyapunov() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(root=torch_bugs.sqrtm_negated_lyapunov_gradient, trained_backbone=True)


def batch_l2() -> tuple[nn.Module, torch.optim.Optimizer]:
    return _model(l2=torch_bugs.l2_over_whole_batch)
