"""The model checks run in a supervised child process, as the stage checks do
(`impls.testing.sandbox`): a model that ends the process, crashes it or runs past the per-call
time limit fails the check it was in, with that cause; what it prints is kept apart."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from impls.testing.check_options import ModelSettings
from impls.testing.sandbox import (
    START_TIMEOUT,
    TargetStopped,
    TargetUnusable,
    exit_cause,
    redirect_output,
    start_child,
)

#: The checks the child runs, by name, in the report's order.
CHECKS = (
    "per-sample independence (inference mode)",
    "per-sample independence (training mode)",
    "gradient flow",
    "learning-rate scale",
    "learnability",
)


class ModelSandbox:
    """One child that builds the user's model and runs the whole-model checks on it."""

    def __init__(self, call_timeout: float) -> None:
        self.call_timeout = call_timeout
        self._directory = tempfile.TemporaryDirectory(prefix="ibp-check-model-")
        self._capture = Path(self._directory.name) / "target-output.txt"
        self._capture.touch()
        try:
            self._process, self._connection = start_child(serve, self._capture)
        except TargetUnusable:
            self._directory.cleanup()
            raise

    def __enter__(self) -> ModelSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(self, message: tuple, timeout: float, slow: str) -> tuple:
        if not self._process.is_alive():
            raise TargetStopped("the process running the model is gone (it ended earlier)")
        try:
            self._connection.send(message)
            if not self._connection.poll(timeout):
                self._process.kill()
                raise TargetStopped(slow)
            return self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._process.join(5)
            raise TargetStopped(exit_cause(self._process.exitcode)) from None

    def load(self, target: str, settings: ModelSettings) -> str:
        """Build the model in the child; its framework. Raises TargetUnusable."""
        slow = f"building the model took longer than {START_TIMEOUT:g} s"
        try:
            answer = self._exchange(("load", target, settings), START_TIMEOUT, slow)
        except TargetStopped as stopped:
            raise TargetUnusable(f"building {target}: {stopped.diagnosis}") from None
        if answer[0] == "usage":
            raise TargetUnusable(answer[1])
        return answer[1]

    def _call(self, message: tuple) -> Any:
        slow = (
            f"the check took longer than {self.call_timeout:g} s (--call-timeout): the model "
            "hangs or is far too slow"
        )
        return self._exchange(message, self.call_timeout, slow)[1]

    def probe(self) -> dict:
        """The model's first calls (see `_probe`); raises TargetStopped, and TargetUnusable where
        the model's outputs leave the logits unclear."""
        summary = self._call(("probe",))
        if "usage" in summary:
            raise TargetUnusable(summary["usage"])
        return summary

    def run(self, name: str) -> Any:
        """The Finding of the check `name`; raises TargetStopped."""
        return self._call(("check", name))

    def captured(self) -> str:
        return self._capture.read_text(errors="replace")

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(("stop",))
                self._process.join(5)
            except (BrokenPipeError, OSError):
                pass
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)
        self._connection.close()
        self._directory.cleanup()


def _error_finding(name: str, error: BaseException) -> Any:
    from impls.testing.diagnosis.explain import first_line
    from impls.testing.model_check.checks import Finding

    cause = f"the check raised {type(error).__name__}: {first_line(error)}"
    return Finding(name, "FAIL", "", [cause])


def _load(message: tuple) -> tuple[Any, tuple]:
    from impls.testing.check_target import framework_of
    from impls.testing.command_line import UsageError
    from impls.testing.model_check import checks
    from impls.testing.model_check.traced_models import single_threaded

    _, target, settings = message
    try:
        single_threaded(settings.framework or framework_of(target))
        session = checks.Session(target, settings)
    except UsageError as error:
        return None, ("usage", str(error))
    except Exception as error:  # the function fails to build a model
        return None, ("usage", f"building the model: {type(error).__name__}: {error}")
    return session, ("loaded", session.framework)


def _probe(session: Any) -> dict:
    """The first calls' summary; {"failed": Finding} where the model runs at no batch size,
    {"usage": message} where its outputs leave the logits unclear."""
    from impls.testing.command_line import UsageError

    try:
        session.probe()
    except UsageError as error:
        return {"usage": str(error)}
    except Exception as error:  # the user's model may raise anything
        return {"failed": _error_finding("batch sizes", error)}
    return {
        "batch": session.batch,
        "batch_finding": session.batch_finding,
        "finite_finding": session.finite_finding,
        "located": session.located,
        "layers": [(call.name, call.kind) for call in session.calls],
        "compiled": session.model.compiled,
    }


def serve(connection: Any, capture: str, log_level: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    redirect_output(capture, log_level)
    connection.send(("ready",))
    from impls.testing.model_check import checks

    run = {
        CHECKS[0]: lambda s: checks.independence(s, training=False),
        CHECKS[1]: lambda s: checks.independence(s, training=True),
        CHECKS[2]: checks.gradient_flow,
        CHECKS[3]: checks.learning_rate,
        CHECKS[4]: checks.learnability,
    }
    session: Any = None
    while True:
        message = connection.recv()
        if message[0] == "stop":
            return
        if message[0] == "load":
            session, answer = _load(message)
        elif message[0] == "probe":
            answer = ("ok", _probe(session))
        else:
            try:
                answer = ("ok", run[message[1]](session))
            except Exception as error:  # the user's model may raise anything
                answer = ("ok", _error_finding(message[1], error))
        sys.stdout.flush()
        sys.stderr.flush()
        connection.send(answer)
