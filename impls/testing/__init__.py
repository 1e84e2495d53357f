"""What tests, `ibp-check` and benchmarks share: inputs, strategies, tolerances, properties; and
the checks for a user's own test suite: `assert_stage`, `check_stage`, `assert_model`,
`check_model` (from `impls.testing.assertions`, imported on first use: it takes seconds)."""

import importlib
from typing import Any

# First, so that it reads the user's TensorFlow log level before anything sets one.
from impls.testing import framework_logs  # noqa: F401

_ASSERTIONS = ("assert_stage", "check_stage", "assert_model", "check_model")


def __getattr__(name: str) -> Any:
    if name in _ASSERTIONS:
        return getattr(importlib.import_module("impls.testing.assertions"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
