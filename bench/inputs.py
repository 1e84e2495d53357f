"""The seeded inputs of the benchmarks and of the numerical-error commands: the same matrices for
every method, backend and command (`bench.sqrtm_error` reports errors on exactly the matrices
whose timings BENCHMARKS.md shows).

Besides the realistic covariances (28x28 ReLU feature maps, condition numbers of about 1e3 to
1e5), spectra of a chosen condition number up to 1e8 (`conditioned`): a logspace spectrum, and
covariances of 7x7 ReLU feature maps (fewer locations than channels, so eps sets the smallest
eigenvalue) scaled so that the largest eigenvalue is `condition` times eps: what a real backbone's
features at their own scale give with the absolute eps.
"""

import dataclasses
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

import reference
from bench.cases import Cell
from impls.testing.matrices import relu_covariances, relu_feature_maps, spd_with_spectrum
from reference.conventions import DEFAULT_EPS

#: The seed of every generated input, so all methods and backends see the same matrices.
SEED = 20170721

#: The spectra `Inputs.conditioned` draws.
SPECTRA = ("logspace", "relu")
#: The feature-map side of the "relu" spectrum: 7x7, a ResNet's last stage at 224x224 input
#: (smaller where C <= 49, so that there are fewer locations than channels).
CONDITIONED_SIDE = 7


@dataclasses.dataclass(frozen=True)
class Case:
    """Matrices (float64 holding values of the cell's dtype), a cotangent (likewise), and the
    float64 reference root and gradient of <cotangent, root> on exactly those matrices."""

    matrices: np.ndarray
    cotangent: np.ndarray
    root: np.ndarray
    gradient: np.ndarray


def reference_root_and_gradient(
    matrices: np.ndarray, cotangent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SciPy's root (float64) and the gradient of <cotangent, root> by the Lyapunov solve."""
    root = reference.sqrtm(matrices)
    return root, reference.sqrtm_vjp(root, cotangent)


def _rounded(matrices: np.ndarray, dtype: str) -> np.ndarray:
    """Rounded to `dtype` and back: the float64 reference then sees exactly what the benchmarked
    method sees."""
    return np.asarray(matrices).astype(dtype).astype(np.float64)


def conditioned_matrices(
    rng: np.random.Generator, batch: int, channels: int, spectrum: str, condition: float
) -> np.ndarray:
    """`batch` symmetric positive definite (C x C) matrices whose condition number (largest over
    smallest eigenvalue, in float64) is `condition`, with the spectrum `spectrum` (SPECTRA)."""
    if spectrum == "logspace":
        eigenvalues = np.logspace(0.0, -np.log10(condition), channels)
        return spd_with_spectrum(rng, np.tile(eigenvalues, (batch, 1)))
    if spectrum == "relu":
        side = min(CONDITIONED_SIDE, math.isqrt(channels - 1))
        if side < 1:
            raise ValueError("the relu spectrum needs C >= 2 (fewer locations than channels)")
        x = relu_feature_maps(rng, batch, channels, side, side).reshape(batch, channels, -1)
        gram = x @ x.transpose(0, 2, 1) / (side * side)
        largest = np.linalg.eigvalsh(gram)[:, -1]
        # lambda_max(s^2 G + eps I) / eps = condition, since G's smallest eigenvalue is 0.
        scale = (condition - 1) * DEFAULT_EPS / largest
        return scale[:, None, None] * gram + DEFAULT_EPS * np.eye(channels)
    raise ValueError(f"unknown spectrum {spectrum!r}; choose one of {SPECTRA}")


class Inputs:
    """Seeded inputs, generated once per size: realistic ReLU covariances, cotangents, features."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _cached(self, key: tuple[Any, ...], make: Callable[[np.random.Generator], Any]) -> Any:
        if key not in self._cache:
            # crc32 of the key, not hash(): str hashes change from one process to the next.
            stream = zlib.crc32(repr(key).encode())
            self._cache[key] = make(np.random.default_rng([SEED, stream]))
        return self._cache[key]

    def covariances(self, cell: Cell) -> np.ndarray:
        """relu_covariances rounded to the cell's dtype (and back to float64)."""
        return self._cached(
            ("covariances", cell),
            lambda rng: _rounded(relu_covariances(rng, cell.batch, cell.channels), cell.dtype),
        )

    def cotangent(self, cell: Cell) -> np.ndarray:
        def make(rng: np.random.Generator) -> np.ndarray:
            g = rng.standard_normal((cell.batch, cell.channels, cell.channels))
            return _rounded(g, cell.dtype)

        return self._cached(("cotangent", cell), make)

    def reference(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
        """The float64 root and gradient for `covariances(cell)` and `cotangent(cell)`."""
        return self.case(cell).root, self.case(cell).gradient

    def case(self, cell: Cell) -> Case:
        """The realistic covariances of `cell` with their cotangent and reference."""

        def make(rng: np.random.Generator) -> Case:
            matrices, cotangent = self.covariances(cell), self.cotangent(cell)
            return Case(matrices, cotangent, *reference_root_and_gradient(matrices, cotangent))

        return self._cached(("case", cell), make)

    def conditioned_case(self, cell: Cell, spectrum: str, condition: float) -> Case:
        """`conditioned_matrices` of `cell`'s size, rounded to its dtype, with the cell's
        cotangent and the reference on the rounded matrices (whose own condition number moves
        away from `condition` once float32 round-off, about 6e-8 of the largest eigenvalue,
        reaches the smallest one)."""

        def make(rng: np.random.Generator) -> Case:
            exact = conditioned_matrices(rng, cell.batch, cell.channels, spectrum, condition)
            matrices, cotangent = _rounded(exact, cell.dtype), self.cotangent(cell)
            return Case(matrices, cotangent, *reference_root_and_gradient(matrices, cotangent))

        return self._cached(("conditioned", cell, spectrum, condition), make)

    def feature_maps(self, batch: int, channels: int, side: int) -> np.ndarray:
        return self._cached(
            ("features", batch, channels, side),
            lambda rng: relu_feature_maps(rng, batch, channels, side, side),
        )

    def images(self, batch: int, side: int) -> np.ndarray:
        return self._cached(("images", batch, side), lambda rng: rng.random((batch, 3, side, side)))

    def labels(self, batch: int, num_classes: int) -> np.ndarray:
        return self._cached(
            ("labels", batch, num_classes), lambda rng: rng.integers(0, num_classes, batch)
        )
