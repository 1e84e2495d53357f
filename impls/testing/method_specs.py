"""Each stage of each method of the family (`reference.methods`: IBP, B-CNN, MPN-COV, iSQRT-COV)
as the property code sees it: `stage_spec("isqrt-cov", "sqrtm", {"iterations": 3})` is a StageSpec
whose reference is that method's, with the inputs the checker draws for it and the derivation of
its tolerance. Under IBP with its default parameters it is `stage_specs.STAGES[stage]` (with the
parameters recorded).

What differs from IBP's stages, and why:
- MPN-COV and iSQRT-COV pool a centred covariance: the maps drawn have two locations at least and
  a non-zero centred covariance in every sample (a map constant over its locations has S = 0,
  where iSQRT-COV divides 0 by 0: the method is undefined there, `Method.min_locations`). Their
  roots get centred covariances of ReLU maps.
- B-CNN's signed square root takes the pooled matrix itself: entries of both signs where the maps
  come before a ReLU, which is where sqrt(y + eps) shows (on ReLU maps it only adds sqrt(eps)).
- Tolerances: the table's rows (`impls.testing.tolerances`) with these amplifications:
  a centred covariance computed as X Ibar X^T = X X^T / N - m m^T loses the digits that the mean
  carries: its round-off is relative to ||X X^T / N||, so it grows by ||X X^T / N|| / ||S||
  (`centring_amplification`). MPN-COV's power moves the power of the smallest eigenvalue by
  alpha u kappa^(1 - alpha) relative, kappa^(1/2 - alpha) times the root's bound where alpha < 1/2.
  iSQRT-COV's N iterations are a polynomial in A / tr(A) whose slope is at most (3/2)^N on every
  eigenvalue (each step multiplies the slope by at most 3/2), and whose backward multiplies by at
  most (9/4)^N; where the iteration has converged it is the root, bounded by the root's
  kappa^(1/2) and kappa: the growth is the smaller of the two. B-CNN has no root: the signed square
  root's growth is computed on the pooled matrix itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st

import reference
from impls.testing.command_line import UsageError
from impls.testing.matrices import (
    centred_relu_covariances,
    relu_feature_maps,
    signed_feature_maps,
)
from impls.testing.stage_specs import (
    FEATURE_MAP,
    HEAD_INPUTS,
    MATRIX,
    POOL_INPUTS,
    REALISTIC_CONDITION,
    REALISTIC_SIDE_RATIOS,
    REPEATED_CASE_CHANNELS,
    STAGES,
    Sizes,
    StageInputs,
    StageSpec,
    drawn,
    first_feature_map,
    first_feature_map_with_dead_channel,
    no_matrix,
    realistic_feature_map_cases,
    repeated_eigenvalues,
    side_for,
    signed_sqrt_amplification,
    with_condition,
)
from impls.testing.strategies import (
    batch_sizes,
    feature_maps,
    feature_maps_with_dead_channels,
    map_shapes,
    realistic_feature_maps,
    realistic_side,
    realistic_sides,
    seeds,
    spd_batches,
)
from impls.testing.tolerances import condition_number
from reference.contracts import IBPInputError
from reference.methods import METHODS, BoundStage, Method, ParameterValue, centred_pool
from reference.methods.bcnn import bcnn_pool

if TYPE_CHECKING:
    from impls.backends import Backend

DEFAULT_METHOD = "ibp"
#: Slope growth per Newton-Schulz step of iSQRT-COV, forward and backward (module docstring).
ITERATION_GROWTH = {"forward": 1.5, "backward": 2.25}
#: The root's power of kappa in the tolerance table, per direction (the sqrtm row).
ROOT_KAPPA_POWER = {"forward": 0.5, "backward": 1.0}


def method_record(method: str) -> Method:
    """The method called `method`, or a UsageError naming the methods."""
    if method not in METHODS:
        raise UsageError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return METHODS[method]


def resolved(method: str, given: Mapping[str, ParameterValue]) -> dict[str, ParameterValue]:
    """The method's parameters: its defaults with `given` applied. A parameter the method does not
    have, or a bad value, is a UsageError naming the method's parameters."""
    try:
        return method_record(method).resolve(**given)
    except IBPInputError as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(str(error)) from None


def check_stage_of(method: str, stage: str) -> None:
    """A UsageError naming the method's stages where it has no stage `stage`."""
    record = method_record(method)
    if stage not in record.stage_names:
        raise UsageError(
            f"{method} has no {stage} stage; its stages: {', '.join(record.stage_names)}"
        )


# -- inputs ---------------------------------------------------------------------------------------


def spread(x: np.ndarray) -> np.ndarray:
    """x with a non-zero centred covariance in every sample: where a sample is constant over its
    locations, its first live channel (else channel 0) is raised by 1 at the first location. Needs
    two locations at least."""
    flat = x.reshape(len(x), x.shape[1], -1)
    constant = np.all(flat == flat[:, :, :1], axis=(1, 2))
    if not np.any(constant):
        return x
    x = x.copy()
    for sample in np.flatnonzero(constant):
        live = np.flatnonzero(np.any(flat[sample] != 0, axis=1))
        x[sample, live[0] if len(live) else 0, 0, 0] += 1.0
    return x


#: (H, W) with two locations at least: a centred covariance of one location is 0.
SPREAD_MAP_SHAPES = map_shapes.filter(lambda shape: shape[0] * shape[1] >= 2)


def _spread_drawn(
    strategy: Callable[..., st.SearchStrategy[np.ndarray]],
    least_channels: int = 1,
    default_shapes: st.SearchStrategy[tuple[int, int]] | None = SPREAD_MAP_SHAPES,
) -> Callable[[Sizes, st.SearchStrategy[int]], st.SearchStrategy[np.ndarray]]:
    """`stage_specs.drawn` for the maps of a centred pooling: two locations at least (or the
    layer's own), and `spread`."""

    def draw_inputs(sizes: Sizes, batch: st.SearchStrategy[int]) -> st.SearchStrategy[np.ndarray]:
        shapes = st.just(sizes.map_shape) if sizes.map_shape else default_shapes
        fixed = {} if shapes is None else {"shapes": shapes}
        channels = sizes.channel_counts(least_channels)
        return strategy(channels=channels, batch=batch, **fixed).map(spread)

    return draw_inputs


def _spread_cases(
    cases: Callable[[np.random.Generator, int, Sizes], list[np.ndarray]],
) -> Callable[[np.random.Generator, int, Sizes], list[np.ndarray]]:
    return lambda rng, batch, sizes: [spread(x) for x in cases(rng, batch, sizes)]


def _spread_first(
    first: Callable[[np.random.Generator, int, Sizes], np.ndarray],
) -> Callable[[np.random.Generator, int, Sizes], np.ndarray]:
    return lambda rng, batch, sizes: spread(first(rng, batch, sizes))


CENTRED_POOL_INPUTS = StageInputs(
    typical=_spread_drawn(feature_maps),
    gradient=_spread_drawn(feature_maps),
    degenerate=_spread_drawn(feature_maps_with_dead_channels, least_channels=2),
    first=_spread_first(first_feature_map_with_dead_channel),
    realistic=_spread_cases(realistic_feature_map_cases),
)
CENTRED_HEAD_INPUTS = StageInputs(
    typical=_spread_drawn(realistic_feature_maps, default_shapes=None),
    gradient=_spread_drawn(realistic_feature_maps, default_shapes=None),
    degenerate=_spread_drawn(feature_maps_with_dead_channels, least_channels=2),
    first=_spread_first(first_feature_map),
    realistic=_spread_cases(realistic_feature_map_cases),
)


@st.composite
def centred_covariances(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int],
    batch: st.SearchStrategy[int] = batch_sizes,
) -> np.ndarray:
    """Centred covariances of full-rank ReLU maps (`matrices.centred_relu_covariances`)."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    side = draw(realistic_sides(c))
    return centred_relu_covariances(rng, b, c, side, side)


def _first_centred_covariance(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    side = realistic_side(sizes.first_channels)
    return centred_relu_covariances(rng, batch, sizes.first_channels, side, side)


def _realistic_centred_covariances(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> list[np.ndarray]:
    """As the IBP root's cases (`stage_specs.realistic_covariance_cases`), centred: 1.5 sqrt(C)
    square maps (condition ~1e3 at C = 64), sqrt(C) square maps brought to REALISTIC_CONDITION
    (N = C: a centred covariance of rank C - 1, shifted), repeated eigenvalues."""
    c = sizes.realistic_channels
    side = side_for(c, REALISTIC_SIDE_RATIOS[0])
    square = math.ceil(math.sqrt(c))
    repeated = sizes.channels if sizes.channels is not None else REPEATED_CASE_CHANNELS
    return [
        centred_relu_covariances(rng, batch, c, side, side),
        with_condition(
            centred_relu_covariances(rng, batch, c, square, square), REALISTIC_CONDITION
        ),
        repeated_eigenvalues(rng, batch, repeated),
    ]


CENTRED_ROOT_INPUTS = StageInputs(
    typical=lambda sizes, batch: centred_covariances(sizes.channel_counts(), batch),
    gradient=drawn(spd_batches, kinds=("repeated", "clustered", "log_uniform"), max_condition=1e2),
    degenerate=drawn(spd_batches, kinds=("repeated", "zeros_before_eps", "clustered")),
    first=_first_centred_covariance,
    realistic=_realistic_centred_covariances,
)


def _second_moments(
    rng: np.random.Generator, batch: int, channels: int, side: int, signed: bool, dead: int = 0
) -> np.ndarray:
    """X X^T / N of maps before a ReLU (`signed`) or after one, `dead` channels exactly zero."""
    if signed:
        x = signed_feature_maps(rng, batch, channels, side, side)
        if dead:
            x[:, rng.choice(channels, dead, replace=False)] = 0.0
    else:
        x = relu_feature_maps(rng, batch, channels, side, side, dead_channels=dead)
    return bcnn_pool(x)


@st.composite
def second_moments(
    draw: st.DrawFn,
    channels: st.SearchStrategy[int],
    batch: st.SearchStrategy[int] = batch_sizes,
    dead: bool = False,
) -> np.ndarray:
    """B-CNN's pooled matrices, of maps before or after a ReLU, with dead channels if `dead`."""
    rng = np.random.default_rng(draw(seeds))
    c, b = draw(channels), draw(batch)
    side = draw(realistic_sides(c))
    dead_count = draw(st.integers(1, c - 1)) if dead and c > 1 else 0
    return _second_moments(rng, b, c, side, draw(st.booleans()), dead_count)


def _first_second_moments(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    """Signed entries first: a spelling that fails on them shows it before any convention fits."""
    c = sizes.first_channels
    return _second_moments(rng, batch, c, realistic_side(c), signed=True)


def _realistic_second_moments(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> list[np.ndarray]:
    c = sizes.realistic_channels
    side = side_for(c, REALISTIC_SIDE_RATIOS[0])
    return [_second_moments(rng, batch, c, side, signed) for signed in (True, False)]


BCNN_SIGNED_SQRT_INPUTS = StageInputs(
    typical=lambda sizes, batch: second_moments(sizes.channel_counts(), batch),
    gradient=lambda sizes, batch: second_moments(sizes.channel_counts(), batch),
    degenerate=lambda sizes, batch: second_moments(sizes.channel_counts(2), batch, dead=True),
    first=_first_second_moments,
    realistic=_realistic_second_moments,
)


# -- tolerances -----------------------------------------------------------------------------------


def centring_amplification(x: np.ndarray, eps: float = 0.0) -> float:
    """||X X^T / N|| / ||S|| largest over the batch: how much of the second moment the centring
    cancels (module docstring)."""
    second = np.linalg.norm(bcnn_pool(x).reshape(len(x), -1), axis=1)
    centred = np.linalg.norm(centred_pool(x, eps).reshape(len(x), -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(centred > 0, second / centred, np.inf)))


def _symmetric_part(m: np.ndarray) -> np.ndarray:
    return (m + np.swapaxes(m, -1, -2)) / 2


def power_amplification(matrix: np.ndarray, alpha: float) -> float:
    """kappa^(1/2 - alpha) where alpha < 1/2 (module docstring), 1 otherwise."""
    excess = max(0.0, 0.5 - alpha)
    return condition_number(_symmetric_part(matrix)) ** excess if excess else 1.0


def iteration_amplification(matrix: np.ndarray, iterations: int, direction: str) -> float:
    """min(the root's kappa^(1/2) or kappa, (3/2)^N or (9/4)^N): N iterations (module
    docstring). The tolerance is given kappa = 1, so this carries the whole growth."""
    kappa = condition_number(_symmetric_part(matrix))
    return float(
        min(kappa ** ROOT_KAPPA_POWER[direction], ITERATION_GROWTH[direction] ** iterations)
    )


# -- the specs ------------------------------------------------------------------------------------


def _catalogue_layer(name: str) -> Callable[..., Callable[[Any], Any]]:
    """The method catalogue's correct layer `name` for a backend: the family's layers are not in
    the library (it implements IBP), so the catalogue's correct ones stand in for them."""

    def build(backend: Backend, **options: Any) -> Callable[[Any], Any]:
        module = importlib.import_module(f"impls.testing.method_catalogue.{backend.name}_correct")
        return partial(getattr(module, name), **options)

    return build


def _symmetrised_vjp(bound: BoundStage) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The root's VJP compared as the checker compares a root's gradient: its symmetric part (the
    gradient of a function of a symmetric matrix is defined up to a skew part)."""
    return lambda a, g: _symmetric_part(bound.vjp(a, g))


def _bcnn(stage: str, bound: BoundStage, values: Mapping[str, Any]) -> StageSpec:
    delta = float(values["delta"])
    if stage in ("signed-sqrt", "l2"):
        spec = STAGES[stage]
        inputs = BCNN_SIGNED_SQRT_INPUTS if stage == "signed-sqrt" else spec.inputs
        return dataclasses.replace(
            spec, forward=bound.forward, vjp=bound.vjp, inputs=inputs, method="bcnn"
        )
    if stage == "pool":
        return StageSpec(
            "pool",
            FEATURE_MAP,
            bound.forward,
            bound.vjp,
            no_matrix,
            _catalogue_layer("bcnn_pool"),
            inputs=POOL_INPUTS,
            method="bcnn",
        )
    return StageSpec(
        "head",
        FEATURE_MAP,
        bound.forward,
        bound.vjp,
        no_matrix,
        _catalogue_layer("bcnn_head"),
        partial(signed_sqrt_amplification, pooled=bcnn_pool, delta=delta, root=None),
        inputs=HEAD_INPUTS,
        flat_output=True,
        method="bcnn",
    )


#: Why the degenerate inputs' gradient is not checked under MPN-COV without eps.
NO_EPS_GRADIENT = (
    "gradient not checked on these rank-deficient maps: without eps (--eps, MPN-COV's default 0) "
    "the power's slope alpha l^(alpha - 1) is infinite at their zero eigenvalues, by the method's "
    "own definition; pass --eps to check it"
)


def _centred_pool(method: str, bound: BoundStage, eps: float) -> StageSpec:
    layer = "centred_pool_mean" if method == "mpn-cov" else "centred_pool_i_hat"
    return StageSpec(
        "pool",
        FEATURE_MAP,
        bound.forward,
        bound.vjp,
        no_matrix,
        _catalogue_layer(layer),
        lambda x, direction: centring_amplification(x, eps),
        inputs=CENTRED_POOL_INPUTS,
        method=method,
    )


def _mpn_cov(stage: str, bound: BoundStage, values: Mapping[str, Any]) -> StageSpec:
    eps, alpha = float(values["eps"]), float(values["alpha"])
    if stage == "pool":
        return _centred_pool("mpn-cov", bound, eps)
    if stage == "sqrtm":
        return StageSpec(
            "sqrtm",
            MATRIX,
            bound.forward,
            _symmetrised_vjp(bound),
            _symmetric_part,
            _catalogue_layer("mpn_cov_power"),
            lambda a, direction: power_amplification(a, alpha),
            inputs=CENTRED_ROOT_INPUTS,
            method="mpn-cov",
        )

    def pooled(x: np.ndarray) -> np.ndarray:
        return centred_pool(x, eps)

    return StageSpec(
        "head",
        FEATURE_MAP,
        bound.forward,
        bound.vjp,
        pooled,
        _catalogue_layer("mpn_cov_head"),
        lambda x, direction: centring_amplification(x, eps) * power_amplification(pooled(x), alpha),
        inputs=CENTRED_HEAD_INPUTS,
        triu_output=True,
        method="mpn-cov",
        degenerate_gradient=None if eps > 0 else NO_EPS_GRADIENT,
    )


def _isqrt_cov(stage: str, bound: BoundStage, values: Mapping[str, Any]) -> StageSpec:
    iterations = int(values["iterations"])
    if stage == "pool":
        return _centred_pool("isqrt-cov", bound, 0.0)
    if stage == "sqrtm":
        return StageSpec(
            "sqrtm",
            MATRIX,
            bound.forward,
            _symmetrised_vjp(bound),
            no_matrix,
            _catalogue_layer("isqrt_cov_root"),
            lambda a, direction: iteration_amplification(a, iterations, direction),
            inputs=CENTRED_ROOT_INPUTS,
            method="isqrt-cov",
        )

    def amplification(x: np.ndarray, direction: str) -> float:
        growth = iteration_amplification(centred_pool(x), iterations, direction)
        return centring_amplification(x) * growth

    return StageSpec(
        "head",
        FEATURE_MAP,
        bound.forward,
        bound.vjp,
        no_matrix,
        _catalogue_layer("isqrt_cov_head"),
        amplification,
        inputs=CENTRED_HEAD_INPUTS,
        triu_output=True,
        method="isqrt-cov",
    )


def _ibp(stage: str, values: Mapping[str, Any]) -> StageSpec:
    """IBP's stage; with eps or delta other than the defaults, its reference bound to them."""
    spec = STAGES[stage]
    if dict(values) == METHODS["ibp"].defaults():
        return spec
    bound = METHODS["ibp"].reference(stage, **values)
    eps, delta = float(values["eps"]), float(values["delta"])
    spec = dataclasses.replace(spec, forward=bound.forward, vjp=bound.vjp)
    if stage != "head":
        return spec

    def pooled(x: np.ndarray) -> np.ndarray:
        return reference.bilinear_pool(x, eps=eps)

    return dataclasses.replace(
        spec,
        conditioned_matrix=pooled,
        amplification=partial(signed_sqrt_amplification, pooled=pooled, delta=delta),
    )


_BUILDERS = {"bcnn": _bcnn, "mpn-cov": _mpn_cov, "isqrt-cov": _isqrt_cov}


def stage_spec(
    method: str, stage: str, parameters: Mapping[str, ParameterValue] | None = None
) -> StageSpec:
    """The StageSpec of `stage` of `method` with `parameters` (the method's defaults for the rest).
    Raises UsageError for an unknown method, a stage it has not, or a parameter it has not."""
    check_stage_of(method, stage)
    values = resolved(method, parameters or {})
    if method == "ibp":
        spec = _ibp(stage, values)
    else:
        spec = _BUILDERS[method](stage, METHODS[method].reference(stage, **values), values)
    return dataclasses.replace(spec, parameters=tuple(values.items()))
