"""Counting the matrix products of torch square roots at the dispatcher, and the fewest
iterations of each method that reach ACCURACY_TARGET: the measurement behind `bench.products`.

Products are every aten mm/bmm/addmm/baddbmm call that actually runs, whatever Python spelling
produced it, for forward and backward separately.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from bench.cases import ACCURACY_TARGET, MAX_SEARCHED_ITERATIONS, Cell
from bench.inputs import Case, Inputs
from bench.products.rows import ProductsRow
from bench.sqrtm_error import fewest_iterations
from impls.minimax_polynomials import DEFAULT_MINIMAX_ITERATIONS
from impls.testing.tolerances import relative_error
from impls.torch import sqrtm
from impls.torch.minimax_newton_schulz import MINIMAX_BACKWARDS, minimax_sqrtm
from reference.conventions import NEWTON_SCHULZ_BACKWARDS

_PRODUCT_OPS = {
    torch.ops.aten.mm,
    torch.ops.aten.bmm,
    torch.ops.aten.addmm,
    torch.ops.aten.baddbmm,
    torch.ops.aten.addbmm,
}


#: What the envelope records as counted.
COUNTED_OPS = sorted(str(op) for op in _PRODUCT_OPS)


class ProductCounter(TorchDispatchMode):
    """Counts the matrix products that reach torch's dispatcher while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func.overloadpacket in _PRODUCT_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _minimax(a: torch.Tensor, num_iters: int, backward: str) -> torch.Tensor:
    # The input sqrtm's dispatch gives it: the symmetric part, as a differentiable operation.
    return minimax_sqrtm((a + a.mT) / 2, num_iters, backward)


@dataclasses.dataclass(frozen=True)
class Method:
    """A square root (method, backward) and how to call it at an iteration count."""

    method: str
    backward: str | None
    root: Callable[[torch.Tensor, int | None], torch.Tensor]
    #: Iteration counts scanned for the fewest that reach the target; None: not iterative.
    iterations: tuple[int, int] | None

    @property
    def matmul_only(self) -> bool:
        return self.method != "eigh" and self.backward != "lyapunov"


def _newton_schulz_root(backward: str) -> Callable[[torch.Tensor, int | None], torch.Tensor]:
    def root(a: torch.Tensor, k: int | None) -> torch.Tensor:
        return sqrtm(a, method="newton_schulz", num_iters=k, backward=backward)

    return root


def _minimax_root(backward: str) -> Callable[[torch.Tensor, int | None], torch.Tensor]:
    def root(a: torch.Tensor, k: int | None) -> torch.Tensor:
        assert k is not None  # the minimax root is iterative: it is always given a count
        return _minimax(a, k, backward)

    return root


def methods() -> list[Method]:
    """Every matmul-only method and backward, and eigh for comparison."""
    newton_schulz = [
        Method(
            "newton_schulz",
            backward,
            _newton_schulz_root(backward),
            (5, MAX_SEARCHED_ITERATIONS),
        )
        for backward in NEWTON_SCHULZ_BACKWARDS
    ]
    minimax = [
        Method(
            "minimax_newton_schulz",
            backward,
            _minimax_root(backward),
            (1, 3 * DEFAULT_MINIMAX_ITERATIONS),
        )
        for backward in MINIMAX_BACKWARDS
    ]
    eigh = Method("eigh", None, lambda a, _: sqrtm(a, method="eigh"), None)
    return [*minimax, *newton_schulz, eigh]


@dataclasses.dataclass(frozen=True)
class Counted:
    """Products of one forward+backward, and what it computed."""

    forward_products: int
    backward_products: int
    root: np.ndarray
    gradient: np.ndarray

    @property
    def products(self) -> int:
        return self.forward_products + self.backward_products


def count_products(
    root: Callable[[torch.Tensor], torch.Tensor], a: np.ndarray, cotangent: np.ndarray
) -> Counted:
    """Products of root's forward and of its backward on float32 `a`, the output and gradient."""
    leaf = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    with ProductCounter() as forward:
        z = root(leaf)
    with ProductCounter() as backward:
        (gradient,) = torch.autograd.grad(z, leaf, torch.tensor(cotangent, dtype=torch.float32))
    return Counted(forward.count, backward.count, z.detach().numpy(), gradient.numpy())


@dataclasses.dataclass(frozen=True)
class _Run:
    counted: Counted
    forward_error: float
    backward_error: float

    @property
    def errors(self) -> tuple[float, float]:
        return self.forward_error, self.backward_error


def measure_method(method: Method, cell: Cell, case: Case) -> ProductsRow:
    """The fewest iterations of `method` that reach ACCURACY_TARGET on `case`, with its products
    and errors there (iterations None: none in the scanned range reaches it)."""

    def run(k: int | None) -> _Run:
        counted = count_products(lambda m: method.root(m, k), case.matrices, case.cotangent)
        return _Run(
            counted,
            relative_error(counted.root, case.root),
            relative_error(counted.gradient, case.gradient),
        )

    if method.iterations is None:
        k, result = None, run(None)
        meets = max(result.errors) <= ACCURACY_TARGET
    else:
        measured: dict[int, _Run] = {}

        def errors_at(k: int) -> tuple[float, float]:
            measured[k] = run(k)
            return measured[k].errors

        k = fewest_iterations(errors_at, ACCURACY_TARGET, *method.iterations)
        # Not reached: the counts and errors of the most iterations scanned.
        result, meets = measured[max(measured) if k is None else k], k is not None
    counted = result.counted
    return ProductsRow(
        cell.channels,
        cell.batch,
        cell.dtype,
        method.method,
        method.backward,
        method.matmul_only,
        k,
        meets,
        counted.forward_products,
        counted.backward_products,
        counted.products,
        result.forward_error,
        result.backward_error,
    )


def measure(channels: Sequence[int], batch: int) -> list[ProductsRow]:
    """One row per (C, method, backward), on the benchmarks' seeded covariances."""
    inputs = Inputs()
    rows = []
    with tqdm(total=len(channels) * len(methods()), desc="matrix products") as bar:
        for c in channels:
            cell = Cell(c, batch, "float32")
            for method in methods():
                rows.append(measure_method(method, cell, inputs.case(cell)))
                bar.update()
    return rows
