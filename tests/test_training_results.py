"""reproduce-accuracy's results: written as one set (a failure at any file leaves the previous set
byte for byte, or no run folder at all), with the user's file modes, and by default into a fresh
run folder, never into the committed results."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bench import reproduce_accuracy
from bench.accuracy import result_files
from bench.accuracy.records import Answers, Epoch, Run

from .conftest import import_framework
from .test_training_checkpoints import _unwritable

ROOT = Path(__file__).parents[1]
NAMES = result_files.names()


def _writers(fail_at=None):
    """Writers of the three files ("new <name>"); the one at position `fail_at` raises."""

    def writer(position, name):
        def write(path):
            if position == fail_at:
                raise OSError("disk full")
            path.write_text(f"new {name}")

        return write

    return {name: writer(position, name) for position, name in enumerate(NAMES)}


def _snapshot(folder):
    """Every entry of `folder`: file bytes, or None for a folder."""
    return {path.name: path.read_bytes() if path.is_file() else None for path in folder.iterdir()}


@pytest.fixture
def previous(tmp_path):
    """A results folder holding a previous set and a file of another command."""
    folder = tmp_path / "results"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_bytes(f"old {name}\n".encode() + bytes(range(256)))
    (folder / "products.json").write_text("another command's")
    return folder


def _unreplaceable(path, monkeypatch):
    """Make renaming a file over `path` fail: immutable for root, else (no way to do it without
    root) a rename that refuses that one target."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    real = os.replace

    def refusing(source, target):
        if Path(target) == path:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real(source, target)

    monkeypatch.setattr(result_files.os, "replace", refusing)
    return monkeypatch.undo


@pytest.mark.parametrize("position", range(len(NAMES)), ids=NAMES)
def test_a_file_that_fails_to_write_leaves_the_previous_set(previous, position):
    before = _snapshot(previous)
    with pytest.raises(OSError, match="disk full"):
        result_files.write_set(previous, _writers(fail_at=position))
    assert _snapshot(previous) == before


@pytest.mark.parametrize("position", range(len(NAMES)), ids=NAMES)
def test_a_file_that_cannot_be_replaced_leaves_the_previous_set(previous, position, monkeypatch):
    before = _snapshot(previous)
    undo = _unreplaceable(previous / NAMES[position], monkeypatch)
    try:
        with pytest.raises(OSError):
            result_files.write_set(previous, _writers())
    finally:
        undo()
    assert _snapshot(previous) == before


def test_a_whole_set_replaces_the_previous_one(previous):
    result_files.write_set(previous, _writers())
    after = _snapshot(previous)
    assert after == {
        **{name: f"new {name}".encode() for name in NAMES},
        "products.json": b"another command's",
    }


@pytest.mark.parametrize("position", range(len(NAMES)), ids=NAMES)
def test_a_fresh_run_folder_appears_whole_or_not_at_all(tmp_path, position):
    runs = tmp_path / "runs"
    with pytest.raises(OSError, match="disk full"):
        result_files.write_set(runs / "accuracy-1", _writers(fail_at=position))
    assert list(runs.iterdir()) == []  # no run folder, no hidden half-written one
    result_files.write_set(runs / "accuracy-1", _writers())
    assert sorted(p.name for p in runs.iterdir()) == ["accuracy-1"]
    assert sorted(_snapshot(runs / "accuracy-1")) == sorted(NAMES)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh folder", "existing folder"])
def test_results_get_the_mode_of_any_file_the_user_writes(tmp_path, fresh):
    folder = tmp_path / "out"
    if not fresh:
        folder.mkdir()
    previous = os.umask(0o022)
    try:
        result_files.write_set(folder, _writers())
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
    assert modes == dict.fromkeys(NAMES, 0o644)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_result_name_taken_by_a_folder_is_found_before_training(tmp_path):
    (tmp_path / "accuracy.md").mkdir()
    with pytest.raises(IsADirectoryError, match="accuracy.md is in the way"):
        result_files.check_writable(tmp_path)
    result_files.check_writable(
        tmp_path / "new"
    )  # a folder still to be made: its parent takes files
    assert not (tmp_path / "new").exists()


def _fake_runs(plan, runners, datasets, progress):
    """What `reproduce_accuracy.run` returns, without training: ibp learns, seed at chance."""
    runs = []
    for config, accuracy, unanimous in (("ibp", 0.9, 0.0), ("seed", 1 / 7, 1.0)):
        runs.append(
            Run(
                framework="torch", dataset="synthetic", config=config, seed=plan.seeds[0],
                test_accuracy=accuracy, chance_rate=1 / 7, test_samples=112, batch_size=16,
                epochs=1, diverged_at_epoch=None, seconds=0.1,
                answers=Answers(unanimous, 0.1, 0.1, 0.28), initial_answers=None,
                history=(Epoch(1, "recipe_1", 1.0, 0.5, accuracy),),
            )
        )  # fmt: skip
    return runs, 0.5


def test_the_default_run_writes_no_tracked_file(tmp_path, monkeypatch, capsys):
    """Run where the committed results are (a copy of the repository's results/): they stay
    byte for byte, and the run's files go to a fresh runs/accuracy-<time>/."""
    import_framework("torch")
    shutil.copytree(ROOT / "results", tmp_path / "results")
    before = _snapshot(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce_accuracy, "run", _fake_runs)
    arguments = ["--quick", "--framework", "torch", "--dataset", "synthetic", "--config", "ibp"]
    assert reproduce_accuracy.main([*arguments, "seed", "--no-progress"]) == 0
    assert _snapshot(tmp_path / "results") == before
    (run_folder,) = (tmp_path / "runs").iterdir()
    assert run_folder.name.startswith("accuracy-")
    assert sorted(_snapshot(run_folder)) == sorted(NAMES)
    assert f"wrote runs/{run_folder.name}/accuracy.json" in capsys.readouterr().out


@pytest.mark.parametrize(
    "where", ["a file", "under a file", "read-only", "under read-only", "/proc"]
)
def test_an_output_folder_that_takes_no_files_is_refused_before_training(
    capsys, tmp_path, monkeypatch, where
):
    import_framework("torch")

    def refuse(*arguments):
        raise AssertionError("training started")

    monkeypatch.setattr(reproduce_accuracy, "run", refuse)
    undo = None
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    output = {
        "a file": tmp_path / "a_file",
        "under a file": tmp_path / "a_file" / "out",
        "read-only": locked,
        "under read-only": locked / "out",
        "/proc": Path("/proc/ibp-results"),
    }[where]
    if "read-only" in where:
        undo = _unwritable(locked)
    arguments = ["--quick", "--framework", "torch", "--dataset", "synthetic", "--config", "ibp"]
    try:
        with pytest.raises(SystemExit) as exit_:
            reproduce_accuracy.main([*arguments, "--no-progress", "--output-dir", str(output)])
    finally:
        if undo:
            undo()
    error = capsys.readouterr().err
    assert exit_.value.code == 2
    assert error.startswith(f"reproduce-accuracy: error: --output-dir {output}: cannot write there")
    assert error.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"]
    assert list(locked.iterdir()) == []
