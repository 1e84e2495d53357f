"""The training loop that every framework shares; a runner (runner_torch, runner_tf) supplies the
framework's model, optimizer and steps.

Batches are drawn from a NumPy generator seeded by the run's seed, so both frameworks see the
same samples in the same order. While the backbone is frozen and the data is not augmented, the
backbone is a fixed function: its features are computed once and shared by every configuration
of that framework that starts from the same backbone (the seeded initialisation, or the one that
another configuration trained: `RunCache` keeps both apart and checks them).

A run diverges at the first step whose loss or gradient is not finite: the step reports both,
computed with the step itself. The gradient matters on its own: NaN weights need not show in the
loss (TensorFlow's fused convolution + ReLU kernels on the CPU turn NaN into 0, so a backbone
whose weights are NaN gives finite, constant logits). A diverged run stops there and has no
answers: its test accuracy is 0 on every machine.

Several processes (torch DDP, TensorFlow multi-worker) all run this loop: each draws the same
global batches, loads its local part of each (`runner.local_part`) and gets back the loss and
right answers of the whole global batch, so every process records the same history. Evaluation
runs on every process on the whole test set; only the chief writes checkpoints and shows bars.

With a checkpoint directory the chief writes the loop's state (`records.LoopState`) and the
runner's (weights, optimizer, random state) after every epoch (`checkpoints.write`, atomic); a
run started again with the same directory continues after the last epoch written, drawing the
same batches from the restored shuffle generator, and ends with the numbers an uninterrupted run
has. Which checkpoint a run resumes, and whether it may, is `resume`'s.
"""

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from bench.accuracy import checkpoints
from bench.accuracy.configurations import CONFIGURATIONS, Configuration, Stage
from bench.accuracy.data import Batches, Dataset
from bench.accuracy.interface import (
    Model,
    ModelOptions,
    Optimizer,
    Step,
    Tensor,
    TrainingOptions,
    TrainingRunner,
)
from bench.accuracy.records import Answers, Epoch, LoopState, Run
from bench.accuracy.resume import checkpoint_directory, run_identity, saved_state
from impls.testing import founding_question as question

#: Images per forward pass when only features are needed.
_INFERENCE_BATCH = 64


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
    """What runs of one invocation (one seed) share: features of a frozen backbone for each
    (framework, data set, backbone, split), and the trained models that other configurations
    start from."""

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


def no_answers(batches: list[np.ndarray]) -> list[np.ndarray]:
    """The answers of a diverged model: none (-1) for every sample, whatever its logits show."""
    return [np.full(len(indices), -1) for indices in batches]


def accuracy(dataset: Dataset, batches: list[np.ndarray], answers: list[np.ndarray]) -> float:
    right = sum(
        int(np.sum(a == dataset.test.labels[i])) for i, a in zip(batches, answers, strict=True)
    )
    return right / sum(len(indices) for indices in batches)


def answer_statistics(
    dataset: Dataset,
    batches: list[np.ndarray],
    answers: list[np.ndarray],
    batch_size: int = question.BATCH_SIZE,
) -> Answers:
    """What a model's answers show about how it decides (records.Answers says what each share
    is), on the test samples in the order evaluated, cut into batches of `batch_size`: the
    question's 16, whatever batch the run evaluated with. (Cut into the batches evaluated, a
    model evaluated one sample at a time would give one answer per batch whatever it learned.)"""
    labels = np.concatenate([dataset.test.labels[indices] for indices in batches])
    given = np.concatenate(answers)
    full = len(given) - len(given) % batch_size
    # Fewer samples than one batch: they are one batch.
    cuts = [slice(start, start + batch_size) for start in range(0, full, batch_size)]
    pairs = [(given[cut], labels[cut]) for cut in cuts or [slice(0, len(given))]]
    grouped = sum(len(group) for group, _ in pairs)
    return Answers(
        unanimous_batches=float(np.mean([len(set(group.tolist())) == 1 for group, _ in pairs])),
        batch_majority_answers=sum(
            int(np.sum(group == np.bincount(truth).argmax())) for group, truth in pairs
        )
        / grouped,
        majority_class_answers=float(np.mean(given == np.bincount(dataset.train.labels).argmax())),
        batch_majority_ceiling=sum(int(np.bincount(truth).max()) for _, truth in pairs) / grouped,
    )


class _EpochResult(NamedTuple):
    loss: float
    train_accuracy: float
    diverged: bool


def _train_epoch(
    step: Step,
    runner: TrainingRunner,
    split: Batches,
    batches: list[np.ndarray],
    features: Tensor | None,
    seed: int,
    epoch: int,
    bar: Any,
) -> _EpochResult:
    """Mean loss and train accuracy of one epoch over the global `batches`; it stops at the first
    step whose loss or gradient is not finite, after which the weights are not finite either."""
    if batches and len(batches[-1]) < runner.world.processes:
        # A last batch smaller than the number of processes would leave some without a sample
        # to step on: it is left out (as DistributedSampler's drop_last would).
        batches = batches[:-1]
    local = [runner.local_part(indices) for indices in batches]
    losses, correct, seen = [], 0, 0
    pairs = runner.train_batches(split, local, seed, epoch, features)
    for indices, (inputs, labels) in zip(batches, pairs, strict=True):
        result = step(inputs, labels, len(indices))
        losses.append(result.loss_sum / len(indices))
        correct, seen = correct + result.correct, seen + len(indices)
        bar.update()
        if not (result.finite and math.isfinite(result.loss_sum)):
            return _EpochResult(math.nan, correct / seen, True)
    return _EpochResult(float(np.mean(losses)), correct / seen, False)


def trains_a_backbone_for_others(configuration: Configuration) -> bool:
    return any(c.pretrained_by == configuration.name for c in CONFIGURATIONS.values())


def _finished_before(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: ModelOptions,
    cache: RunCache,
    state: LoopState,
) -> Run:
    """The record of a run that a checkpoint holds as finished; the configurations that start
    from its backbone get the trained weights from the checkpoint."""
    assert state.record is not None
    if trains_a_backbone_for_others(configuration):
        directory = checkpoint_directory(options, runner, dataset, configuration)
        assert directory is not None  # the state was read from it
        model = runner.build_model(configuration, dataset, model_options)
        stage = configuration.stages(options.epochs)[state.stage]
        runner.load_state(directory, model, runner.optimizer(model, stage))
        cache.remember(runner, dataset, configuration, model)
    return state.record


def _starting_backbone(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: ModelOptions,
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


class _Training:
    """One configuration's run in progress: its model, loop state and checkpoint folder."""

    def __init__(
        self,
        runner: TrainingRunner,
        configuration: Configuration,
        dataset: Dataset,
        options: TrainingOptions,
        model: Model,
        state: LoopState,
        resumed: bool,
    ) -> None:
        self.runner, self.configuration, self.dataset = runner, configuration, dataset
        self.options, self.model, self.state = options, model, state
        self.directory = checkpoint_directory(options, runner, dataset, configuration)
        # The stage whose optimizer the checkpoint holds, or None for a fresh run.
        self.resumed_stage = state.stage if resumed else None
        # The question's layers take 16 samples per replica: its global batch grows with them.
        self.batch_size = configuration.batch_size(options.batch_size, runner.world.replicas)
        self.test_batch_size = configuration.batch_size(options.batch_size)
        self.full_only = configuration.needs_full_batches
        self.shuffle = np.random.default_rng(options.seed)
        if state.shuffle_rng is not None:
            self.shuffle.bit_generator.state = state.shuffle_rng
        self.started = time.perf_counter() - state.seconds
        # The test batches as last evaluated and the model's answers on them.
        self.tested: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    def steps_per_epoch(self) -> int:
        count = len(self.dataset.train)
        return len(batch_indices(count, self.batch_size, full_batches_only=self.full_only))

    def stage(self, index: int, stage: Stage, last: bool, cache: RunCache, bar: Any) -> bool:
        """Train the rest of stage `index`; False if it diverged."""
        runner, model = self.runner, self.model
        optimizer = runner.optimizer(model, stage)
        done = 0
        if index == self.resumed_stage:
            assert self.directory is not None  # the state was read from it
            runner.load_state(self.directory, model, optimizer)
            done = self.state.stage_epochs
        from_features = stage.frozen and not self.dataset.augments
        backbone = self.configuration.pretrained_by or "initial"
        features = (
            tuple(
                cache.features(runner, model, self.dataset, split, backbone)
                for split in ("train", "test")
            )
            if from_features
            else (None, None)
        )
        step = runner.train_step(model, optimizer, from_features)
        if self.state.initial_answers is None and self.configuration.head == "seed":
            # The question's set-up answers one class per batch from the start; whether the
            # class it ends on was learned or came with the initial weights shows only here.
            self.state.initial_answers = answer_statistics(self.dataset, *self._test(features[1]))
        for stage_epochs in range(done + 1, stage.epochs + 1):
            diverged = self._epoch(step, stage, features, bar)
            self.state.stage, self.state.stage_epochs = index, stage_epochs
            if diverged or (last and stage_epochs == stage.epochs):
                # In the last checkpoint itself: a run killed after it has nothing left to do.
                self.state.record = self._record()
            self._save(optimizer)
            if diverged:
                return False
        return True

    def _test(
        self, features: Tensor | None, diverged: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The test batches and the model's answers on them (none if it diverged)."""
        if diverged:
            count = len(self.dataset.test)
            batches = batch_indices(count, self.test_batch_size, full_batches_only=self.full_only)
            return batches, no_answers(batches)
        return evaluate(
            self.runner, self.model, self.dataset, self.test_batch_size, self.full_only, features
        )

    def _epoch(
        self, step: Step, stage: Stage, features: tuple[Tensor | None, Tensor | None], bar: Any
    ) -> bool:
        """One epoch, appended to the history; whether it diverged."""
        epoch = len(self.state.history)
        batches = batch_indices(
            len(self.dataset.train), self.batch_size, self.shuffle, self.full_only
        )
        result = _train_epoch(
            step,
            self.runner,
            self.dataset.train,
            batches,
            features[0],
            self.options.seed,
            epoch,
            bar,
        )
        self.tested = self._test(features[1], result.diverged)
        test_accuracy = accuracy(self.dataset, *self.tested)
        self.state.history.append(
            Epoch(
                epoch=epoch + 1,
                stage=stage.optimizer,
                train_loss=None if result.diverged else result.loss,
                train_accuracy=result.train_accuracy,
                test_accuracy=test_accuracy,
            )
        )
        bar.set_postfix(loss=f"{result.loss:.3f}", test=f"{test_accuracy:.3f}")
        if result.diverged:
            self.state.diverged_at = len(self.state.history)
        return result.diverged

    def _record(self) -> Run:
        history = self.state.history
        return Run(
            framework=self.runner.name,
            dataset=self.dataset.name,
            config=self.configuration.name,
            seed=self.options.seed,
            test_accuracy=history[-1].test_accuracy,
            chance_rate=self.dataset.chance_rate,
            test_samples=sum(len(indices) for indices in self.tested[0]),
            batch_size=self.batch_size,
            epochs=len(history),
            diverged_at_epoch=self.state.diverged_at,
            seconds=round(time.perf_counter() - self.started, 2),
            answers=answer_statistics(self.dataset, *self.tested),
            initial_answers=self.state.initial_answers,
            history=tuple(history),
        )

    def _save(self, optimizer: Optimizer) -> None:
        self.state.seconds = time.perf_counter() - self.started
        self.state.shuffle_rng = dict(self.shuffle.bit_generator.state)
        if self.directory is None or not self.runner.world.is_chief:
            return

        def fill(fresh: Path) -> None:
            checkpoints.write_loop(fresh, self.state)
            self.runner.save_state(fresh, self.model, optimizer)

        # A folder that stops taking files (disk full, made read-only) raises
        # checkpoints.CheckpointWriteError: the previous checkpoint stays whole.
        checkpoints.write(self.directory, fill)


def train(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: ModelOptions,
    cache: RunCache,
) -> Run:
    """Train one configuration from the seed, or from its checkpoint; return its run record."""
    saved = saved_state(runner, configuration, dataset, options, model_options)
    if saved is not None and saved.record is not None:
        return _finished_before(
            runner, configuration, dataset, options, model_options, cache, saved
        )
    stages = configuration.stages(options.epochs)
    source = _starting_backbone(runner, configuration, dataset, options, model_options, cache)
    runner.seed(options.seed)
    model = runner.build_model(configuration, dataset, model_options)
    if source is not None:
        runner.copy_backbone(source, model)
    state = saved or LoopState(
        run_identity(runner, configuration, dataset, options, model_options).to_json()
    )
    training = _Training(runner, configuration, dataset, options, model, state, saved is not None)
    bar = tqdm(
        total=training.steps_per_epoch() * sum(stage.epochs for stage in stages),
        initial=training.steps_per_epoch() * len(state.history),
        desc=f"{runner.name} {dataset.name} {configuration.name}",
        unit="step",
        leave=False,
        file=options.progress,
        disable=options.progress is None or not runner.world.is_chief,
    )
    with bar:
        for index, stage in enumerate(stages):
            if index < state.stage:
                continue
            if not training.stage(index, stage, index == len(stages) - 1, cache, bar):
                break
    if trains_a_backbone_for_others(configuration):
        cache.remember(runner, dataset, configuration, model)
    assert state.record is not None  # the last stage's last epoch (or a divergence) wrote it
    return state.record
