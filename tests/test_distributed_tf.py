"""TensorFlow training under tf.distribute: two logical CPU devices (MirroredStrategy) and two
local workers (MultiWorkerMirroredStrategy from TF_CONFIG) make the same updates as one device;
the tf.data pipeline yields the drawn batches in order; checkpoints restore a run exactly.

Every strategy run is a subprocess: logical devices and a multi-worker cluster can be set up only
before TensorFlow runs anything in a process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference.contracts import IBPInputError

from .conftest import import_framework

tf = import_framework("tensorflow")

from bench.accuracy import distribution_tf  # noqa: E402 (after the framework check)
from bench.accuracy.configurations import CONFIGURATIONS, Stage  # noqa: E402
from bench.accuracy.data import Split, synthetic  # noqa: E402
from bench.accuracy.distributed import World  # noqa: E402
from bench.accuracy.pipeline_tf import make_dataset  # noqa: E402
from bench.accuracy.plan import model_options  # noqa: E402
from bench.accuracy.training import batch_indices  # noqa: E402

ROOT = Path(__file__).parents[1]
#: The tiny run: 7 classes x 8 images of 16x16, batches of 16, two epochs, every weight trained
#: by plain SGD at the question's rate, images through the tf.data pipeline. The head is global
#: average pooling: what is tested is how the strategies split batches and sum gradients, and
#: this head's gradient passes rounding differences on unamplified (the matrix root's backward
#: divides by eigenvalue gaps, which would turn them into whatever its conditioning makes them).
SEED, PER_CLASS, IMAGE_SIZE, BATCH, EPOCHS = 0, 8, 16, 16, 2
STEPS = EPOCHS * -(-7 * PER_CLASS // BATCH)
MODEL_OPTIONS = model_options()


def tiny_run(output: str, strategy: str, logical_cpus: int | None = None) -> None:
    """Train the tiny run through the runner's contract (local parts of the global batches, steps
    that return the global batch's loss sum) and write the chief's losses and weights to
    `output` (.npz). Runs in a fresh process (see the module docstring)."""
    from bench.accuracy.runner_tf import Runner

    runner = Runner("cpu", 1, strategy=strategy, logical_cpus=logical_cpus)
    dataset = synthetic(SEED, PER_CLASS, 2, IMAGE_SIZE)
    runner.seed(SEED)
    model = runner.build_model(CONFIGURATIONS["first_order"], dataset, MODEL_OPTIONS)
    optimizer = runner.optimizer(model, Stage(EPOCHS, "question", frozen=False))
    initial = model.get_weights()
    step = runner.train_step(model, optimizer, from_features=False)
    shuffle = np.random.default_rng(SEED)
    losses, correct = [], []
    for epoch in range(EPOCHS):
        batches = batch_indices(len(dataset.train), BATCH, shuffle)
        local = [runner.local_part(indices) for indices in batches]
        pairs = runner.train_batches(dataset.train, local, SEED, epoch)
        for indices, (inputs, labels) in zip(batches, pairs, strict=True):
            loss_sum, right, finite = step(inputs, labels, len(indices))
            assert finite
            losses.append(loss_sum)
            correct.append(right)
    runner.barrier()
    if runner.world.is_chief:
        arrays = {}
        for i, (final, start) in enumerate(zip(model.get_weights(), initial, strict=True)):
            arrays[f"weights{i}"], arrays[f"update{i}"] = final, final - start
        np.savez(output, losses=losses, correct=correct, **arrays)
        Path(output).with_suffix(".json").write_text(json.dumps(runner.world.as_metadata()))


def _start(output: Path, strategy: str, logical_cpus=None, tf_config=None) -> subprocess.Popen:
    call = f"tiny_run({str(output)!r}, {strategy!r}, {logical_cpus!r})"
    code = f"from tests.test_distributed_tf import tiny_run; {call}"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("TF_CONFIG", None)
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, stderr=subprocess.PIPE, text=True
    )


def _finish(processes: list[subprocess.Popen], timeout: float = 240) -> None:
    for process in processes:
        try:
            _, errors = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        assert process.returncode == 0, errors[-3000:]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("one-device") / "run.npz"
    _finish([_start(output, "none")])
    return dict(np.load(output))


#: Float32's unit roundoff.
U = 2.0**-24


def _assert_same_run(run: dict, reference: dict) -> None:
    """Equal up to float32 reassociation. Cutting a batch into 2 pieces reorders the additions of
    each batch sum (loss, gradient): a relative change of at most about BATCH * u per step, so
    STEPS * BATCH * u over the run for the losses. The weights are rounded to float32 after every
    update (half an ulp, at most u * |w|, each), in both runs but not always in the same direction:
    at most STEPS * 2u * max |w| apart, plus the updates' own BATCH * u."""
    np.testing.assert_array_equal(run["correct"], reference["correct"])
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=STEPS * BATCH * U)
    tensors = [name.removeprefix("weights") for name in reference if name.startswith("weights")]
    assert len(tensors) > 0
    for i in tensors:
        weights, update = reference[f"weights{i}"], reference[f"update{i}"]
        tolerance = STEPS * 2 * U * np.max(np.abs(weights)) + BATCH * U * np.max(np.abs(update))
        np.testing.assert_allclose(run[f"weights{i}"], weights, rtol=0, atol=tolerance)


@pytest.mark.slow
def test_two_logical_cpus_make_the_updates_of_one_device(one_device, tmp_path):
    output = tmp_path / "mirrored.npz"
    _finish([_start(output, "mirrored", logical_cpus=2)])
    assert json.loads(output.with_suffix(".json").read_text()) == {
        **World(replicas=2, kind="mirrored").as_metadata()
    }
    _assert_same_run(dict(np.load(output)), one_device)


@pytest.mark.slow
def test_two_local_workers_make_the_updates_of_one_device(one_device, tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    outputs = [tmp_path / f"worker{index}.npz" for index in range(2)]
    processes = [
        _start(
            output,
            "multi-worker",
            tf_config={"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}},
        )
        for index, output in enumerate(outputs)
    ]
    _finish(processes)
    assert not outputs[1].exists(), "only the chief writes"
    assert json.loads(outputs[0].with_suffix(".json").read_text()) == (
        World(0, 2, 2, "multi-worker-mirrored").as_metadata()
    )
    _assert_same_run(dict(np.load(outputs[0])), one_device)


# The cluster and the batch pieces ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tf_config", "expected"),
    [
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, (1, 2)),
        (
            {
                "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                "task": {"type": "chief", "index": 0},
            },
            (0, 2),
        ),
        (
            {
                "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                "task": {"type": "worker", "index": 0},
            },
            (1, 2),
        ),
    ],
)
def test_rank_and_processes_come_from_tf_config(tf_config, expected):
    assert distribution_tf.cluster_from_tf_config({"TF_CONFIG": json.dumps(tf_config)}) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "TF_CONFIG, which is not set"),
        ("{not json", "TF_CONFIG is not a cluster and a task"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not a cluster and a task"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "task worker 3 is not in the cluster",
        ),
    ],
)
def test_a_missing_or_malformed_tf_config_is_named(text, message):
    environ = {} if text is None else {"TF_CONFIG": text}
    with pytest.raises(IBPInputError, match=message):
        distribution_tf.cluster_from_tf_config(environ)


def test_an_unknown_strategy_is_a_usage_error():
    with pytest.raises(IBPInputError, match="--tf-strategy ring"):
        distribution_tf.make_strategy("ring", False, None)
    with pytest.raises(IBPInputError, match="--tf-logical-cpus"):
        distribution_tf.make_strategy("none", False, 2)


def test_local_parts_of_the_workers_make_up_the_batch():
    batch = np.arange(7)
    parts = [
        distribution_tf.local_part(World(rank, 3, 3, "multi-worker-mirrored"), batch)
        for rank in range(3)
    ]
    assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
    np.testing.assert_array_equal(distribution_tf.local_part(World(), batch), batch)


@pytest.mark.parametrize(("size", "replicas"), [(16, 2), (7, 2), (1, 2), (10, 3)])
def test_replica_pieces_are_contiguous_and_cover_the_batch(size, replicas):
    batch = tf.range(size)
    pieces = [distribution_tf.piece(batch, r, replicas).numpy() for r in range(replicas)]
    np.testing.assert_array_equal(np.concatenate(pieces), np.arange(size))
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_the_question_head_needs_16_samples_on_every_replica():
    from bench.accuracy.runner_tf import Runner

    runner = Runner("cpu", 1)
    dataset = synthetic(SEED, 2, 1, IMAGE_SIZE)
    model = runner.build_model(CONFIGURATIONS["seed"], dataset, MODEL_OPTIONS)
    step = runner.train_step(model, runner.optimizer(model, Stage(1, "question", True)), False)
    batch = np.arange(8)
    with pytest.raises(IBPInputError, match=r"1 replica\(s\) need global batches of 16, got 8"):
        step(runner.images(dataset.train.load(batch)), dataset.train.labels[batch], len(batch))


# The input pipeline -----------------------------------------------------------------------------


class _RecordingSplit:
    """An in-memory split whose `load` stamps each image with the first number its generator
    draws, so that a test can see which generator augmented which batch."""

    def __init__(self, count: int):
        self.labels = np.arange(count) % 3

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices, rng=None):
        indices = np.asarray(indices)
        images = np.zeros((len(indices), 2, 2, 3), np.float32)
        images[..., 0] = indices[:, None, None]
        images[..., 1] = -1.0 if rng is None else rng.random()
        return images


def test_the_pipeline_yields_the_drawn_batches_in_order_with_their_own_augmentation():
    split = _RecordingSplit(23)
    batches = batch_indices(len(split), 5, np.random.default_rng(1))
    yielded = list(make_dataset(split, batches, seed=4, epoch=2))
    assert len(yielded) == len(batches)
    for position, (indices, (images, labels)) in enumerate(zip(batches, yielded, strict=True)):
        assert images.dtype == tf.float32 and labels.dtype == tf.int64
        np.testing.assert_array_equal(images[:, 0, 0, 0].numpy(), indices)
        np.testing.assert_array_equal(labels.numpy(), split.labels[indices])
        expected = np.random.default_rng([4, 2, position]).random()
        np.testing.assert_allclose(images[:, 0, 0, 1].numpy(), expected, rtol=1e-7)


def test_the_pipeline_passes_in_memory_images_through():
    split = Split(np.random.default_rng(0).random((9, 4, 4, 3), np.float32), np.arange(9) % 2)
    batches = [np.array([3, 1, 4]), np.array([8])]
    for indices, (images, labels) in zip(batches, make_dataset(split, batches, 0), strict=True):
        np.testing.assert_array_equal(images.numpy(), split.images[indices])
        np.testing.assert_array_equal(labels.numpy(), split.labels[indices])


# Through reproduce-accuracy ---------------------------------------------------------------------


@pytest.mark.slow
def test_reproduce_accuracy_on_two_local_workers_records_them_and_only_the_chief_writes(tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    outputs = [tmp_path / f"worker{index}" for index in range(2)]
    run = [
        "--framework", "tf", "--dataset", "synthetic", "--config", "first_order", "--quick",
        "--epochs", "2", "--tf-strategy", "multi-worker", "--no-progress",
    ]  # fmt: skip
    processes = []
    for index, output in enumerate(outputs):
        cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(cluster)}
        command = [sys.executable, "-m", "bench.reproduce_accuracy", *run, "--output-dir", output]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=environment, stderr=subprocess.PIPE, text=True)
        )
    _finish(processes)
    results = json.loads((outputs[0] / "accuracy.json").read_text())
    assert results["ibp_metadata"]["distribution"] == {
        "tf": World(0, 2, 2, "multi-worker-mirrored").as_metadata()
    }
    [run_record] = results["runs"]
    assert len(run_record["history"]) == 2
    assert not outputs[1].exists() or not any(outputs[1].iterdir())
