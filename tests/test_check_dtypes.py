"""Dtype severity: half precision that comes back as float32 is a note with the fix, unless
strict dtypes are asked for (the same option on the command line and in the API); float32 that
comes back as float64 is a failure either way."""

import pytest

from impls.testing.bug_catalogue import BUGS, CORRECT
from impls.testing.check_catalogue import run_bug, run_correct

FAST = {"max_examples": 3, "size": 4, "seconds_per_property": 1.0}
HALF = next(layer for layer in CORRECT if layer.function == "pool_float32_eye")
FLOAT64 = next(bug for bug in BUGS if bug.name == "returns-float64")


def test_half_precision_promoted_to_float32_is_a_note(backend):
    outcome = run_correct(HALF, backend.name, **FAST)
    assert not outcome.failed_properties
    assert any("half precision comes back as float32" in note for note in outcome.notes)
    assert any("--strict-dtypes" in note for note in outcome.notes)


def test_with_strict_dtypes_it_fails(backend):
    outcome = run_correct(HALF, backend.name, strict_dtypes=True, **FAST)
    assert outcome.failed_properties == ["shape and dtype"]


@pytest.mark.parametrize("strict", [False, True])
def test_float32_returned_as_float64_fails_either_way(backend, strict):
    outcome = run_bug(FLOAT64, backend.name, strict_dtypes=strict, **FAST)
    assert "shape and dtype" in outcome.caught_by
