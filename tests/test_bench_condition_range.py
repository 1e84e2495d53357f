"""auto's accuracy range: the conditioned inputs have the condition number asked for, the
reference is computed on the rounded input, the range is read from the points as documented,
and the measurement tells an accurate candidate from one that misses, in both frameworks."""

import numpy as np
import pytest

import reference
from bench import condition_range
from bench.adapters import adapter_for
from bench.cases import Cell, candidate_variant
from bench.condition_range import RangePoint, ranges
from bench.inputs import Inputs, conditioned_matrices
from bench.sqrtm_error import SqrtmErrors
from reference.conventions import AUTO_STATED_ACCURACY, DEFAULT_EPS


@pytest.mark.parametrize("spectrum", ["logspace", "relu"])
@pytest.mark.parametrize("channels", [8, 64])
@pytest.mark.parametrize("condition", [1e2, 1e5, 1e8])
def test_conditioned_matrices_have_the_condition_asked_for(spectrum, channels, condition):
    rng = np.random.default_rng(0)
    matrices = conditioned_matrices(rng, 2, channels, spectrum, condition)
    np.testing.assert_array_equal(matrices, np.swapaxes(matrices, -1, -2))
    eigenvalues = np.linalg.eigvalsh(matrices)
    np.testing.assert_allclose(eigenvalues[:, -1] / eigenvalues[:, 0], condition, rtol=1e-6)
    if spectrum == "relu":  # fewer locations than channels: eps is the smallest eigenvalue
        np.testing.assert_allclose(eigenvalues[:, 0], DEFAULT_EPS, rtol=1e-6)


def test_the_reference_is_computed_on_the_rounded_input():
    case = Inputs().conditioned_case(Cell(16, 2, "float32"), "logspace", 1e6)
    np.testing.assert_array_equal(
        case.matrices.astype(np.float32).astype(np.float64), case.matrices
    )
    np.testing.assert_array_equal(case.root, reference.sqrtm(case.matrices))
    np.testing.assert_array_equal(case.gradient, reference.sqrtm_vjp(case.root, case.cotangent))


def test_an_unknown_spectrum_is_named():
    with pytest.raises(ValueError, match="unknown spectrum 'flat'"):
        conditioned_matrices(np.random.default_rng(0), 1, 8, "flat", 10.0)


def _point(condition, error, spectrum="logspace", input_condition="as asked"):
    """A point; input_condition None: rounding left the input indefinite."""
    measured = condition if input_condition == "as asked" else input_condition
    return RangePoint(
        "torch", "cpu", 64, "float32", spectrum, "eigh_float32", condition, measured, error, error
    )


def test_the_range_ends_below_the_first_miss_in_any_spectrum():
    points = [_point(c, 1e-5) for c in (1e2, 1e3, 1e4, 1e5)]
    # The other spectrum misses at 1e4, though its rounded input's condition number is higher
    # than that of the first spectrum's pass there: the grid value 1e4 is missed.
    points += [_point(c, 1e-5, "relu") for c in (1e2, 1e3)]
    points.append(_point(1e4, 2e-3, "relu", input_condition=1.1e4))
    # A pass above the first miss does not extend the range.
    points.append(_point(1e5, 1e-5, "relu"))
    (bound,) = ranges(points)
    assert (bound.max_condition, bound.measured_up_to) == (1e3, 1e5)
    assert condition_range.range_text(bound) == "1e3"


def test_an_input_rounding_left_indefinite_does_not_count():
    """It has no condition number (None): its clamped reference is not the root of a positive
    definite matrix, and its gradient is not defined."""
    points = [_point(1e2, 1e-5), _point(1e8, 1e-5)]
    points.append(_point(1e8, 1.0, "relu", input_condition=None))
    (bound,) = ranges(points)
    assert (bound.max_condition, bound.measured_up_to) == (1e8, 1e8)
    assert condition_range.range_text(bound) == "1e8 (the largest measured)"


def test_a_candidate_missing_everywhere_has_no_range():
    (bound,) = ranges([_point(1e2, 1e-2), _point(1e3, 1e-2)])
    assert bound.max_condition == 1.0
    assert condition_range.range_text(bound) == "none measured"


def test_the_measurement_tells_float32_from_float64_eigh(backend):
    """On a logspace spectrum of condition number 1e8 in float32, the float64 eigendecomposition
    meets the target and the float32 one misses it backward (its eigenvectors of the smallest
    eigenvalues are off by about u * 1e8); at 1e2 both meet it."""
    inputs = Inputs()
    adapter = adapter_for(backend, "cpu")
    for condition, float32_meets in ((1e2, True), (1e8, False)):
        case = inputs.conditioned_case(Cell(16, 2, "float32"), "logspace", condition)
        errors = SqrtmErrors(adapter, case, "float32")
        wide = errors.errors(candidate_variant("eigh_float64"))
        narrow = errors.errors(candidate_variant("eigh_float32"))
        assert max(wide) <= AUTO_STATED_ACCURACY, (condition, wide)
        assert (max(narrow) <= AUTO_STATED_ACCURACY) is float32_meets, (condition, narrow)
