"""The strategies' own contracts: each spectrum kind stays within its condition-number bound and
has the shape its name promises, so the properties drawn from them test what they claim."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from impls.testing.matrices import relu_feature_maps
from impls.testing.strategies import (
    SPECTRUM_KINDS,
    feature_maps_with_dead_channels,
    spd_batches,
    spectrum,
)

#: Relative slack on a computed condition number: eigvalsh of a matrix built from its spectrum
#: by an orthogonal similarity is exact to ~C u kappa, far below this.
SLACK = 1e-6


def _condition(values):
    return float(np.max(values) / np.min(values))


@pytest.mark.parametrize("kind", SPECTRUM_KINDS)
@given(
    seed=st.integers(0, 2**32 - 1),
    channels=st.integers(1, 12),
    log_condition=st.floats(0.0, 6.0),
    eps=st.sampled_from([1e-3, 1e-5, 1e-7]),
)
def test_spectrum_respects_its_condition_bound(kind, seed, channels, log_condition, eps):
    condition = 10.0**log_condition
    values = spectrum(np.random.default_rng(seed), kind, channels, condition, eps)
    assert values.shape == (channels,)
    assert np.all(values > 0) and np.max(values) <= 1.0 + SLACK
    assert _condition(values) <= condition * (1 + SLACK)


@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(2, 12))
def test_repeated_spectrum_has_two_values(seed, channels):
    values = spectrum(np.random.default_rng(seed), "repeated", channels, 100.0, 1e-3)
    assert len(np.unique(values)) == 2


@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(4, 12))
def test_zeros_before_eps_spectrum_is_floored_by_eps(seed, channels):
    """The zeroed eigenvalues all sit at the one floor that eps (or the bound) sets."""
    rng = np.random.default_rng(seed)
    values = spectrum(rng, "zeros_before_eps", channels, 1e6, 1e-3)
    smallest = np.min(values)
    assert np.sum(np.isclose(values, smallest, rtol=1e-12)) >= 1
    assert _condition(values) <= 1e3 * (1 + SLACK)  # eps = 1e-3 of the largest bounds it


@given(data=st.data(), max_condition=st.sampled_from([1.0, 10.0, 1e2, 1e6]))
def test_spd_batches_are_symmetric_positive_definite_within_the_bound(data, max_condition):
    a = data.draw(spd_batches(max_condition=max_condition))
    np.testing.assert_array_equal(a, np.swapaxes(a, 1, 2))
    eigenvalues = np.linalg.eigvalsh(a)
    assert np.all(eigenvalues > 0)
    conditions = eigenvalues[:, -1] / eigenvalues[:, 0]
    assert np.all(conditions <= max_condition * (1 + 1e-6) + 1e-9)


@given(data=st.data())
def test_feature_maps_with_dead_channels_have_one(data):
    x = data.draw(feature_maps_with_dead_channels())
    dead = np.all(x.reshape(x.shape[0], x.shape[1], -1) == 0, axis=2)
    assert np.all(dead.any(axis=1)) and np.all(x >= 0)


def test_relu_feature_maps_are_nonnegative_with_the_requested_dead_channels():
    x = relu_feature_maps(np.random.default_rng(0), 2, 6, 3, 3, dead_channels=2)
    assert np.all(x >= 0)
    assert np.sum(np.all(x.reshape(2, 6, -1) == 0, axis=(0, 2))) >= 2
