"""pytest plugin (entry point `pytest11`): a test that fails through `assert_stage` or
`assert_model` shows the ibp-check report as its failure, not a traceback into the checker."""

from collections.abc import Generator
from typing import Any

import pytest

from impls.testing.assertions import IBPCheckFailed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, IBPCheckFailed):
        path, line, _ = item.location
        report.longrepr = f"{path}:{(line or 0) + 1}: ibp-check failed\n\n{call.excinfo.value.text}"
