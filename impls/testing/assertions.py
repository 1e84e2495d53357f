"""`ibp-check` from a test suite: `assert_stage` / `check_stage` for one stage function,
`assert_model` / `check_model` for a whole model. They run the command's engine with the
command's defaults; `assert_*` raise `IBPCheckFailed` (an AssertionError) whose message is the
command's report, and the pytest plugin (`impls.testing.pytest_plugin`) shows that report as the
failure.

    from impls.testing.assertions import assert_stage
    from my_layers import my_sqrtm

    def test_my_sqrtm():
        assert_stage("sqrtm", my_sqrtm)

The function must be importable on its own (defined at the top level of a module, or a layer
instance assigned there): it runs in a separate process, as under `ibp-check`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from impls.testing import check_runner
from impls.testing.check import format_report as format_stage_report
from impls.testing.model_check import engine
from impls.testing.model_check.report import format_report as format_model_report
from impls.testing.sandbox import no_hypothesis_files
from reference.contracts import IBPInputError


class IBPCheckFailed(AssertionError):
    """A check failed; `report` holds the verdicts, measurements and causes."""

    def __init__(self, text: str, report: Any) -> None:
        super().__init__(text)
        self.text, self.report = text, report


def target_of(fn: Callable | str) -> str:
    """'file.py:name' of a function defined at the top level of a file (or the string given)."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__name__", None)
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    module = inspect.getmodule(fn)
    if name is None or path is None or getattr(module, name, None) is not fn:
        raise IBPInputError(
            f"{fn!r} is not defined at the top level of a module: the check imports it in a "
            "separate process, so pass a module-level function or 'path/to/file.py:name'"
        )
    return f"{path}:{name}"


def check_stage(
    stage: str, fn: Callable | str, framework: str | None = None, **options: Any
) -> check_runner.CheckReport:
    """The report of `ibp-check STAGE` on `fn`; options as `check_runner.check` takes them
    (dtype, max_channels, max_examples, tolerance, forward_only, call_timeout, time_limit)."""
    with no_hypothesis_files():
        return check_runner.check(stage, target_of(fn), framework, **options)


def assert_stage(
    stage: str, fn: Callable | str, framework: str | None = None, **options: Any
) -> check_runner.CheckReport:
    """`check_stage`, raising IBPCheckFailed with the report as its message when a property
    fails."""
    target = target_of(fn)
    report = check_stage(stage, target, framework, **options)
    if not report.passed:
        raise IBPCheckFailed(format_stage_report(report, target), report)
    return report


def check_model(
    fn: Callable | str,
    framework: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> engine.ModelReport:
    """The report of `ibp-check model` on the model `fn` builds; options as `ibp-check model`
    takes them (seed, call_timeout, time_limit)."""
    with no_hypothesis_files():
        return engine.check_model(target_of(fn), framework, input_shape, **options)


def assert_model(
    fn: Callable | str,
    framework: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> engine.ModelReport:
    """`check_model`, raising IBPCheckFailed with the report as its message when a check fails."""
    report = check_model(fn, framework, input_shape, **options)
    if not report.passed:
        raise IBPCheckFailed(format_model_report(report), report)
    return report
