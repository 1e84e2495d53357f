"""PyTorch training under torchrun: two processes on the CPU (gloo) train the model that one
process trains, and only rank 0 writes the results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.accuracy import checkpoints
from bench.accuracy.distributed import World, torchrun_rank_and_size
from bench.accuracy.records import Run

from .conftest import import_framework

import_framework("torch")

ROOT = Path(__file__).parents[1]
RUN = [
    "--framework", "torch", "--dataset", "synthetic", "--config", "ibp", "--quick",
    "--no-progress",
]  # fmt: skip
#: Two processes sum each batch's gradient in two halves and add them, one process in one go: the
#: same float32 numbers added in another order, each sum within a few units in the last place of
#: float32 (6e-8 relative) of the other. In the recipe's first stage (SGD on the head over fixed
#: features) training carries such differences along without blowing them up: 1e-6 relative
#: leaves an order of magnitude of room over a few dozen steps, and a wrong loss scaling (a
#: factor of 2 in every SGD step) or a process training on the wrong samples is off by far more.
FIRST_STAGE_LOSS_RTOL = 1e-6
#: The second stage trains everything with Adam, which divides each gradient component by its own
#: running size: a component that is rounding noise takes a full-size step either way, and the
#: matrix root's backward divides by eigenvalue gaps. Rounding differences grow there to
#: differences of the trained weights; what stays is the same training: the same loss to 1 %
#: (Adam is blind to a constant loss scale: the first stage tests the scaling).
SECOND_STAGE_LOSS_RTOL = 1e-2
#: A test answer flips where two logits are within those differences of a tie: allow two of the
#: 112 quick test samples (and of the 224 training samples) in either stage.
ANSWER_TOLERANCE = 2 / 112


def _environment():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _results(output: Path) -> dict:
    return json.loads((output / "accuracy.json").read_text())


def test_torchrun_sets_the_rank_and_world_size():
    assert torchrun_rank_and_size({}) is None
    assert torchrun_rank_and_size({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert World(1, 2, 2, "ddp-gloo").as_metadata() == {
        "rank": 1, "processes": 2, "replicas": 2, "kind": "ddp-gloo",
    }  # fmt: skip
    assert World().is_chief and not World(1, 2, 2, "ddp-gloo").is_chief
    with pytest.raises(ValueError, match="kind"):
        World(kind="horovod")
    with pytest.raises(ValueError, match="inconsistent"):
        World(rank=2, processes=2, replicas=2, kind="ddp-gloo")


@pytest.mark.parametrize(
    ("environment", "arguments", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, [], "under torchrun, train PyTorch only"),
        ({}, ["--tf-strategy", "multi-worker"], "multi-worker trains TensorFlow only"),
    ],
)
def test_a_multi_process_launch_trains_one_framework(
    monkeypatch, capsys, environment, arguments, message
):
    import_framework("tensorflow")
    from bench import reproduce_accuracy

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        reproduce_accuracy.parse_args(["--framework", "torch", "tf", *arguments])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_under_torchrun_train_what_one_process_trains(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "bench.reproduce_accuracy", *RUN, "--output-dir", str(one)],
        cwd=ROOT, env=_environment(), check=True,
    )  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    saved = tmp_path / "checkpoints"
    subprocess.run(
        [
            *torchrun, "2", "-m", "bench.reproduce_accuracy", *RUN, "--output-dir", str(two),
            "--checkpoint-dir", str(saved),
        ],
        cwd=ROOT, env=_environment(), check=True,
    )  # fmt: skip
    single, distributed = _results(one), _results(two)
    envelope_one, envelope_two = single["ibp_metadata"], distributed["ibp_metadata"]
    assert envelope_two["distribution"] == {
        "torch": {"rank": 0, "processes": 2, "replicas": 2, "kind": "ddp-gloo"}
    }
    assert envelope_one["distribution"] == {"torch": World().as_metadata()}
    # Only rank 0 wrote: one set of results, nothing beside it.
    assert sorted(p.name for p in two.iterdir()) == ["accuracy.json", "accuracy.md", "accuracy.png"]
    [run_one], [run_two] = single["runs"], distributed["runs"]
    # Rank 0 wrote the checkpoints, whole, with the run's record.
    ours = saved / "seed-0" / "synthetic" / "torch"
    assert [p.name for p in ours.iterdir()] == ["ibp"]
    assert checkpoints.read_loop(ours / "ibp").record == Run.from_json(run_two)
    assert run_two["epochs"] == run_one["epochs"] and run_two["batch_size"] == 16
    for epoch_one, epoch_two in zip(run_one["history"], run_two["history"], strict=True):
        rtol = FIRST_STAGE_LOSS_RTOL if epoch_one["stage"] == "recipe_1" else SECOND_STAGE_LOSS_RTOL
        np.testing.assert_allclose(epoch_two["train_loss"], epoch_one["train_loss"], rtol)
        for key in ("train_accuracy", "test_accuracy"):
            assert abs(epoch_two[key] - epoch_one[key]) <= ANSWER_TOLERANCE, (key, epoch_one)
    assert [e["stage"] for e in run_one["history"]] == ["recipe_1"] * 2 + ["recipe_2"] * 2


class _RecordingRunner:
    """The part of a runner that `_train_epoch` uses, for rank 1 of 2 processes."""

    world = World(1, 2, 2, "ddp-gloo")

    def local_part(self, indices):
        return indices[self.world.rank :: self.world.processes]

    def train_batches(self, split, batches, seed, epoch, features=None):
        return ((indices, split.labels[indices]) for indices in batches)


def test_a_last_batch_smaller_than_the_processes_is_left_out():
    from bench.accuracy.data import Split
    from bench.accuracy.interface import StepResult
    from bench.accuracy.training import _train_epoch

    split = Split(np.zeros((17, 1, 1, 3), np.float32), np.zeros(17, np.int64))
    stepped = []

    def step(inputs, labels, global_batch_size):
        stepped.append((inputs.tolist(), global_batch_size))
        return StepResult(1.0 * global_batch_size, 0, True)

    class Bar:
        def update(self):
            pass

    batches = [np.arange(16), np.array([16])]
    loss, _, diverged = _train_epoch(step, _RecordingRunner(), split, batches, None, 0, 0, Bar())
    # Rank 1 steps on its half of the full batch only; rank 0 would have had sample 16 alone.
    assert stepped == [(list(range(1, 16, 2)), 16)]
    assert loss == 1.0 and not diverged
