"""Numerical error of a sqrtm method against the float64 reference, and the fewest Newton-Schulz
iterations that reach a target."""

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

import reference
from impls.testing.tolerances import relative_error

if TYPE_CHECKING:
    from bench.cases import Cell, SqrtmVariant
    from bench.inputs import Inputs


def record_errors(
    extra_info: dict[str, Any],
    root: np.ndarray,
    gradient: np.ndarray,
    reference_root: np.ndarray,
    reference_gradient: np.ndarray,
) -> None:
    """Store forward and backward relative errors (NumPy inputs) beside a benchmark's timing."""
    extra_info["forward_error"] = relative_error(root, reference_root)
    extra_info["backward_error"] = relative_error(gradient, reference_gradient)


def reference_root_and_gradient(
    matrices: np.ndarray, cotangent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SciPy's root (float64) and the gradient of <cotangent, root> by the Lyapunov solve."""
    root = reference.sqrtm(matrices)
    return root, reference.sqrtm_vjp(root, cotangent)


def fewest_iterations(
    errors_at: Callable[[int], Iterable[float]], target: float, first: int, last: int
) -> int | None:
    """The smallest k in [first, last] with every error errors_at(k) returns <= target, else None.

    A linear scan rather than bisection: the errors need not fall monotonically in k, and the
    smallest qualifying k is the answer the speed comparison needs.
    """
    for k in range(first, last + 1):
        if max(errors_at(k)) <= target:
            return k
    return None


class SqrtmErrors:
    """Errors of one backend's methods on the seeded covariances of `cell`, at any setting; the
    same calls the benchmarks time (the adapter's forward+backward)."""

    def __init__(self, adapter: Any, inputs: "Inputs", cell: "Cell") -> None:
        self.adapter, self.cell = adapter, cell
        self.a = adapter.matrices(inputs.covariances(cell), cell.dtype)
        self.cotangent = adapter.matrices(inputs.cotangent(cell), cell.dtype)
        self.reference_root, self.reference_gradient = inputs.reference(cell)

    def forward_error(self, variant: "SqrtmVariant") -> float:
        # Eager: a compiled (TensorFlow) forward would be traced anew for every count scanned.
        z = self.adapter.sqrtm_function(variant)(self.a)
        return relative_error(self.adapter.to_numpy(z), self.reference_root)

    def run(self, variant: "SqrtmVariant") -> Callable[[], Any]:
        root = self.adapter.sqrtm_function(variant)
        return self.adapter.forward_backward(root, self.a, self.cotangent)

    def errors(self, variant: "SqrtmVariant") -> tuple[float, float]:
        """(forward, backward) relative Frobenius errors, worst sample."""
        z, grad = self.run(variant)()
        return (
            relative_error(self.adapter.to_numpy(z), self.reference_root),
            relative_error(self.adapter.to_numpy(grad), self.reference_gradient),
        )
