"""The training loop that every framework shares; a runner (runner_torch, runner_tf) supplies the
framework's model, optimizer and steps.

Batches are drawn from a NumPy generator seeded by the run's seed, so both frameworks see the
same samples in the same order. While the backbone is frozen and the data is not augmented, the
backbone is a fixed function: its features are computed once and shared by every configuration
of that framework (they all start from the same seeded backbone, which `FeatureCache` checks).
"""

import math
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

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


class FeatureCache:
    """Features of the initial backbone for each (framework, data set, split)."""

    def __init__(self):
        self._features = {}

    def get(self, runner, model, dataset, split_name):
        split = getattr(dataset, split_name)
        key = (runner.name, dataset.name, split_name)
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


def _batch(runner, features, split, indices, rng):
    """A batch as the model takes it: cached features, or the images themselves."""
    if features is not None:
        return runner.take(features, indices)
    return runner.images(split.load(indices, rng))


def evaluate(runner, model, dataset, batch_size, full_batches_only, features=None):
    """(test accuracy, samples evaluated); full batches only where the model needs them."""
    batches = batch_indices(len(dataset.test), batch_size, full_batches_only=full_batches_only)
    correct = 0
    for indices in batches:
        inputs = _batch(runner, features, dataset.test, indices, None)
        labels = dataset.test.labels[indices]
        correct += runner.count_correct(model, inputs, labels, from_features=features is not None)
    evaluated = sum(len(indices) for indices in batches)
    return correct / evaluated, evaluated


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


def train(runner, configuration, dataset, options, model_options, cache):
    """Train one configuration from the seed; return its run record."""
    runner.seed(options.seed)
    model = runner.build_model(configuration, dataset, model_options)
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
    history, diverged_at, test_samples = [], None, 0
    started = time.perf_counter()
    for stage in stages:
        if diverged_at is not None:
            break
        optimizer = runner.optimizer(model, stage)
        from_features = stage.frozen and not dataset.augments
        train_features = cache.get(runner, model, dataset, "train") if from_features else None
        test_features = cache.get(runner, model, dataset, "test") if from_features else None
        step = runner.train_step(model, optimizer, from_features)
        for _ in range(stage.epochs):
            batches = batch_indices(len(dataset.train), batch_size, shuffle_rng, full_only)
            loss, train_accuracy, diverged = _train_epoch(
                step, runner, dataset, batches, train_features, augment_rng, bar
            )
            test_accuracy, test_samples = evaluate(
                runner, model, dataset, batch_size, full_only, test_features
            )
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
    return {
        "framework": runner.name,
        "dataset": dataset.name,
        "config": configuration.name,
        "test_accuracy": history[-1]["test_accuracy"],
        "chance_rate": dataset.chance_rate,
        "test_samples": test_samples,
        "batch_size": batch_size,
        "epochs": len(history),
        "diverged_at_epoch": diverged_at,
        "seconds": round(time.perf_counter() - started, 2),
        "history": history,
    }
