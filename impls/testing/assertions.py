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
from impls.testing.check_options import ModelSettings, StageSettings
from impls.testing.command_line import UsageError
from impls.testing.model_check.engine import ModelReport
from impls.testing.model_check.engine import check_model as check_model_target
from impls.testing.report_text import model_report, stage_report
from impls.testing.sandbox import no_hypothesis_files


class IBPCheckFailed(AssertionError):
    """A check failed; `report` holds the verdicts, measurements and causes (a
    check_runner.CheckReport or a model_check.ModelReport)."""

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
        raise UsageError(
            f"{fn!r} is not defined at the top level of a module: the check imports it in a "
            "separate process, so pass a module-level function or 'path/to/file.py:name'"
        )
    return f"{path}:{name}"


def check_stage(
    stage: str, fn: Callable | str, framework: str | None = None, **options: Any
) -> check_runner.CheckReport:
    """The report of `ibp-check STAGE` on `fn`. The options are the command's, under the same
    names: method (ibp, bcnn, mpn-cov, isqrt-cov) and its parameters eps, delta, alpha,
    iterations, order; size, tolerance, dtype, max_examples, forward_only, call_timeout,
    time_limit, strict_dtypes (see `ibp-check STAGE --help`). Every value is validated before
    anything runs: a bad one, a parameter the method has not, or a stage it has not, raises
    UsageError (a ValueError) naming it and what is allowed.

        check_stage("sqrtm", my_isqrt_root, method="isqrt-cov", iterations=5)"""
    settings = StageSettings.from_options({"framework": framework, **options})
    with no_hypothesis_files():
        return check_runner.check(stage, target_of(fn), settings)


def assert_stage(
    stage: str, fn: Callable | str, framework: str | None = None, **options: Any
) -> check_runner.CheckReport:
    """`check_stage`, raising IBPCheckFailed with the report as its message when a property
    fails."""
    target = target_of(fn)
    report = check_stage(stage, target, framework, **options)
    if not report.passed:
        raise IBPCheckFailed(stage_report(report, target), report)
    return report


def check_model(
    fn: Callable | str,
    framework: str | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    **options: Any,
) -> ModelReport:
    """The report of `ibp-check model` on the model `fn` builds. The options are the command's,
    under the same names: input_shape (a tuple or "3,32,32"), method (default: recognised from the
    head) and its parameters eps, delta, alpha, iterations, order; logits, seed, call_timeout,
    time_limit, strict_dtypes (see `ibp-check model --help`), validated as `check_stage`'s."""
    settings = ModelSettings.from_options(
        {"framework": framework, "input_shape": input_shape, **options}
    )
    with no_hypothesis_files():
        return check_model_target(target_of(fn), settings)


def assert_model(
    fn: Callable | str,
    framework: str | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    **options: Any,
) -> ModelReport:
    """`check_model`, raising IBPCheckFailed with the report as its message when a check fails."""
    report = check_model(fn, framework, input_shape, **options)
    if not report.passed:
        raise IBPCheckFailed(model_report(report), report)
    return report
