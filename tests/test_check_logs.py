"""Quiet logs: `ibp-check` runs TensorFlow at a level that hides its C++ log lines unless the user
set TF_CPP_MIN_LOG_LEVEL, and never shows them as what the function printed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import import_framework

ROOT = Path(__file__).resolve().parent.parent
TARGET = "impls.testing.bug_catalogue.tf_correct:l2_by_hand"
FAST = ["--max-examples", "2", "--size", "3"]


def _run(level: str | None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        environment["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run(
        [sys.executable, "-m", "impls.testing.check", "l2", TARGET, *FAST],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_tensorflow_says_nothing_unless_asked():
    import_framework("tensorflow")
    quiet = _run(None)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "oneDNN" not in quiet.stderr and "absl" not in quiet.stderr
    assert "what the function printed" not in quiet.stderr
    asked = _run("0")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "what the function printed" not in asked.stderr
    assert "oneDNN" in asked.stderr  # the user's level is theirs: the lines it lets through show
