"""Numerical error of every matrix square root against the float64 reference, forward and
backward, on the benchmarks' own seeded inputs (so the README's table and BENCHMARKS.md report
the same matrices).

    python -m bench.sqrtm_error [--channels 64 512] [--output results]

Writes <output>/sqrtm_error.json; with the default output, also the README's table (the
`sqrtm-error` block of ./README.md). This is the root's error as a matrix; the classifier's
accuracy is `reproduce-accuracy`'s subject.
"""

import argparse
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from bench.adapters import adapter_for, benchmarked_backends
from bench.cases import DEFAULT_VARIANT, EIGH, Cell, SqrtmVariant, get_profile
from bench.errors import SqrtmErrors
from bench.inputs import SEED, Inputs
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, write_rows
from reference.conventions import DEFAULT_EPS, NEWTON_SCHULZ_BACKWARDS

BLOCK = "sqrtm-error"
DEFAULT_OUTPUT = pathlib.Path("results")
FILE_NAME = "sqrtm_error.json"
#: The benchmarks' headline batch: at C=512 these are exactly the headline cell's matrices.
BATCH = get_profile("default", "cpu").headline.batch

VARIANTS: tuple[SqrtmVariant, ...] = (
    DEFAULT_VARIANT,
    EIGH,
    *(
        SqrtmVariant("newton_schulz", k, backward)
        for k in (5, 10, 20)
        for backward in NEWTON_SCHULZ_BACKWARDS
    ),
)


def measure(channels: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (framework, C, method): forward and backward errors in float32."""
    backends = benchmarked_backends("cpu")
    inputs = Inputs()
    rows = []
    with tqdm(total=len(channels) * len(backends) * len(VARIANTS), desc="sqrtm error") as bar:
        for c in channels:
            cell = Cell(c, BATCH, "float32")
            for backend in backends:
                errors = SqrtmErrors(adapter_for(backend, "cpu"), inputs, cell)
                for variant in VARIANTS:
                    forward, backward = errors.errors(variant)
                    rows.append(
                        {
                            "framework": backend.name,
                            **cell.info(),
                            **variant.info(),
                            "forward_error": forward,
                            "backward_error": backward,
                        }
                    )
                    bar.update()
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    frameworks = sorted({r["framework"] for r in rows})
    channels = sorted({r["channels"] for r in rows})
    columns = [(f, c) for c in channels for f in frameworks]
    header = "| method | " + " | ".join(f"{f} C={c} fwd / bwd" for f, c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    labels = list(dict.fromkeys(r["method_label"] for r in rows))
    for label in labels:
        cells = []
        for f, c in columns:
            (row,) = [
                r
                for r in rows
                if (r["method_label"], r["framework"], r["channels"]) == (label, f, c)
            ]
            cells.append(f"{row['forward_error']:.1e} / {row['backward_error']:.1e}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block(path: pathlib.Path) -> str:
    """The README block of results file `path`."""
    metadata, document = read_results(path)
    return readme_blocks.render(BLOCK, markdown_table(document["rows"]), metadata)


@readme_blocks.register("README.md", BLOCK)
def committed_block(root: pathlib.Path) -> str:
    return block(root / "results" / FILE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.sqrtm_error", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)

    start = time.monotonic()
    rows = measure(arguments.channels)
    metadata = collect(
        "cpu",
        "sqrtm-error",
        command=shlex.join(["python", "-m", "bench.sqrtm_error", *argv]),
        wall_seconds=time.monotonic() - start,
        seed=SEED,
        batch=BATCH,
        dtype="float32",
        eps=DEFAULT_EPS,
        input="the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I "
        "(bench.inputs.Inputs.covariances), rounded to float32",
    )
    path = write_rows(arguments.output, FILE_NAME, metadata, rows)
    print(markdown_table(rows))
    print(f"wrote {path}")
    readme = pathlib.Path("README.md")
    if arguments.output.resolve() == DEFAULT_OUTPUT.resolve() and readme.exists():
        readme_blocks.write(readme, BLOCK, block(path))
        print(f"wrote the {BLOCK} block of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
