"""The training loop that every framework shares; a runner (runner_torch, runner_tf) supplies the
framework's model, optimizer and steps.

Batches are drawn from a NumPy generator seeded by the run's seed, so both frameworks see the
same samples in the same order. While the backbone is frozen and the data is not augmented, the
backbone is a fixed function: its features are computed once and shared by every configuration
of that framework that starts from the same backbone (the seeded initialisation, or the one that
another configuration trained: `RunCache` keeps both apart and checks them).

Several processes (torch DDP, TensorFlow multi-worker) all run this loop: each draws the same
global batches, loads its local part of each (`runner.local_part`) and gets back the loss and
right answers of the whole global batch, so every process records the same history. Evaluation
runs on every process on the whole test set; only the chief writes checkpoints and shows bars.

With a checkpoint directory the chief writes the loop's state and the runner's (weights,
optimizer, random state) after every epoch (`checkpoints.write`, atomic); a run started again
with the same directory continues after the last epoch written, drawing the same batches from
the restored shuffle generator, and ends with the numbers an uninterrupted run has.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from bench.accuracy import checkpoints
from bench.accuracy.configurations import CONFIGURATIONS, Configuration, Stage
from bench.accuracy.data import Batches, Dataset
from bench.accuracy.distributed import World
from reference.contracts import IBPInputError

#: Images per forward pass when only features are needed.
_INFERENCE_BATCH = 64


@dataclass
class TrainingOptions:
    epochs: int
    batch_size: int
    seed: int
    progress: bool = True
    #: Where checkpoints go (and are resumed from); None: no checkpoints.
    checkpoint_dir: Path | None = None


#: A framework's model, optimizer and tensor: opaque to the loop, which only hands them back to
#: the runner that made them.
Model = Any
Optimizer = Any
Tensor = Any
#: step(inputs, labels, global batch size) -> (loss summed over the global batch, right answers).
Step = Callable[[Tensor, Tensor, int], tuple[float, int]]


class TrainingRunner(Protocol):
    """What the loop needs of a framework (runner_torch.Runner, runner_tf.Runner provide it),
    and what reproduce-accuracy records of it (`threads`, `describe_device`, `versions`)."""

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
        self, configuration: Configuration, dataset: Dataset, model_options: dict[str, Any]
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

    def save_state(self, directory: Path, model: Model, optimizer: Optimizer) -> None: ...

    def load_state(self, directory: Path, model: Model, optimizer: Optimizer) -> None: ...


def batch_indices(
    count: int,
    batch_size: int,
    rng: np.random.Generator | None = None,
    full_batches_only: bool = False,
) -> list[np.ndarray]:
    """Indices of consecutive batches, shuffled by `rng` if given."""
    order = np.arange(count) if rng is None else rng.permutation(count)
    stop = count - count % batch_size if full_batches_only else count
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


class RunCache:
    """What runs of one invocation share: features of a frozen backbone for each (framework, data
    set, backbone, split), and the trained models that other configurations start from."""

    def __init__(self) -> None:
        self._features: dict[tuple[str, str, str, str], Tensor] = {}
        self._trained: dict[tuple[str, str, str], Model] = {}

    def features(
        self, runner: TrainingRunner, model: Model, dataset: Dataset, split_name: str, backbone: str
    ) -> Tensor:
        """`backbone`: "initial" or the name of the configuration that trained it."""
        split = getattr(dataset, split_name)
        key = (runner.name, dataset.name, backbone, split_name)
        if key not in self._features:
            chunks = [
                runner.backbone_features(model, split.load(indices))
                for indices in batch_indices(len(split), _INFERENCE_BATCH)
            ]
            self._features[key] = runner.concatenate(chunks)
        features = self._features[key]
        first = np.arange(1)
        probe = runner.numpy(runner.backbone_features(model, split.load(first)))
        if not np.allclose(probe, runner.numpy(runner.take(features, first)), rtol=1e-4, atol=1e-5):
            raise RuntimeError(
                f"{key}: this model's backbone is not the one the cache was made from"
            )
        return features

    def remember(
        self, runner: TrainingRunner, dataset: Dataset, configuration: Configuration, model: Model
    ) -> None:
        self._trained[runner.name, dataset.name, configuration.name] = model

    def trained(self, runner: TrainingRunner, dataset: Dataset, name: str) -> Model | None:
        return self._trained.get((runner.name, dataset.name, name))


def evaluate(
    runner: TrainingRunner,
    model: Model,
    dataset: Dataset,
    batch_size: int,
    full_batches_only: bool,
    features: Tensor | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The test batches as evaluated (full batches only where the model needs them) and the
    model's answer for each of their samples (-1 where its logits are not finite)."""
    batches = batch_indices(len(dataset.test), batch_size, full_batches_only=full_batches_only)
    # The test split does not augment: its batches need no seed or epoch of their own.
    inputs = runner.train_batches(dataset.test, batches, 0, 0, features)
    answers = [runner.predict(model, batch, features is not None) for batch, _ in inputs]
    return batches, answers


def accuracy(dataset: Dataset, batches: list[np.ndarray], answers: list[np.ndarray]) -> float:
    right = sum(
        int(np.sum(a == dataset.test.labels[i])) for i, a in zip(batches, answers, strict=True)
    )
    return right / sum(len(indices) for indices in batches)


def answer_statistics(
    dataset: Dataset, batches: list[np.ndarray], answers: list[np.ndarray]
) -> dict[str, float]:
    """What a model's answers show about how it decides, on the test batches as evaluated:
    - unanimous_batches: share of batches in which every sample gets the same answer (a model
      that sees one feature vector per batch can do nothing else);
    - batch_majority_answers: share of samples answered with their batch's most frequent class;
    - majority_class_answers: share of samples answered with the training set's most frequent
      class (what a model that learned only the class prior answers);
    - batch_majority_ceiling: the best accuracy of one answer per batch."""
    labels = [dataset.test.labels[indices] for indices in batches]
    majority = np.bincount(dataset.train.labels).argmax()
    batch_majorities = [np.bincount(batch).argmax() for batch in labels]
    samples = sum(len(batch) for batch in labels)
    return {
        "unanimous_batches": float(np.mean([len(set(a.tolist())) == 1 for a in answers])),
        "batch_majority_answers": sum(
            int(np.sum(a == m)) for a, m in zip(answers, batch_majorities, strict=True)
        )
        / samples,
        "majority_class_answers": sum(int(np.sum(a == majority)) for a in answers) / samples,
        "batch_majority_ceiling": float(sum(np.bincount(b).max() for b in labels) / samples),
    }


def _train_epoch(
    step: Step,
    runner: TrainingRunner,
    split: Batches,
    batches: list[np.ndarray],
    features: Tensor | None,
    seed: int,
    epoch: int,
    bar: Any,
) -> tuple[float, float, bool]:
    """(mean loss, train accuracy, diverged) of one epoch over the global `batches`; stops at the
    first non-finite loss, after which the weights are NaN and further steps would change
    nothing."""
    if batches and len(batches[-1]) < runner.world.processes:
        # A last batch smaller than the number of processes would leave some without a sample
        # to step on: it is left out (as DistributedSampler's drop_last would).
        batches = batches[:-1]
    local = [runner.local_part(indices) for indices in batches]
    losses, correct, seen = [], 0, 0
    pairs = runner.train_batches(split, local, seed, epoch, features)
    for indices, (inputs, labels) in zip(batches, pairs, strict=True):
        loss_sum, batch_correct = step(inputs, labels, len(indices))
        losses.append(loss_sum / len(indices))
        correct, seen = correct + batch_correct, seen + len(indices)
        bar.update()
        if not math.isfinite(loss_sum):
            return math.nan, correct / seen, True
    return float(np.mean(losses)), correct / seen, False


def _trains_a_backbone_for_others(configuration: Configuration) -> bool:
    return any(c.pretrained_by == configuration.name for c in CONFIGURATIONS.values())


def _starting_backbone(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: dict[str, Any],
    cache: RunCache,
) -> Model | None:
    """The trained model whose backbone `configuration` starts from (trained now if this
    invocation has not trained it yet), or None for the seeded initialisation."""
    if configuration.pretrained_by is None:
        return None
    if cache.trained(runner, dataset, configuration.pretrained_by) is None:
        source = CONFIGURATIONS[configuration.pretrained_by]
        train(runner, source, dataset, options, model_options, cache)
    return cache.trained(runner, dataset, configuration.pretrained_by)


def checkpoint_directory(
    options: TrainingOptions,
    runner: TrainingRunner,
    dataset: Dataset,
    configuration: Configuration,
) -> Path | None:
    if options.checkpoint_dir is None:
        return None
    return options.checkpoint_dir / dataset.name / runner.name / configuration.name


def _saved_loop(runner: TrainingRunner, directory: Path | None) -> dict[str, Any] | None:
    """The loop state of the newest whole checkpoint in `directory`, or None to start afresh.
    The chief alone tidies what an interrupted write left; the others read after it."""
    if directory is None:
        return None
    if runner.world.is_chief:
        checkpoints.recover(directory)
    runner.barrier()
    return checkpoints.read_loop(directory) if directory.exists() else None


def train(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: dict[str, Any],
    cache: RunCache,
) -> dict[str, Any]:
    """Train one configuration from the seed, or from its checkpoint; return its run record."""
    directory = checkpoint_directory(options, runner, dataset, configuration)
    saved = _saved_loop(runner, directory)
    stages = [stage for stage in configuration.stages(options.epochs) if stage.epochs > 0]
    # The question's layers take 16 samples per replica: its global batch grows with them.
    batch_size = configuration.batch_size(options.batch_size, runner.world.replicas)
    settings = {
        "seed": options.seed,
        "epochs": options.epochs,
        "batch_size": batch_size,
        "train_samples": len(dataset.train),
        "model": model_options,
    }
    if saved is not None and saved["settings"] != settings:
        changed = [key for key in settings if saved["settings"].get(key) != settings[key]]
        raise IBPInputError(
            f"--checkpoint-dir: {directory} was written by a run with another "
            f"{', '.join(changed)}; resume with the same options, or use another folder"
        )
    if saved is not None and saved["record"] is not None:
        # Finished before: its record stands; the configurations that start from its backbone
        # get the trained weights from its checkpoint.
        if _trains_a_backbone_for_others(configuration):
            assert directory is not None  # `saved` was read from it
            model = runner.build_model(configuration, dataset, model_options)
            runner.load_state(directory, model, runner.optimizer(model, stages[saved["stage"]]))
            cache.remember(runner, dataset, configuration, model)
        return saved["record"]
    source = _starting_backbone(runner, configuration, dataset, options, model_options, cache)
    runner.seed(options.seed)
    model = runner.build_model(configuration, dataset, model_options)
    if source is not None:
        runner.copy_backbone(source, model)
    backbone = configuration.pretrained_by or "initial"
    test_batch_size = configuration.batch_size(options.batch_size)
    full_only = configuration.needs_full_batches
    shuffle_rng = np.random.default_rng(options.seed)
    state: dict[str, Any] = saved or {
        "settings": settings,
        "stage": 0,
        "stage_epochs": 0,
        "history": [],
        "shuffle_rng": None,
        "initial_answers": None,
        "diverged_at": None,
        "seconds": 0.0,
        "record": None,
    }
    if saved is not None:
        shuffle_rng.bit_generator.state = saved["shuffle_rng"]
    history: list[dict[str, Any]] = state["history"]
    steps_per_epoch = len(
        batch_indices(len(dataset.train), batch_size, full_batches_only=full_only)
    )
    bar = tqdm(
        total=steps_per_epoch * sum(stage.epochs for stage in stages),
        initial=steps_per_epoch * len(history),
        desc=f"{runner.name} {dataset.name} {configuration.name}",
        unit="step",
        leave=False,
        disable=not (options.progress and runner.world.is_chief),
    )
    started = time.perf_counter() - state["seconds"]

    def save(optimizer: Optimizer) -> None:
        state["seconds"] = time.perf_counter() - started
        state["shuffle_rng"] = shuffle_rng.bit_generator.state
        if directory is not None and runner.world.is_chief:

            def fill(fresh: Path) -> None:
                checkpoints.write_json(fresh / checkpoints.LOOP_FILE, state)
                runner.save_state(fresh, model, optimizer)

            checkpoints.write(directory, fill)

    last = (len(stages) - 1, stages[-1].epochs)
    for stage_index, stage in enumerate(stages):
        if stage_index < state["stage"]:
            continue
        optimizer = runner.optimizer(model, stage)
        done = 0
        if saved is not None and stage_index == saved["stage"]:
            assert directory is not None  # `saved` was read from it
            runner.load_state(directory, model, optimizer)

            done = saved["stage_epochs"]
        from_features = stage.frozen and not dataset.augments
        train_features, test_features = (
            (cache.features(runner, model, dataset, split, backbone) for split in ("train", "test"))
            if from_features
            else (None, None)
        )
        step = runner.train_step(model, optimizer, from_features)
        if state["initial_answers"] is None and configuration.head == "seed":
            # The question's set-up answers one class per batch from the start; whether the
            # class it ends on was learned or came with the initial weights shows only here.
            state["initial_answers"] = answer_statistics(
                dataset,
                *evaluate(runner, model, dataset, test_batch_size, full_only, test_features),
            )
        for stage_epochs in range(done + 1, stage.epochs + 1):
            epoch = len(history)
            batches = batch_indices(len(dataset.train), batch_size, shuffle_rng, full_only)
            loss, train_accuracy, diverged = _train_epoch(
                step, runner, dataset.train, batches, train_features, options.seed, epoch, bar
            )
            test_batches, answers = evaluate(
                runner, model, dataset, test_batch_size, full_only, test_features
            )
            test_accuracy = accuracy(dataset, test_batches, answers)
            history.append(
                {
                    "epoch": epoch + 1,
                    "stage": stage.optimizer,
                    "train_loss": None if diverged else loss,
                    "train_accuracy": train_accuracy,
                    "test_accuracy": test_accuracy,
                }
            )
            bar.set_postfix(loss=f"{loss:.3f}", test=f"{test_accuracy:.3f}")
            state["stage"], state["stage_epochs"] = stage_index, stage_epochs
            if diverged:
                state["diverged_at"] = len(history)
            if diverged or (stage_index, stage_epochs) == last:
                # In the last checkpoint itself: a run killed after it has nothing left to do.
                state["record"] = {
                    "framework": runner.name,
                    "dataset": dataset.name,
                    "config": configuration.name,
                    "test_accuracy": test_accuracy,
                    "chance_rate": dataset.chance_rate,
                    "test_samples": sum(len(indices) for indices in test_batches),
                    "batch_size": batch_size,
                    "epochs": len(history),
                    "diverged_at_epoch": state["diverged_at"],
                    "seconds": round(time.perf_counter() - started, 2),
                    "answers": answer_statistics(dataset, test_batches, answers),
                    "initial_answers": state["initial_answers"],
                    "history": history,
                }
            save(optimizer)
            if diverged:
                break
        if state["diverged_at"] is not None:
            break
    bar.close()
    if _trains_a_backbone_for_others(configuration):
        cache.remember(runner, dataset, configuration, model)
    return state["record"]
