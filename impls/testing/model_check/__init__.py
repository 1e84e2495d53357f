"""`ibp-check model`: checks of a whole model (see `cli`), and `check_model` for scripts and
test suites."""

from impls.testing.model_check.cli import main
from impls.testing.model_check.engine import ModelReport, check_model
from impls.testing.model_check.report import format_report

__all__ = ["ModelReport", "check_model", "format_report", "main"]
