"""reproduce-accuracy's own output only: TensorFlow's C++ log lines (printed at import at any level,
and while tf.data runs) never land between the progress bars. Without a TF_CPP_MIN_LOG_LEVEL of
the user's they are not shown at all; with one, the lines it lets through come after the bars."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from impls.testing import framework_logs

from .conftest import import_framework

ROOT = Path(__file__).parents[1]
#: One epoch of first_order (its images go through tf.data, which logs while it runs).
COMMAND = [
    sys.executable, "-m", "bench.reproduce_accuracy", "--quick", "--framework", "tf",
    "--dataset", "synthetic", "--config", "first_order", "--epochs", "1",
]  # fmt: skip


def _stderr(tmp_path, level):
    import_framework("tensorflow")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop(framework_logs.VARIABLE, None)
    if level is not None:
        environment[framework_logs.VARIABLE] = level
    done = subprocess.run(
        [*COMMAND, "--output-dir", str(tmp_path / "out")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    assert "learns" in done.stdout or "at chance" in done.stdout
    return done.stderr


@pytest.mark.slow
def test_framework_logs_are_hidden_unless_the_user_asks(tmp_path):
    error = _stderr(tmp_path, None)
    logs, bars = framework_logs.split(error.replace("\r", "\n"))
    assert logs == "", logs
    assert "runs: 100%" in bars


@pytest.mark.slow
def test_the_logs_a_user_asks_for_come_after_the_progress_bars(tmp_path):
    error = _stderr(tmp_path, "0")
    lines = error.replace("\r", "\n").splitlines(keepends=True)
    logs, _ = framework_logs.split("".join(lines))
    assert "oneDNN" in logs  # TensorFlow's notice on import, shown at the user's level
    first_log = next(i for i, line in enumerate(lines) if framework_logs.split(line)[0])
    last_bar = max(i for i, line in enumerate(lines) if "runs:" in line or "step" in line)
    assert last_bar < first_log
