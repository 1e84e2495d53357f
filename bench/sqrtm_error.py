"""Numerical error of the matrix square roots against the float64 reference, forward and
backward: the measurement the benchmarks, `bench.measure_auto`, `bench.condition_range` and
`bench.products` share (`SqrtmErrors`, `fewest_iterations`), and the error table of every
method on the benchmarks' own seeded inputs in docs/roots.md (so that table and BENCHMARKS.md
report the same matrices).

    python -m bench.sqrtm_error [--channels 64 512] [--output results]

Writes <output>/sqrtm_error.json; with the default output, also the table in the docs (the
`sqrtm-error` block of ./docs/roots.md). This is the root's error as a matrix; the classifier's
accuracy is `reproduce-accuracy`'s subject.
"""

import argparse
import dataclasses
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from bench.cases import DEFAULT_VARIANT, EIGH, Cell, SqrtmVariant, get_profile
from bench.inputs import SEED, Case, Inputs
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, write_rows
from impls.testing.tolerances import relative_error
from reference.conventions import DEFAULT_EPS, NEWTON_SCHULZ_BACKWARDS


def record_errors(
    extra_info: dict[str, Any],
    root: np.ndarray,
    gradient: np.ndarray,
    reference_root: np.ndarray,
    reference_gradient: np.ndarray,
) -> None:
    """Store forward and backward relative errors (NumPy inputs) in a benchmark's extra_info,
    beside its timing."""
    extra_info["forward_error"] = relative_error(root, reference_root)
    extra_info["backward_error"] = relative_error(gradient, reference_gradient)


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
    """Errors of one backend's methods on one Case, at any setting; the same calls the benchmarks
    time (the adapter's forward+backward)."""

    def __init__(self, adapter: Any, case: Case, dtype: str) -> None:
        self.adapter, self.case = adapter, case
        self.a = adapter.matrices(case.matrices, dtype)
        self.cotangent = adapter.matrices(case.cotangent, dtype)

    def forward_error(self, variant: SqrtmVariant) -> float:
        # Eager: a compiled (TensorFlow) forward would be traced anew for every count scanned.
        z = self.adapter.sqrtm_function(variant)(self.a)
        return relative_error(self.adapter.to_numpy(z), self.case.root)

    def run(self, variant: SqrtmVariant) -> Callable[[], Any]:
        return self.adapter.sqrtm_forward_backward(variant, self.a, self.cotangent)

    def errors(self, variant: SqrtmVariant) -> tuple[float, float]:
        """(forward, backward) relative Frobenius errors, worst sample."""
        z, grad = self.run(variant)()
        return (
            relative_error(self.adapter.to_numpy(z), self.case.root),
            relative_error(self.adapter.to_numpy(grad), self.case.gradient),
        )


BLOCK = "sqrtm-error"
#: The page that holds BLOCK, relative to the repository root.
PAGE = "docs/roots.md"
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


@dataclasses.dataclass(frozen=True)
class ErrorRow:
    """One method's errors on one framework and size (a row of sqrtm_error.json)."""

    framework: str
    channels: int
    batch: int
    dtype: str
    method: str
    method_label: str
    num_iters: int | None
    backward: str | None
    compute_dtype: str | None
    forward_error: float
    backward_error: float

    @classmethod
    def of(
        cls, framework: str, cell: Cell, variant: SqrtmVariant, errors: tuple[float, float]
    ) -> "ErrorRow":
        v = variant
        return cls(
            framework,
            cell.channels,
            cell.batch,
            cell.dtype,
            v.method,
            v.label,
            v.num_iters,
            v.backward,
            v.compute_dtype,
            *errors,
        )


def measure(channels: Sequence[int]) -> list[ErrorRow]:
    """One row per (framework, C, method): forward and backward errors in float32."""
    from tqdm import tqdm

    from bench.adapters import adapter_for, benchmarked_backends

    backends = benchmarked_backends("cpu")
    inputs = Inputs()
    rows = []
    with tqdm(total=len(channels) * len(backends) * len(VARIANTS), desc="sqrtm error") as bar:
        for c in channels:
            cell = Cell(c, BATCH, "float32")
            for backend in backends:
                errors = SqrtmErrors(adapter_for(backend, "cpu"), inputs.case(cell), cell.dtype)
                for variant in VARIANTS:
                    rows.append(ErrorRow.of(backend.name, cell, variant, errors.errors(variant)))
                    bar.update()
    return rows


def markdown_table(rows: Sequence[ErrorRow]) -> str:
    frameworks = sorted({r.framework for r in rows})
    channels = sorted({r.channels for r in rows})
    columns = [(f, c) for c in channels for f in frameworks]
    header = "| method | " + " | ".join(f"{f} C={c} fwd / bwd" for f, c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    by_key = {(r.method_label, r.framework, r.channels): r for r in rows}
    for label in dict.fromkeys(r.method_label for r in rows):
        cells = []
        for f, c in columns:
            row = by_key[(label, f, c)]
            cells.append(f"{row.forward_error:.1e} / {row.backward_error:.1e}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_rows(path: pathlib.Path) -> tuple[dict[str, Any], list[ErrorRow]]:
    """(envelope, rows) of a sqrtm_error.json."""
    metadata, document = read_results(path)
    return metadata, [ErrorRow(**row) for row in document["rows"]]


def block(path: pathlib.Path) -> str:
    """The docs block of results file `path`."""
    metadata, rows = read_rows(path)
    return readme_blocks.render(BLOCK, markdown_table(rows), metadata)


@readme_blocks.register(PAGE, BLOCK)
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
    page = pathlib.Path(PAGE)
    if arguments.output.resolve() == DEFAULT_OUTPUT.resolve() and page.exists():
        readme_blocks.write(page, BLOCK, block(path))
        print(f"wrote the {BLOCK} block of {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
