"""Matrix products each matmul-only square root needs to reach 1e-3, forward and backward.

The device-independent figure of GPU cost: on a card a C x C root is a chain of (B, C, C) matrix
products, so their count, not CPU time, says which method is cheaper there. Products are counted
at torch's dispatcher (`bench.products.counting`: every aten mm/bmm/addmm/baddbmm call that
actually runs, whatever Python spelling produced it), for forward and backward separately, at the
fewest iterations that bring both relative errors (worst sample, against SciPy in float64) within
ACCURACY_TARGET on realistic covariances in float32. eigh is listed for comparison: its products
are the few around the eigendecomposition, which is not a matrix product and dominates its cost.

    python -m bench.products [--channels 64 128 256 512] [--output results]

writes <output>/products.json and <output>/products.md (the table). This module renders them
without torch (the README-drift test); counting imports torch.
"""

import argparse
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.cases import ACCURACY_TARGET, get_profile
from bench.inputs import SEED
from bench.products.rows import ProductsRow
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, write_rows
from reference.conventions import DEFAULT_EPS

#: The GPU-cost target of the minimax root (issue 13): half the 149 products that the classic
#: Newton-Schulz iteration needed at C = 512.
PRODUCT_BUDGET = 75

DEFAULT_OUTPUT = pathlib.Path("results")
FILE_NAME = "products.json"
DOCUMENT = "results/products.md"
#: The benchmarks' headline batch: at C=512 these are exactly the headline cell's matrices.
BATCH = get_profile("default", "cpu").headline.batch


def read_rows(path: pathlib.Path) -> tuple[dict[str, Any], list[ProductsRow]]:
    """(envelope, rows) of a products.json."""
    metadata, document = read_results(path)
    return metadata, [ProductsRow(**row) for row in document["rows"]]


def format_products(row: ProductsRow | None) -> str:
    """A row as the benchmark report prints it: forward + backward products at the fewest steps
    that reach the target, and whether an eigendecomposition comes on top."""
    if row is None:
        return "not counted"
    if not row.meets_target and row.iterations is not None:
        return "misses"
    count = f"{row.products} = {row.forward_products} + {row.backward_products}"
    if row.iterations is not None:
        count += f" (x{row.iterations})"
    return count if row.matmul_only else f"{count}, plus an eigendecomposition"


def markdown_table(rows: Sequence[ProductsRow]) -> str:
    """Products (forward + backward) to reach the target, one column per C."""
    channels = sorted({r.channels for r in rows})
    keys = list(dict.fromkeys((r.method, r.backward, r.matmul_only) for r in rows))
    by_key = {(r.method, r.backward, r.channels): r for r in rows}
    header = "| method / backward | " + " | ".join(f"C={c}" for c in channels) + " |"
    lines = [header, "|---" * (len(channels) + 1) + "|"]
    for method, backward, matmul_only in keys:
        cells = []
        for c in channels:
            row = by_key[(method, backward, c)]
            products = f"{row.products} = {row.forward_products} + {row.backward_products}"
            if not row.meets_target:
                reach = (
                    "not reached"
                    if method != "eigh"
                    else f"{products}, error {row.worst_error:.1e}"
                )
                cells.append(f"misses ({reach})")
                continue
            steps = "" if row.iterations is None else f" (x{row.iterations})"
            cells.append(products + steps)
        label = method if backward is None else f"{method} / {backward}"
        label += "" if matmul_only else " (plus an eigendecomposition)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(path: pathlib.Path) -> str:
    """results/products.md from the results file `path` alone."""
    metadata, rows = read_rows(path)
    return (
        f"# Matrix products to reach {metadata['target']:g}\n\n"
        f"{readme_blocks.provenance(metadata)}\n\n"
        "Matrix products (aten mm/bmm calls) of forward + backward, at the fewest iterations "
        f"(xK) that bring both relative errors within {metadata['target']:g} of SciPy (float64), "
        f"float32, the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I, batch "
        f"{metadata['batch']}. The target for the best matmul-only method at C = 512: at most "
        f"{metadata['product_budget']}.\n\n" + markdown_table(rows) + "\n"
    )


@readme_blocks.register_document(DOCUMENT)
def committed_document(root: pathlib.Path) -> str:
    return render(root / "results" / FILE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.products", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)

    # Imported here: rendering the committed table (the README-drift test) needs no torch.
    from bench.products.counting import COUNTED_OPS, measure

    start = time.monotonic()
    rows = measure(arguments.channels, BATCH)
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
        counted_ops=COUNTED_OPS,
        input="the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I "
        "(bench.inputs.Inputs.case), rounded to float32",
    )
    path = write_rows(arguments.output, FILE_NAME, metadata, rows, (DOCUMENT, render))
    print(markdown_table(rows))
    print(f"wrote {path}")
    return 0
