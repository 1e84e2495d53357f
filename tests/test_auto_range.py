"""`auto` beyond its measured accuracy range: a float32 eigendecomposition meets 1e-3 forward and
backward only up to a condition number (impls/auto_table.json, `python -m bench.measure_auto`);
covariances of real backbones at their own scale, with the absolute eps = 1e-5, reach 1e7. Where
the eigenvalues come free (auto chose an eigendecomposition: the CPU) the samples beyond the range
are computed again in float64; after an iterative root (a GPU) that is opt-in, check_range=True.
"""

import numpy as np
import pytest

from impls import auto_table
from impls.testing.matrices import spd_with_spectrum
from impls.testing.tolerances import relative_error
from reference import IBPInputError
from reference.conventions import AUTO_STATED_ACCURACY

#: Far beyond the float32 eigendecomposition's range (1e4 to 1e5 measured), well within float64's.
CONDITION = 1e7
#: A measured range for the fake choices below: the bound auto compares against.
BOUND = 1e4


def _case(condition, channels=32, seed=0):
    rng = np.random.default_rng(seed)
    a = spd_with_spectrum(rng, np.geomspace(1 / condition, 1.0, channels)[None].repeat(2, 0))
    return a, rng.standard_normal(a.shape)


def _reference(backend, a, g, dtype="float32"):
    """The float64 root and its gradient on the input as `backend` rounds it."""
    import reference

    a = backend.numpy(backend.tensor(a, dtype)).astype(np.float64)
    z = reference.sqrtm(a)
    return z, reference.sqrtm_vjp(z, (g + np.swapaxes(g, -1, -2)) / 2)


@pytest.fixture
def choice(monkeypatch):
    """auto's choice, whatever the shipped table says: set it with choice(candidate)."""

    def set_choice(candidate):
        made = auto_table.Choice(candidate, "measured", 64, BOUND)
        monkeypatch.setattr(auto_table, "choose", lambda *args: made)

    return set_choice


def _errors(backend, a, g, **options):
    out, (grad,) = backend.value_and_vjp(
        lambda m: backend.impl.sqrtm(m, **options), [backend.tensor(a, "float32")], g
    )
    z, dz = _reference(backend, a, g)
    return relative_error(out, z), relative_error(grad, dz)


def test_float32_eigh_beyond_its_range_is_computed_again(backend, choice):
    choice("eigh_float32")
    a, g = _case(CONDITION)
    unchecked = _errors(backend, a, g, check_range=False)
    # The case is one that needs the check: without it, the backward misses the promise.
    assert unchecked[1] > AUTO_STATED_ACCURACY, unchecked
    assert max(_errors(backend, a, g)) <= AUTO_STATED_ACCURACY


def test_within_the_range_nothing_changes(backend, choice):
    """A well-conditioned batch keeps the float32 eigendecomposition's answer, bit for bit."""
    choice("eigh_float32")
    a, g = _case(1e2)
    plain = backend.numpy(backend.impl.sqrtm(backend.tensor(a, "float32"), check_range=False))
    checked = backend.numpy(backend.impl.sqrtm(backend.tensor(a, "float32")))
    np.testing.assert_array_equal(plain, checked)


def test_an_iterative_choice_checks_when_asked(backend, choice):
    """The GPU's minimax root: no eigenvalues come free, so the check costs an eigenvalue
    decomposition and is opt-in."""
    choice("minimax_newton_schulz")
    a, g = _case(CONDITION)
    assert max(_errors(backend, a, g)) > AUTO_STATED_ACCURACY  # unchecked by default
    assert max(_errors(backend, a, g, check_range=True)) <= AUTO_STATED_ACCURACY


def test_the_check_inside_a_graph(backend, choice):
    choice("eigh_float32")
    a, g = _case(CONDITION)
    sqrtm = backend.impl.sqrtm
    if backend.name == "tf":
        tf = backend.fw
        compiled = tf.function(sqrtm, input_signature=[tf.TensorSpec(None, tf.float32)])
    else:
        compiled = backend.fw.compile(sqrtm, backend="eager", fullgraph=True)
    out, (grad,) = backend.value_and_vjp(compiled, [backend.tensor(a, "float32")], g)
    z, dz = _reference(backend, a, g)
    assert relative_error(out, z) <= AUTO_STATED_ACCURACY
    assert relative_error(grad, dz) <= AUTO_STATED_ACCURACY


def test_the_head_takes_the_option(backend, choice):
    choice("minimax_newton_schulz")
    head = backend.impl.IBPHead(4, check_range=True)
    if backend.name == "tf":
        assert head.get_config()["check_range"] is True
    with pytest.raises(IBPInputError, match="check_range must be True, False or None"):
        backend.impl.IBPHead(4, check_range="yes")
    with pytest.raises(IBPInputError, match="check_range"):
        backend.impl.sqrtm(backend.tensor(np.eye(2)[None]), check_range=1)
