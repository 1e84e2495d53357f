"""Each IBP stage as the property code sees it: its input kind, reference, our implementation, and
the inputs `ibp-check` draws for it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st

import reference
from impls.testing.matrices import relu_covariances, relu_feature_maps, spd_with_spectrum
from impls.testing.strategies import (
    feature_maps,
    feature_maps_with_dead_channels,
    realistic_covariances,
    realistic_feature_maps,
    realistic_roots,
    realistic_side,
    spd_batches,
    spd_batches_with_dead_channels,
)
from reference.conventions import SIGNED_SQRT_DELTA

if TYPE_CHECKING:
    from impls.backends import Backend

FEATURE_MAP, MATRIX = "feature_map", "matrix"


@dataclass(frozen=True)
class Sizes:
    """The sizes of the inputs a stage check draws: any channel count up to `size`, or those of a
    layer located in a model, fixed: its `channels` and, for a feature map, its (H, W)."""

    size: int
    channels: int | None = None
    map_shape: tuple[int, int] | None = None

    def channel_counts(self, least: int = 1) -> st.SearchStrategy[int]:
        if self.channels is not None:
            return st.just(self.channels)
        return st.integers(least, max(least, self.size))

    @property
    def first_channels(self) -> int:
        return self.channels if self.channels is not None else self.size

    @property
    def realistic_channels(self) -> int:
        return self.channels if self.channels is not None else REALISTIC_CHANNELS


@dataclass(frozen=True)
class StageInputs:
    """What `ibp-check` feeds a stage. Strategies take (Sizes, batch strategy) and draw inputs in
    the reference layout."""

    #: shape, independence, batch sizes, forward: what the stage meets in a network
    typical: Callable[..., Any]
    gradient: Callable[..., Any]
    #: rank-deficient covariances, dead channels, repeated eigenvalues
    degenerate: Callable[..., Any]
    #: (rng, batch, Sizes) -> the first input a function sees, before any search
    first: Callable[..., Any]
    #: (rng, batch, Sizes) -> the fixed realistic cases run before any search
    realistic: Callable[..., Any] | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    input_kind: str
    #: float64 NumPy reference, input channels-first where it is a feature map
    forward: Callable[..., Any]
    vjp: Callable[..., Any]  # (input, cotangent) -> gradient with respect to the input
    #: input -> the SPD matrix whose condition number sets the error
    conditioned_matrix: Callable[..., Any]
    implementation: Callable[..., Any]  # backend, **options -> our function of one native tensor
    #: error growth after the root (tolerances)
    amplification: Callable[..., Any] = lambda x, direction: 1.0
    inputs: StageInputs | None = None
    flat_output: bool = False  # the output is (B, C*C); a (B, C, C) output is accepted too
    #: the output is the upper triangle (B, C(C+1)/2) of a (C, C) matrix (MPN-COV, iSQRT-COV)
    triu_output: bool = False
    #: the method (`reference.methods`) whose reference this is: the checker's stage names are
    #: shared by the family, the references and the mistakes a diagnosis names are the method's
    method: str = "ibp"
    #: why the degenerate inputs' gradient is not checked, where the method's own gradient is
    #: infinite there; None: it is checked
    degenerate_gradient: str | None = None
    #: the method's parameters, every one (`reference.methods.Method.resolve`): the mistakes a
    #: diagnosis tries are computed with them
    parameters: tuple[tuple[str, Any], ...] = ()
    # Set by `ibp-check` only: the suite holds our own layers to the tightest standard.
    approximate: bool = False  # the error is judged against tolerances.APPROXIMATION_BUDGET too
    symmetric_gradient: bool = False  # compare symmetric parts: the root of a symmetric matrix
    #: the harmless convention that `forward` and `vjp` were adjusted to
    convention: str | None = None
    tolerance_override: float | None = None  # the user's --tolerance

    @property
    def drawn(self) -> StageInputs:
        """The inputs `ibp-check` draws for the stage; a stage without them cannot be checked."""
        if self.inputs is None:
            raise ValueError(f"ibp-check draws no inputs for stage {self.name}")
        return self.inputs

    def channels(self, x: np.ndarray) -> int:
        return x.shape[1]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The reference's output shape for an input of `input_shape` (reference layout)."""
        b, c = input_shape[:2]
        if self.triu_output:
            return (b, c * (c + 1) // 2)
        if self.flat_output:
            return (b, c * c)
        return (b, c, c) if self.input_kind == FEATURE_MAP else tuple(input_shape)

    def accepts_output_shape(
        self, output_shape: tuple[int, ...], input_shape: tuple[int, ...]
    ) -> bool:
        b, c = input_shape[:2]
        accepted = {self.output_shape(input_shape)} | ({(b, c, c)} if self.flat_output else set())
        return tuple(output_shape) in accepted


def no_matrix(x: np.ndarray) -> None:
    return None


def _rms(m: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(m.reshape(len(m), -1) ** 2, axis=1))


def signed_sqrt_amplification(
    x: np.ndarray,
    direction: str,
    pooled: Callable[[np.ndarray], np.ndarray] = reference.bilinear_pool,
    delta: float = SIGNED_SQRT_DELTA,
    root: Callable[[np.ndarray], np.ndarray] | None = reference.sqrtm,
) -> float:
    """Error growth of the signed sqrt after the root, largest over the batch: see the derivation
    in `impls.testing.tolerances`. `pooled` and `delta` are the pooling and the regulariser of the
    head judged (a harmless convention may change them; a smaller delta amplifies more); `root`
    None for a head without a root (B-CNN), whose signed sqrt takes the pooled matrix itself."""
    delta = max(delta, np.finfo(float).tiny)
    z = pooled(x) if root is None else root(pooled(x))
    z_norms = np.linalg.norm(z.reshape(len(z), -1), axis=1)
    if direction == "forward":
        y = reference.signed_sqrt(z)
        y_norms = np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), np.finfo(float).tiny)
        slope = 1 / (2 * np.sqrt(np.abs(z) + delta))
        return float(np.max(_rms(slope) * z_norms / y_norms))
    return float(np.max(_rms(1 / (2 * (np.abs(z) + delta))) * z_norms))


def ours(name: str) -> Callable[..., Callable[[Any], Any]]:
    def build(backend: Backend, **options: Any) -> Callable[[Any], Any]:
        return partial(getattr(backend.impl, name), **options)

    return build


def _our_head(backend: Backend, **options: Any) -> Callable[[Any], Any]:
    def head(x: Any) -> Any:
        channels = x.shape[1] if backend.layout == "channels_first" else x.shape[-1]
        extra = {"dtype": x.dtype.name} if backend.name == "tf" else {}
        return backend.impl.IBPHead(in_channels=int(channels), **options, **extra)(x)

    return head


def drawn(
    strategy: Callable[..., st.SearchStrategy[np.ndarray]],
    least_channels: int = 1,
    maps: bool = False,
    **options: Any,
) -> Callable[[Sizes, st.SearchStrategy[int]], st.SearchStrategy[np.ndarray]]:
    """strategy with channels from least_channels..size (or the fixed ones), the given batch
    sizes, and a feature map's fixed (H, W) where `maps`."""

    def draw_inputs(sizes: Sizes, batch: st.SearchStrategy[int]) -> st.SearchStrategy[np.ndarray]:
        fixed = {"shapes": st.just(sizes.map_shape)} if maps and sizes.map_shape else {}
        channels = sizes.channel_counts(least_channels)
        return strategy(channels=channels, batch=batch, **options, **fixed)

    return draw_inputs


#: The realistic cases: C = 64 channels (or the channels of a layer located in a model). Covariances
#: of ReLU maps have one dominant eigenvalue (the mean feature) and the smallest near eps when the
#: N locations are few: at C = 64, 12 x 12 maps give condition numbers of ~6e3, 9 x 9 maps ~3e4,
#: 8 x 8 maps 1e5 to 1e7, capped here at REALISTIC_CONDITION. There Newton-Schulz at 10
#: iterations is ~1 % off forward and ~20 % backward. The sides scale with sqrt(C), so that other
#: channel counts meet the same ratios of locations to channels. The root's cases add one with
#: repeated eigenvalues.
REALISTIC_CHANNELS = 64
#: Map sides per sqrt(C): 12 and 9 at C = 64; the covariance with condition REALISTIC_CONDITION
#: has N = C.
REALISTIC_SIDE_RATIOS = (1.5, 1.125)
REALISTIC_CONDITION = 1e5


def side_for(channels: int, ratio: float) -> int:
    return max(2, math.ceil(ratio * math.sqrt(channels)))


def realistic_feature_map_cases(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> list[np.ndarray]:
    c = sizes.realistic_channels
    shapes = (
        [sizes.map_shape]
        if sizes.map_shape is not None
        else [(side_for(c, ratio), side_for(c, ratio)) for ratio in REALISTIC_SIDE_RATIOS]
    )
    return [relu_feature_maps(rng, batch, c, h, w) for h, w in shapes]


def with_condition(a: np.ndarray, condition: float) -> np.ndarray:
    """a + s I, with s >= 0 the least shift that brings each sample's condition number down to
    `condition`."""
    eigenvalues = np.linalg.eigvalsh(a)
    largest, smallest = eigenvalues[:, -1], eigenvalues[:, 0]
    shift = np.maximum((largest - condition * smallest) / (condition - 1), 0.0)
    return a + shift[:, None, None] * np.eye(a.shape[-1])


def repeated_eigenvalues(rng: np.random.Generator, batch: int, channels: int) -> np.ndarray:
    """Half the eigenvalues at 1, half at 1e-2: where autodiff through eigh/svd divides by
    s_i - s_j = 0, which a search on few examples may not draw."""
    values = np.where(np.arange(channels) < channels // 2, 1.0, 1e-2)
    return spd_with_spectrum(rng, np.tile(values, (batch, 1)))


#: Channels of the repeated-eigenvalue case where the check picks them: few, so that a search
#: cannot miss it and its diagnosis is quick.
REPEATED_CASE_CHANNELS = 8


def realistic_covariance_cases(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> list[np.ndarray]:
    c = sizes.realistic_channels
    side = side_for(c, REALISTIC_SIDE_RATIOS[0])
    square = math.ceil(math.sqrt(c))
    repeated = sizes.channels if sizes.channels is not None else REPEATED_CASE_CHANNELS
    return [
        relu_covariances(rng, batch, c, side, side),
        with_condition(relu_covariances(rng, batch, c, square, square), REALISTIC_CONDITION),
        repeated_eigenvalues(rng, batch, repeated),
    ]


def realistic_root_cases(rng: np.random.Generator, batch: int, sizes: Sizes) -> list[np.ndarray]:
    return [reference.sqrtm(a) for a in realistic_covariance_cases(rng, batch, sizes)]


def realistic_signed_root_cases(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> list[np.ndarray]:
    return [reference.signed_sqrt(z) for z in realistic_root_cases(rng, batch, sizes)]


def first_map_shape(sizes: Sizes) -> tuple[int, int]:
    if sizes.map_shape is not None:
        return sizes.map_shape
    side = realistic_side(sizes.first_channels)
    return side, side


def first_feature_map(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    return relu_feature_maps(rng, batch, sizes.first_channels, *first_map_shape(sizes))


def first_feature_map_with_dead_channel(
    rng: np.random.Generator, batch: int, sizes: Sizes
) -> np.ndarray:
    """A dead channel tells eps * I from eps * ones before any convention is fitted."""
    channels = sizes.first_channels
    dead = 1 if channels > 1 else 0
    return relu_feature_maps(rng, batch, channels, *first_map_shape(sizes), dead_channels=dead)


def first_covariance(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    side = realistic_side(sizes.first_channels)
    return relu_covariances(rng, batch, sizes.first_channels, side, side)


def first_root(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    return reference.sqrtm(first_covariance(rng, batch, sizes))


def first_signed_root(rng: np.random.Generator, batch: int, sizes: Sizes) -> np.ndarray:
    return reference.signed_sqrt(first_root(rng, batch, sizes))


# The root and the head are judged on their error on realistic covariances, where an approximate
# root that has converged is within its budget, and only for finiteness on degenerate ones.
# Gradients of the root are drawn with repeated and clustered eigenvalues, where autodiff through
# eigh/svd goes wrong, at a condition number (1e2) that a converged iteration resolves. The signed
# square root meets roots of covariances: on a whole sample far below delta its usual spelling
# loses digits to cancellation, which matters for no network.
L2_INPUTS = dict(
    typical=drawn(spd_batches),
    gradient=drawn(spd_batches),
    degenerate=drawn(spd_batches_with_dead_channels, least_channels=2),
)
SIGNED_SQRT_INPUTS = StageInputs(
    typical=drawn(realistic_roots),
    gradient=drawn(realistic_roots),
    degenerate=drawn(realistic_roots, least_channels=2, dead=st.integers(1, 11)),
    first=first_root,
    realistic=realistic_root_cases,
)
POOL_INPUTS = StageInputs(
    typical=drawn(feature_maps, maps=True),
    gradient=drawn(feature_maps, maps=True),
    degenerate=drawn(feature_maps_with_dead_channels, least_channels=2, maps=True),
    first=first_feature_map_with_dead_channel,
    realistic=realistic_feature_map_cases,
)
SQRTM_INPUTS = StageInputs(
    typical=drawn(realistic_covariances),
    gradient=drawn(spd_batches, kinds=("repeated", "clustered", "log_uniform"), max_condition=1e2),
    degenerate=drawn(spd_batches, kinds=("repeated", "zeros_before_eps", "clustered")),
    first=first_covariance,
    realistic=realistic_covariance_cases,
)
HEAD_INPUTS = StageInputs(
    typical=drawn(realistic_feature_maps, maps=True),
    gradient=drawn(realistic_feature_maps, maps=True),
    degenerate=drawn(feature_maps_with_dead_channels, least_channels=2, maps=True),
    first=first_feature_map,
    realistic=realistic_feature_map_cases,
)

STAGES = {
    spec.name: spec
    for spec in (
        StageSpec(
            "pool",
            FEATURE_MAP,
            reference.bilinear_pool,
            reference.bilinear_pool_vjp,
            no_matrix,
            ours("bilinear_pool"),
            inputs=POOL_INPUTS,
        ),
        StageSpec(
            "sqrtm",
            MATRIX,
            reference.sqrtm,
            lambda a, g: reference.sqrtm_vjp(reference.sqrtm(a), g),
            lambda a: a,
            ours("sqrtm"),
            inputs=SQRTM_INPUTS,
        ),
        StageSpec(
            "signed-sqrt",
            MATRIX,
            reference.signed_sqrt,
            reference.signed_sqrt_vjp,
            no_matrix,
            ours("signed_sqrt"),
            inputs=SIGNED_SQRT_INPUTS,
        ),
        StageSpec(
            "l2",
            MATRIX,
            reference.l2_normalize,
            reference.l2_normalize_vjp,
            no_matrix,
            ours("l2_normalize"),
            inputs=StageInputs(
                **L2_INPUTS, first=first_signed_root, realistic=realistic_signed_root_cases
            ),
        ),
        StageSpec(
            "head",
            FEATURE_MAP,
            reference.ibp_head,
            reference.ibp_head_vjp,
            reference.bilinear_pool,
            _our_head,
            signed_sqrt_amplification,
            inputs=HEAD_INPUTS,
            flat_output=True,
        ),
    )
}
