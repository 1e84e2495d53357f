"""Measure what `sqrtm(method="auto")` should run, and write the table the package reads.

    python -m bench.auto_table [--device cpu|cuda] [--channels 64 128 256 512] [--repeats 5]
                               [--table impls/auto_table.json] [--output results] [--render]

For every framework the device runs (torch and TensorFlow on the CPU, torch on CUDA) and every C
band, each candidate of `impls.auto_table.CANDIDATES` (the eigendecomposition in float32 and in
float64, the classic and the minimax Newton-Schulz root, each with its default backward) is run
forward+backward on the benchmarks' seeded ReLU covariances (float32, batch 8): its forward and
backward errors against SciPy in float64 (worst sample), and its time (the fastest of `repeats`
calls after a warm-up; on a shared machine only the ratios mean anything). The choice per cell:
accuracy first (both errors within AUTO_STATED_ACCURACY), then time (the fastest of those); if no
candidate is accurate enough, the most accurate.

Writes the table (rows and choices, with the results envelope) to `--table` (default
impls/auto_table.json of the current directory: run it from the repository root; it is package
data), replacing only the rows of the measured device, and <output>/auto.md; with the default
output, also the README's `sqrtm-auto` block.
"""

import argparse
import json
import math
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from impls import auto_table
from impls.testing import readme_blocks
from impls.testing.metadata import collect, read_results, short_commit, write_results
from reference.conventions import AUTO_STATED_ACCURACY, DEFAULT_EPS

BLOCK = "sqrtm-auto"
DOCUMENT = "results/auto.md"
DEFAULT_TABLE = pathlib.Path("impls") / auto_table.TABLE_PATH.name
DEFAULT_OUTPUT = pathlib.Path("results")
#: The benchmarks' headline batch.
BATCH = 8
DEFAULT_CHANNELS = (64, 128, 256, 512)


def candidate_variant(candidate: str) -> Any:
    """The benchmark variant that runs `candidate` as auto runs it: float64 eigh casts the input
    up and the root (and, through autodiff of the cast, the gradient) back down."""
    from bench.cases import SqrtmVariant

    method, eigh_dtype = auto_table.CANDIDATES[candidate]
    return SqrtmVariant(method, compute_dtype=eigh_dtype)


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


def measure(device: str, channels: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """One row per (framework, C, candidate) on `device`."""
    from tqdm import tqdm

    from bench.adapters import adapter_for, benchmarked_backends
    from bench.cases import Cell
    from bench.errors import SqrtmErrors
    from bench.inputs import Inputs

    backends = benchmarked_backends(device)
    inputs = Inputs()
    rows = []
    total = len(backends) * len(channels) * len(auto_table.CANDIDATES)
    with tqdm(total=total, desc=f"auto table ({device})") as bar:
        for c in channels:
            cell = Cell(c, BATCH, "float32")
            for backend in backends:
                errors = SqrtmErrors(adapter_for(backend, device), inputs, cell)
                for candidate in auto_table.CANDIDATES:
                    variant = candidate_variant(candidate)
                    forward, backward = errors.errors(variant)
                    rows.append(
                        {
                            "framework": backend.name,
                            "device": device,
                            "channels": c,
                            "candidate": candidate,
                            "forward_error": forward,
                            "backward_error": backward,
                            "meets_target": max(forward, backward) <= AUTO_STATED_ACCURACY,
                            "seconds": fastest_seconds(errors.run(variant), repeats),
                        }
                    )
                    bar.update()
    return rows


def choose(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (framework, device, C): the fastest candidate meeting the target, else the most
    accurate."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["framework"], row["device"], row["channels"]), []).append(row)
    choices = []
    for (framework, device, channels), members in sorted(cells.items()):
        accurate = [r for r in members if r["meets_target"]]
        if accurate:
            best = min(accurate, key=lambda r: r["seconds"])
        else:
            best = min(members, key=lambda r: max(r["forward_error"], r["backward_error"]))
        choices.append(
            {
                "framework": framework,
                "device": device,
                "channels": channels,
                "candidate": best["candidate"],
                "meets_target": best["meets_target"],
            }
        )
    return choices


def _label(candidate: str) -> str:
    method, eigh_dtype = auto_table.CANDIDATES[candidate]
    if method == "eigh":
        return f"eigh in {eigh_dtype or 'float32'}"
    return f"{method} (default steps and backward)"


def choices_table(document: dict[str, Any]) -> str:
    """What auto runs: one row per framework and device, one column per C band."""
    choices = document["choices"]
    channels = sorted({r["channels"] for r in choices})
    keys = list(dict.fromkeys((r["framework"], r["device"]) for r in choices))
    lines = [
        "| framework, device | " + " | ".join(f"C <= {c}" for c in channels) + " |",
        "|---" * (len(channels) + 1) + "|",
    ]
    for framework, device in keys:
        cells = []
        for c in channels:
            row = next(
                (
                    r
                    for r in choices
                    if (r["framework"], r["device"], r["channels"]) == (framework, device, c)
                ),
                None,
            )
            cells.append("not measured" if row is None else _label(row["candidate"]))
        lines.append(f"| {framework}, {device} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Time ratios closer to 1 than this are near ties on a shared machine: the report says so.
NEAR_TIE = 1.2


def reasons(document: dict[str, Any]) -> str:
    """Why each cell's choice: the next fastest accurate candidate, or a faster one that misses."""
    rows = document["rows"]
    lines = []
    for choice in document["choices"]:
        key = (choice["framework"], choice["device"], choice["channels"])
        cell = [r for r in rows if (r["framework"], r["device"], r["channels"]) == key]
        (chosen,) = [r for r in cell if r["candidate"] == choice["candidate"]]
        others = sorted((r for r in cell if r is not chosen), key=lambda r: r["seconds"])
        faster_missing = [r for r in others if r["seconds"] < chosen["seconds"]]
        accurate = [r for r in others if r["meets_target"]]
        why = []
        if not chosen["meets_target"]:
            why.append("no candidate meets the target: the most accurate")
        for row in faster_missing:
            worst = max(row["forward_error"], row["backward_error"])
            why.append(
                f"{_label(row['candidate'])} is faster "
                f"({row['seconds'] / chosen['seconds']:.2f}x) but misses (error {worst:.1e})"
            )
        if accurate:
            ratio = accurate[0]["seconds"] / chosen["seconds"]
            tie = f", a near tie (under {NEAR_TIE:g}x)" if ratio < NEAR_TIE else ""
            why.append(
                f"next within the target: {_label(accurate[0]['candidate'])}, {ratio:.2f}x{tie}"
            )
        lines.append(
            f"- {choice['framework']}, {choice['device']}, C <= {choice['channels']}: "
            f"{_label(choice['candidate'])}; " + "; ".join(why) + "."
        )
    return "\n".join(lines)


def fallback_text() -> str:
    rule = auto_table.FALLBACK_RULE
    return (
        f"Anywhere else (a C above the largest band, a C unknown while TensorFlow traces a graph, "
        f"a device without rows, such as TensorFlow on a GPU) auto follows its rule: on a CPU "
        f"{_label(rule['cpu'])}, elsewhere {_label(rule['other'])}."
    )


def measurements_table(document: dict[str, Any]) -> str:
    """Every candidate's errors and time relative to the chosen one in its cell."""
    rows = document["rows"]
    chosen = {
        (r["framework"], r["device"], r["channels"]): r["candidate"] for r in document["choices"]
    }
    lines = [
        "| framework, device | C | candidate | forward error | backward error | "
        "time / chosen | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        key = (row["framework"], row["device"], row["channels"])
        (picked,) = [
            r
            for r in rows
            if (r["framework"], r["device"], r["channels"]) == key and r["candidate"] == chosen[key]
        ]
        mark = "**yes**" if row["candidate"] == chosen[key] else ""
        accurate = "" if row["meets_target"] else " (misses)"
        lines.append(
            f"| {row['framework']}, {row['device']} | {row['channels']} | "
            f"{_label(row['candidate'])}{accurate} | {row['forward_error']:.1e} | "
            f"{row['backward_error']:.1e} | "
            f"{row['seconds'] / picked['seconds']:.2f}x | {mark} |"
        )
    return "\n".join(lines)


def _runs_text(document: dict[str, Any]) -> str:
    return "\n".join(
        f"- {device}: `{meta['command']}` at {short_commit(meta)}, {meta['date_utc']}, "
        f"{meta['cpu_model'] if meta.get('gpu_name') is None else meta['gpu_name']}"
        for device, meta in sorted(document["runs"].items())
    )


def render(path: pathlib.Path) -> str:
    """results/auto.md from the table `path` alone."""
    metadata, document = read_results(path)
    return (
        '# What `sqrtm(method="auto")` runs\n\n'
        f"{readme_blocks.provenance(metadata)}\n\n"
        "Per framework, device and channel band, the fastest candidate whose forward and "
        f"backward relative errors (worst sample, against SciPy in float64) are both within "
        f"{metadata['target']:g}, on the benchmarks' seeded covariances of 28x28 ReLU feature "
        f"maps + eps I, float32, batch {metadata['batch']}. A channel count between bands uses "
        "the next larger band. "
        + fallback_text()
        + "\n\n"
        + choices_table(document)
        + "\n\n"
        + reasons(document)
        + "\n\n## Measurements\n\nTimes are forward+backward, the fastest of "
        f"{metadata['repeats']} calls after a warm-up, as a ratio to the chosen candidate of the "
        "same cell (a loaded machine makes absolute times meaningless).\n\n"
        + measurements_table(document)
        + "\n\n## Runs\n\n"
        + _runs_text(document)
        + "\n"
    )


def block(path: pathlib.Path) -> str:
    """The README's `sqrtm-auto` block: what auto runs, and the rule elsewhere."""
    metadata, document = read_results(path)
    body = (
        choices_table(document)
        + "\n\nWhy, cell by cell (times: forward+backward, as a ratio to the chosen candidate):\n\n"
        + reasons(document)
        + "\n\n"
        + fallback_text()
        + " Errors and times of every candidate: `results/auto.md`."
    )
    return readme_blocks.render(BLOCK, body, metadata)


def _committed_table(root: pathlib.Path) -> pathlib.Path:
    return root / DEFAULT_TABLE


@readme_blocks.register("README.md", BLOCK)
def committed_block(root: pathlib.Path) -> str:
    return block(_committed_table(root))


@readme_blocks.register_document(DOCUMENT)
def committed_document(root: pathlib.Path) -> str:
    return render(_committed_table(root))


def _merge(table: pathlib.Path, device: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The existing table's rows of other devices, then `rows`."""
    if not table.exists():
        return rows
    kept = [r for r in json.loads(table.read_text())["rows"] if r["device"] != device]
    return kept + rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.auto_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table", type=pathlib.Path, default=DEFAULT_TABLE)
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: re-render auto.md (and the README block) from --table",
    )
    arguments = parser.parse_args(argv)
    if not arguments.table.parent.is_dir():
        parser.error(
            f"{arguments.table.parent}/ does not exist: run from the repository root, or pass "
            "--table"
        )
    if not arguments.render:
        _measure_into(arguments, argv)
    arguments.output.mkdir(parents=True, exist_ok=True)
    document = arguments.output / pathlib.Path(DOCUMENT).name
    document.write_text(render(arguments.table))
    print(choices_table(read_results(arguments.table)[1]))
    print(f"wrote {document}")
    readme = pathlib.Path("README.md")
    if arguments.output.resolve() == DEFAULT_OUTPUT.resolve() and readme.exists():
        if BLOCK in readme_blocks.names(readme.read_text()):
            readme_blocks.write(readme, BLOCK, block(arguments.table))
            print(f"wrote the {BLOCK} block of {readme}")
    return 0


def _measure_into(arguments: argparse.Namespace, argv: Sequence[str]) -> None:
    """Measure the device's rows and write them, with the other devices' rows kept, to the table."""
    start = time.monotonic()
    measured = measure(arguments.device, arguments.channels, arguments.repeats)
    metadata = collect(
        arguments.device,
        "auto-table",
        command=shlex.join(["python", "-m", "bench.auto_table", *argv]),
        wall_seconds=time.monotonic() - start,
        batch=BATCH,
        dtype="float32",
        eps=DEFAULT_EPS,
        target=AUTO_STATED_ACCURACY,
        repeats=arguments.repeats,
        input="the benchmarks' seeded covariances of 28x28 ReLU feature maps + eps I "
        "(bench.inputs.Inputs.covariances), rounded to float32",
    )
    rows = _merge(arguments.table, arguments.device, measured)
    runs = json.loads(arguments.table.read_text())["runs"] if arguments.table.exists() else {}
    runs[arguments.device] = metadata
    write_results(arguments.table, metadata, runs=runs, rows=rows, choices=choose(rows))
    print(f"wrote {arguments.table}")


if __name__ == "__main__":
    sys.exit(main())
