"""ibp-check: verify your own second-order pooling layer, or a whole model, against the float64
reference of its method (IBP by default; --method bcnn, mpn-cov or isqrt-cov).

    ibp-check STAGE TARGET [--method M] [--framework torch|tf] [--size C] [--json] ...
    ibp-check model TARGET [--method M] [--input-shape SHAPE] [--logits KEY] [--seed N] ...

STAGE is pool, sqrtm, signed-sqrt, l2 or head (feature map -> normalised (B, C*C) or (B, C, C);
under MPN-COV and iSQRT-COV the upper triangle (B, C(C+1)/2)); each method has some of them
(B-CNN: pool, signed-sqrt, l2, head; MPN-COV and iSQRT-COV: pool, sqrtm, head).
`ibp-check STAGE --help` and `ibp-check model --help` list the options. The Python API
(`impls.testing.assertions`) takes the same options under the same names (--max-examples is
max_examples=).

Exit status: 0 when every check passes, 1 when one fails or could not be checked, 2 for a usage
error, 130 when interrupted (Ctrl-C).
"""

import argparse
import json
import sys
from collections.abc import Sequence

from impls.testing import framework_logs
from impls.testing.check_options import (
    MODEL_OPTIONS,
    STAGE_OPTIONS,
    ModelSettings,
    StageSettings,
    command_default_max_examples,
)
from impls.testing.check_runner import check
from impls.testing.command_line import EXIT_FAILED, EXIT_PASSED, Parser, run_command
from impls.testing.model_check.engine import check_model
from impls.testing.report_text import model_report, stage_report
from impls.testing.sandbox import no_hypothesis_files
from impls.testing.stage_specs import STAGES

STAGE_DESCRIPTION = """\
Check a function of one stage of a second-order pooling method (--method: ibp by default, bcnn,
mpn-cov, isqrt-cov, with its parameters as options): the suite's own properties run on it against
the method's float64 reference, hypothesis searching for a failing input and shrinking it; each
property prints PASS or FAIL with a diagnosis, or N/A with the reason where it is not a property of
the method (iSQRT-COV's N iterations are not the exact root by design).

TARGET is path/to/file.py:function or package.module:function; the function takes one tensor
(PyTorch channels-first (B, C, H, W), TensorFlow channels-last (B, H, W, C), matrices (B, C, C))
and returns one. It runs in a separate process: if it ends that process (sys.exit, os._exit, a
crash) or a call runs past --call-timeout, the property fails with that cause. What the function
prints is shown apart from the report (on stderr), so --json output stays valid JSON.
"""

MODEL_DESCRIPTION = """\
Check a whole model. TARGET is path/to/file.py:function; the function takes no arguments and
returns a Keras model (Sequential, functional or subclassed; compiled or not), a torch nn.Module,
or (model, optimizer). The model is built and run in a separate process; each check fails when it
runs past --call-timeout.

Checks: batch sizes; finite outputs; per-sample independence layer by layer and of the whole
model, in inference and training mode (random layers such as Dropout get the same random numbers
in the passes compared); the head's layers, found by their inputs and outputs (identified by where
they sit, not by name), each checked by the stage checks at the sizes, layout and dtype it gets in
the model, against the reference of the method the head implements (recognised from the layers: a
centred covariance, an upper-triangle output, a trace-normalised iteration; or --method); gradient
flow; learning-rate scale (one optimizer step); learnability (the classifier's input per sample
and per batch, and a linear classifier trained on it).
"""

EPILOG = "Example: ibp-check sqrtm my_layers.py:matrix_sqrt --framework torch"


def parser() -> Parser:
    top = Parser(prog="ibp-check", description=__doc__, epilog=EPILOG)
    commands = top.add_subparsers(dest="command", metavar="{STAGE,model}", required=True)
    for stage in STAGES:
        sub = commands.add_parser(
            stage, help=f"check a {stage} function", description=STAGE_DESCRIPTION, epilog=EPILOG
        )
        sub.add_argument("target", metavar="TARGET", help="file.py:function or module:function")
        for option in STAGE_OPTIONS:
            option.add_to(sub)
        sub.set_defaults(max_examples=command_default_max_examples())
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
    model = commands.add_parser("model", help="check a whole model", description=MODEL_DESCRIPTION)
    model.add_argument("target", metavar="TARGET", help="file.py:function or module:function")
    for option in MODEL_OPTIONS:
        option.add_to(model)
    model.add_argument("--json", action="store_true", help="print the report as JSON")
    return top


def _show_output(printed: str, log: str, what: str) -> None:
    """What the checked code printed, apart from the report, on stderr; TensorFlow's log lines
    only where the user asked for a log level, and never as the code's."""
    if log and framework_logs.user_wants_logs():
        print(log.rstrip(), file=sys.stderr)
    if printed.strip():
        print(
            f"--- what the {what} printed ---\n{printed.rstrip()}\n"
            f"--- end of what the {what} printed ---",
            file=sys.stderr,
        )


def _run(args: argparse.Namespace) -> int:
    if args.command == "model":
        model_settings = ModelSettings(**{o.name: getattr(args, o.name) for o in MODEL_OPTIONS})
        model = check_model(args.target, model_settings)
        _show_output(model.target_output, model.framework_log, "model")
        text = json.dumps(model.to_json(), indent=2, default=str) if args.json else None
        print(text or model_report(model))
        return EXIT_PASSED if model.passed else EXIT_FAILED
    stage_settings = StageSettings(**{o.name: getattr(args, o.name) for o in STAGE_OPTIONS})
    stage = check(args.command, args.target, stage_settings)
    _show_output(stage.target_output, stage.framework_log, "function")
    if args.json:
        print(json.dumps({"target": args.target, **stage.to_json()}, indent=2))
    else:
        print(stage_report(stage, args.target))
    return EXIT_PASSED if stage.passed else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """`ibp-check`; returns the exit status (argparse's usage errors exit with 2)."""
    args = parser().parse_args(argv)

    def run() -> int:
        with no_hypothesis_files():
            return _run(args)

    return run_command(f"ibp-check {args.command}", run)


if __name__ == "__main__":
    sys.exit(main())
