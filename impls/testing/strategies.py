"""The one module of hypothesis strategies: SPD batches with chosen spectra, ReLU feature maps.

Every strategy draws a seed and shapes, then builds the array with the seeded generators of
`impls.testing.matrices`, so hypothesis shrinks towards small shapes and simple spectra.
"""

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from impls.testing.matrices import relu_feature_maps, spd_with_spectrum

PROFILE_VARIABLE = "IBP_HYPOTHESIS_PROFILE"


def register_profiles():
    """`ci`: few examples, derandomised, so CI time is bounded and repeatable. `dev`: the default.
    `thorough`: long local runs that hunt for rare counterexamples."""
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=12, derandomize=True, print_blob=True, **common)
    settings.register_profile("dev", max_examples=25, **common)
    settings.register_profile("thorough", max_examples=500, **common)


def load_profile():
    register_profiles()
    settings.load_profile(os.environ.get(PROFILE_VARIABLE, "dev"))


seeds = st.integers(0, 2**32 - 1)
batch_sizes = st.integers(1, 4)
channel_counts = st.integers(1, 12)

#: Spectrum shapes the square root and its Lyapunov backward must survive.
SPECTRUM_KINDS = ("log_uniform", "clustered", "repeated", "zeros_before_eps")


def spectrum(rng, kind, channels, condition, eps):
    """Eigenvalues in [1/condition, 1] (times a scale) shaped by `kind`."""
    if kind == "log_uniform":
        values = np.exp(rng.uniform(-np.log(condition), 0.0, channels))
    elif kind == "clustered":
        centres = np.array([1.0, 1.0 / condition])
        values = centres[rng.integers(0, 2, channels)] * (1 + 1e-6 * rng.standard_normal(channels))
    elif kind == "repeated":
        values = np.full(channels, 1.0)
        values[: channels // 2] = 1.0 / condition
    else:  # zeros_before_eps: a rank-deficient covariance made definite by eps alone
        values = np.exp(rng.uniform(-np.log(condition), 0.0, channels))
        values[rng.random(channels) < 0.5] = 0.0
        values = values + eps
    return values


@st.composite
def spd_batches(draw, channels=channel_counts, batch=batch_sizes, max_condition=1e6, kinds=None,
                eps=1e-3):
    """(B, C, C) symmetric positive-definite batches with chosen spectra and condition numbers."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    kind = draw(st.sampled_from(kinds or SPECTRUM_KINDS))
    condition = 10.0 ** draw(st.floats(0.0, np.log10(max_condition)))
    scale = 10.0 ** draw(st.floats(-2.0, 2.0))
    values = np.stack([spectrum(rng, kind, c, condition, eps) for _ in range(b)])
    return scale * spd_with_spectrum(rng, values)


@st.composite
def feature_maps(draw, channels=channel_counts, batch=batch_sizes, sides=st.integers(1, 5)):
    """Channels-first (B, C, H, W) ReLU feature maps, often with N = H*W < C and dead channels."""
    rng = np.random.default_rng(draw(seeds))
    c, b, h, w = draw(channels), draw(batch), draw(sides), draw(sides)
    dead = draw(st.integers(0, c - 1))
    return relu_feature_maps(rng, b, c, h, w, dead_channels=dead)
