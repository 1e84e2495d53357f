"""The family's float64 references checked against SciPy, direct formulas from the papers and the
released code, and central finite differences; degenerate inputs give finite values."""

import numpy as np
import pytest
import scipy.linalg

import reference
from impls.testing.matrices import relu_feature_maps
from impls.testing.tolerances import UNIT_ROUNDOFF, condition_number, relative_error, tolerance
from reference.contracts import IBPInputError
from reference.methods import (
    FEATURE_MAP,
    METHOD_NAMES,
    METHODS,
    centred_pool,
    get_method,
    triu_indices,
    triu_vec,
)
from reference.methods.isqrt_cov import isqrt_cov_root, newton_schulz_iterations
from reference.methods.mpn_cov import matrix_power
from tests.test_reference import finite_difference_vjp

U = UNIT_ROUNDOFF["float64"]
#: Central differences with step h = u^(1/3) times the input's scale balance truncation (h^2 f''')
#: and round-off (u f / h): each leaves ~u^(2/3) = 5e-11 relative, times the ratio of the third to
#: the first derivative's scale, which grows with the spectrum's spread and the iterations'
#: polynomial degree. Measured at most 5e-9 on the inputs below (condition <= 1e2, up to 8
#: iterations); the bound is ~10x that, as the tolerance table's factors are.
FD_RTOL = 5e-8


def realistic_maps(channels: int = 16, side: int = 6, batch: int = 2, seed: int = 0) -> np.ndarray:
    return relu_feature_maps(np.random.default_rng(seed), batch, channels, side, side)


def small_spd(seed: int = 0) -> np.ndarray:
    """Centred covariances of 4-channel maps plus 0.05 I: condition ~40, room for the step."""
    return centred_pool(realistic_maps(4, 3, seed=seed)) + 0.05 * np.eye(4)


def assert_vjp(forward, vjp, x, rtol=FD_RTOL):
    g = np.random.default_rng(7).standard_normal(np.shape(forward(x)))
    step = U ** (1 / 3) * np.abs(x).max()
    expected = finite_difference_vjp(forward, x, g, step=step)
    assert relative_error(vjp(x, g), expected) <= rtol


# Forward against SciPy, the papers' formulas and the released code


@pytest.mark.parametrize(("channels", "side"), [(8, 4), (16, 6), (64, 12)])
def test_mpn_cov_at_one_half_is_scipy_sqrtm_of_the_centred_covariance(channels, side):
    s = centred_pool(realistic_maps(channels, side))
    expected = np.stack([np.real(scipy.linalg.sqrtm(m)) for m in s])
    allowed = tolerance("sqrtm", "forward", "float64", channels, condition_number(s))
    assert relative_error(METHODS["mpn-cov"].reference("sqrtm").forward(s), expected) <= allowed


@pytest.mark.parametrize("alpha", [0.25, 0.75, 1.5])
def test_mpn_cov_power_is_scipy_fractional_matrix_power(alpha):
    s = centred_pool(realistic_maps())
    expected = np.stack([np.real(scipy.linalg.fractional_matrix_power(m, alpha)) for m in s])
    allowed = tolerance("sqrtm", "forward", "float64", 16, condition_number(s))
    assert relative_error(matrix_power(s, alpha), expected) <= allowed


def test_mpn_cov_power_gradient_at_one_half_is_the_lyapunov_solution():
    s = centred_pool(realistic_maps())
    g = np.random.default_rng(3).standard_normal(s.shape)
    expected = reference.sqrtm_vjp(reference.sqrtm(s), g)
    allowed = tolerance("sqrtm", "backward", "float64", 16, condition_number(s))
    assert relative_error(METHODS["mpn-cov"].reference("sqrtm").vjp(s, g), expected) <= allowed


def test_centred_pool_is_x_ibar_xt():
    """S = X Ibar X^T with the N x N Ibar = (1/N)(I - (1/N) 1 1^T) written out (MPN-COV, eq. 1)."""
    x = realistic_maps()
    n = x.shape[2] * x.shape[3]
    features = x.reshape(len(x), x.shape[1], n)
    ibar = (np.eye(n) - np.ones((n, n)) / n) / n
    expected = features @ ibar @ features.transpose(0, 2, 1)
    assert relative_error(centred_pool(x), expected) <= tolerance("pool", "forward", "float64", 16)


def _released_forward(a: np.ndarray, iter_n: int) -> np.ndarray:
    """The released Sqrtm's step structure, written out: first step, iter_n - 2 in the loop, a last
    step forming Y only (iter_n = 1: the first step alone)."""
    norm = np.trace(a, axis1=1, axis2=2)[:, None, None]
    normalised, i3 = a / norm, 3 * np.eye(a.shape[-1])
    zy = (i3 - normalised) / 2
    y = normalised @ zy
    if iter_n >= 2:
        z = zy
        for _ in range(1, iter_n - 1):
            zy = (i3 - z @ y) / 2
            y, z = y @ zy, zy @ z
        y = y @ (i3 - z @ y) / 2
    return y * np.sqrt(norm)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5, 8])
def test_isqrt_cov_root_runs_exactly_the_released_iterations(iterations):
    s = centred_pool(realistic_maps())
    allowed = tolerance("sqrtm", "forward", "float64", 16, condition_number(s))
    assert (
        relative_error(isqrt_cov_root(s, iterations), _released_forward(s, iterations)) <= allowed
    )
    # one iteration more or less is another function: the count is exact
    for other in {max(iterations - 1, 1), iterations + 1} - {iterations}:
        assert relative_error(isqrt_cov_root(s, other), _released_forward(s, iterations)) > 1e-4


def test_isqrt_cov_five_iterations_are_not_the_root_but_many_are():
    s = centred_pool(realistic_maps(64, 12))
    exact = reference.sqrtm(s)
    allowed = tolerance("sqrtm", "forward", "float64", 64, condition_number(s))
    assert relative_error(isqrt_cov_root(s, 5), exact) > 1e-2
    assert relative_error(isqrt_cov_root(s, 40), exact) <= allowed


def test_newton_schulz_iterations_are_the_root_without_normalisation():
    s = centred_pool(realistic_maps())
    traces = np.trace(s, axis1=1, axis2=2)[:, None, None]
    expected = newton_schulz_iterations(s / traces, 5) * np.sqrt(traces)
    assert relative_error(isqrt_cov_root(s, 5), expected) <= 4 * U


def test_bcnn_head_is_the_direct_formula():
    x = realistic_maps()
    n = x.shape[2] * x.shape[3]
    features = x.reshape(len(x), x.shape[1], n)
    y = np.einsum("bcn,bdn->bcd", features, features).reshape(len(x), -1) / n
    for delta in (0.0, 1e-5):
        signed = np.sign(y) * (np.sqrt(np.abs(y) + delta) - np.sqrt(delta))
        expected = signed / np.linalg.norm(signed, axis=1, keepdims=True)
        got = METHODS["bcnn"].reference("head", delta=delta).forward(x)
        assert relative_error(got, expected) <= tolerance("head", "forward", "float64", 16)


def test_triu_orders_are_the_released_ones():
    c = 4
    m = np.arange(c * c, dtype=float).reshape(1, c, c)
    # fast-MPN-COV's PyTorch Triuvec: the nonzeros of ones(C, C).triu() flattened row by row
    row_mask = np.flatnonzero(np.triu(np.ones((c, c))))
    np.testing.assert_array_equal(triu_vec(m, "row")[0], m.reshape(-1)[row_mask])
    # its first release and the MATLAB code: the mask transposed, i.e. the upper triangle of a
    # symmetric matrix column by column
    sym = m + m.transpose(0, 2, 1)
    column_mask = np.flatnonzero(np.triu(np.ones((c, c))).T)
    np.testing.assert_array_equal(triu_vec(sym, "column")[0], sym.reshape(-1)[column_mask])
    rows, columns = triu_indices(c, "column")
    assert list(zip(rows[:4].tolist(), columns[:4].tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 1),
        (0, 2),
    ]
    assert triu_vec(m).shape == (1, c * (c + 1) // 2)  # off-diagonal entries appear once, unscaled


# Vector-Jacobian products against central finite differences


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.5])
def test_mpn_cov_power_vjp(alpha):
    stage = METHODS["mpn-cov"].reference("sqrtm", alpha=alpha)
    assert_vjp(stage.forward, stage.vjp, small_spd())


@pytest.mark.parametrize("iterations", [1, 2, 3, 5, 8])
def test_isqrt_cov_root_vjp(iterations):
    stage = METHODS["isqrt-cov"].reference("sqrtm", iterations=iterations)
    assert_vjp(stage.forward, stage.vjp, small_spd())


def test_isqrt_cov_root_vjp_on_a_non_symmetric_matrix():
    """The iterations are differentiated as written, in every direction (the released hand-derived
    backward had bugs there: fast-MPN-COV PR #7)."""
    a = small_spd()
    a = a + 0.1 * np.random.default_rng(5).standard_normal(a.shape) * np.abs(a).max()
    stage = METHODS["isqrt-cov"].reference("sqrtm")
    assert_vjp(stage.forward, stage.vjp, a)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_stage_vjp(name):
    method = METHODS[name]
    for stage in method.stages:
        bound = method.reference(stage.name)
        if stage.input_kind == FEATURE_MAP:
            # + 0.1: every location nonzero, so the covariance is well away from 0
            x = realistic_maps(4, 3) + 0.1
        elif stage.name == "signed-sqrt":
            # |z| >> delta: near 0 central differences are only first-order accurate
            x = small_spd() - 0.5 * np.mean(small_spd())
            x = x + np.sign(x) * 0.1
        else:
            x = small_spd()
        assert_vjp(bound.forward, bound.vjp, x)


def test_head_vjps_in_the_column_order():
    for name in ("mpn-cov", "isqrt-cov"):
        bound = METHODS[name].reference("head", order="column")
        assert_vjp(bound.forward, bound.vjp, realistic_maps(4, 3) + 0.1)


# Degenerate inputs: finite outputs and gradients


def _degenerate_maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    fewer_locations = relu_feature_maps(rng, 2, 16, 2, 2)  # N = 4 < C: rank <= 3 after centring
    dead = relu_feature_maps(rng, 2, 8, 4, 4, dead_channels=3)
    constant = np.ones((2, 6, 3, 3))  # centred covariance 0: tr S = 0
    one_location = rng.standard_normal((2, 6, 1, 1))
    zeros = np.zeros((1, 5, 2, 2))
    return {
        "fewer-locations": fewer_locations,
        "dead-channels": dead,
        "constant": constant,
        "one-location": one_location,
        "zeros": zeros,
    }


@pytest.mark.parametrize("case", list(_degenerate_maps()))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_degenerate_inputs_give_finite_values(name, case):
    x = _degenerate_maps()[case]
    method = METHODS[name]
    for stage in method.stages:
        bound = method.reference(stage.name)
        if stage.input_kind == FEATURE_MAP:
            inputs = x
        else:
            inputs = method.reference("pool").forward(x)
        out = bound.forward(inputs)
        grad = bound.vjp(inputs, np.random.default_rng(6).standard_normal(out.shape))
        assert np.all(np.isfinite(out)), (stage.name, "forward")
        assert np.all(np.isfinite(grad)), (stage.name, "vjp")


def test_zero_covariance_maps_to_zero():
    """tr S = 0 is 0 / 0 in iSQRT-COV; the reference's limit is 0 (sqrt(tr S) -> 0)."""
    x = np.ones((2, 6, 3, 3))
    for name in ("mpn-cov", "isqrt-cov"):
        assert np.all(METHODS[name].reference("head").forward(x) == 0)


# The records


def test_records_map_stages_and_parameters():
    assert METHOD_NAMES == ("ibp", "bcnn", "mpn-cov", "isqrt-cov")
    assert "sqrtm" not in METHODS["bcnn"].stage_names
    assert METHODS["isqrt-cov"].defaults() == {"iterations": 5, "order": "row"}
    assert METHODS["mpn-cov"].defaults()["alpha"] == 0.5
    assert METHODS["isqrt-cov"].reference("sqrtm", iterations=3).parameters == (("iterations", 3),)
    assert METHODS["isqrt-cov"].reference("head").output_shape((2, 6, 3, 3)) == (2, 21)
    assert METHODS["bcnn"].reference("head").output_shape((2, 6, 3, 3)) == (2, 36)
    assert [n.property for n in METHODS["isqrt-cov"].not_applicable_to("sqrtm")] == [
        "square-root",
        "convergence",
    ]
    assert METHODS["ibp"].not_applicable == ()
    assert [METHODS[name].min_locations for name in METHOD_NAMES] == [1, 1, 2, 2]
    # IBP through the records is reference.stages
    x = realistic_maps(4, 3)
    np.testing.assert_array_equal(
        METHODS["ibp"].reference("head").forward(x), reference.ibp_head(x)
    )


@pytest.mark.parametrize(
    ("name", "stage", "overrides", "message"),
    [
        ("bcnn", "head", {"alpha": 0.5}, "bcnn has no parameter 'alpha'; its parameters: delta"),
        ("bcnn", "sqrtm", {}, "bcnn has no stage 'sqrtm'"),
        ("isqrt-cov", "sqrtm", {"iterations": 0}, "iterations must be an int >= 1"),
        ("isqrt-cov", "sqrtm", {"iterations": 2.0}, "iterations must be an int >= 1"),
        ("mpn-cov", "sqrtm", {"alpha": 0}, "alpha must be a finite number > 0"),
        ("mpn-cov", "sqrtm", {"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ("mpn-cov", "pool", {"eps": -1.0}, "eps must be a finite number >= 0"),
        ("isqrt-cov", "head", {"order": "diagonal"}, "unknown order 'diagonal'"),
    ],
)
def test_bad_parameters_are_named(name, stage, overrides, message):
    with pytest.raises(IBPInputError, match=message):
        METHODS[name].reference(stage, **overrides)


def test_bad_inputs_are_named():
    with pytest.raises(IBPInputError, match="unknown method 'isqrt'"):
        get_method("isqrt")
    with pytest.raises(IBPInputError, match="trace >= 0"):
        isqrt_cov_root(-np.eye(3)[None])
    with pytest.raises(IBPInputError, match="non-finite"):
        matrix_power(np.full((1, 2, 2), np.nan))
    with pytest.raises(IBPInputError, match="square"):
        isqrt_cov_root(np.ones((1, 2, 3)))
