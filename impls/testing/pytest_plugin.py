"""pytest plugin (entry point `pytest11`): a test that fails through `assert_stage` or
`assert_model` shows the ibp-check report as its failure, not a traceback into the checker.

It imports nothing of the checker: pytest loads it in every run of every project where this
package is installed, and the checker's imports take seconds."""

from collections.abc import Generator
from typing import Any

import pytest

#: The module of `IBPCheckFailed`, recognised by name so that nothing is imported here.
_ASSERTIONS = "impls.testing.assertions"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    error = None if call.excinfo is None else call.excinfo.value
    if type(error).__module__ == _ASSERTIONS and type(error).__name__ == "IBPCheckFailed":
        path, line, _ = item.location
        text = getattr(error, "text", str(error))
        report.longrepr = f"{path}:{(line or 0) + 1}: ibp-check failed\n\n{text}"
