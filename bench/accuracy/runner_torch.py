"""PyTorch side of the accuracy reproduction: models, optimizers and steps for `training`.

Started by torchrun (which sets RANK and WORLD_SIZE in each process it starts), the runner joins
the process group (gloo on CPU, NCCL on GPU) and trains through DistributedDataParallel: every
process loads its part of each global batch (`local_part`), DDP averages the processes'
gradients, and each process scales its loss SUM by processes / global batch size, so that the
average is the gradient of the global batch's mean loss, the update that one process makes, up to
the order of the float sums. The question's batch-summing head sums within each process's part
only, so under DDP it computes something else: that is its bug (batch statistics, like a
BatchNorm's in a backbone that trains, differ per process the same way).
"""

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.accuracy import checkpoints
from bench.accuracy.configurations import Configuration, Stage
from bench.accuracy.data import Batches, Dataset
from bench.accuracy.distributed import World, torchrun_rank_and_size
from bench.accuracy.interface import ModelOptions, Step, StepResult
from bench.accuracy.pipeline_torch import make_loader
from bench.accuracy.seed_model_torch import SeedHead
from impls.backends import get_backend
from impls.testing import founding_question as question
from impls.torch.models import IBPModel

BACKEND = get_backend("torch")
IMPL = BACKEND.impl


class GlobalAveragePoolingHead(nn.Module):
    """First-order pooling: the mean of each channel, then a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean(dim=(2, 3)))


class BilinearHead(nn.Module):
    """B-CNN: bilinear pooling, signed sqrt, L2 and a classifier, without the matrix root."""

    def __init__(self, in_channels: int, num_classes: int, eps: float, delta: float) -> None:
        super().__init__()
        self.eps, self.delta = eps, delta
        self.classifier = nn.Linear(in_channels**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = IMPL.signed_sqrt(IMPL.bilinear_pool(x, self.eps), self.delta)
        return self.classifier(torch.flatten(IMPL.l2_normalize(y), 1))


def _head(
    configuration: Configuration,
    in_channels: int,
    num_classes: int,
    head_kwargs: dict[str, Any],
) -> nn.Module:
    if configuration.head == "ibp":
        return IMPL.IBPHead(in_channels, num_classes, **head_kwargs)
    if configuration.head == "first_order":
        return GlobalAveragePoolingHead(in_channels, num_classes)
    if configuration.head == "bilinear_no_sqrtm":
        return BilinearHead(in_channels, num_classes, head_kwargs["eps"], head_kwargs["delta"])
    return SeedHead(in_channels, num_classes, configuration.seed_bugs)


class Runner:
    name = "torch"

    def __init__(self, device: str = "cpu", threads: int | None = None, workers: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.workers = workers
        self.device = BACKEND.resolve_device(device)
        want_gpu = BACKEND.is_gpu(self.device)
        if want_gpu:
            # cuBLAS needs this workspace setting to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.world = World()
        started_by_torchrun = torchrun_rank_and_size()
        if started_by_torchrun is not None:
            rank, size = started_by_torchrun
            backend = "nccl" if want_gpu else "gloo"
            if want_gpu:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend)
            self.world = World(rank, size, size, f"ddp-{backend}")

    def describe_device(self) -> str:
        return BACKEND.describe_device(self.device)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (the legacy global state, for code that still uses it)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    def local_part(self, indices: np.ndarray) -> np.ndarray:
        """The samples of a global batch that this process loads and trains on."""
        return np.asarray(indices)[self.world.rank :: self.world.processes]

    def barrier(self) -> None:
        if self.world.processes > 1:
            dist.barrier()

    def build_model(
        self, configuration: Configuration, dataset: Dataset, model_options: ModelOptions
    ) -> IBPModel:
        backbone = IMPL.build_backbone(
            model_options.backbone, model_options.weights, model_options.reduce_dim
        )
        head = _head(
            configuration, backbone.out_channels, dataset.num_classes, model_options.head_kwargs
        )
        return IBPModel(backbone, head).to(self.device)

    def optimizer(self, model: IBPModel, stage: Stage) -> torch.optim.Optimizer:
        if stage.optimizer == "question":
            IMPL.freeze_backbone(model, stage.frozen)
            trained = model.head if stage.frozen else model
            return torch.optim.SGD(trained.parameters(), lr=question.LEARNING_RATE)
        return IMPL.recipe_optimizer(model, int(stage.optimizer[-1]))

    def images(self, images: np.ndarray) -> torch.Tensor:
        return BACKEND.feature_map(images, "float32", self.device, layout="channels_last")

    def backbone_features(self, model: IBPModel, images: np.ndarray) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model.backbone(self.images(images))

    def concatenate(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors)

    def take(self, tensor: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
        return tensor[torch.as_tensor(indices, device=tensor.device)]

    def numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return BACKEND.numpy(tensor)

    def train_batches(
        self,
        split: Batches,
        batches: list[np.ndarray],
        seed: int,
        epoch: int,
        features: torch.Tensor | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) on the device for each of `batches` (this process's parts of the
        global ones), as the steps take them: the cached backbone features, or the images
        through the DataLoader."""
        if features is not None:
            for indices in batches:
                yield (
                    self.take(features, indices),
                    BACKEND.labels(split.labels[indices], self.device),
                )
            return
        pinned = BACKEND.is_gpu(self.device)
        for images, labels in make_loader(split, batches, seed, epoch, self.workers, pinned):
            yield (
                images.to(self.device, non_blocking=pinned),
                labels.to(self.device, non_blocking=pinned),
            )

    def _parallel(self, module: nn.Module) -> nn.Module:
        """`module` as the step calls it: wrapped in DDP when there are several processes (DDP
        broadcasts rank 0's weights on wrapping, then all-reduces the gradients)."""
        if self.world.processes == 1:
            return module
        device_ids = [self.device.index] if BACKEND.is_gpu(self.device) else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def train_step(
        self, model: IBPModel, optimizer: torch.optim.Optimizer, from_features: bool
    ) -> Step:
        """step(inputs, labels, global_batch_size): the loss summed over the global batch, its
        right answers, and whether the loss and every gradient were finite."""
        forward = self._parallel(model.head if from_features else model)
        processes = self.world.processes
        trained = [p for group in optimizer.param_groups for p in group["params"]]

        def step(inputs: torch.Tensor, labels: torch.Tensor, global_batch_size: int) -> StepResult:
            model.train()
            try:
                logits = forward(inputs)
            except torch.linalg.LinAlgError:
                return StepResult(math.nan, 0, False)  # a decomposition of NaN: diverged
            loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
            # DDP averages the gradients over processes: undo that, then take the global mean.
            loss = loss_sum / (global_batch_size / processes)
            optimizer.zero_grad()
            loss.backward()
            finite = torch.stack([p.grad.isfinite().all() for p in trained if p.grad is not None])
            optimizer.step()
            correct = _count_correct(logits.detach(), labels)
            totals = torch.stack(
                [
                    loss_sum.detach().double(),
                    torch.tensor(float(correct), device=loss_sum.device, dtype=torch.float64),
                    (~finite.all()).double(),
                ]
            )
            if processes > 1:
                dist.all_reduce(totals)
            return StepResult(float(totals[0]), int(totals[1]), bool(totals[2] == 0))

        return step

    def predict(self, model: IBPModel, inputs: torch.Tensor, from_features: bool) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            try:
                logits = (model.head if from_features else model)(inputs)
            except torch.linalg.LinAlgError:
                return np.full(len(inputs), -1)  # torch refuses to decompose NaN: diverged
        answers = logits.argmax(dim=1).where(torch.isfinite(logits).all(dim=1), -1)
        return answers.cpu().numpy()

    def copy_backbone(self, source: IBPModel, model: IBPModel) -> None:
        model.backbone.load_state_dict(source.backbone.state_dict())

    def save_state(
        self, directory: Path, model: IBPModel, optimizer: torch.optim.Optimizer
    ) -> None:
        """Weights, optimizer state (momenta, Adam moments and step counts) and the random
        generators' states."""
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if BACKEND.is_gpu(self.device) else [],
        }
        # Through a Python file, so that a full disk shows as the OSError it is: torch's writer
        # reports it as a RuntimeError about stream positions, with the OSError as its context.
        with open(Path(directory) / _STATE_FILE, "wb") as file:
            try:
                torch.save(state, file)
            except RuntimeError as error:
                if isinstance(error.__context__, OSError):
                    raise error.__context__ from None
                raise

    def load_state(
        self, directory: Path, model: IBPModel, optimizer: torch.optim.Optimizer
    ) -> None:
        """What `save_state` wrote, into a model and an optimizer built like the saved ones; a
        file that is missing, damaged or of another model raises IBPInputError naming it."""
        path = Path(directory) / _STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        # torch.load of an empty file raises EOFError, of a truncated one RuntimeError, of
        # another file's bytes UnpicklingError; a state of another model fails in load_state_dict.
        except Exception as error:  # noqa: BLE001
            raise checkpoints.damaged(
                path, f"does not load ({checkpoints.reason(error)})"
            ) from None
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])


#: The runner's file inside a checkpoint directory.
_STATE_FILE = "torch-state.pt"


def _count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Right answers; a sample whose logits are not finite (a diverged model) has none."""
    right = (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)
    return int(right.sum())
