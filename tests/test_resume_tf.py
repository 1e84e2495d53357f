"""The TensorFlow runner's checkpoint: a run restored from it continues exactly as the run that
wrote it (weights, optimizer slots, step count), and one that does not fit is named. The
kill-and-resume test through `reproduce-accuracy` is tests/test_resume.py, for both frameworks."""

import numpy as np
import pytest

from reference.contracts import IBPInputError

from .conftest import import_framework

import_framework("tensorflow")

from bench.accuracy.configurations import CONFIGURATIONS, Stage  # noqa: E402
from bench.accuracy.data import synthetic  # noqa: E402
from bench.accuracy.plan import model_options  # noqa: E402
from bench.accuracy.runner_tf import Runner  # noqa: E402

MODEL_OPTIONS = model_options()
#: The recipe's second stage: Adam, whose moments and step count must come back too.
STAGE = Stage(1, "recipe_2", frozen=False)


@pytest.fixture(scope="module")
def runner():
    return Runner("cpu", 1)


@pytest.fixture(scope="module")
def dataset():
    return synthetic(0, 2, 1, 16)


def _model_and_optimizer(runner, dataset, configuration, seed):
    runner.seed(seed)
    model = runner.build_model(CONFIGURATIONS[configuration], dataset, MODEL_OPTIONS)
    optimizer = runner.optimizer(model, STAGE)
    return model, optimizer


def test_a_restored_run_takes_the_next_step_of_the_saved_one(runner, dataset, tmp_path):
    batch = np.arange(8)
    inputs = runner.images(dataset.train.load(batch))
    labels = dataset.train.labels[batch]
    model, optimizer = _model_and_optimizer(runner, dataset, "ibp", seed=0)
    step = runner.train_step(model, optimizer, from_features=False)
    step(inputs, labels, len(batch))
    runner.save_state(tmp_path, model, optimizer)
    expected = step(inputs, labels, len(batch))

    # Another seed: every weight differs until the checkpoint is loaded.
    restored, restored_optimizer = _model_and_optimizer(runner, dataset, "ibp", seed=1)
    runner.load_state(tmp_path, restored, restored_optimizer)
    assert int(restored_optimizer.iterations) == 1
    step = runner.train_step(restored, restored_optimizer, from_features=False)
    assert step(inputs, labels, len(batch)) == expected
    for after, restored_after in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(restored_after, after)


def test_a_checkpoint_of_another_model_is_named(runner, dataset, tmp_path):
    runner.save_state(tmp_path, *_model_and_optimizer(runner, dataset, "ibp", seed=0))
    other = _model_and_optimizer(runner, dataset, "first_order", seed=0)
    prefix = tmp_path / "tf-state"
    with pytest.raises(IBPInputError, match=f"checkpoint file {prefix}: does not load .*shape"):
        runner.load_state(tmp_path, *other)
    with pytest.raises(IBPInputError, match="tf-state: does not load"):
        runner.load_state(tmp_path / "missing", *other)
