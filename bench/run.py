"""Run the benchmark suites and regenerate the report.

    python -m bench.run                     # CPU, default profile (its run time: BENCHMARKS.md)
    python -m bench.run --quick             # headline size only (a few minutes)
    python -m bench.run --full              # every size, float64 everywhere (hours on a CPU)
    python -m bench.run --dry-run           # tiny sizes, every code path, seconds
    python -m bench.run --device cuda       # the GPU suite (torch only); bench/gpu.sh wraps it

Writes <output>/bench-<device>.json (pytest-benchmark's JSON plus the results envelope
"ibp_metadata": command, run time, commit, versions, hardware, threads, date; and "not_run": what
was skipped and why), then regenerates <output>/BENCHMARKS.md and the plots from every
bench-*.json in <output>. <output> is ./results unless given: never inside the installed package.
With the default output, a docs/benchmarks.md under the current directory that has the headline
block gets it rewritten too.
"""

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench import report
from impls.testing.metadata import ENVELOPE_KEY

BENCH_DIR = pathlib.Path(__file__).resolve().parent
#: The folder that holds the bench package: the suites' subprocess imports it from there, whether
#: that is a checkout or site-packages. Nothing is written there.
PACKAGE_ROOT = BENCH_DIR.parent
DEFAULT_OUTPUT = pathlib.Path("results")
SUITES = (
    "test_sqrtm_speed.py",
    "test_anchors_speed.py",
    "test_head_speed.py",
    "test_matmul_floor.py",
)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the headline size only")
    size.add_argument("--full", action="store_true", help="every size, float64 everywhere")
    size.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes, one round: checks the harness (a GPU dry run works without a GPU)",
    )
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        help="results folder (default: ./results, or a new temporary folder for --dry-run)",
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression selecting benchmarks")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=2.0,
        help="largest allocation an anchor may attempt (tf.linalg.sqrtm's gradient; default 2)",
    )
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    return parser.parse_args(argv)


def profile_name(arguments: argparse.Namespace) -> str:
    if arguments.dry_run:
        return "dry-run"
    if arguments.quick:
        return "quick"
    return "full" if arguments.full else "default"


def pytest_command(
    arguments: argparse.Namespace, json_path: pathlib.Path, storage: pathlib.Path
) -> list[str]:
    """The benchmark session's command line. It runs in PACKAGE_ROOT (site-packages when
    installed), so pytest-benchmark's own storage goes to `storage`, a folder of the caller's."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(str(BENCH_DIR / suite) for suite in SUITES),
        "-v",
        "-p",
        "no:cacheprovider",
        f"--rootdir={PACKAGE_ROOT}",
        f"--bench-profile={profile_name(arguments)}",
        f"--bench-device={arguments.device}",
        f"--bench-memory-limit-gib={arguments.memory_limit_gib}",
        f"--benchmark-json={json_path}",
        f"--benchmark-storage=file://{storage.resolve()}",
        "--benchmark-group-by=group",
        "--benchmark-sort=name",
        "--benchmark-columns=min,median,max,rounds",
    ]
    if arguments.keyword:
        command += ["-k", arguments.keyword]
    return command


def _record_run(json_path: pathlib.Path, argv: Sequence[str], seconds: float) -> None:
    """Complete the envelope with what only this process knows: its command and run time."""
    results = json.loads(json_path.read_text())
    results[ENVELOPE_KEY]["command"] = shlex.join(["python", "-m", "bench.run", *argv])
    results[ENVELOPE_KEY]["wall_seconds"] = round(seconds, 1)
    json_path.write_text(json.dumps(results, indent=4) + "\n")


def _page_to_update(output: pathlib.Path) -> pathlib.Path | None:
    """./docs/benchmarks.md when the run wrote the default ./results and that page quotes them."""
    page = pathlib.Path(report.TARGETS_PAGE)
    if output.resolve() != DEFAULT_OUTPUT.resolve() or not page.exists():
        return None
    return page if report.TARGETS_BLOCK in page.read_text() else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = parse_arguments(argv)
    output = arguments.output
    if output is None:
        output = (
            pathlib.Path(tempfile.mkdtemp(prefix="ibp-bench-dry-run-"))
            if arguments.dry_run
            else DEFAULT_OUTPUT
        )
    output.mkdir(parents=True, exist_ok=True)
    json_path = (output / f"bench-{arguments.device}.json").resolve()
    # A pytest-xdist worker's variables make pytest-benchmark think it is a worker too, and then
    # it writes no JSON: the benchmark session is a process of its own.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ibp-bench-storage-") as storage:
        status = subprocess.call(
            pytest_command(arguments, json_path, pathlib.Path(storage)),
            cwd=PACKAGE_ROOT,
            env=environment,
        )
    if not json_path.exists():
        print(f"no results written (pytest exit status {status})", file=sys.stderr)
        return status or 1
    _record_run(json_path, argv, time.monotonic() - start)
    print(f"results: {json_path}")
    if not arguments.no_report:
        markdown = report.write_report(output, _page_to_update(output))
        print(f"report:  {markdown}")
    return status


if __name__ == "__main__":
    sys.exit(main())
