"""The worked examples of `ibp-check` in docs/checking.md: real runs on the founding question's
own code, kept with their output and exit status in a results JSON (with the suite's envelope),
and the block of docs/checking.md rendered from that file alone, so the drift test can render it
again.

    python -m impls.testing.worked_examples {stage,model} [--output results]

`stage` runs the question's pooling and square root (`examples/seed_question_tf.py`) through
`ibp-check STAGE`; `model` runs `ibp-check model` on the question's Keras model and on the same
model fixed. The targets are the checkout's `examples/` (without them the command refuses to run);
the envelope records how long the runs took. With the default output, run from the repository
root, the block of docs/checking.md is rewritten too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from impls.testing import readme_blocks
from impls.testing.check_options import MAX_EXAMPLES_VARIABLE
from impls.testing.metadata import collect, read_results, write_results

MODULE = "impls.testing.worked_examples"
DEFAULT_OUTPUT = Path("results")


@dataclasses.dataclass(frozen=True)
class Example:
    """One block of docs/checking.md: the `ibp-check` command lines it shows, and where its run
    is kept."""

    block: str
    results_file: str
    runs: tuple[tuple[str, ...], ...]  # the arguments of each `ibp-check` command, in order


EXAMPLES = {
    "stage": Example(
        "ibp-check-example",
        "ibp_check_example.json",
        (
            ("pool", "examples/seed_question_tf.py:BILINEAR_POOLING"),
            ("sqrtm", "examples/seed_question_tf.py:Sqrt_Root_SVD_Lyapunov"),
        ),
    ),
    "model": Example(
        "ibp-check-model-example",
        "ibp_check_model_example.json",
        (
            ("model", "examples/question_model_keras.py:question_model"),
            ("model", "examples/fixed_model_keras.py:fixed_model"),
        ),
    ),
}


def run(arguments: tuple[str, ...], root: Path) -> dict[str, Any]:
    """`ibp-check ARGUMENTS` from `root`, as a user runs it: its report, exit status and time.
    The variable that lowers the default number of examples (for tests) is not passed on."""
    environment = {k: v for k, v in os.environ.items() if k != MAX_EXAMPLES_VARIABLE}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "impls.testing.check", *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env=environment,
    )
    if completed.returncode == 2:  # a usage error: the example itself is broken
        raise SystemExit(f"ibp-check {shlex.join(arguments)}: {completed.stderr.strip()}")
    return {
        "arguments": list(arguments),
        "output": completed.stdout,
        "exit_code": completed.returncode,
        "seconds": round(time.perf_counter() - started, 1),
    }


def body(runs: list[dict[str, Any]]) -> str:
    """One code block: each report as printed, then its exit status."""
    parts = [f"{r['output'].rstrip()}\n(exit code {r['exit_code']})" for r in runs]
    return "```\n" + "\n\n".join(parts) + "\n```"


def block(example: Example, path: Path) -> str:
    """The block of `example` from its results file `path`."""
    metadata, document = read_results(path)
    return readme_blocks.render(example.block, body(document["runs"]), metadata)


#: The page the examples' blocks are in.
PAGE = "docs/checking.md"


def _register(example: Example) -> None:
    @readme_blocks.register(PAGE, example.block)
    def committed_block(root: Path) -> str:
        return block(example, root / "results" / example.results_file)


for _example in EXAMPLES.values():
    _register(_example)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    example = EXAMPLES[arguments.example]
    root = Path(__file__).resolve().parents[2]
    targets = [run_arguments[1] for run_arguments in example.runs]
    missing = [t for t in targets if not (root / t.partition(":")[0]).exists()]
    if missing:
        parser.error(f"{', '.join(missing)} not found: run from a checkout of the repository")
    started = time.perf_counter()
    runs = []
    for ibp_check_arguments in example.runs:
        runs.append(run(ibp_check_arguments, root))
        print(f"ibp-check {shlex.join(ibp_check_arguments)}: exit code {runs[-1]['exit_code']}")
    metadata = collect(
        "cpu",
        f"ibp-check worked example: {arguments.example}",
        command=shlex.join(["python", "-m", MODULE, *argv]),
        wall_seconds=time.perf_counter() - started,
    )
    arguments.output.mkdir(parents=True, exist_ok=True)
    path = arguments.output / example.results_file
    write_results(path, metadata, runs=runs)
    print(f"wrote {path}")
    page = Path(PAGE)
    if arguments.output.resolve() == DEFAULT_OUTPUT.resolve() and page.exists():
        readme_blocks.write(page, example.block, block(example, path))
        print(f"wrote the {example.block} block of {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
