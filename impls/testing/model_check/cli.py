"""ibp-check model: check a whole model, not one stage.

    ibp-check model TARGET [--framework torch|tf] [--input-shape C,H,W] [--json]
                           [--call-timeout S] [--time-limit S] [--seed N]

TARGET is path/to/file.py:function; the function takes no arguments and returns a Keras model
(compiled or not), a torch nn.Module, or (module, optimizer). Torch models need --input-shape, one
sample's shape, channels-first. The model is built and run in a separate process, as the stage
checks run a layer, and each check fails when it runs past --call-timeout; checks not started
within --time-limit of the start are reported as not checked (a failure).

Checks: batch sizes; per-sample independence layer by layer, in inference and training mode; the
IBP head's layers, found by their inputs and outputs, each checked by the stage checks; gradient
flow; learning-rate scale (one optimizer step); learnability (a linear classifier on the model's
features against the batch-majority ceiling).

Exit status: 0 when every check passes, 1 when one fails, 2 for a usage error, 130 when
interrupted (Ctrl-C).
"""

import argparse
import json
import sys

from impls.testing.check import MAX_SECONDS, bounded
from impls.testing.check_runner import DEFAULT_TIME_LIMIT
from impls.testing.check_target import UsageError
from impls.testing.model_check.engine import check_model
from impls.testing.model_check.report import format_report
from impls.testing.sandbox import DEFAULT_CALL_TIMEOUT, TargetUnusable, no_hypothesis_files


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not C,H,W: {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"not three positive sizes C,H,W: {text!r}")
    return shape


def parser() -> argparse.ArgumentParser:
    arguments = _Parser(
        prog="ibp-check model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    arguments.add_argument("target", metavar="TARGET", help="file.py:function or module:function")
    arguments.add_argument(
        "--framework",
        choices=("tf", "torch"),
        help="the model's framework (default: from its module's imports)",
    )
    arguments.add_argument(
        "--input-shape", type=_shape, metavar="C,H,W", help="one sample's shape, for torch models"
    )
    arguments.add_argument(
        "--call-timeout",
        type=bounded(float, 0.1, MAX_SECONDS),
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help=f"a check running longer fails (default {DEFAULT_CALL_TIMEOUT:g} s)",
    )
    arguments.add_argument(
        "--time-limit",
        type=bounded(float, 1.0, MAX_SECONDS),
        default=DEFAULT_TIME_LIMIT,
        metavar="S",
        help=f"checks not started within S seconds of the start are reported as not checked "
        f"(a failure; default {DEFAULT_TIME_LIMIT:g} s)",
    )
    arguments.add_argument(
        "--seed",
        type=bounded(int, 0, 2**31 - 1),
        default=0,
        help="seed of the model's initialisation and of the probe images",
    )
    arguments.add_argument("--json", action="store_true", help="print the report as JSON")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """`ibp-check model`; returns the exit status."""
    try:
        args = parser().parse_args(argv)
        with no_hypothesis_files():
            report = check_model(
                args.target,
                args.framework,
                args.input_shape,
                seed=args.seed,
                call_timeout=args.call_timeout,
                time_limit=args.time_limit,
            )
    except (UsageError, TargetUnusable) as error:
        print(f"ibp-check model: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ibp-check model: interrupted", file=sys.stderr)
        return 130
    if report.target_output:
        print(
            f"--- what the model printed ---\n{report.target_output.rstrip()}\n"
            "--- end of what the model printed ---",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
