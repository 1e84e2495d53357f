"""Conventions that change numbers but not what a network learns, because L2 normalisation removes
them (a missing 1/N) or they only move values near zero (another eps or signed-sqrt regulariser).
A function that follows one is compared with the reference adjusted to it, and the convention is
reported as a note, not a failure.

A fit selects among candidate values (those implementations use, and ones estimated from the
output) the one that explains the output best, the first in order of preference among equals, and
accepts it if it explains the output to the tolerance.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np

import reference
from impls.testing.stage_specs import signed_sqrt_amplification
from impls.testing.tolerances import relative_error
from reference.conventions import DEFAULT_EPS

#: Regulariser values that implementations use (Keras's epsilon is 1e-7), in the order a fit
#: prefers them: the reference's first, so that a value below the tolerance's reach is not noted;
#: zero last, so that where a tiny value and none give the same forward, the tiny one, whose
#: gradient is finite, is assumed.
REGULARISER_VALUES = (DEFAULT_EPS, 1e-7, 1e-8, 1e-10, 1e-12, 1e-6, 1e-4, 1e-3, 0.0)
#: The eps of each method with conventions (IBP's default; B-CNN has none).
REFERENCE_EPS = {"ibp": DEFAULT_EPS, "bcnn": 0.0}
NO_EPS = "without eps the covariance of a rank-deficient map is singular, its root's slope infinite"
NO_DELTA = "without a regulariser the signed square root's slope is infinite at z = 0"

T = TypeVar("T")
#: input -> the function's output on it, or None where the function fails.
Evaluate = Callable[[np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class Convention:
    note: str
    #: x (reference layout) -> the reference's output under this convention
    forward: Callable[..., Any]
    vjp: Callable[..., Any]  # (x, cotangent) -> its gradient
    #: the head's tolerance inputs under this convention: its pooled matrix (whose condition
    #: number counts) and the signed sqrt's error growth, with its own eps and delta
    conditioned_matrix: Callable[..., Any] | None = None
    amplification: Callable[..., Any] | None = None


def _note(what: str, caveats: Sequence[str | bool] = ()) -> str:
    named = [str(caveat) for caveat in caveats if caveat]
    if named:
        return (
            f"{what}; compared with the reference adjusted to it, but {'; '.join(named)} "
            "(see degenerate inputs)"
        )
    return f"{what}; harmless after L2 normalisation, so compared with the reference adjusted to it"


def _select(candidates: Sequence[T], error_of: Callable[[T], float]) -> T | None:
    """The first candidate whose error is within 10 % of the smallest (None if none is finite)."""
    errors = [error_of(candidate) for candidate in candidates]
    smallest = np.nanmin(errors) if np.any(np.isfinite(errors)) else np.inf
    if not np.isfinite(smallest):
        return None
    return next(c for c, e in zip(candidates, errors, strict=True) if e <= 1.1 * smallest + 1e-15)


def regulariser_values(method: str = "ibp") -> tuple[float, ...]:
    """REGULARISER_VALUES with the method's own eps first (B-CNN's is 0)."""
    own = REFERENCE_EPS[method]
    return (own, *(value for value in REGULARISER_VALUES if value != own))


def _snapped(value: float, method: str = "ibp") -> float:
    """The usual regulariser value that `value` is, to float32 round-off, or `value`."""
    usual = [u for u in regulariser_values(method) if abs(value - u) <= 1e-6 * max(u, 1e-30)]
    return usual[0] if usual else value


def _eye(x: np.ndarray) -> np.ndarray:
    return np.eye(x.shape[1])


def _locations(x: np.ndarray) -> int:
    return x.shape[2] * x.shape[3]


# Normalisers of the pooled matrix: the factor in front of X X^T / N.
_NORMALISERS = {"1/N": lambda x: 1.0, "none (sum, no 1/N)": _locations}


def _pooled(x: np.ndarray, normaliser: str, eps: float) -> np.ndarray:
    return _NORMALISERS[normaliser](x) * reference.bilinear_pool(x, eps=0.0) + eps * _eye(x)


def _pool_eps(x: np.ndarray, output: np.ndarray, method: str) -> float:
    """eps as the diagonal entry of a dead channel, where it is exact; else a least-squares fit."""
    dead = np.all(x.reshape(x.shape[0], x.shape[1], -1) == 0, axis=2)
    if np.any(dead):
        diagonal = np.diagonal(output, axis1=1, axis2=2)[dead]
        return _snapped(float(np.median(diagonal)), method)
    second_moments = reference.bilinear_pool(x, eps=0.0)
    identities = np.broadcast_to(_eye(x), second_moments.shape)
    design = np.stack([second_moments.reshape(-1), identities.reshape(-1)], 1)
    # The fitted scale is not used: one other than 1 or N depends on nothing a user sets.
    (_, offset), *_ = np.linalg.lstsq(design, output.reshape(-1), rcond=None)
    return _snapped(float(offset), method)


def _fit_pool(
    x: np.ndarray, output: np.ndarray, allowed: float, evaluate: Evaluate, method: str = "ibp"
) -> Convention | None:
    eps = _pool_eps(x, output, method)
    normaliser = _select(list(_NORMALISERS), lambda n: relative_error(output, _pooled(x, n, eps)))
    if normaliser is None or relative_error(output, _pooled(x, normaliser, eps)) > allowed:
        return None
    return _pool_convention(normaliser, eps, method)


def _pool_convention(normaliser: str, eps: float, method: str = "ibp") -> Convention:
    what = (
        f"pool: normaliser {normaliser}, eps * I with eps = {eps:.2g} (reference: 1/N, "
        f"{REFERENCE_EPS[method]:.2g})"
    )
    return Convention(
        _note(what, [method == "ibp" and eps == 0 and NO_EPS]),
        lambda x: _pooled(x, normaliser, eps),
        lambda x, g: _NORMALISERS[normaliser](x) * reference.bilinear_pool_vjp(x, g),
    )


@dataclass(frozen=True)
class SignedSqrtFamily:
    """sign(z) * s(|z|, delta) for one spelling of the regulariser."""

    spelling: str
    forward: Callable[..., Any]  # (z, delta)
    vjp: Callable[..., Any]  # (z, g, delta)
    estimate: Callable[..., Any]  # (|z|, |y|) -> delta per entry


SIGNED_SQRT_FAMILIES = (
    SignedSqrtFamily(
        "sign(z) (sqrt(|z| + delta) - sqrt(delta))",
        reference.signed_sqrt,
        reference.signed_sqrt_vjp,
        lambda magnitude, y: ((magnitude - y**2) / (2 * y)) ** 2,
    ),
    SignedSqrtFamily(
        "sign(z) sqrt(|z| + delta), the B-CNN spelling: it jumps by 2 sqrt(delta) at z = 0, where "
        "autodiff gives it slope 0",
        lambda z, delta: np.sign(z) * np.sqrt(np.abs(z) + delta),
        lambda z, g, delta: np.where(z != 0, g / (2 * np.sqrt(np.abs(z) + delta)), 0.0),
        lambda magnitude, y: y**2 - magnitude,
    ),
)


#: Scales of the samples of the signed square root's probe: delta shows in the samples near it.
PROBE_SCALES = 10.0 ** np.arange(0, -14, -2)


def signed_sqrt_probe(channels: int) -> np.ndarray:
    """(len(PROBE_SCALES), C, C) entries of random sign, one scale per sample (seeded)."""
    rng = np.random.default_rng(0)
    shape = (len(PROBE_SCALES), channels, channels)
    entries = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    return entries * PROBE_SCALES[:, None, None]


def _median_sample_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The median over samples of the relative error: a spelling that loses the smallest samples
    to cancellation still shows its delta in the others."""
    return float(
        np.median([relative_error(a[None], e[None]) for a, e in zip(actual, expected, strict=True)])
    )


def _estimate(family: SignedSqrtFamily, z: np.ndarray, y: np.ndarray) -> float:
    """delta from the entries (median), or 0."""
    magnitude, size = np.abs(z).reshape(-1), np.abs(y).reshape(-1)
    usable = (magnitude > 0) & (size > 0)
    estimates = family.estimate(magnitude[usable], size[usable])
    estimate = float(np.median(estimates)) if np.any(usable) else 0.0
    return _snapped(estimate) if estimate > 1e-14 else 0.0


def _signed_sqrt_candidates(
    z: np.ndarray | None = None, y: np.ndarray | None = None
) -> list[tuple[SignedSqrtFamily, float]]:
    """(family, delta) in order of preference: the usual values for every spelling, then the
    values the entries estimate, then no regulariser."""
    candidates = [(f, delta) for delta in REGULARISER_VALUES[:-1] for f in SIGNED_SQRT_FAMILIES]
    if z is not None and y is not None:
        candidates += [(family, _estimate(family, z, y)) for family in SIGNED_SQRT_FAMILIES]
    return candidates + [(SIGNED_SQRT_FAMILIES[0], 0.0)]


def _signed_sqrt_spelling(family: SignedSqrtFamily, delta: float) -> str:
    if delta == 0:
        return "no regulariser, sign(z) sqrt(|z|)"
    return f"{family.spelling}, delta = {delta:.2g} (reference: 1e-05)"


def _fit_signed_sqrt(
    z: np.ndarray, output: np.ndarray, allowed: float, evaluate: Evaluate, method: str = "ibp"
) -> Convention | None:
    """delta is selected on a probe with samples at many scales (the realistic first input cannot
    tell 1e-8 from 1e-10, though the gradient near zero can); accepted on the first input."""
    probe = signed_sqrt_probe(z.shape[1])
    probe_output = evaluate(probe)
    if probe_output is None:
        probe, probe_output = z, output
    best = _select(
        _signed_sqrt_candidates(probe, probe_output),
        lambda c: _median_sample_error(probe_output, c[0].forward(probe, c[1])),
    )
    if best is None or relative_error(output, best[0].forward(z, best[1])) > allowed:
        return None
    family, delta = best
    return Convention(
        _note(f"signed sqrt: {_signed_sqrt_spelling(family, delta)}", [delta == 0 and NO_DELTA]),
        lambda m: family.forward(m, delta),
        lambda m, g: family.vjp(m, g, delta),
    )


#: ((pool normaliser, eps), (signed sqrt spelling, delta)): one head convention tried.
HeadCandidate = tuple[tuple[str, float], tuple[SignedSqrtFamily, float]]


def _root_of(pooled: np.ndarray, rooted: bool) -> np.ndarray:
    """IBP's root of the pooled matrix, or (B-CNN, `rooted` False) the matrix itself."""
    return reference.sqrtm(pooled) if rooted else pooled


def _head_parts(
    x: np.ndarray,
    normaliser: str,
    eps: float,
    family: SignedSqrtFamily,
    delta: float,
    rooted: bool,
) -> tuple[np.ndarray, np.ndarray]:
    z = _root_of(_pooled(x, normaliser, eps), rooted)
    return z, family.forward(z, delta)


def _fit_head(
    x: np.ndarray,
    output: np.ndarray,
    allowed: float,
    evaluate: Evaluate,
    method: str = "ibp",
) -> Convention | None:
    rooted = method == "ibp"
    output = output.reshape(len(x), -1)
    roots = {
        (normaliser, eps): _root_of(_pooled(x, normaliser, eps), rooted)
        for normaliser in _NORMALISERS
        for eps in regulariser_values(method)
    }

    def error(candidate: HeadCandidate) -> float:
        (normaliser, eps), (family, delta) = candidate
        v = reference.l2_normalize(family.forward(roots[normaliser, eps], delta))
        return relative_error(output, v.reshape(len(x), -1))

    candidates = [(pool, signed) for pool in roots for signed in _signed_sqrt_candidates()]
    best = _select(candidates, error)
    if best is None or error(best) > allowed:
        return None
    return _head_convention(*best[0], *best[1], method=method)


def _head_convention(
    normaliser: str, eps: float, family: SignedSqrtFamily, delta: float, method: str = "ibp"
) -> Convention:
    rooted = method == "ibp"

    def forward(x: np.ndarray) -> np.ndarray:
        _, y = _head_parts(x, normaliser, eps, family, delta, rooted)
        return reference.l2_normalize(y).reshape(len(x), -1)

    def vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        z, y = _head_parts(x, normaliser, eps, family, delta, rooted)
        g_y = reference.l2_normalize_vjp(y, g.reshape(y.shape))
        g_z = family.vjp(z, g_y, delta)
        g_a = reference.sqrtm_vjp(z, g_z) if rooted else g_z
        return _NORMALISERS[normaliser](x) * reference.bilinear_pool_vjp(x, g_a)

    what = (
        f"head: pool normaliser {normaliser}, eps = {eps:.2g} (reference: 1/N, "
        f"{REFERENCE_EPS[method]:.2g}); signed sqrt {_signed_sqrt_spelling(family, delta)}"
    )
    pooled = partial(_pooled, normaliser=normaliser, eps=eps)
    return Convention(
        _note(what, [rooted and eps == 0 and NO_EPS, delta == 0 and NO_DELTA]),
        forward,
        vjp,
        conditioned_matrix=pooled if rooted else None,
        amplification=partial(
            signed_sqrt_amplification,
            pooled=pooled,
            delta=delta,
            root=reference.sqrtm if rooted else None,
        ),
    )


# The root has none: its tolerance (tolerances.APPROXIMATION_BUDGET) already covers the eps values
# in use, and a larger offset inside the root is not harmless. MPN-COV and iSQRT-COV have none:
# their output is not normalised, so no scale or offset is harmless there.
_FITS = {"pool": _fit_pool, "signed-sqrt": _fit_signed_sqrt, "head": _fit_head}
#: The methods whose stages a convention may explain: those that end in an L2 normalisation.
METHODS_WITH_CONVENTIONS = ("ibp", "bcnn")


def fit(
    stage: str,
    x: np.ndarray,
    output: np.ndarray,
    allowed: float,
    evaluate: Evaluate,
    method: str = "ibp",
) -> Convention | None:
    """The convention under which `method`'s reference gives `output` for x to `allowed`, or None.
    evaluate(input) -> the function's output on another input (None where it fails)."""
    output = np.asarray(output, dtype=np.float64)
    if (
        method not in METHODS_WITH_CONVENTIONS
        or stage not in _FITS
        or not np.all(np.isfinite(output))
    ):
        return None
    with np.errstate(all="ignore"):
        return _FITS[stage](np.asarray(x, dtype=np.float64), output, allowed, evaluate, method)
