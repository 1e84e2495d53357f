"""What the training loop (`training`) needs of a framework, and the options it trains with: the
runners (runner_torch.Runner, runner_tf.Runner) provide `TrainingRunner`; `resume` and
`preflight` read the same options to find and check checkpoints.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

import numpy as np

from bench.accuracy.configurations import Configuration, Stage
from bench.accuracy.data import Batches, Dataset
from bench.accuracy.distributed import World


@dataclass(frozen=True)
class ModelOptions:
    """The model every configuration builds: backbone, its weights ("imagenet", a file, or None
    for the seeded initialisation), an optional 1x1 reduction, the recipe, and the keyword
    arguments of the IBP head (eps, signed-sqrt regulariser, root method)."""

    backbone: str = "small"
    weights: str | None = None
    reduce_dim: int | None = None
    recipe: str = "default"
    head_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingOptions:
    epochs: int
    batch_size: int
    seed: int
    #: where the progress bars go; None: no bars
    progress: TextIO | None = None
    #: Where checkpoints go (and are resumed from); None: no checkpoints.
    checkpoint_dir: Path | None = None


class StepResult(NamedTuple):
    #: the loss summed over the global batch
    loss_sum: float
    #: right answers in the global batch
    correct: int
    #: whether the loss and every gradient of the step were finite
    finite: bool


#: A framework's model, optimizer and tensor: opaque to the loop, which only hands them back to
#: the runner that made them.
Model = Any
Optimizer = Any
Tensor = Any
#: step(inputs, labels, global batch size): one optimizer step on this process's part.
Step = Callable[[Tensor, Tensor, int], StepResult]


class TrainingRunner(Protocol):
    """What the loop needs of a framework, and what reproduce-accuracy records of it (`threads`,
    `describe_device`, `versions`)."""

    # Read-only, so that a runner may hold a narrower type (torch's thread count is an int).
    @property
    def name(self) -> str: ...

    @property
    def world(self) -> World: ...

    @property
    def threads(self) -> int | str: ...

    def describe_device(self) -> str: ...

    def versions(self) -> dict[str, str]: ...

    def seed(self, seed: int) -> None: ...

    def local_part(self, indices: np.ndarray) -> np.ndarray: ...

    def barrier(self) -> None: ...

    def build_model(
        self, configuration: Configuration, dataset: Dataset, model_options: ModelOptions
    ) -> Model: ...

    def optimizer(self, model: Model, stage: Stage) -> Optimizer: ...

    def backbone_features(self, model: Model, images: np.ndarray) -> Tensor: ...

    def concatenate(self, tensors: list[Tensor]) -> Tensor: ...

    def take(self, tensor: Tensor, indices: np.ndarray) -> Tensor: ...

    def numpy(self, tensor: Tensor) -> np.ndarray: ...

    def train_batches(
        self,
        split: Batches,
        batches: list[np.ndarray],
        seed: int,
        epoch: int,
        features: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]: ...

    def train_step(self, model: Model, optimizer: Optimizer, from_features: bool) -> Step: ...

    def predict(self, model: Model, inputs: Tensor, from_features: bool) -> np.ndarray: ...

    def copy_backbone(self, source: Model, model: Model) -> None: ...

    def save_state(self, directory: Path, model: Model, optimizer: Optimizer) -> None:
        """Weights, optimizer state and what else the next step depends on, into `directory`;
        a file that cannot be written raises OSError (`checkpoints.write` names the folder)."""
        ...

    def load_state(self, directory: Path, model: Model, optimizer: Optimizer) -> None:
        """What save_state wrote; files that do not load (missing, empty, truncated, of another
        model) raise IBPInputError naming them (`checkpoints.damaged`)."""
        ...
