"""The function `ibp-check` is pointed at runs in a child process that the checker supervises.

A layer under test may end the interpreter (sys.exit, os._exit, a crash in native code), never
return, print, or change the arrays it is given. In the child none of that reaches the checker: the
search for failing inputs stays in the parent, which sends each call's inputs over a pipe and gets
the output and gradient back. A child that ends or runs past the per-call time limit is a failure
of the target, named as such, never a pass.

One child serves every target of a run (importing TensorFlow costs ~10 s); it is started again only
after it died. Its stdout and stderr go to a file that the report shows apart, without
TensorFlow's log lines (`impls.testing.framework_logs`). The child is
started with multiprocessing's "spawn" (a fork would copy the parent's framework state), so a
script that calls `check` must guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from hypothesis.configuration import set_hypothesis_home_dir

from impls.testing import framework_logs
from impls.testing.check_options import DEFAULT_CALL_TIMEOUT
from impls.testing.command_line import UsageError
from impls.testing.properties import DtypeViolation, PropertyViolation

if TYPE_CHECKING:
    from impls.backends import Backend


@contextmanager
def no_hypothesis_files() -> Iterator[None]:
    """Hypothesis keeps what it learns of the code under test in .hypothesis/ of the current
    directory; a check writes nothing there, so its database goes to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ibp-check-hypothesis-") as home:
        set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            set_hypothesis_home_dir(None)


#: How long starting the child and importing a target may take (TensorFlow alone takes ~10 s, much
#: more on a loaded machine).
START_TIMEOUT = 300.0


class TargetStopped(PropertyViolation):
    """The target ended the child process or ran past the time limit: nothing after it can be
    checked, and the property it happened in fails with this cause."""


class TargetUnusable(UsageError):
    """The target cannot be imported or called at all (a usage error, exit status 2)."""


def exit_cause(code: int | None) -> str:
    if code is None:
        return "the process running the function stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the function crashed the interpreter ({name})"
    return (
        f"the function ended the process with exit code {code} (sys.exit, os._exit or exit() "
        "inside it): a layer must return its output, never end the program"
    )


NOT_STARTED = (
    "the checker's child process could not start (exit code {code}): multiprocessing starts it "
    "by importing the calling script again, so a script that runs a check must guard its entry "
    'point with `if __name__ == "__main__":`, and a check cannot run from stdin'
)


def start_child(
    serve: Callable[..., None], capture: Path
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]:
    """A daemon child running `serve(connection, capture, log level)`, once it said it runs.
    Raises TargetUnusable where it dies first (a script without its `__main__` guard)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=serve, args=(child, str(capture), framework_logs.child_level()), daemon=True
    )
    process.start()
    child.close()
    try:
        if parent.poll(START_TIMEOUT) and parent.recv() == ("ready",):
            return process, parent
    except EOFError:
        pass
    process.kill()
    process.join(5)
    parent.close()
    raise TargetUnusable(NOT_STARTED.format(code=process.exitcode))


class Sandbox:
    """A supervised child process that imports targets and runs the stage calls on them."""

    def __init__(self, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.call_timeout = call_timeout
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="ibp-check-")
        self._capture = Path(self._directory.name) / "target-output.txt"
        self._capture.touch()
        self._loaded: tuple[str, str] | None = None  # (target, framework) the child holds

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- parent side -----------------------------------------------------------------------------

    def _start(self) -> None:
        self._process, self._connection = start_child(serve, self._capture)
        self._loaded = None

    def _alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _stop_child(self) -> int | None:
        if self._process is None:
            return None
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)
        code = self._process.exitcode
        assert self._connection is not None  # set together with the process
        self._connection.close()
        self._process = self._connection = self._loaded = None
        return code

    def _exchange(self, message: tuple, timeout: float, slow: str) -> tuple:
        """Send a message and wait for the answer; the child's death or silence raises."""
        assert self._process is not None and self._connection is not None
        process, connection = self._process, self._connection
        try:
            connection.send(message)
            if not connection.poll(timeout):
                self._stop_child()
                raise TargetStopped(slow)
            return connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            process.join(5)
            raise TargetStopped(exit_cause(self._stop_child())) from None

    def load(self, target: str, framework: str | None) -> str:
        """Import `target` in the child; returns its framework. Raises TargetUnusable."""
        if self._loaded is not None and (target, framework) == self._loaded and self._alive():
            return self._loaded[1]
        if not self._alive():
            self._start()
        slow = f"importing {target} took longer than {START_TIMEOUT:g} s"
        try:
            answer = self._exchange(("load", target, framework), START_TIMEOUT, slow)
        except TargetStopped as stopped:
            raise TargetUnusable(f"importing {target}: {stopped.diagnosis}") from None
        if answer[0] == "usage":
            raise TargetUnusable(answer[1])
        self._loaded = (target, answer[1])
        return answer[1]

    def run_stage(
        self, method: str, stage: str, x: np.ndarray, dtype: str, cotangent: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The loaded target on x as `stage` of `method`, as `properties.run` computes it
        in-process."""
        if not self._alive():
            raise TargetStopped(
                "the process running the function is gone (it ended on an earlier call)"
            )
        slow = (
            f"a call took longer than {self.call_timeout:g} s (--call-timeout): the function hangs "
            "or is far too slow for its input"
        )
        message = ("call", method, stage, x, dtype, cotangent)
        answer = self._exchange(message, self.call_timeout, slow)
        if answer[0] == "ok":
            return answer[1], answer[2]
        kind, diagnosis, error, allowed = answer[1:]
        if kind == "dtype":
            raise DtypeViolation(*diagnosis)
        raise PropertyViolation(diagnosis, error, allowed)

    def captured(self) -> str:
        """Everything the child printed so far, TensorFlow's log lines included."""
        return self._capture.read_text(errors="replace")

    def close(self) -> None:
        if self._alive():
            assert self._process is not None and self._connection is not None
            try:
                self._connection.send(("stop",))
                self._process.join(5)
            except (BrokenPipeError, OSError):
                pass
        self._stop_child()
        self._directory.cleanup()


# -- child side ------------------------------------------------------------------------------------


def redirect_output(capture: str, log_level: str) -> None:
    """Send fds 1 and 2 to the capture file, with TensorFlow's log level set before anything
    imports it."""
    os.environ[framework_logs.VARIABLE] = log_level
    fd = os.open(capture, os.O_WRONLY | os.O_APPEND)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)


def _load(
    target: str, framework: str | None
) -> tuple[Backend | None, Callable[..., Any] | None, tuple[str, str]]:
    from impls.backends import get_backend
    from impls.testing.check_target import framework_of, load

    try:
        framework = framework or framework_of(target)
        backend = get_backend(framework)
        if not backend.is_available():
            raise UsageError(f"--framework {framework}: {backend.package} is not installed")
        _, fn = load(target)
    except UsageError as error:
        return None, None, ("usage", str(error))
    return backend, fn, ("loaded", framework)


def serve(connection: multiprocessing.connection.Connection, capture: str, log_level: str) -> None:
    """The child's loop: load targets, run calls, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    redirect_output(capture, log_level)
    connection.send(("ready",))
    from impls.testing import properties
    from impls.testing.method_specs import stage_spec

    backend: Backend | None = None
    fn: Callable[..., Any] | None = None
    answer: tuple[Any, ...]
    while True:
        message = connection.recv()
        if message[0] == "stop":
            return
        if message[0] == "load":
            backend, fn, answer = _load(message[1], message[2])
            connection.send(answer)
            continue
        _, method, stage, x, dtype, cotangent = message
        if backend is None or fn is None:  # the parent loads a target before any call
            raise RuntimeError("a call before any target was loaded")
        try:
            # The output's shape contract is all the call needs of the spec: the defaults do.
            spec = stage_spec(method, stage)
            out, grad = properties.call_here(backend, spec, fn, x, dtype, cotangent)
            answer = ("ok", out, grad)
        except DtypeViolation as violation:
            answer = ("violation", "dtype", (violation.given, violation.returned), None, None)
        except PropertyViolation as violation:
            answer = (
                "violation",
                "property",
                violation.diagnosis,
                violation.error,
                violation.allowed,
            )
        sys.stdout.flush()
        sys.stderr.flush()
        connection.send(answer)
