"""PyTorch side of the accuracy reproduction: models, optimizers and steps for `training`."""

import math
import os
import random

import numpy as np
import torch
from torch import nn

from bench.accuracy.distributed import World
from bench.accuracy.seed_model_torch import SeedHead
from impls.backends import get_backend
from impls.testing import founding_question as question
from impls.torch.models import IBPModel
from reference.contracts import IBPInputError

IMPL = get_backend("torch").impl


class GlobalAveragePoolingHead(nn.Module):
    """First-order pooling: the mean of each channel, then a linear classifier."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return self.classifier(x.mean(dim=(2, 3)))


class BilinearHead(nn.Module):
    """B-CNN: bilinear pooling, signed sqrt, L2 and a classifier, without the matrix root."""

    def __init__(self, in_channels, num_classes, eps, delta):
        super().__init__()
        self.eps, self.delta = eps, delta
        self.classifier = nn.Linear(in_channels**2, num_classes)

    def forward(self, x):
        y = IMPL.signed_sqrt(IMPL.bilinear_pool(x, self.eps), self.delta)
        return self.classifier(torch.flatten(IMPL.l2_normalize(y), 1))


def _head(configuration, in_channels, num_classes, head_kwargs):
    if configuration.head == "ibp":
        return IMPL.IBPHead(in_channels, num_classes, **head_kwargs)
    if configuration.head == "first_order":
        return GlobalAveragePoolingHead(in_channels, num_classes)
    if configuration.head == "bilinear_no_sqrtm":
        return BilinearHead(in_channels, num_classes, head_kwargs["eps"], head_kwargs["delta"])
    return SeedHead(in_channels, num_classes, configuration.seed_bugs)


class Runner:
    name = "torch"

    def __init__(self, device="cpu", threads=None):
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        want_gpu = device in ("gpu", "auto") and torch.cuda.is_available()
        if device == "gpu" and not want_gpu:
            raise IBPInputError("--device gpu: torch sees no CUDA device")
        self.device = torch.device("cuda" if want_gpu else "cpu")
        if want_gpu:
            # cuBLAS needs this workspace setting to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.world = World()

    def describe_device(self):
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def versions(self):
        return {"torch": torch.__version__}

    def seed(self, seed):
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (the legacy global state, for code that still uses it)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    def build_model(self, configuration, dataset, model_options):
        backbone = IMPL.build_backbone(
            model_options["backbone"], model_options["weights"], model_options["reduce_dim"]
        )
        head = _head(
            configuration, backbone.out_channels, dataset.num_classes, model_options["head_kwargs"]
        )
        return IBPModel(backbone, head).to(self.device)

    def optimizer(self, model, stage):
        if stage.optimizer == "question":
            IMPL.freeze_backbone(model, stage.frozen)
            trained = model.head if stage.frozen else model
            return torch.optim.SGD(trained.parameters(), lr=question.LEARNING_RATE)
        return IMPL.recipe_optimizer(model, int(stage.optimizer[-1]))

    def images(self, images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)

    def backbone_features(self, model, images):
        model.eval()
        with torch.no_grad():
            return model.backbone(self.images(images))

    def concatenate(self, tensors):
        return torch.cat(tensors)

    def take(self, tensor, indices):
        return tensor[torch.as_tensor(indices, device=tensor.device)]

    def numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    def _labels(self, labels):
        return torch.as_tensor(labels, dtype=torch.long, device=self.device)

    def train_step(self, model, optimizer, from_features):
        forward = model.head if from_features else model

        def step(inputs, labels):
            model.train()
            labels = self._labels(labels)
            try:
                logits = forward(inputs)
            except torch.linalg.LinAlgError:
                return math.nan, 0  # a decomposition of NaN weights' output: diverged
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item(), _count_correct(logits.detach(), labels)

        return step

    def predict(self, model, inputs, from_features: bool) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            try:
                logits = (model.head if from_features else model)(inputs)
            except torch.linalg.LinAlgError:
                return np.full(len(inputs), -1)  # torch refuses to decompose NaN: diverged
        answers = logits.argmax(dim=1).where(torch.isfinite(logits).all(dim=1), -1)
        return answers.cpu().numpy()

    def copy_backbone(self, source, model) -> None:
        model.backbone.load_state_dict(source.backbone.state_dict())


def _count_correct(logits, labels):
    """Right answers; a sample whose logits are not finite (a diverged model) has none."""
    right = (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)
    return int(right.sum())
