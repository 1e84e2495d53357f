"""Measure what `sqrtm(method="auto")` should run, and each candidate's accuracy range, and write
the table the package reads.

    python -m bench.measure_auto [--device cpu|cuda] [--channels 64 128 256 512] [--repeats 5]
                                 [--only choices|ranges] [--conditions 1e2 ... 1e8]
                                 [--table impls/auto_table.json] [--output results] [--render]

Choices (timed): for every framework the device runs (torch and TensorFlow on the CPU, torch on
CUDA) and every C band, each candidate of `impls.auto_table.CANDIDATES` (the eigendecomposition in
float32 and in float64, the classic and the minimax Newton-Schulz root, each with its default
backward) is run forward+backward on the benchmarks' seeded ReLU covariances (float32, batch 8):
its forward and backward errors against SciPy in float64 (worst sample), and its time (the fastest
of `repeats` calls after a warm-up; on a shared machine only the ratios mean anything). The choice
per cell: accuracy first (both errors within AUTO_STATED_ACCURACY), then time (the fastest of
those); if no candidate is accurate enough, the most accurate.

Ranges (errors only, nothing timed): `bench.condition_range`, on spectra of condition numbers
1e2 to 1e8.

Writes the table (choices, ranges and their measurements, each part with its results envelope)
to `--table` (default impls/auto_table.json of the current directory: run it from the repository
root; it is package data), replacing only the measured device's part; the range points to
<output>/condition_range.json; and <output>/auto.md. With the default output, also the
`sqrtm-auto` block of ./docs/roots.md.
"""

import argparse
import dataclasses
import math
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import condition_range
from bench.cases import Cell, candidate_variant
from bench.condition_range import Range, RangePoint
from impls import auto_table
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, short_commit, write_results
from reference.conventions import AUTO_STATED_ACCURACY, DEFAULT_EPS

BLOCK = "sqrtm-auto"
#: The page that holds BLOCK, relative to the repository root.
PAGE = "docs/roots.md"
DOCUMENT = "results/auto.md"
DEFAULT_TABLE = pathlib.Path("impls") / auto_table.TABLE_PATH.name
DEFAULT_OUTPUT = pathlib.Path("results")
#: The benchmarks' headline batch.
BATCH = 8
DEFAULT_CHANNELS = (64, 128, 256, 512)
PARTS = ("choices", "ranges")
COMMAND = ("python", "-m", "bench.measure_auto")


@dataclasses.dataclass(frozen=True)
class CandidateRow:
    """One candidate's errors and time in one cell (framework, device, C band)."""

    framework: str
    device: str
    channels: int
    candidate: str
    forward_error: float
    backward_error: float
    meets_target: bool
    seconds: float

    @property
    def cell(self) -> tuple[str, str, int]:
        return (self.framework, self.device, self.channels)

    @property
    def worst_error(self) -> float:
        return max(self.forward_error, self.backward_error)


@dataclasses.dataclass(frozen=True)
class ChoiceRow:
    """What auto runs in one cell (the package reads these)."""

    framework: str
    device: str
    channels: int
    candidate: str
    meets_target: bool

    @property
    def cell(self) -> tuple[str, str, int]:
        return (self.framework, self.device, self.channels)


@dataclasses.dataclass
class AutoTable:
    """impls/auto_table.json: the choices with the measurements behind them and the envelope of
    each device's run (`runs`), and the float32 accuracy ranges with theirs (`range_runs`)."""

    runs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    rows: list[CandidateRow] = dataclasses.field(default_factory=list)
    choices: list[ChoiceRow] = dataclasses.field(default_factory=list)
    range_runs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    ranges: list[Range] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, path: pathlib.Path) -> "AutoTable":
        if not path.exists():
            return cls()
        _, document = read_results(path)
        return cls(
            runs=document["runs"],
            rows=[CandidateRow(**row) for row in document["rows"]],
            choices=[ChoiceRow(**row) for row in document["choices"]],
            range_runs=document.get("range_runs", {}),
            ranges=[Range(**row) for row in document.get("ranges", [])],
        )

    def write(self, path: pathlib.Path, metadata: dict[str, Any]) -> None:
        write_results(
            path,
            metadata,
            runs=self.runs,
            rows=self.rows,
            choices=self.choices,
            range_runs=self.range_runs,
            ranges=self.ranges,
        )

    def range_of(self, framework: str, device: str, channels: int, candidate: str) -> Range | None:
        return next(
            (
                r
                for r in self.ranges
                if (r.framework, r.device, r.channels, r.candidate)
                == (framework, device, channels, candidate)
            ),
            None,
        )


def fastest_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up (which traces a TensorFlow graph): other
    work on the machine only ever adds time."""
    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(device: str, channels: Sequence[int], repeats: int) -> list[CandidateRow]:
    """One row per (framework, C, candidate) on `device`."""
    from tqdm import tqdm

    from bench.adapters import adapter_for, benchmarked_backends
    from bench.inputs import Inputs
    from bench.sqrtm_error import SqrtmErrors

    backends = benchmarked_backends(device)
    inputs = Inputs()
    rows = []
    total = len(backends) * len(channels) * len(auto_table.CANDIDATES)
    with tqdm(total=total, desc=f"auto table ({device})") as bar:
        for c in channels:
            cell = Cell(c, BATCH, "float32")
            for backend in backends:
                errors = SqrtmErrors(adapter_for(backend, device), inputs.case(cell), cell.dtype)
                for candidate in auto_table.CANDIDATES:
                    variant = candidate_variant(candidate)
                    forward, backward = errors.errors(variant)
                    rows.append(
                        CandidateRow(
                            backend.name,
                            device,
                            c,
                            candidate,
                            forward,
                            backward,
                            max(forward, backward) <= AUTO_STATED_ACCURACY,
                            fastest_seconds(errors.run(variant), repeats),
                        )
                    )
                    bar.update()
    return rows


def choose(rows: Sequence[CandidateRow]) -> list[ChoiceRow]:
    """Per (framework, device, C): the fastest candidate meeting the target, else the most
    accurate."""
    cells: dict[tuple[str, str, int], list[CandidateRow]] = {}
    for row in rows:
        cells.setdefault(row.cell, []).append(row)
    choices = []
    for (framework, device, channels), members in sorted(cells.items()):
        accurate = [r for r in members if r.meets_target]
        if accurate:
            best = min(accurate, key=lambda r: r.seconds)
        else:
            best = min(members, key=lambda r: r.worst_error)
        choices.append(ChoiceRow(framework, device, channels, best.candidate, best.meets_target))
    return choices


def _label(candidate: str) -> str:
    method, eigh_dtype = auto_table.CANDIDATES[candidate]
    if method == "eigh":
        return f"eigh in {eigh_dtype or 'float32'}"
    return f"{method} (default steps and backward)"


def _with_range(table: AutoTable, choice: ChoiceRow) -> str:
    bound = table.range_of(*choice.cell, choice.candidate)
    text = "" if bound is None else f", to condition {condition_range.range_text(bound)}"
    return _label(choice.candidate) + text


def choices_table(table: AutoTable) -> str:
    """What auto runs: one row per framework and device, one column per C band; with the range
    of condition numbers within which it meets the target (float32 input), where measured."""
    channels = sorted({r.channels for r in table.choices})
    keys = list(dict.fromkeys((r.framework, r.device) for r in table.choices))
    by_cell = {r.cell: r for r in table.choices}
    lines = [
        "| framework, device | " + " | ".join(f"C <= {c}" for c in channels) + " |",
        "|---" * (len(channels) + 1) + "|",
    ]
    for framework, device in keys:
        cells = [
            _with_range(table, by_cell[(framework, device, c)])
            if (framework, device, c) in by_cell
            else "not measured"
            for c in channels
        ]
        lines.append(f"| {framework}, {device} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Time ratios closer to 1 than this are near ties on a shared machine: the report says so.
NEAR_TIE = 1.2


def reasons(table: AutoTable) -> str:
    """Why each cell's choice: the next fastest accurate candidate, or a faster one that misses."""
    lines = []
    for choice in table.choices:
        cell = [r for r in table.rows if r.cell == choice.cell]
        (chosen,) = [r for r in cell if r.candidate == choice.candidate]
        others = sorted((r for r in cell if r is not chosen), key=lambda r: r.seconds)
        accurate = [r for r in others if r.meets_target]
        why = []
        if not chosen.meets_target:
            why.append("no candidate meets the target: the most accurate")
        for row in others:
            if row.seconds < chosen.seconds:
                why.append(
                    f"{_label(row.candidate)} is faster ({row.seconds / chosen.seconds:.2f}x) "
                    f"but misses (error {row.worst_error:.1e})"
                )
        if accurate:
            ratio = accurate[0].seconds / chosen.seconds
            tie = f", a near tie (under {NEAR_TIE:g}x)" if ratio < NEAR_TIE else ""
            why.append(
                f"next within the target: {_label(accurate[0].candidate)}, {ratio:.2f}x{tie}"
            )
        lines.append(
            f"- {choice.framework}, {choice.device}, C <= {choice.channels}: "
            f"{_label(choice.candidate)}; " + "; ".join(why) + "."
        )
    return "\n".join(lines)


def fallback_text() -> str:
    rule = auto_table.FALLBACK_RULE
    return (
        f"Anywhere else (a C above the largest band, a C unknown while TensorFlow traces a graph, "
        f"a device without rows, such as TensorFlow on a GPU) auto follows its rule: on a CPU "
        f"{_label(rule['cpu'])}, elsewhere {_label(rule['other'])}."
    )


def measurements_table(table: AutoTable) -> str:
    """Every candidate's errors and time relative to the chosen one in its cell, and its range."""
    chosen = {c.cell: c.candidate for c in table.choices}
    picked = {r.cell: r for r in table.rows if r.candidate == chosen[r.cell]}
    lines = [
        "| framework, device | C | candidate | forward error | backward error | "
        "time / chosen | chosen | condition number within the target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        mark = "**yes**" if row.candidate == chosen[row.cell] else ""
        accurate = "" if row.meets_target else " (misses)"
        bound = table.range_of(*row.cell, row.candidate)
        lines.append(
            f"| {row.framework}, {row.device} | {row.channels} | "
            f"{_label(row.candidate)}{accurate} | {row.forward_error:.1e} | "
            f"{row.backward_error:.1e} | {row.seconds / picked[row.cell].seconds:.2f}x | {mark} | "
            f"{'not measured' if bound is None else condition_range.range_text(bound)} |"
        )
    return "\n".join(lines)


def _runs_text(runs: dict[str, dict[str, Any]], part: str) -> str:
    return "\n".join(
        f"- {part}, {device}: `{meta['command']}` at {short_commit(meta)}, {meta['date_utc']}, "
        f"{meta['cpu_model'] if meta.get('gpu_name') is None else meta['gpu_name']}"
        for device, meta in sorted(runs.items())
    )


BEYOND_RANGE_TEXT = (
    "Beyond its range, a float32 input needs the eigendecomposition in float64 (accurate to the "
    "largest condition number measured). On a CPU, where the chosen eigendecomposition computes "
    "the eigenvalues anyway, auto checks each batch's condition number against the range and "
    "computes a batch beyond it in float64; elsewhere the range is the stated bound, and the "
    "check is opt-in."
)


def ranges_section(table: AutoTable, points_path: pathlib.Path) -> str:
    """The accuracy ranges, and the errors behind them at C = 128 (float32)."""
    if not table.ranges:
        return "Not measured yet (`python -m bench.measure_auto --only ranges`)."
    text = (
        "The largest condition number (largest over smallest eigenvalue of the float32 input) up "
        f"to which forward and backward errors both stayed within {AUTO_STATED_ACCURACY:g}, on "
        "logspace spectra and on covariances of 7x7 ReLU feature maps scaled so that eps "
        f"({DEFAULT_EPS:g}) is the smallest eigenvalue, in both frameworks, against SciPy in "
        "float64 on the rounded input (`bench.condition_range`). " + BEYOND_RANGE_TEXT
    )
    if not points_path.exists():
        return text
    metadata, document = read_results(points_path)
    points = condition_range.read_points(document)
    every = condition_range.ranges(points)
    c = 128 if any(p.channels == 128 for p in points) else min(p.channels for p in points)
    return (
        f"{text}\n\n{readme_blocks.provenance(metadata)}\n\n"
        + condition_range.ranges_table(every)
        + f"\n\nThe worse of forward and backward error at C = {c}, float32 (bold: above "
        f"{AUTO_STATED_ACCURACY:g}):\n\n" + condition_range.errors_table(points, c)
    )


def render(path: pathlib.Path, points_path: pathlib.Path) -> str:
    """results/auto.md from the table `path` and the range points `points_path` alone."""
    metadata, _ = read_results(path)
    table = AutoTable.read(path)
    if not table.runs:
        return f'# What `sqrtm(method="auto")` runs\n\nNothing measured yet. {fallback_text()}\n'
    run = table.runs[min(table.runs)]
    return (
        '# What `sqrtm(method="auto")` runs\n\n'
        f"{readme_blocks.provenance(metadata)}\n\n"
        "Per framework, device and channel band, the fastest candidate whose forward and "
        f"backward relative errors (worst sample, against SciPy in float64) are both within "
        f"{run['target']:g}, on the benchmarks' seeded covariances of 28x28 ReLU feature "
        f"maps + eps I, float32, batch {run['batch']}. A channel count between bands uses "
        "the next larger band. "
        + fallback_text()
        + "\n\n"
        + choices_table(table)
        + "\n\n"
        + reasons(table)
        + "\n\n## Accuracy range\n\n"
        + ranges_section(table, points_path)
        + "\n\n## Measurements\n\nTimes are forward+backward, the fastest of "
        f"{run['repeats']} calls after a warm-up, as a ratio to the chosen candidate of the "
        "same cell (a loaded machine makes absolute times meaningless).\n\n"
        + measurements_table(table)
        + "\n\n## Runs\n\n"
        + _runs_text(table.runs, "choices")
        + ("\n" + _runs_text(table.range_runs, "ranges") if table.range_runs else "")
        + "\n"
    )


def block(path: pathlib.Path) -> str:
    """The docs' `sqrtm-auto` block: what auto runs, its range, and the rule elsewhere."""
    metadata, _ = read_results(path)
    table = AutoTable.read(path)
    body = (
        choices_table(table)
        + "\n\nWhy, cell by cell (times: forward+backward, as a ratio to the chosen candidate):\n\n"
        + reasons(table)
        + "\n\n"
        + fallback_text()
        + (" " + BEYOND_RANGE_TEXT if table.ranges else "")
        + " Errors and times of every candidate, and the accuracy ranges: `results/auto.md`."
    )
    return readme_blocks.render(BLOCK, body, metadata)


def _committed_table(root: pathlib.Path) -> pathlib.Path:
    return root / DEFAULT_TABLE


@readme_blocks.register(PAGE, BLOCK)
def committed_block(root: pathlib.Path) -> str:
    return block(_committed_table(root))


@readme_blocks.register_document(DOCUMENT)
def committed_document(root: pathlib.Path) -> str:
    return render(_committed_table(root), root / "results" / condition_range.FILE_NAME)


def _condition(text: str) -> float:
    value = float(text)
    if not 1 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text}: a condition number is at least 1 and finite")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=" ".join(COMMAND),
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--channels", type=_positive, nargs="+", default=list(DEFAULT_CHANNELS))
    parser.add_argument("--repeats", type=_positive, default=5)
    parser.add_argument(
        "--only", choices=PARTS, help="measure one part: the (timed) choices, or the ranges"
    )
    parser.add_argument(
        "--conditions",
        type=_condition,
        nargs="+",
        default=list(condition_range.CONDITIONS),
        help="condition numbers of the ranges (default 1e2 to 1e8 in half decades)",
    )
    parser.add_argument("--table", type=pathlib.Path, default=DEFAULT_TABLE)
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: re-render auto.md (and the docs block) from --table",
    )
    arguments = parser.parse_args(argv)
    if not arguments.table.parent.is_dir():
        parser.error(
            f"{arguments.table.parent}/ does not exist: run from the repository root, or pass "
            "--table"
        )
    if arguments.render and not arguments.table.exists():
        parser.error(f"{arguments.table} does not exist: nothing to render")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = parse_arguments(argv)
    command = shlex.join([*COMMAND, *argv])
    points_path = arguments.output / condition_range.FILE_NAME
    if not arguments.render:
        table = AutoTable.read(arguments.table)
        metadata: dict[str, Any] = {}
        writes = (arguments.table, points_path)
        if arguments.only != "ranges":
            metadata = _measure_choices(table, arguments, command, writes)
        if arguments.only != "choices":
            metadata = _measure_ranges(table, arguments, command, points_path, writes)
        table.write(arguments.table, metadata)
        print(f"wrote {arguments.table}")
    arguments.output.mkdir(parents=True, exist_ok=True)
    document = arguments.output / pathlib.Path(DOCUMENT).name
    document.write_text(render(arguments.table, points_path))
    print(choices_table(AutoTable.read(arguments.table)))
    print(f"wrote {document}")
    page = pathlib.Path(PAGE)
    if arguments.output.resolve() == DEFAULT_OUTPUT.resolve() and page.exists():
        if BLOCK in readme_blocks.names(page.read_text()):
            readme_blocks.write(page, BLOCK, block(arguments.table))
            print(f"wrote the {BLOCK} block of {page}")
    return 0


def _measure_choices(
    table: AutoTable, arguments: argparse.Namespace, command: str, writes: Sequence[pathlib.Path]
) -> dict[str, Any]:
    """Measure the device's candidates and replace its rows, choices and run in `table`."""
    start = time.monotonic()
    measured = measure(arguments.device, arguments.channels, arguments.repeats)
    metadata = collect(
        arguments.device,
        "auto-table",
        command=command,
        wall_seconds=time.monotonic() - start,
        writes=writes,
        batch=BATCH,
        dtype="float32",
        eps=DEFAULT_EPS,
        target=AUTO_STATED_ACCURACY,
        repeats=arguments.repeats,
        input="the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I "
        "(bench.inputs.Inputs.case), rounded to float32",
    )
    table.rows = [r for r in table.rows if r.device != arguments.device] + measured
    table.choices = choose(table.rows)
    table.runs[arguments.device] = metadata
    return metadata


def _measure_ranges(
    table: AutoTable,
    arguments: argparse.Namespace,
    command: str,
    points_path: pathlib.Path,
    writes: Sequence[pathlib.Path],
) -> dict[str, Any]:
    """Measure the device's ranges: every point to `points_path` (other devices' kept), the
    float32 ranges to `table`."""
    start = time.monotonic()
    points = condition_range.measure(arguments.device, arguments.channels, arguments.conditions)
    metadata = collect(
        arguments.device,
        "condition-range",
        command=command,
        wall_seconds=time.monotonic() - start,
        writes=writes,
        batch=condition_range.BATCH,
        eps=DEFAULT_EPS,
        target=AUTO_STATED_ACCURACY,
        conditions=arguments.conditions,
        input="bench.inputs.Inputs.conditioned_case: logspace spectra and covariances of 7x7 "
        "ReLU feature maps + eps I at the scale that gives each condition number, rounded to "
        "each dtype",
    )
    kept: list[RangePoint] = []
    if points_path.exists():
        kept = condition_range.read_points(read_results(points_path)[1])
    points = [p for p in kept if p.device != arguments.device] + points
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_results(points_path, metadata, rows=points)
    print(f"wrote {points_path}")
    measured = [r for r in condition_range.ranges(points) if r.dtype == "float32"]
    table.ranges = [r for r in table.ranges if r.device != arguments.device] + [
        r for r in measured if r.device == arguments.device
    ]
    table.range_runs[arguments.device] = metadata
    return metadata


if __name__ == "__main__":
    sys.exit(main())
