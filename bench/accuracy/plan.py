"""What one invocation of reproduce-accuracy trains, and how: the data sets, configurations,
seeds and frameworks, the model, the runners' settings. The command line fills a Plan
(`bench/reproduce_accuracy.py`); this module turns it into data sets, runners and trained runs,
in one process or in the spawned ones of `side_by_side`.
"""

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.accuracy.configurations import CONFIGURATIONS, DEFAULT_CONFIGURATIONS, Configuration
from bench.accuracy.data import EMBEDDED_DATASETS, Dataset
from bench.accuracy.image_folders import image_folder
from bench.accuracy.interface import ModelOptions, TrainingOptions, TrainingRunner
from bench.accuracy.records import Run
from bench.accuracy.training import RunCache, train
from impls.backends import BACKENDS
from reference.contracts import IBPInputError
from reference.conventions import DEFAULT_EPS, SIGNED_SQRT_DELTA

#: Samples per class (train, test) and epochs: the full run and --quick (for tests).
FULL_SIZES, QUICK_SIZES = (160, 64), (32, 16)
FULL_EPOCHS, QUICK_EPOCHS = 10, 4
#: Image side of the embedded data sets and of image folders.
EMBEDDED_IMAGE_SIZE, FOLDER_IMAGE_SIZE = 32, 448
#: The authors' Newton-Schulz iteration count, used with their iterative backward (--recipe paper).
PAPER_NEWTON_SCHULZ_ITERATIONS = 5


def head_options(recipe: str) -> dict[str, float | int | str]:
    """The IBP head's keyword arguments of a recipe: the exact root (default), or the authors' 5
    Newton-Schulz iterations with their iterative backward (paper)."""
    options: dict[str, float | int | str] = {"eps": DEFAULT_EPS, "delta": SIGNED_SQRT_DELTA}
    if recipe == "paper":
        options.update(
            method="newton_schulz",
            num_iters=PAPER_NEWTON_SCHULZ_ITERATIONS,
            backward="newton_schulz",
        )
    return options


def model_options(
    backbone: str = "small",
    weights: str | None = None,
    reduce_dim: int | None = None,
    recipe: str = "default",
) -> ModelOptions:
    return ModelOptions(backbone, weights, reduce_dim, recipe, head_options(recipe))


@dataclass(frozen=True)
class Plan:
    frameworks: tuple[str, ...]
    datasets: tuple[str, ...]
    #: None: every default configuration on embedded data, ibp on an image folder
    configurations: tuple[str, ...] | None
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    quick: bool = False
    image_size: int | None = None
    data_dir: Path | None = None
    model: ModelOptions = ModelOptions()
    device: str = "auto"
    threads: int = 1
    workers: int | None = None
    tf_strategy: str = "none"
    tf_logical_cpus: int | None = None
    checkpoint_dir: Path | None = None
    progress: bool = True

    def options(self, seed: int, progress: TextIO | None = None) -> TrainingOptions:
        return TrainingOptions(self.epochs, self.batch_size, seed, progress, self.checkpoint_dir)


def load_datasets(plan: Plan, seed: int) -> list[Dataset]:
    """The data sets of a seed: the embedded ones are drawn from it, image folders are not."""
    train_per_class, test_per_class = QUICK_SIZES if plan.quick else FULL_SIZES
    datasets = []
    for name in plan.datasets:
        if name == "imagefolder":
            assert plan.data_dir is not None  # the command line requires it
            datasets.append(image_folder(plan.data_dir, plan.image_size or FOLDER_IMAGE_SIZE))
            continue
        try:
            dataset = EMBEDDED_DATASETS[name](
                seed, train_per_class, test_per_class, plan.image_size or EMBEDDED_IMAGE_SIZE
            )
        except ImportError as error:
            raise IBPInputError(
                f"--dataset {name} needs {error.name} (pip install -e '.[data]')"
            ) from None
        datasets.append(dataset)
    return datasets


def configurations_for(plan: Plan, dataset: Dataset) -> list[Configuration]:
    names = plan.configurations or (("ibp",) if dataset.augments else DEFAULT_CONFIGURATIONS)
    return [CONFIGURATIONS[name] for name in names]


def make_runners(plan: Plan) -> list[TrainingRunner]:
    """One runner per framework of the plan, in the order of the backend registry (TensorFlow is
    imported only when asked for)."""
    options: dict[str, dict[str, Any]] = {
        "torch": {"workers": plan.workers or 0},
        "tf": {"strategy": plan.tf_strategy, "logical_cpus": plan.tf_logical_cpus},
    }
    return [
        importlib.import_module(f"bench.accuracy.runner_{name}").Runner(
            plan.device, plan.threads, **options[name]
        )
        for name in BACKENDS
        if name in plan.frameworks
    ]


def jobs(
    plan: Plan, runners: list[TrainingRunner], datasets: list[Dataset]
) -> list[tuple[Dataset, TrainingRunner, Configuration]]:
    """What one seed trains, in the order of the results."""
    return [
        (dataset, runner, configuration)
        for dataset in datasets
        for runner in runners
        for configuration in configurations_for(plan, dataset)
    ]


def run_count(plan: Plan, datasets: list[Dataset]) -> int:
    """The runs of the whole plan: every seed of every job."""
    per_seed = sum(len(configurations_for(plan, dataset)) for dataset in datasets)
    return len(plan.seeds) * len(plan.frameworks) * per_seed


def train_seed(
    plan: Plan,
    seed: int,
    runners: list[TrainingRunner],
    datasets: list[Dataset],
    progress: TextIO | None,
) -> Iterator[Run]:
    """Every run of one seed as it finishes (the features of a frozen backbone shared among
    them)."""
    cache = RunCache()
    options = plan.options(seed, progress)
    for dataset, runner, configuration in jobs(plan, runners, datasets):
        yield train(runner, configuration, dataset, options, plan.model, cache)
