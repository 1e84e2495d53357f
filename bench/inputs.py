"""The seeded inputs of the benchmarks and of the sqrtm error table: the same matrices for every
method, backend and command (`bench.sqrtm_error` reports errors on exactly the matrices whose
timings BENCHMARKS.md shows)."""

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.cases import Cell
from bench.errors import reference_root_and_gradient
from impls.testing.matrices import relu_covariances, relu_feature_maps

#: The seed of every generated input, so all methods and backends see the same matrices.
SEED = 20170721


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
        """relu_covariances rounded to the cell's dtype and back, so the float64 reference sees
        exactly what the benchmarked method sees."""

        def make(rng: np.random.Generator) -> np.ndarray:
            matrices = relu_covariances(rng, cell.batch, cell.channels)
            return matrices.astype(cell.dtype).astype(np.float64)

        return self._cached(("covariances", cell), make)

    def cotangent(self, cell: Cell) -> np.ndarray:
        def make(rng: np.random.Generator) -> np.ndarray:
            g = rng.standard_normal((cell.batch, cell.channels, cell.channels))
            return g.astype(cell.dtype).astype(np.float64)

        return self._cached(("cotangent", cell), make)

    def reference(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
        """The float64 root and gradient for `covariances(cell)` and `cotangent(cell)`."""
        return self._cached(
            ("reference", cell),
            lambda rng: reference_root_and_gradient(self.covariances(cell), self.cotangent(cell)),
        )

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
