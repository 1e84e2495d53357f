"""Matrix products each matmul-only square root needs to reach 1e-3, forward and backward.

The device-independent figure of GPU cost: on a card a C x C root is a chain of (B, C, C) matrix
products, so their count, not CPU time, says which method is cheaper there. Products are counted
at torch's dispatcher (every aten mm/bmm/addmm/baddbmm call that actually runs, whatever Python
spelling produced it), for forward and backward separately, at the fewest iterations that bring
both relative errors (worst sample, against SciPy in float64) within ACCURACY_TARGET on realistic
covariances in float32. eigh is listed for comparison: its products are the few around the
eigendecomposition, which is not a matrix product and dominates its cost.

`python -m bench.products [--channels 64 128 256 512] [--batch 2] [--output-dir results]` writes
results/products.json (rows and metadata) and results/products.md (the table).
"""

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.cases import ACCURACY_TARGET, MAX_SEARCHED_ITERATIONS
from bench.errors import fewest_iterations
from impls.minimax_polynomials import DEFAULT_MINIMAX_ITERATIONS
from impls.testing.accuracy import realistic_case
from impls.testing.metadata import collect
from impls.testing.tolerances import relative_error
from impls.torch import sqrtm
from impls.torch.minimax_newton_schulz import MINIMAX_BACKWARDS, minimax_sqrtm
from reference.conventions import NEWTON_SCHULZ_BACKWARDS

#: The GPU-cost target of the minimax root (issue 13): half the 149 products that the classic
#: Newton-Schulz iteration needed at C = 512.
PRODUCT_BUDGET = 75

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


def measure(channels: list[int], batch: int, seed: int) -> list[dict]:
    rows = []
    for c in channels:
        case = realistic_case(c, batch=batch, seed=seed)
        for method in methods():
            row = measure_method(method, case)
            rows.append(
                {
                    "channels": c,
                    "method": method.method,
                    "backward": method.backward,
                    "matmul_only": method.matmul_only,
                    **row,
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("results"))
    args = parser.parse_args(argv)

    rows = measure(args.channels, args.batch, args.seed)
    metadata = collect("cpu", "products")
    metadata.update(
        seed=args.seed,
        batch=args.batch,
        dtype="float32",
        target=ACCURACY_TARGET,
        product_budget=PRODUCT_BUDGET,
        counted_ops=sorted(str(op) for op in _PRODUCT_OPS),
        input="covariances of 28x28 ReLU feature maps + eps I "
        "(impls.testing.matrices.relu_covariances)",
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "products.json").write_text(
        json.dumps({"metadata": metadata, "rows": rows}, indent=2) + "\n"
    )
    commit = (metadata["git_commit"] or "unknown")[:12]
    table = markdown_table(rows)
    intro = (
        f"Matrix products (forward + backward, with the iteration count) to reach "
        f"{ACCURACY_TARGET:g} relative error forward and backward, float32, batch {args.batch}; "
        f"generated by `python -m bench.products` at {commit}, {metadata['date_utc']}.\n\n"
    )
    (args.output_dir / "products.md").write_text(intro + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
