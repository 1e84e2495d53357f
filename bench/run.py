"""Run the benchmark suites and regenerate the report.

    python -m bench.run                     # CPU, default profile (about 15 min on 2 cores)
    python -m bench.run --quick             # headline size only (a few minutes)
    python -m bench.run --full              # every size, float64 everywhere (hours on a CPU)
    python -m bench.run --dry-run           # tiny sizes, every code path, seconds
    python -m bench.run --device cuda       # the GPU suite (torch only); bench/gpu.sh wraps it

Writes <output>/bench-<device>.json (pytest-benchmark's JSON plus "ibp_metadata": commit,
versions, hardware, threads, date; and "not_run": what was skipped and why), then regenerates
<output>/BENCHMARKS.md and the plots from every bench-*.json in <output>.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

from bench import report

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
SUITES = (
    "test_sqrtm_speed.py",
    "test_anchors_speed.py",
    "test_head_speed.py",
    "test_matmul_floor.py",
)


def parse_arguments(argv):
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
        help="results folder (default: results/, or a new temporary folder for --dry-run)",
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


def profile_name(arguments):
    if arguments.dry_run:
        return "dry-run"
    if arguments.quick:
        return "quick"
    return "full" if arguments.full else "default"


def pytest_command(arguments, json_path):
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(str(BENCH_DIR / suite) for suite in SUITES),
        "-v",
        "-p",
        "no:cacheprovider",
        f"--rootdir={REPOSITORY}",
        f"--bench-profile={profile_name(arguments)}",
        f"--bench-device={arguments.device}",
        f"--bench-memory-limit-gib={arguments.memory_limit_gib}",
        f"--benchmark-json={json_path}",
        "--benchmark-group-by=group",
        "--benchmark-sort=name",
        "--benchmark-columns=min,median,max,rounds",
    ]
    if arguments.keyword:
        command += ["-k", arguments.keyword]
    return command


def main(argv=None):
    arguments = parse_arguments(argv)
    output = arguments.output
    if output is None:
        output = (
            pathlib.Path(tempfile.mkdtemp(prefix="ibp-bench-dry-run-"))
            if arguments.dry_run
            else REPOSITORY / "results"
        )
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / f"bench-{arguments.device}.json"
    # A pytest-xdist worker's variables make pytest-benchmark think it is a worker too, and then
    # it writes no JSON: the benchmark session is a process of its own.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    status = subprocess.call(pytest_command(arguments, json_path), cwd=REPOSITORY, env=environment)
    if not json_path.exists():
        print(f"no results written (pytest exit status {status})", file=sys.stderr)
        return status or 1
    print(f"results: {json_path}")
    if not arguments.no_report:
        # The README quotes the committed results only, never a run written elsewhere.
        committed = output.resolve() == (REPOSITORY / "results").resolve()
        markdown = report.write_report(output, REPOSITORY / "README.md" if committed else None)
        print(f"report:  {markdown}")
    return status


if __name__ == "__main__":
    sys.exit(main())
