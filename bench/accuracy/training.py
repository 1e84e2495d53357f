"""The training loop that every framework shares; a runner (runner_torch, runner_tf) supplies the
framework's model, optimizer and steps.

Batches are drawn from a NumPy generator seeded by the run's seed, so both frameworks see the
same samples in the same order. While the backbone is frozen and the data is not augmented, the
backbone is a fixed function: its features are computed once and shared by every configuration
of that framework that starts from the same backbone (the seeded initialisation, or the one that
another configuration trained: `RunCache` keeps both apart and checks them).
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bench.accuracy.configurations import CONFIGURATIONS, Configuration
from bench.accuracy.data import Dataset

#: Images per forward pass when only features are needed.
_INFERENCE_BATCH = 64


@dataclass
class TrainingOptions:
    epochs: int
    batch_size: int
    seed: int
    progress: bool = True


def batch_indices(count, batch_size, rng=None, full_batches_only=False):
    """Indices of consecutive batches, shuffled by `rng` if given."""
    order = np.arange(count) if rng is None else rng.permutation(count)
    stop = count - count % batch_size if full_batches_only else count
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


class RunCache:
    """What runs of one invocation share: features of a frozen backbone for each (framework, data
    set, backbone, split), and the trained models that other configurations start from."""

    def __init__(self):
        self._features = {}
        self._trained = {}

    def features(self, runner, model, dataset: Dataset, split_name: str, backbone: str):
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

    def remember(self, runner, dataset: Dataset, configuration: Configuration, model) -> None:
        self._trained[runner.name, dataset.name, configuration.name] = model

    def trained(self, runner, dataset: Dataset, name: str):
        return self._trained.get((runner.name, dataset.name, name))


def _batch(runner, features, split, indices, rng):
    """A batch as the model takes it: cached features, or the images themselves."""
    if features is not None:
        return runner.take(features, indices)
    return runner.images(split.load(indices, rng))


def evaluate(
    runner, model, dataset: Dataset, batch_size: int, full_batches_only: bool, features=None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The test batches as evaluated (full batches only where the model needs them) and the
    model's answer for each of their samples (-1 where its logits are not finite)."""
    batches = batch_indices(len(dataset.test), batch_size, full_batches_only=full_batches_only)
    answers = [
        runner.predict(
            model, _batch(runner, features, dataset.test, indices, None), features is not None
        )
        for indices in batches
    ]
    return batches, answers


def accuracy(dataset: Dataset, batches: list, answers: list) -> float:
    right = sum(
        int(np.sum(a == dataset.test.labels[i])) for i, a in zip(batches, answers, strict=True)
    )
    return right / sum(len(indices) for indices in batches)


def answer_statistics(dataset: Dataset, batches: list, answers: list) -> dict[str, float]:
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


def _train_epoch(step, runner, dataset, batches, features, augment_rng, bar):
    """(mean loss, train accuracy, diverged); stops at the first non-finite loss, after which
    the weights are NaN and further steps would change nothing."""
    losses, correct, seen = [], 0, 0
    for indices in batches:
        inputs = _batch(runner, features, dataset.train, indices, augment_rng)
        loss, batch_correct = step(inputs, dataset.train.labels[indices])
        losses.append(loss)
        correct, seen = correct + batch_correct, seen + len(indices)
        bar.update()
        if not math.isfinite(loss):
            return math.nan, correct / seen, True
    return float(np.mean(losses)), correct / seen, False


def _starting_backbone(runner, configuration, dataset, options, model_options, cache):
    """The trained model whose backbone `configuration` starts from (trained now if this
    invocation has not trained it yet), or None for the seeded initialisation."""
    if configuration.pretrained_by is None:
        return None
    if cache.trained(runner, dataset, configuration.pretrained_by) is None:
        source = CONFIGURATIONS[configuration.pretrained_by]
        train(runner, source, dataset, options, model_options, cache)
    return cache.trained(runner, dataset, configuration.pretrained_by)


def train(
    runner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: dict,
    cache: "RunCache",
) -> dict:
    """Train one configuration from the seed; return its run record."""
    source = _starting_backbone(runner, configuration, dataset, options, model_options, cache)
    runner.seed(options.seed)
    model = runner.build_model(configuration, dataset, model_options)
    if source is not None:
        runner.copy_backbone(source, model)
    backbone = configuration.pretrained_by or "initial"
    batch_size = configuration.batch_size(options.batch_size)
    full_only = configuration.needs_full_batches
    stages = [stage for stage in configuration.stages(options.epochs) if stage.epochs > 0]
    shuffle_rng = np.random.default_rng(options.seed)
    augment_rng = np.random.default_rng(options.seed + 1)
    steps_per_epoch = len(
        batch_indices(len(dataset.train), batch_size, full_batches_only=full_only)
    )
    bar = tqdm(
        total=steps_per_epoch * sum(stage.epochs for stage in stages),
        desc=f"{runner.name} {dataset.name} {configuration.name}",
        unit="step",
        leave=False,
        disable=not options.progress,
    )
    history: list[dict[str, Any]] = []
    diverged_at, initial_answers = None, None
    started = time.perf_counter()
    for stage in stages:
        if diverged_at is not None:
            break
        optimizer = runner.optimizer(model, stage)
        from_features = stage.frozen and not dataset.augments
        train_features, test_features = (
            (cache.features(runner, model, dataset, split, backbone) for split in ("train", "test"))
            if from_features
            else (None, None)
        )
        step = runner.train_step(model, optimizer, from_features)
        if initial_answers is None and configuration.head == "seed":
            # The question's set-up answers one class per batch from the start; whether the
            # class it ends on was learned or came with the initial weights shows only here.
            initial_answers = answer_statistics(
                dataset, *evaluate(runner, model, dataset, batch_size, full_only, test_features)
            )
        for _ in range(stage.epochs):
            batches = batch_indices(len(dataset.train), batch_size, shuffle_rng, full_only)
            loss, train_accuracy, diverged = _train_epoch(
                step, runner, dataset, batches, train_features, augment_rng, bar
            )
            test_batches, answers = evaluate(
                runner, model, dataset, batch_size, full_only, test_features
            )
            test_accuracy = accuracy(dataset, test_batches, answers)
            history.append(
                {
                    "epoch": len(history) + 1,
                    "stage": stage.optimizer,
                    "train_loss": None if diverged else loss,
                    "train_accuracy": train_accuracy,
                    "test_accuracy": test_accuracy,
                }
            )
            bar.set_postfix(loss=f"{loss:.3f}", test=f"{test_accuracy:.3f}")
            if diverged:
                diverged_at = len(history)
                break
    bar.close()
    if any(c.pretrained_by == configuration.name for c in CONFIGURATIONS.values()):
        cache.remember(runner, dataset, configuration, model)
    return {
        "framework": runner.name,
        "dataset": dataset.name,
        "config": configuration.name,
        "test_accuracy": history[-1]["test_accuracy"],
        "chance_rate": dataset.chance_rate,
        "test_samples": sum(len(indices) for indices in test_batches),
        "batch_size": batch_size,
        "epochs": len(history),
        "diverged_at_epoch": diverged_at,
        "seconds": round(time.perf_counter() - started, 2),
        "answers": answer_statistics(dataset, test_batches, answers),
        "initial_answers": initial_answers,
        "history": history,
    }
