"""Every stage of both frameworks against the float64 reference and the reference-free properties.

Each test is written once; the `backend` fixture runs it on torch and on TensorFlow.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from impls.testing import properties
from impls.testing.stage_specs import FEATURE_MAP, STAGES
from impls.testing.strategies import feature_maps, spd_batches

# Newton-Schulz converges to round-off at 30 iterations for condition numbers up to 1e6 (the
# strategies' range); the default count's accuracy on realistic covariances has its own test.
SQRTM_OPTIONS: dict[str, dict[str, object]] = {
    "auto": {"method": "auto"},
    "eigh": {"method": "eigh"},
    "ns-lyapunov": {"method": "newton_schulz", "num_iters": 30, "backward": "lyapunov"},
    "ns-iterative": {"method": "newton_schulz", "num_iters": 30, "backward": "newton_schulz"},
    "ns-autograd": {"method": "newton_schulz", "num_iters": 30, "backward": "autograd"},
}
# The minimax root's first step can shrink eigenvalues ~120-fold before they grow back, so its
# round-off is that much above a direct method's: tests/test_minimax_newton_schulz.py judges it
# against the reference with that amplification in the bound, and the robustness table holds it to
# the degenerate-spectrum contract.
STAGE_CASES: list[tuple[str, dict[str, object]]] = [
    ("pool", {}),
    ("signed-sqrt", {}),
    ("l2", {}),
    ("head", {}),
    *(("sqrtm", options) for options in SQRTM_OPTIONS.values()),
]
CASE_IDS = ["pool", "signed-sqrt", "l2", "head"] + [f"sqrtm-{name}" for name in SQRTM_OPTIONS]


def inputs_for(spec, **spd_options):
    return feature_maps() if spec.input_kind == FEATURE_MAP else spd_batches(**spd_options)


@pytest.fixture(params=STAGE_CASES, ids=CASE_IDS, scope="session")
def stage(request, backend):
    name, options = request.param
    spec = STAGES[name]
    return spec, spec.implementation(backend, **options)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_matches_reference(backend, stage, dtype, data):
    spec, fn = stage
    # float32 cannot resolve a Lyapunov solve beyond kappa ~ 1/u; the table's tolerance would
    # then be vacuous, so float32 draws condition numbers a test can still judge.
    x = data.draw(inputs_for(spec, max_condition=1e6 if dtype == "float64" else 1e3))
    properties.check_reference_agreement(backend, spec, fn, x, dtype)


@given(data=st.data())
def test_per_sample_independence(backend, stage, data):
    spec, fn = stage
    x = data.draw(inputs_for(spec, batch=st.integers(2, 4)))
    properties.check_per_sample_independence(backend, spec, fn, x, "float64")


@given(data=st.data())
def test_any_batch_size(backend, stage, data):
    spec, fn = stage
    x = data.draw(inputs_for(spec, batch=st.integers(1, 5)))
    properties.check_batch_consistency(backend, spec, fn, x, "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_finite_on_degenerate_input(backend, stage, dtype, data):
    """Rank-deficient covariances (N < C, dead channels) and exactly repeated eigenvalues."""
    spec, fn = stage
    x = data.draw(inputs_for(spec, kinds=("repeated", "zeros_before_eps", "clustered")))
    properties.check_finite(backend, spec, fn, x, dtype)


@pytest.mark.parametrize("options", SQRTM_OPTIONS.values(), ids=SQRTM_OPTIONS)
@given(a=spd_batches())
def test_root_squares_to_input(backend, options, a):
    spec = STAGES["sqrtm"]
    properties.check_square_root(
        backend, spec.implementation(backend, **options), a, "float64", spec
    )


@pytest.mark.parametrize("options", SQRTM_OPTIONS.values(), ids=SQRTM_OPTIONS)
@given(a=spd_batches(channels=st.integers(1, 5), batch=st.integers(1, 2), max_condition=1e3))
def test_sqrtm_gradient_check(backend, options, a):
    # Finite-difference steps are absolute (1e-6): bring the matrix to unit scale first.
    unit = a / np.abs(a).max()
    backend.check_gradient(lambda m: backend.impl.sqrtm(m, **options), backend.tensor(unit))


@pytest.mark.parametrize("name", ["pool", "head"])
@given(
    x=feature_maps(
        channels=st.integers(1, 4),
        batch=st.integers(1, 2),
        shapes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    )
)
def test_feature_map_stage_gradient_check(backend, name, x):
    fn = STAGES[name].implementation(backend)
    backend.check_gradient(fn, backend.feature_map(x + 0.1))


@pytest.mark.parametrize("name", ["signed-sqrt", "l2"])
@given(a=spd_batches(channels=st.integers(1, 4), batch=st.integers(1, 2)))
def test_elementwise_stage_gradient_check(backend, name, a):
    fn = STAGES[name].implementation(backend)
    unit = a / np.abs(a).max()
    backend.check_gradient(fn, backend.tensor(unit - unit.mean() + 0.05))


def test_eps_zero_pool_is_the_covariance(backend):
    x = np.random.default_rng(3).random((3, 5, 4, 2))
    out = backend.numpy(backend.impl.bilinear_pool(backend.feature_map(x), eps=0.0))
    features = x.reshape(3, 5, 8)
    np.testing.assert_allclose(out, features @ features.transpose(0, 2, 1) / 8, rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32(backend, dtype):
    """Half inputs come back in their dtype, with float32 accuracy inside (then one rounding)."""
    x = np.random.default_rng(4).random((2, 6, 5, 5))
    head = STAGES["head"].implementation(backend)
    half_input = backend.feature_map(x, dtype)
    half = head(half_input)
    assert backend.dtype_name(half) == dtype
    same_values = backend.feature_map(backend.feature_map_numpy(half_input), "float32")
    single = backend.numpy(head(same_values))
    rounding = 2.0**-8 if dtype == "bfloat16" else 2.0**-11
    np.testing.assert_allclose(backend.numpy(half), single, atol=rounding * np.abs(single).max())


def test_auto_on_a_gpu_is_the_matmul_only_minimax_root():
    """No eigensolver and no host read on a GPU: 61 matrix products (results/products.md)."""
    from impls.torch.stages import _resolve_auto
    from reference.contracts import with_method_defaults

    method, backward, eigh_dtype, _ = _resolve_auto("auto", None, "cuda")
    assert (method, eigh_dtype) == ("minimax_newton_schulz", None)
    assert with_method_defaults(method, None, backward) == (7, "newton_schulz")
