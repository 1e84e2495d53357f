"""Numerical error (not classification accuracy) of a matrix square root on the input it meets in
a network: covariances of 28x28 ReLU feature maps plus the default eps, in float32, against the
float64 reference."""

from typing import Any

import numpy as np

import reference
from impls.testing.matrices import relu_covariances
from impls.testing.tolerances import relative_error


def realistic_case(
    channels: int, batch: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(covariances, cotangent, reference root, reference gradient), all float64."""
    rng = np.random.default_rng(seed)
    a = relu_covariances(rng, batch, channels)
    g = rng.standard_normal(a.shape)
    z = reference.sqrtm(a)
    return a, g, z, reference.sqrtm_vjp(z, g)


def sqrtm_errors(
    backend: Any,
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    dtype: str = "float32",
    **options: Any,
) -> tuple[float, float]:
    """(forward, backward) relative Frobenius errors of backend's sqrtm(**options) on `case`."""
    a, g, z, dz = case
    out, (grad,) = backend.value_and_vjp(
        lambda m: backend.impl.sqrtm(m, **options), [backend.tensor(a, dtype)], g
    )
    return relative_error(out, z), relative_error(grad, dz)
