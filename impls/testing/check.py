"""ibp-check: verify your own IBP layer against the float64 reference.

    ibp-check STAGE TARGET [--framework torch|tf] [--size C] [--tolerance REL] [--json]
    ibp-check model TARGET [--framework torch|tf] [--input-shape C,H,W] [--json]

`ibp-check model` checks a whole model (see `ibp-check model --help`).
STAGE is pool, sqrtm, signed-sqrt, l2 or head (feature map -> normalised (B, C*C) or (B, C, C)).
TARGET is path/to/file.py:function or package.module:function; the function takes one tensor
(PyTorch channels-first (B, C, H, W), TensorFlow channels-last (B, H, W, C), matrices (B, C, C))
and returns one. The suite's own properties run on it, hypothesis searching for a failing input and
shrinking it; each property prints PASS or FAIL with a diagnosis.

The function runs in a separate process: if it ends that process (sys.exit, os._exit, a crash) or
a call runs past --call-timeout, the property fails with that cause. What the function prints is
shown apart from the report (on stderr), so --json output stays valid JSON.

Exit status: 0 when every property holds, 1 when one fails or could not be checked, 2 for a usage
error, 130 when interrupted (Ctrl-C).
"""

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from impls.testing.check_runner import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_TIME_LIMIT,
    CheckReport,
    PropertyResult,
    check,
)
from impls.testing.check_target import UsageError
from impls.testing.sandbox import DEFAULT_CALL_TIMEOUT, TargetUnusable, no_hypothesis_files
from impls.testing.stage_specs import FEATURE_MAP, REALISTIC_CHANNELS, STAGES

#: Overrides the default --max-examples (tests run the CLI with a handful).
MAX_EXAMPLES_VARIABLE = "IBP_CHECK_MAX_EXAMPLES"
_LAYOUTS = {"torch": "channels-first (B, C, H, W)", "tf": "channels-last (B, H, W, C)"}
_WIDTH = 100
#: Bounds of the numeric options: past them a run cannot finish in reasonable time (the reference
#: and the diagnoses work on C x C matrices in float64; a search draws examples one by one).
MAX_SIZE = 256
MAX_EXAMPLES = 100_000
MAX_SECONDS = 24 * 3600.0


Number = TypeVar("Number", int, float)


def bounded(kind: Callable[[str], Number], least: float, most: float) -> Callable[[str], Number]:
    """An argparse type: a finite `kind` (int, float) of the text in [least, most]."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be in [{least:g}, {most:g}], got {text}")
        return value

    return parse


def positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: a finite `kind` (int, float) of the text, refused unless > 0."""
    least = 1 if kind is int else math.ulp(0.0)
    return bounded(kind, least, math.inf if kind is float else sys.maxsize)


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    arguments = _Parser(
        prog="ibp-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: ibp-check sqrtm my_layers.py:matrix_sqrt --framework torch",
    )
    arguments.add_argument("stage", metavar="STAGE", choices=sorted(STAGES), help=", ".join(STAGES))
    arguments.add_argument("target", metavar="TARGET", help="file.py:function or module:function")
    arguments.add_argument(
        "--framework",
        choices=sorted(_LAYOUTS),
        help="the target's framework (default: from the imports of its module)",
    )
    arguments.add_argument(
        "--size",
        type=bounded(int, 2, MAX_SIZE),
        default=DEFAULT_MAX_CHANNELS,
        metavar="C",
        help=f"largest channel count the search draws (default {DEFAULT_MAX_CHANNELS}, 2 to "
        f"{MAX_SIZE}; the fixed realistic cases have 64 channels whatever C)",
    )
    arguments.add_argument(
        "--tolerance",
        type=bounded(float, math.ulp(0.0), 1.0),
        metavar="REL",
        help="accept relative errors up to REL instead of the suite's tolerance table",
    )
    arguments.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of the tensors the target gets (default float32)",
    )
    arguments.add_argument(
        "--max-examples",
        type=bounded(int, 1, MAX_EXAMPLES),
        default=os.environ.get(MAX_EXAMPLES_VARIABLE, str(DEFAULT_MAX_EXAMPLES)),
        metavar="N",
        help=f"hypothesis examples per property (default {DEFAULT_MAX_EXAMPLES}, "
        f"or ${MAX_EXAMPLES_VARIABLE})",
    )
    arguments.add_argument(
        "--forward-only",
        action="store_true",
        help="the target is never differentiated (nothing below it trains): skip gradients",
    )
    arguments.add_argument(
        "--call-timeout",
        type=bounded(float, 0.1, MAX_SECONDS),
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help=f"a call of the function running longer fails the check (default "
        f"{DEFAULT_CALL_TIMEOUT:g} s)",
    )
    arguments.add_argument(
        "--time-limit",
        type=bounded(float, 1.0, MAX_SECONDS),
        default=DEFAULT_TIME_LIMIT,
        metavar="S",
        help=f"properties not started within S seconds of the start are reported as not checked "
        f"(a failure; default {DEFAULT_TIME_LIMIT:g} s)",
    )
    arguments.add_argument("--json", action="store_true", help="print the report as JSON")
    return arguments


def _wrapped(text: str, indent: str = "      ") -> str:
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent="      ")


def _measured(result: PropertyResult) -> str:
    if result.error is None:
        return ""
    return f"relative error {result.error:.2g}, tolerance {result.tolerance:.2g}"


def _searched(result: PropertyResult) -> str:
    text = f"{result.examples} examples"
    return f"{text}; search cut short: {result.stopped_early}" if result.stopped_early else text


def format_report(report: CheckReport, target: str) -> str:
    layout = (
        _LAYOUTS[report.framework]
        if STAGES[report.stage].input_kind == FEATURE_MAP
        else "matrices (B, C, C)"
    )
    lines = [
        f"ibp-check {report.stage} {target}",
        _wrapped(
            f"framework {report.framework}, {layout}, {report.dtype}; fixed realistic cases at "
            f"{REALISTIC_CHANNELS} channels, then up to {report.max_examples} examples per "
            f"property of up to {report.max_channels} channels",
            indent="  ",
        ),
        "",
    ]
    lines += [
        textwrap.fill(f"NOTE  {note}", _WIDTH, subsequent_indent="      ") for note in report.notes
    ]
    for result in report.results:
        if result.status == "FAIL":
            lines.append(_wrapped(f"FAIL  {result.name}: {result.checks}", indent=""))
            lines.append(_wrapped(result.diagnosis))
            if result.counterexample is not None:
                lines.append(_wrapped(f"counterexample: {result.counterexample}"))
            if result.error is not None:
                lines.append(_wrapped(f"measured: {_measured(result)}"))
        elif result.status == "SKIP":
            lines.append(f"SKIP  {result.name}: {result.diagnosis}")
        else:
            worst = f", worst {_measured(result)}" if result.error is not None else ""
            lines.append(
                _wrapped(
                    f"PASS  {result.name} ({_searched(result)}{worst}, {result.seconds:.1f} s)",
                    indent="",
                )
            )
    failed = sum(result.status == "FAIL" for result in report.results)
    verdict = (
        f"{failed} of {len(report.results)} properties FAIL" if failed else "all properties hold"
    )
    lines += ["", f"{verdict} ({report.seconds:.1f} s)"]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = check(
        args.stage,
        args.target,
        args.framework,
        dtype=args.dtype,
        max_channels=args.size,
        max_examples=args.max_examples,
        tolerance=args.tolerance,
        forward_only=args.forward_only,
        call_timeout=args.call_timeout,
        time_limit=args.time_limit,
    )
    if report.target_output:
        print(
            "--- what the function printed ---\n"
            f"{report.target_output.rstrip()}\n--- end of what the function printed ---",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"target": args.target, **report.to_json()}, indent=2))
    else:
        print(format_report(report, args.target))
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["model"]:
        from impls.testing.model_check import main as model_main

        return model_main(argv[1:])
    try:
        args = parser().parse_args(argv)
        with no_hypothesis_files():
            return _run(args)
    except (UsageError, TargetUnusable) as error:
        print(f"ibp-check: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ibp-check: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
