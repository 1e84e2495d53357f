"""What tests, `ibp-check` and benchmarks share: inputs, strategies, tolerances, properties; and
the checks for a user's own test suite: `assert_stage`, `check_stage`, `assert_model`,
`check_model` (from `impls.testing.assertions`, imported on first use: it takes seconds)."""

import importlib
from typing import Any

_ASSERTIONS = ("assert_stage", "check_stage", "assert_model", "check_model")


def __getattr__(name: str) -> Any:
    if name in _ASSERTIONS:
        return getattr(importlib.import_module("impls.testing.assertions"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
