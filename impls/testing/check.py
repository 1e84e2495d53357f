"""ibp-check: verify your own IBP layer against the float64 reference.

    ibp-check STAGE TARGET [--framework torch|tf] [--size C] [--tolerance REL] [--json]

STAGE is pool, sqrtm, signed-sqrt, l2 or head (feature map -> normalised (B, C*C) or (B, C, C)).
TARGET is path/to/file.py:function or package.module:function; the function takes one tensor
(PyTorch channels-first (B, C, H, W), TensorFlow channels-last (B, H, W, C), matrices (B, C, C))
and returns one. The suite's own properties run on it, hypothesis searching for a failing input and
shrinking it; each property prints PASS or FAIL with a diagnosis.

Exit status: 0 when every property holds, 1 when one fails, 2 for a usage error.
"""

import argparse
import json
import os
import sys
import textwrap

from impls.backends import get_backend
from impls.testing.check_runner import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_EXAMPLES,
    check,
)
from impls.testing.check_target import UsageError, infer_framework, load
from impls.testing.stage_specs import STAGES

#: Overrides the default --max-examples (tests run the CLI with a handful).
MAX_EXAMPLES_VARIABLE = "IBP_CHECK_MAX_EXAMPLES"
_LAYOUTS = {"torch": "channels-first (B, C, H, W)", "tf": "channels-last (B, H, W, C)"}
_WIDTH = 100


def positive(kind):
    """An argparse type: `kind` (int, float) of the text, refused unless > 0."""

    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parser():
    arguments = argparse.ArgumentParser(
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
        type=positive(int),
        default=DEFAULT_MAX_CHANNELS,
        metavar="C",
        help=f"largest channel count drawn (default {DEFAULT_MAX_CHANNELS}; at least 2)",
    )
    arguments.add_argument(
        "--tolerance",
        type=positive(float),
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
        type=positive(int),
        default=int(os.environ.get(MAX_EXAMPLES_VARIABLE, DEFAULT_MAX_EXAMPLES)),
        metavar="N",
        help=f"hypothesis examples per property (default {DEFAULT_MAX_EXAMPLES}, "
        f"or ${MAX_EXAMPLES_VARIABLE})",
    )
    arguments.add_argument(
        "--forward-only",
        action="store_true",
        help="the target is never differentiated (nothing below it trains): skip gradients",
    )
    arguments.add_argument("--json", action="store_true", help="print the report as JSON")
    return arguments


def _wrapped(text, indent="      "):
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent)


def _measured(result):
    if result.error is None:
        return ""
    return f"relative error {result.error:.2g}, tolerance {result.tolerance:.2g}"


def format_report(report, target):
    lines = [
        f"ibp-check {report.stage} {target}",
        f"  framework {report.framework}, {_LAYOUTS[report.framework]}, {report.dtype}, up to "
        f"{report.max_channels} channels, {report.max_examples} examples per property",
        "",
    ]
    lines += [
        textwrap.fill(f"NOTE  {note}", _WIDTH, subsequent_indent="      ") for note in report.notes
    ]
    for result in report.results:
        if result.status == "FAIL":
            lines.append(f"FAIL  {result.name}: {result.checks}")
            lines.append(_wrapped(result.diagnosis))
            lines.append(_wrapped(f"counterexample: {result.counterexample}"))
            if result.error is not None:
                lines.append(_wrapped(f"measured: {_measured(result)}"))
        elif result.status == "SKIP":
            lines.append(f"SKIP  {result.name}: {result.diagnosis}")
        else:
            worst = f", worst {_measured(result)}" if result.error is not None else ""
            lines.append(
                f"PASS  {result.name} ({result.examples} examples{worst}, {result.seconds:.1f} s)"
            )
    failed = sum(result.status == "FAIL" for result in report.results)
    verdict = (
        f"{failed} of {len(report.results)} properties FAIL" if failed else "all properties hold"
    )
    lines += ["", f"{verdict} ({report.seconds:.1f} s)"]
    return "\n".join(lines)


def _backend(name):
    backend = get_backend(name)
    if not backend.is_available():
        raise UsageError(f"--framework {name}: {backend.package} is not installed")
    return backend


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.size < 2:
            raise UsageError("--size must be at least 2: dead channels need a live one beside them")
        module, fn = load(args.target)
        backend = _backend(args.framework or infer_framework(module))
    except UsageError as error:
        print(f"ibp-check: error: {error}", file=sys.stderr)
        return 2
    report = check(
        args.stage,
        fn,
        backend,
        dtype=args.dtype,
        max_channels=args.size,
        max_examples=args.max_examples,
        tolerance=args.tolerance,
        forward_only=args.forward_only,
    )
    if args.json:
        print(json.dumps({"target": args.target, **report.to_json()}, indent=2))
    else:
        print(format_report(report, args.target))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
