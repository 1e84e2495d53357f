"""Each IBP stage as the property code sees it: its input kind, reference and our implementation."""

from dataclasses import dataclass
from functools import partial

import numpy as np

import reference
from reference.conventions import SIGNED_SQRT_DELTA

FEATURE_MAP, MATRIX = "feature_map", "matrix"


@dataclass(frozen=True)
class StageSpec:
    name: str
    input_kind: str
    forward: callable  # float64 NumPy reference, input channels-first where it is a feature map
    vjp: callable  # (input, cotangent) -> gradient with respect to the input
    conditioned_matrix: callable  # input -> the SPD matrix whose condition number sets the error
    implementation: callable  # backend, **options -> our function of one native tensor
    amplification: callable = lambda x, direction: 1.0  # error growth after the root (tolerances)

    def channels(self, x):
        return x.shape[1]


def _no_matrix(x):
    return None


def _rms(m):
    return np.sqrt(np.mean(m.reshape(len(m), -1) ** 2, axis=1))


def _signed_sqrt_amplification(x, direction):
    """Error growth of the signed sqrt after the root, largest over the batch: see the derivation
    in `impls.testing.tolerances`."""
    z = reference.sqrtm(reference.bilinear_pool(x))
    z_norms = np.linalg.norm(z.reshape(len(z), -1), axis=1)
    if direction == "forward":
        y = reference.signed_sqrt(z)
        y_norms = np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), np.finfo(float).tiny)
        slope = 1 / (2 * np.sqrt(np.abs(z) + SIGNED_SQRT_DELTA))
        return float(np.max(_rms(slope) * z_norms / y_norms))
    return float(np.max(_rms(1 / (2 * (np.abs(z) + SIGNED_SQRT_DELTA))) * z_norms))


def _ours(name):
    def build(backend, **options):
        return partial(getattr(backend.impl, name), **options)

    return build


def _our_head(backend, **options):
    def head(x):
        channels = x.shape[1] if backend.layout == "channels_first" else x.shape[-1]
        extra = {"dtype": x.dtype.name} if backend.name == "tf" else {}
        return backend.impl.IBPHead(in_channels=int(channels), **options, **extra)(x)

    return head


STAGES = {
    spec.name: spec
    for spec in (
        StageSpec(
            "pool",
            FEATURE_MAP,
            reference.bilinear_pool,
            reference.bilinear_pool_vjp,
            _no_matrix,
            _ours("bilinear_pool"),
        ),
        StageSpec(
            "sqrtm",
            MATRIX,
            reference.sqrtm,
            lambda a, g: reference.sqrtm_vjp(reference.sqrtm(a), g),
            lambda a: a,
            _ours("sqrtm"),
        ),
        StageSpec(
            "signed-sqrt",
            MATRIX,
            reference.signed_sqrt,
            reference.signed_sqrt_vjp,
            _no_matrix,
            _ours("signed_sqrt"),
        ),
        StageSpec(
            "l2",
            MATRIX,
            reference.l2_normalize,
            reference.l2_normalize_vjp,
            _no_matrix,
            _ours("l2_normalize"),
        ),
        StageSpec(
            "head",
            FEATURE_MAP,
            reference.ibp_head,
            reference.ibp_head_vjp,
            reference.bilinear_pool,
            _our_head,
            _signed_sqrt_amplification,
        ),
    )
}
