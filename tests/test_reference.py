"""The reference checked against itself: every VJP against central finite differences, and the
forward stages against their definitions."""

import numpy as np
import pytest
from hypothesis import given

import reference
from impls.testing.strategies import feature_maps, spd_batches


def finite_difference_vjp(f, x, g, step=None):
    """<g, (f(x + h e_k) - f(x - h e_k)) / 2h> for every entry k of x. Default step h: 1e-6 of
    the scale of the entry's sample (strategies draw scales from 1e-2 to 1e2)."""
    grad = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        h = step or 1e-6 * max(np.abs(x[k[0]]).max(), 1e-3)
        shifted = x.copy()
        shifted[k] += h
        up = np.sum(g * f(shifted))
        shifted[k] -= 2 * h
        grad[k] = (up - np.sum(g * f(shifted))) / (2 * h)
    return grad


def assert_vjp_matches_finite_differences(f, vjp, x, rtol=1e-5, step=None):
    g = np.random.default_rng(0).standard_normal(f(x).shape)
    expected = finite_difference_vjp(f, x, g, step)
    np.testing.assert_allclose(vjp(x, g), expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@given(feature_maps())
def test_pool_vjp(x):
    assert_vjp_matches_finite_differences(reference.bilinear_pool, reference.bilinear_pool_vjp, x)


@given(spd_batches(max_condition=1e3, eps=1e-2))
def test_sqrtm_vjp(a):
    assert_vjp_matches_finite_differences(
        reference.sqrtm, lambda a, g: reference.sqrtm_vjp(reference.sqrtm(a), g), a
    )


@given(spd_batches())
def test_signed_sqrt_vjp(a):
    centred = a - np.mean(a)  # both signs, and entries near zero
    # y is C1 but not C2 at 0 (it holds |z|), so central differences there are only first-order
    # accurate: relative error step / (4 delta) = 2.5e-5 at step 1e-9, hence rtol 1e-4.
    assert_vjp_matches_finite_differences(
        reference.signed_sqrt, reference.signed_sqrt_vjp, centred, rtol=1e-4, step=1e-9
    )


@given(spd_batches())
def test_l2_vjp(a):
    assert_vjp_matches_finite_differences(reference.l2_normalize, reference.l2_normalize_vjp, a)


@given(feature_maps())
def test_head_vjp(x):
    x = x + 0.1  # keep the covariance well away from eps: finite differences need room
    assert_vjp_matches_finite_differences(reference.ibp_head, reference.ibp_head_vjp, x, rtol=1e-4)


def test_linear_vjp():
    rng = np.random.default_rng(1)
    v, weight, bias = (
        rng.standard_normal((3, 4, 4)),
        rng.standard_normal((5, 16)),
        rng.standard_normal(5),
    )
    g = rng.standard_normal((3, 5))
    dv, dweight, dbias = reference.linear_vjp(v, weight, g)
    np.testing.assert_allclose(
        dv, finite_difference_vjp(lambda v: reference.linear(v, weight, bias), v, g), rtol=1e-6
    )
    np.testing.assert_allclose(
        dweight, finite_difference_vjp(lambda w: reference.linear(v, w, bias), weight, g), rtol=1e-6
    )
    np.testing.assert_allclose(dbias, g.sum(axis=0))


@given(feature_maps())
def test_pool_is_the_per_sample_covariance(x):
    b, c, h, w = x.shape
    expected = np.stack(
        [
            sum(np.outer(x[s, :, i, j], x[s, :, i, j]) for i in range(h) for j in range(w))
            / (h * w)
            for s in range(b)
        ]
    )
    np.testing.assert_allclose(reference.bilinear_pool(x, eps=0.0), expected, atol=1e-14)


@given(spd_batches())
def test_sqrtm_squares_to_its_input(a):
    z = reference.sqrtm(a)
    np.testing.assert_allclose(z @ z, a, atol=1e-9 * np.abs(a).max())
    np.testing.assert_array_equal(z, np.swapaxes(z, 1, 2))


def test_reference_rejects_non_finite_input():
    with pytest.raises(reference.IBPInputError, match="non-finite"):
        reference.sqrtm(np.full((1, 2, 2), np.nan))
