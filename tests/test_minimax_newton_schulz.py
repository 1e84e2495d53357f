"""The minimax Newton-Schulz square root: its step schedule, accuracy on realistic covariances in
both frameworks, its matrix-product count, float32 stability on rank-deficient input, and no host
synchronisation on its path."""

import importlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference
from impls.minimax_polynomials import (
    DEFAULT_MINIMAX_ITERATIONS,
    DESIGN_LOWER_BOUND,
    quintic_schedule,
)
from impls.testing.numerical_error import realistic_case
from impls.testing.strategies import feature_maps_with_dead_channels, spd_batches
from impls.testing.tolerances import condition_number, relative_error, tolerance
from reference.contracts import IBPInputError
from reference.conventions import AUTO_STATED_ACCURACY

from .conftest import import_framework

BACKWARDS = ["newton_schulz", "autograd", "lyapunov"]


def _symmetric_part(m):
    return (m + np.swapaxes(m, -1, -2)) / 2


def _module(backend):
    return importlib.import_module(f"{backend.impl_module}.minimax_newton_schulz")


def _root_and_gradient(backend, a, g, num_iters, backward="newton_schulz", dtype="float32"):
    """The root of `a` and the gradient of <g, root>, NumPy in and out. The cotangent is made
    symmetric: autograd differentiates the entries of A one by one, and sqrtm's convention (the
    symmetric part of the Lyapunov solution) is what it returns for a symmetric cotangent."""
    module = _module(backend)
    out, (grad,) = backend.value_and_vjp(
        lambda m: module.minimax_sqrtm(m, num_iters, backward),
        [backend.tensor(a, dtype)],
        _symmetric_part(g),
    )
    return out, grad


def _errors(backend, case, num_iters=DEFAULT_MINIMAX_ITERATIONS, backward="newton_schulz"):
    """(forward, backward) relative errors in float32 on a `realistic_case`."""
    a, g, z, dz = case
    out, grad = _root_and_gradient(backend, a, g, num_iters, backward)
    return relative_error(out, z), relative_error(grad, dz)


def _composed_schedule(x, num_iters):
    """The sign iterate s_K(x) of each eigenvalue x of (A / ||A||_F)^(1/2), in float64."""
    for c1, c3, c5 in quintic_schedule(num_iters).coefficients:
        x = c1 * x + c3 * x**3 + c5 * x**5
    return x


def _unconverged_bound(num_iters):
    """max over x in [0, 1] of x |1 - s_K(x)|: in exact arithmetic, an eigenvalue lambda of A
    leaves sqrt(lambda) |1 - s_K(x)| <= sqrt(||A||_F) * this bound in the root, and
    ||Z||_F^2 = tr A >= ||A||_F, so the relative forward error is at most sqrt(C) times it."""
    x = np.linspace(0.0, 1.0, 200_001)
    return float(np.max(x * np.abs(1 - _composed_schedule(x, num_iters))))


def _roundoff_amplification():
    """How much the schedule amplifies round-off over a direct method: the first step maps some
    eigenvalues of a well-conditioned input down to l_1 = 1 - E_0 (its equioscillation points),
    and the error committed there grows with them back to 1, by up to 1 / l_1 (~120)."""
    x = np.geomspace(DESIGN_LOWER_BOUND, 1.0, 100_001)
    return 1 / float(np.min(_composed_schedule(x, 1)))


@pytest.fixture(scope="module", params=[64, 512], ids=lambda c: f"C{c}")
def case(request):
    return realistic_case(request.param)


def test_schedule_reaches_one_on_its_design_interval():
    x = np.geomspace(DESIGN_LOWER_BOUND, 1.0, 100_001)
    assert np.max(np.abs(1 - _composed_schedule(x, DEFAULT_MINIMAX_ITERATIONS))) < 1e-6
    # One step fewer is still far off: the default count is the fewest that converges.
    assert np.max(np.abs(1 - _composed_schedule(x, DEFAULT_MINIMAX_ITERATIONS - 1))) > 1e-4


def test_schedule_lifts_eigenvalues_below_its_design_interval():
    """Every step is increasing on [0, l_k]: an eigenvalue below the design bound (a condition
    number beyond 1e6) converges later, never moves away."""
    x = np.geomspace(1e-9, DESIGN_LOWER_BOUND, 1_001)
    steps = [_composed_schedule(x, k) for k in range(DEFAULT_MINIMAX_ITERATIONS + 1)]
    assert all(np.all(later > earlier) for earlier, later in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize("backward", BACKWARDS)
def test_default_steps_meet_the_target(backend, case, backward):
    forward, backward_error = _errors(backend, case, backward=backward)
    assert forward <= AUTO_STATED_ACCURACY, forward
    assert backward_error <= AUTO_STATED_ACCURACY, backward_error


def test_error_falls_with_steps(backend):
    errors = [_errors(backend, realistic_case(64), k) for k in (5, 6, 7)]
    forward = [e[0] for e in errors]
    backward = [e[1] for e in errors]
    assert forward[0] > forward[1] > forward[2], forward
    assert backward[0] > backward[1] > backward[2], backward


def test_products_within_budget():
    """Matrix products at torch's dispatcher: forward 4K - 1 (the last two check for negative
    eigenvalues at work), iterative backward 5K - 1."""
    import_framework("torch")
    from bench.products import PRODUCT_BUDGET
    from bench.products.counting import count_products
    from impls.torch.minimax_newton_schulz import minimax_sqrtm

    a, g, _, _ = realistic_case(8)
    k = DEFAULT_MINIMAX_ITERATIONS
    counted = count_products(lambda m: minimax_sqrtm(m, k, "newton_schulz"), a, g)
    assert (counted.forward_products, counted.backward_products) == (4 * k - 1, 5 * k - 1)
    assert counted.products <= PRODUCT_BUDGET
    # Through autograd: the same forward, and 8K - 6 products back through the steps. That is
    # 2 over the budget since the forward checks for negative eigenvalues (2 products): the
    # budget is the default backward's target, which the check leaves with 14 to spare.
    through_autograd = count_products(lambda m: minimax_sqrtm(m, k, "autograd"), a, g)
    assert through_autograd.backward_products == 8 * k - 6
    assert through_autograd.products == (4 * k - 1) + (8 * k - 6)


# Enough steps to converge down to the strategies' condition number: float32 draws reach 1e3
# (eigenvalues of the sign iterate >= 1.7e-2, inside the design interval), float64 draws 1e6
# (>= 5e-4, half the design bound: three more steps).
STEPS_TO_ROUNDOFF = {
    "float32": DEFAULT_MINIMAX_ITERATIONS,
    "float64": DEFAULT_MINIMAX_ITERATIONS + 3,
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(data=st.data())
def test_converges_to_roundoff(backend, dtype, data):
    """Against the reference at the tolerance table's round-off bound, times the schedule's
    round-off amplification: a converged root is as good as a direct method up to that factor."""
    a = data.draw(spd_batches(max_condition=1e6 if dtype == "float64" else 1e3))
    g = np.random.default_rng(0).standard_normal(a.shape)
    out, grad = _root_and_gradient(backend, a, g, STEPS_TO_ROUNDOFF[dtype], dtype=dtype)
    z = reference.sqrtm(a)
    c, kappa, amplification = a.shape[-1], condition_number(a), _roundoff_amplification()
    allowed = tolerance("sqrtm", "forward", dtype, c, kappa, amplification)
    assert relative_error(out, z) <= allowed
    allowed = tolerance("sqrtm", "backward", dtype, c, kappa, amplification)
    assert relative_error(grad, reference.sqrtm_vjp(z, g)) <= allowed


# eps = 0 on rank-deficient input: SciPy warns that the reference's matrix is singular, as expected.
@pytest.mark.filterwarnings("ignore:Matrix is singular")
@given(x=feature_maps_with_dead_channels(), eps=st.sampled_from([0.0, 1e-12, 1e-8, 1e-5]))
def test_float32_stable_on_rank_deficient_input(backend, x, eps):
    """Dead channels and N < C with eps from 0 up: eigenvalues far below the design interval,
    where the coupled iteration's Z grows and float32 could lose the commutativity it relies on,
    and (eps = 0) round-off below zero, which sqrtm recomputes by eigh. The root stays within its
    unconverged-eigenvalue bound plus round-off at the design interval's condition number, and
    both root and gradient stay finite."""
    a = reference.bilinear_pool(x, eps)
    g = np.random.default_rng(0).standard_normal(a.shape)
    out, (grad,) = backend.value_and_vjp(
        lambda m: backend.impl.sqrtm(m, method="minimax_newton_schulz"),
        [backend.tensor(a, "float32")],
        _symmetric_part(g),
    )
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    channels = a.shape[-1]
    allowed = math.sqrt(channels) * _unconverged_bound(DEFAULT_MINIMAX_ITERATIONS) + tolerance(
        "sqrtm", "forward", "float32", channels, condition=DESIGN_LOWER_BOUND**-2
    )
    assert relative_error(out, reference.sqrtm(a)) <= allowed


@pytest.mark.parametrize("backward", BACKWARDS)
def test_frameworks_agree(backward):
    """The two implementations are one algorithm: in float64 they differ by round-off only."""
    import_framework("torch")
    import_framework("tensorflow")
    from impls.backends import BACKENDS

    a, g, _, _ = realistic_case(16)
    torch_out, torch_grad, tf_out, tf_grad = (
        result
        for name in ("torch", "tf")
        for result in _root_and_gradient(
            BACKENDS[name], a, g, DEFAULT_MINIMAX_ITERATIONS, backward, "float64"
        )
    )
    kappa, amplification = condition_number(a), _roundoff_amplification()
    forward = tolerance("sqrtm", "forward", "float64", 16, kappa, amplification)
    assert relative_error(tf_out, torch_out) <= forward
    backward_allowed = tolerance("sqrtm", "backward", "float64", 16, kappa, amplification)
    assert relative_error(tf_grad, torch_grad) <= backward_allowed


def test_needs_a_step(backend):
    with pytest.raises(IBPInputError, match="at least one step"):
        _module(backend).minimax_sqrtm(backend.tensor(np.eye(2)[None], "float32"), 0, "autograd")


@pytest.mark.parametrize("backward", ["newton_schulz", "autograd"])
def test_no_host_synchronisation(monkeypatch, backward):
    """A CUDA-free proxy: on a GPU, reading a tensor's value on the host (item, bool, float, int,
    tolist, numpy) waits for the device; the matmul-only path must never do it."""
    torch = import_framework("torch")
    from impls.torch.minimax_newton_schulz import minimax_sqrtm

    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    a = torch.tensor(realistic_case(8)[0], dtype=torch.float32, requires_grad=True)
    a.sum().item()
    assert reads == ["item"], "the spies must see a host read"
    reads.clear()
    minimax_sqrtm(a, DEFAULT_MINIMAX_ITERATIONS, backward).sum().backward()
    assert reads == []
