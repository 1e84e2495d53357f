"""The GPU matmul floor's FLOP counts come from the products each root actually makes (counted at
torch's dispatcher), not from a formula that can fall behind the code."""

import pytest

from tests.conftest import import_framework

import_framework("torch")

from bench.flops import matmul_flops, sqrtm_flops  # noqa: E402


def test_flops_are_the_counted_products_times_a_product():
    """The minimax root's documented counts (tests/test_minimax_newton_schulz.py): forward 4K - 1
    (two products check for negative eigenvalues at work: a formula without them, 4K - 3, was
    what this module said before), iterative backward 5K - 1."""
    k, channels, batch = 7, 512, 8
    forward = sqrtm_flops("minimax_newton_schulz", channels, batch, k)
    both = sqrtm_flops("minimax_newton_schulz", channels, batch, k, "newton_schulz")
    assert forward == (4 * k - 1) * matmul_flops(channels, batch)
    assert both == (4 * k - 1 + 5 * k - 1) * matmul_flops(channels, batch)


@pytest.mark.parametrize("method", ["newton_schulz", "minimax_newton_schulz"])
def test_an_eigenbasis_backward_has_no_matmul_floor(method):
    assert sqrtm_flops(method, 64, 1, 5, "lyapunov") is None


def test_more_steps_cost_more_products():
    few, many = (sqrtm_flops("newton_schulz", 64, 1, k, "newton_schulz") for k in (5, 10))
    assert few is not None and many is not None and many > few
