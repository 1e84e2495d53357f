"""Checkpoints and resume: directories swapped in atomically (and found whole whatever step a kill
interrupted), and a `reproduce-accuracy` run killed with SIGKILL, then started again with the
same --checkpoint-dir, ends with every number of an uninterrupted run (timings aside)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.accuracy import checkpoints

ROOT = Path(__file__).parents[1]


def _fill_with(text):
    def fill(directory):
        (directory / "content.txt").write_text(text)

    return fill


def _content(directory):
    return (directory / "content.txt").read_text()


def test_a_checkpoint_replaces_the_previous_one_whole(tmp_path):
    final = tmp_path / "run"
    checkpoints.write(final, _fill_with("first"))
    checkpoints.write(final, _fill_with("second"))
    assert _content(final) == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _fails(directory):
    (directory / "content.txt").write_text("half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path):
    final = tmp_path / "run"
    checkpoints.write(final, _fill_with("first"))
    with pytest.raises(checkpoints.CheckpointWriteError) as raised:
        checkpoints.write(final, _fails)
    assert str(raised.value) == (
        f"cannot write a checkpoint to {final} (No space left on device); the last checkpoint "
        "written there is whole, and the same command resumes from it"
    )
    assert _content(final) == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half-filled run.tmp


def test_a_first_write_that_fails_says_there_is_no_checkpoint(tmp_path):
    with pytest.raises(checkpoints.CheckpointWriteError, match="no checkpoint of that run was"):
        checkpoints.write(tmp_path / "run", _fails)
    assert list(tmp_path.iterdir()) == []


def test_a_swap_that_fails_between_the_renames_puts_the_previous_checkpoint_back(
    tmp_path, monkeypatch
):
    """The previous checkpoint is moved aside, then the new one cannot take its place."""
    final = tmp_path / "run"
    checkpoints.write(final, _fill_with("first"))
    real = os.replace

    def refusing(source, target):
        if Path(source).name == "run.tmp":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(source, target)

    monkeypatch.setattr(checkpoints.os, "replace", refusing)
    with pytest.raises(checkpoints.CheckpointWriteError, match="Operation not permitted"):
        checkpoints.write(final, _fill_with("second"))
    assert _content(final) == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("leftovers", "expected"),
    [
        # killed while filling: the new one is incomplete, the old one stands
        ({"run": "old", "run.tmp": "half"}, "old"),
        # killed between the two renames: only the moved-aside old one is whole
        ({"run.bak": "old", "run.tmp": "new"}, "old"),
        # killed before removing the moved-aside old one
        ({"run": "new", "run.bak": "old"}, "new"),
        # killed while filling the very first checkpoint: nothing to resume from
        ({"run.tmp": "half"}, None),
    ],
)
def test_recover_finds_the_newest_whole_checkpoint(tmp_path, leftovers, expected):
    for name, text in leftovers.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "content.txt").write_text(text)
    found = checkpoints.recover(tmp_path / "run")
    assert (found and _content(found)) == (expected or None)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if expected else [])


#: Two epochs per stage of the two-stage recipe (`ibp`), and a configuration that starts from the
#: backbone that `ibp` trained (its weights must come back from ibp's checkpoint on resume).
RUN = [
    "--dataset", "synthetic", "--config", "ibp", "seed_pretrained", "--quick", "--epochs", "4",
    "--no-progress",
]  # fmt: skip


def _command(framework, output, checkpoint_dir):
    return [
        sys.executable, "-m", "bench.reproduce_accuracy", "--framework", framework, *RUN,
        "--output-dir", str(output), "--checkpoint-dir", str(checkpoint_dir),
    ]  # fmt: skip


def _environment():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_until(command, marker: Path, timeout=600.0):
    """Start `command`, SIGKILL it as soon as `marker` exists (no chance to clean up)."""
    process = subprocess.Popen(command, cwd=ROOT, env=_environment())
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"exited ({process.returncode}) before {marker} appeared"
        assert time.monotonic() < deadline, f"{marker} did not appear in {timeout} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _runs_without_timings(output):
    runs = json.loads((output / "accuracy.json").read_text())["runs"]
    for run in runs:
        del run["seconds"]
    return runs


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(backend, tmp_path):
    whole, resumed, saved = tmp_path / "whole", tmp_path / "resumed", tmp_path / "checkpoints"
    run_root = saved / "seed-0" / "synthetic" / backend.name
    subprocess.run(
        _command(backend.name, whole, tmp_path / "unused"), cwd=ROOT, env=_environment(), check=True
    )
    command = _command(backend.name, resumed, saved)
    # Killed after ibp's first epoch (inside its first stage), then after seed_pretrained's first
    # (ibp finished: its record and trained backbone come from its checkpoint).
    _run_until(command, run_root / "ibp" / checkpoints.LOOP_FILE)
    assert checkpoints.read_loop(run_root / "ibp").record is None
    _run_until(command, run_root / "seed_pretrained" / checkpoints.LOOP_FILE)
    subprocess.run(command, cwd=ROOT, env=_environment(), check=True)
    assert _runs_without_timings(resumed) == _runs_without_timings(whole)
    leftovers = [p.name for p in run_root.iterdir() if p.suffix in (".tmp", ".bak")]
    assert leftovers == []
