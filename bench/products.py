"""Matrix products each matmul-only square root needs to reach 1e-3, forward and backward.

The device-independent figure of GPU cost: on a card a C x C root is a chain of (B, C, C) matrix
products, so their count, not CPU time, says which method is cheaper there. Products are counted
at torch's dispatcher (every aten mm/bmm/addmm/baddbmm call that actually runs, whatever Python
spelling produced it), for forward and backward separately, at the fewest iterations that bring
both relative errors (worst sample, against SciPy in float64) within ACCURACY_TARGET on realistic
covariances in float32. eigh is listed for comparison: its products are the few around the
eigendecomposition, which is not a matrix product and dominates its cost.

    python -m bench.products [--channels 64 128 256 512] [--output results]

writes <output>/products.json and <output>/products.md (the table).
"""

import argparse
import dataclasses
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from bench.cases import ACCURACY_TARGET, MAX_SEARCHED_ITERATIONS, Cell, get_profile
from bench.errors import fewest_iterations
from bench.inputs import SEED, Inputs
from impls.minimax_polynomials import DEFAULT_MINIMAX_ITERATIONS
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, write_results
from impls.testing.tolerances import relative_error
from impls.torch import sqrtm
from impls.torch.minimax_newton_schulz import MINIMAX_BACKWARDS, minimax_sqrtm
from reference.conventions import DEFAULT_EPS, NEWTON_SCHULZ_BACKWARDS

#: The GPU-cost target of the minimax root (issue 13): half the 149 products that the classic
#: Newton-Schulz iteration needed at C = 512.
PRODUCT_BUDGET = 75

DEFAULT_OUTPUT = pathlib.Path("results")
FILE_NAME = "products.json"
DOCUMENT = "results/products.md"
#: The benchmarks' headline batch: at C=512 these are exactly the headline cell's matrices.
BATCH = get_profile("default", "cpu").headline.batch

_PRODUCT_OPS = {
    torch.ops.aten.mm,
    torch.ops.aten.bmm,
    torch.ops.aten.addmm,
    torch.ops.aten.baddbmm,
    torch.ops.aten.addbmm,
}


class ProductCounter(TorchDispatchMode):
    """Counts the matrix products that reach torch's dispatcher while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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


def methods() -> list[Method]:
    """Every matmul-only method and backward, and eigh for comparison."""
    newton_schulz = [
        Method(
            "newton_schulz",
            backward,
            lambda a, k, backward=backward: sqrtm(
                a, method="newton_schulz", num_iters=k, backward=backward
            ),
            (5, MAX_SEARCHED_ITERATIONS),
        )
        for backward in NEWTON_SCHULZ_BACKWARDS
    ]
    minimax = [
        Method(
            "minimax_newton_schulz",
            backward,
            lambda a, k, backward=backward: _minimax(a, k, backward),
            (1, 3 * DEFAULT_MINIMAX_ITERATIONS),
        )
        for backward in MINIMAX_BACKWARDS
    ]
    eigh = Method("eigh", None, lambda a, _: sqrtm(a, method="eigh"), None)
    return [*minimax, *newton_schulz, eigh]


def count_products(
    root: Callable[[torch.Tensor], torch.Tensor], a: np.ndarray, cotangent: np.ndarray
) -> dict:
    """Products of root's forward and of its backward on float32 `a`, the output and gradient."""
    leaf = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    with ProductCounter() as forward:
        z = root(leaf)
    with ProductCounter() as backward:
        (gradient,) = torch.autograd.grad(z, leaf, torch.tensor(cotangent, dtype=torch.float32))
    return {
        "forward_products": forward.count,
        "backward_products": backward.count,
        "products": forward.count + backward.count,
        "root": z.detach().numpy(),
        "gradient": gradient.numpy(),
    }


def measure_method(method: Method, case: tuple) -> dict:
    """The fewest iterations of `method` that reach ACCURACY_TARGET on `case`, with its products
    and errors there (iterations None: none in the scanned range reaches it)."""
    a, cotangent, reference_root, reference_gradient = case

    def run(k):
        counted = count_products(lambda m: method.root(m, k), a, cotangent)
        counted["forward_error"] = relative_error(counted.pop("root"), reference_root)
        counted["backward_error"] = relative_error(counted.pop("gradient"), reference_gradient)
        return counted

    if method.iterations is None:
        counted = run(None)
        meets = max(counted["forward_error"], counted["backward_error"]) <= ACCURACY_TARGET
        return {"iterations": None, "meets_target": meets, **counted}
    measured = {}

    def errors_at(k):
        measured[k] = run(k)
        return measured[k]["forward_error"], measured[k]["backward_error"]

    k = fewest_iterations(errors_at, ACCURACY_TARGET, *method.iterations)
    last = max(measured)
    return {"iterations": k, "meets_target": k is not None, **measured[last if k is None else k]}


def measure(channels: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (C, method, backward), on the benchmarks' seeded covariances."""
    inputs = Inputs()
    rows = []
    with tqdm(total=len(channels) * len(methods()), desc="matrix products") as bar:
        for c in channels:
            cell = Cell(c, BATCH, "float32")
            case = (inputs.covariances(cell), inputs.cotangent(cell), *inputs.reference(cell))
            for method in methods():
                rows.append(
                    {
                        **cell.info(),
                        "method": method.method,
                        "backward": method.backward,
                        "matmul_only": method.matmul_only,
                        **measure_method(method, case),
                    }
                )
                bar.update()
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Products (forward + backward) to reach the target, one column per C."""
    channels = sorted({r["channels"] for r in rows})
    keys = list(dict.fromkeys((r["method"], r["backward"], r["matmul_only"]) for r in rows))
    header = "| method / backward | " + " | ".join(f"C={c}" for c in channels) + " |"
    lines = [header, "|---" * (len(channels) + 1) + "|"]
    for method, backward, matmul_only in keys:
        cells = []
        for c in channels:
            (row,) = [
                r
                for r in rows
                if (r["method"], r["backward"], r["channels"]) == (method, backward, c)
            ]
            products = f"{row['products']} = {row['forward_products']} + {row['backward_products']}"
            if not row["meets_target"]:
                worst = max(row["forward_error"], row["backward_error"])
                reach = "not reached" if method != "eigh" else f"{products}, error {worst:.1e}"
                cells.append(f"misses ({reach})")
                continue
            steps = "" if row["iterations"] is None else f" (x{row['iterations']})"
            cells.append(products + steps)
        label = method if backward is None else f"{method} / {backward}"
        label += "" if matmul_only else " (plus an eigendecomposition)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(path: pathlib.Path) -> str:
    """results/products.md from the results file `path` alone."""
    metadata, document = read_results(path)
    return (
        f"# Matrix products to reach {metadata['target']:g}\n\n"
        f"{readme_blocks.provenance(metadata)}\n\n"
        "Matrix products (aten mm/bmm calls) of forward + backward, at the fewest iterations "
        f"(xK) that bring both relative errors within {metadata['target']:g} of SciPy (float64), "
        f"float32, the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I, batch "
        f"{metadata['batch']}. The target for the best matmul-only method at C = 512: at most "
        f"{metadata['product_budget']}.\n\n" + markdown_table(document["rows"]) + "\n"
    )


@readme_blocks.register_document(DOCUMENT)
def committed_document(root: pathlib.Path) -> str:
    return render(root / "results" / FILE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.products", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)

    start = time.monotonic()
    rows = measure(arguments.channels)
    metadata = collect(
        "cpu",
        "products",
        command=shlex.join(["python", "-m", "bench.products", *argv]),
        wall_seconds=time.monotonic() - start,
        seed=SEED,
        batch=BATCH,
        dtype="float32",
        eps=DEFAULT_EPS,
        target=ACCURACY_TARGET,
        product_budget=PRODUCT_BUDGET,
        counted_ops=sorted(str(op) for op in _PRODUCT_OPS),
        input="the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I "
        "(bench.inputs.Inputs.covariances), rounded to float32",
    )
    arguments.output.mkdir(parents=True, exist_ok=True)
    path = arguments.output / FILE_NAME
    write_results(path, metadata, rows=rows)
    (arguments.output / pathlib.Path(DOCUMENT).name).write_text(render(path))
    print(markdown_table(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
