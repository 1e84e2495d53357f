"""The one module of hypothesis strategies: SPD batches with chosen spectra, ReLU feature maps.

Every strategy draws a seed and shapes, then builds the array with the seeded generators of
`impls.testing.matrices`, so hypothesis shrinks towards small shapes and simple spectra.
"""

import math
import os
from collections.abc import Sequence

import numpy as np
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from impls.testing.matrices import relu_covariances, relu_feature_maps, spd_with_spectrum
from reference.conventions import DEFAULT_EPS

PROFILE_VARIABLE = "IBP_HYPOTHESIS_PROFILE"


def register_profiles() -> None:
    """`ci`: few examples, derandomised, so CI time is bounded and repeatable. `dev`: the default.
    `thorough`: long local runs that hunt for rare counterexamples."""
    common = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", common, max_examples=12, derandomize=True, print_blob=True)
    settings.register_profile("dev", common, max_examples=25)
    settings.register_profile("thorough", common, max_examples=500)


def load_profile() -> None:
    register_profiles()
    settings.load_profile(os.environ.get(PROFILE_VARIABLE, "dev"))


seeds = st.integers(0, 2**32 - 1)
batch_sizes = st.integers(1, 4)
channel_counts = st.integers(1, 12)
map_sides = st.integers(1, 5)

#: Spectrum shapes the square root and its Lyapunov backward must survive.
SPECTRUM_KINDS = ("log_uniform", "clustered", "repeated", "zeros_before_eps")


def spectrum(
    rng: np.random.Generator, kind: str, channels: int, condition: float, eps: float
) -> np.ndarray:
    """Eigenvalues in [1/condition, 1] shaped by `kind`; their condition number is at most
    `condition` (a bound the strategies' meta-tests check)."""
    if condition <= 1:
        return np.ones(channels)  # a condition number of 1 leaves one spectrum: s * I
    if kind == "log_uniform":
        values = np.exp(rng.uniform(-np.log(condition), 0.0, channels))
    elif kind == "clustered":
        centres = np.array([1.0, 1.0 / condition])
        spread = 1 + 1e-6 * rng.uniform(-1.0, 1.0, channels)
        values = np.clip(centres[rng.integers(0, 2, channels)] * spread, 1.0 / condition, 1.0)
    elif kind == "repeated":
        values = np.full(channels, 1.0)
        values[: channels // 2] = 1.0 / condition
    else:  # zeros_before_eps: a rank-deficient covariance made definite by the eps added alone
        values = np.exp(rng.uniform(-np.log(condition), 0.0, channels))
        values[rng.random(channels) < 0.5] = 0.0
        # eps below largest / (condition - 1) would push the condition number past `condition`.
        floor = values.max() / (condition - 1) if condition > 1 else values.max()
        values = values + max(eps, floor)
        values = values / values.max()
    return values


@st.composite
def spd_batches(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts,
    batch: st.SearchStrategy[int] = batch_sizes,
    max_condition: float = 1e6,
    kinds: Sequence[str] | None = None,
    eps: float = 1e-3,
) -> np.ndarray:
    """(B, C, C) symmetric positive-definite batches with chosen spectra and condition numbers."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    kind = draw(st.sampled_from(kinds or SPECTRUM_KINDS))
    condition = 10.0 ** draw(st.floats(0.0, np.log10(max_condition)))
    scale = 10.0 ** draw(st.floats(-2.0, 2.0))
    values = np.stack([spectrum(rng, kind, c, condition, eps) for _ in range(b)])
    return scale * spd_with_spectrum(rng, values)


#: (H, W) of a feature map, each side drawn on its own.
map_shapes = st.tuples(map_sides, map_sides)


@st.composite
def feature_maps(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts,
    batch: st.SearchStrategy[int] = batch_sizes,
    shapes: st.SearchStrategy[tuple[int, int]] = map_shapes,
) -> np.ndarray:
    """Channels-first (B, C, H, W) ReLU feature maps, often with N = H*W < C and dead channels."""
    rng = np.random.default_rng(draw(seeds))
    c, b, (h, w) = draw(channels), draw(batch), draw(shapes)
    dead = draw(st.integers(0, c - 1))
    return relu_feature_maps(rng, b, c, h, w, dead_channels=dead)


def register_check_profile() -> settings:
    """`check`: what `ibp-check` runs a user's function under. Derandomised, so two runs on the same
    function print the same verdict; no example database, so nothing is written beside the user's
    code; the phases that replay stored or explicit examples are off for the same reason."""
    settings.register_profile(
        "check",
        derandomize=True,
        database=None,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    return settings.get_profile("check")


def realistic_side(channels: int) -> int:
    """The smallest map side with at least twice as many locations as channels: a full-rank
    covariance, as the relu5_3 maps of a 448 input (784 locations, 512 channels) give."""
    return max(3, math.ceil(math.sqrt(2 * channels)))


def realistic_sides(channels: int) -> st.SearchStrategy[int]:
    return st.integers(realistic_side(channels), realistic_side(channels) + 3)


def _square(sides: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, int]]:
    return sides.map(lambda side: (side, side))


@st.composite
def realistic_covariances(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts,
    batch: st.SearchStrategy[int] = batch_sizes,
    sides: st.SearchStrategy[int] | None = None,
) -> np.ndarray:
    """Covariances of full-rank ReLU feature maps (`matrices.relu_covariances`): one dominant
    eigenvalue, condition numbers ~1e2-1e3. Approximate square roots are judged on these."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    side = draw(sides or realistic_sides(c))
    return relu_covariances(rng, b, c, side, side)


@st.composite
def realistic_feature_maps(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts,
    batch: st.SearchStrategy[int] = batch_sizes,
    shapes: st.SearchStrategy[tuple[int, int]] | None = None,
) -> np.ndarray:
    """ReLU feature maps with more locations than channels (unless `shapes` fixes fewer) and no
    dead channel."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    h, w = draw(shapes if shapes is not None else _square(realistic_sides(c)))
    return relu_feature_maps(rng, b, c, h, w)


#: Dead channels need a live one beside them.
channel_counts_with_dead = st.integers(2, 12)


@st.composite
def feature_maps_with_dead_channels(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts_with_dead,
    batch: st.SearchStrategy[int] = batch_sizes,
    shapes: st.SearchStrategy[tuple[int, int]] = map_shapes,
) -> np.ndarray:
    """`feature_maps` with at least one channel exactly zero: the pooled matrix then has a zero row
    off the diagonal, which tells eps * I from eps * ones exactly, at any precision."""
    rng = np.random.default_rng(draw(seeds))
    c, b, (h, w) = draw(channels), draw(batch), draw(shapes)
    dead = draw(st.integers(1, max(1, c - 1)))
    return relu_feature_maps(rng, b, c, h, w, dead_channels=dead)


@st.composite
def spd_batches_with_dead_channels(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts_with_dead,
    batch: st.SearchStrategy[int] = batch_sizes,
) -> np.ndarray:
    """`spd_batches` whose rows and columns of some channels are exactly zero, as in the root of a
    covariance with dead channels: the exact zeros a signed square root and L2 meet."""
    a = draw(spd_batches(channels=channels, batch=batch))
    rng = np.random.default_rng(draw(seeds))
    dead = rng.choice(a.shape[1], draw(st.integers(1, max(1, a.shape[1] - 1))), replace=False)
    a[:, dead, :] = 0.0
    a[:, :, dead] = 0.0
    return a


no_dead_channels = st.just(0)


@st.composite
def realistic_roots(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int] = channel_counts,
    batch: st.SearchStrategy[int] = batch_sizes,
    dead: st.SearchStrategy[int] = no_dead_channels,
) -> np.ndarray:
    """Square roots Z of realistic covariances, the signed square root's input in a network:
    entries of both signs, at the scale of sqrt(covariance). With `dead` channels, their rows
    and columns are exactly zero off the diagonal, as exact arithmetic leaves them."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    side = draw(realistic_sides(c))
    dead_count = min(draw(dead), c - 1)
    features = relu_feature_maps(rng, b, c, side, side, dead_count).reshape(b, c, -1)
    covariance = features @ features.transpose(0, 2, 1) / features.shape[-1]
    eigenvalues, u = np.linalg.eigh(covariance + DEFAULT_EPS * np.eye(c))
    z = (u * np.sqrt(np.maximum(eigenvalues, 0.0))[:, None, :]) @ u.transpose(0, 2, 1)
    is_dead = np.all(features == 0, axis=2)
    off_dead_diagonal = (is_dead[:, :, None] | is_dead[:, None, :]) & ~np.eye(c, dtype=bool)
    return np.where(off_dead_diagonal, 0.0, (z + z.transpose(0, 2, 1)) / 2)
