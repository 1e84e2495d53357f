"""The options of `ibp-check STAGE` and `ibp-check model`, declared once: the command line and the
Python API (`impls.testing.assertions`, `check_runner.check`, `model_check.check_model`) take them
under the same names (`--max-examples` is `max_examples=`) and validate them the same way, before
any process starts. A bad value is one line naming it and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

from impls.testing.command_line import (
    Option,
    UsageError,
    Validator,
    bounded,
    one_of,
    positive,
    shape,
    validated,
)
from impls.testing.method_specs import DEFAULT_METHOD, resolved
from impls.testing.stage_specs import STAGES
from reference.methods import CHOICE, COUNT, METHOD_NAMES, METHODS, NON_NEGATIVE, Parameter

FRAMEWORKS = ("torch", "tf")
LAYOUTS = {"torch": "channels-first (B, C, H, W)", "tf": "channels-last (B, H, W, C)"}
#: dtypes of the tensors a stage check hands the function (half precision is tried as well).
DTYPES = ("float32", "float64")
#: Bounds of the numeric options: past them a run cannot finish in reasonable time (the reference
#: and the diagnoses work on C x C matrices in float64; a search draws examples one by one).
MAX_SIZE = 256
MAX_EXAMPLES = 100_000
MAX_SECONDS = 24 * 3600.0
MAX_SEED = 2**31 - 1
#: Most Newton-Schulz iterations --iterations takes (the reference runs them in float64).
MAX_ITERATIONS = 1000
#: Overrides the command's default --max-examples (tests run the command with a handful).
MAX_EXAMPLES_VARIABLE = "IBP_CHECK_MAX_EXAMPLES"

#: Largest channel count drawn, and examples per property, when the user names none: the search
#: shrinks towards small inputs, where a failure is easy to read; the fixed realistic cases bring
#: C = 64 (`stage_specs.REALISTIC_CHANNELS`).
DEFAULT_SIZE = 8
DEFAULT_MAX_EXAMPLES = 50
#: How long a call of the function under test may run before it is judged to hang.
DEFAULT_CALL_TIMEOUT = 60.0
#: Time the whole run may spend before the checks not yet run are reported as not checked (one
#: call may still run to its own limit past it).
DEFAULT_TIME_LIMIT = 600.0


def stage_name(value: Any) -> str:
    """One of the stages `ibp-check` knows (the `STAGE` of the command)."""
    return one_of(STAGES)(value)


def _output_key(value: Any) -> int | str:
    """An output's position (0, "0") or key ("logits")."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise UsageError(f"not an index or a key: {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


FRAMEWORK = Option(
    "framework",
    one_of(FRAMEWORKS),
    None,
    "the target's framework (default: from the imports of its module)",
    choices=FRAMEWORKS,
)
CALL_TIMEOUT = Option(
    "call_timeout",
    bounded(float, 0.1, MAX_SECONDS),
    DEFAULT_CALL_TIMEOUT,
    f"a call running longer fails the check (default {DEFAULT_CALL_TIMEOUT:g} s)",
    metavar="S",
)
TIME_LIMIT = Option(
    "time_limit",
    bounded(float, 1.0, MAX_SECONDS),
    DEFAULT_TIME_LIMIT,
    f"checks not started within S seconds of the start are reported as not checked (a failure; "
    f"default {DEFAULT_TIME_LIMIT:g} s)",
    metavar="S",
)
STRICT_DTYPES = Option(
    "strict_dtypes",
    None,
    False,
    "half precision returned in float32 (a float32 constant promotes it, harmless under autocast) "
    "fails instead of being noted",
)

METHOD = Option(
    "method",
    one_of(METHOD_NAMES),
    DEFAULT_METHOD,
    "the second-order pooling method the layer implements, whose float64 reference it is checked "
    f"against (default {DEFAULT_METHOD}): ibp (Improved Bilinear Pooling), bcnn (B-CNN), mpn-cov, "
    "isqrt-cov",
    choices=METHOD_NAMES,
)
MODEL_METHOD = dataclasses.replace(
    METHOD,
    default=None,
    help="the second-order pooling method of the model's head (default: recognised from its "
    "layers); one of " + ", ".join(METHOD_NAMES),
)

#: The methods' parameters, in the order --help lists them.
PARAMETER_NAMES = ("eps", "delta", "alpha", "iterations", "order")


def _parameter_validator(parameter: Parameter) -> Validator[Any]:
    if parameter.kind == NON_NEGATIVE:
        return bounded(float, 0.0, sys.float_info.max)
    if parameter.kind == COUNT:
        return bounded(int, 1, MAX_ITERATIONS)
    if parameter.kind == CHOICE:
        return one_of(parameter.choices)
    return positive(float)


def _parameter_option(name: str) -> Option:
    """--NAME for the methods that have a parameter NAME; it defaults to each method's own."""
    having = [(m.name, p) for m in METHODS.values() for p in m.parameters if p.name == name]
    defaults = ", ".join(f"{method} {parameter.default}" for method, parameter in having)
    parameter = having[0][1]
    return Option(
        name,
        _parameter_validator(parameter),
        None,
        f"{parameter.description}; under --method {' or '.join(m for m, _ in having)} only "
        f"(default: the method's: {defaults})",
        metavar=None if parameter.choices else name.upper(),
        choices=parameter.choices or None,
    )


PARAMETER_OPTIONS = tuple(_parameter_option(name) for name in PARAMETER_NAMES)

STAGE_OPTIONS = (
    FRAMEWORK,
    METHOD,
    *PARAMETER_OPTIONS,
    Option(
        "size",
        bounded(int, 2, MAX_SIZE),
        DEFAULT_SIZE,
        f"largest channel count the search draws (default {DEFAULT_SIZE}, 2 to {MAX_SIZE}; the "
        "fixed realistic cases have 64 channels whatever C)",
        metavar="C",
    ),
    Option(
        "tolerance",
        bounded(float, 5e-324, 1.0),
        None,
        "accept relative errors up to REL, in (0, 1], instead of the suite's tolerance table",
        metavar="REL",
    ),
    Option(
        "dtype",
        one_of(DTYPES),
        "float32",
        "dtype of the tensors the target gets (default float32)",
        choices=DTYPES,
    ),
    Option(
        "max_examples",
        bounded(int, 1, MAX_EXAMPLES),
        DEFAULT_MAX_EXAMPLES,
        f"hypothesis examples per property (default {DEFAULT_MAX_EXAMPLES}; the command reads "
        f"${MAX_EXAMPLES_VARIABLE} too)",
        metavar="N",
    ),
    Option(
        "forward_only",
        None,
        False,
        "the target is never differentiated (nothing below it trains): skip gradients",
    ),
    CALL_TIMEOUT,
    TIME_LIMIT,
    STRICT_DTYPES,
)

MODEL_OPTIONS = (
    FRAMEWORK,
    MODEL_METHOD,
    *PARAMETER_OPTIONS,
    Option(
        "input_shape",
        shape(3, "three sizes"),
        None,
        "one sample's shape in the model's layout: C,H,W for torch, H,W,C for Keras (needed where "
        "the model does not fix it: torch modules, subclassed Keras models, Keras inputs of size "
        "None)",
        metavar="SHAPE",
    ),
    Option(
        "logits",
        _output_key,
        None,
        "which output holds the logits, an index or a key, for a model that returns a tuple or a "
        "dict (default: the one 2-D output, or the key 'logits')",
        metavar="KEY",
    ),
    Option(
        "seed",
        bounded(int, 0, MAX_SEED),
        0,
        "seed of the model's initialisation and of the probe images (verdicts do not depend on it)",
        metavar="N",
    ),
    CALL_TIMEOUT,
    TIME_LIMIT,
    STRICT_DTYPES,
)


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """The options of `ibp-check STAGE` (see STAGE_OPTIONS). A method parameter left None takes
    the method's default; one the method has not is a UsageError naming the method's."""

    framework: str | None
    method: str
    eps: float | None
    delta: float | None
    alpha: float | None
    iterations: int | None
    order: str | None
    size: int
    tolerance: float | None
    dtype: str
    max_examples: int
    forward_only: bool
    call_timeout: float
    time_limit: float
    strict_dtypes: bool

    def __post_init__(self) -> None:
        resolved(self.method, self.parameters())

    def parameters(self) -> dict[str, Any]:
        """The method parameters given (the others take the method's defaults)."""
        return _given_parameters(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StageSettings:
        """Validated settings from Python keywords; the missing ones take their defaults."""
        return cls(**validated(STAGE_OPTIONS, options))


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The options of `ibp-check model` (see MODEL_OPTIONS). Method parameters need the method
    (`method`) they belong to."""

    framework: str | None
    method: str | None
    eps: float | None
    delta: float | None
    alpha: float | None
    iterations: int | None
    order: str | None
    input_shape: tuple[int, int, int] | None
    logits: int | str | None
    seed: int
    call_timeout: float
    time_limit: float
    strict_dtypes: bool

    def __post_init__(self) -> None:
        given = self.parameters()
        if self.method is None and given:
            raise UsageError(
                f"{', '.join('--' + name for name in given)} needs --method (the method whose "
                "parameter it is)"
            )
        if self.method is not None:
            resolved(self.method, given)

    def parameters(self) -> dict[str, Any]:
        """The method parameters given (the others take the method's defaults)."""
        return _given_parameters(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ModelSettings:
        """Validated settings from Python keywords; the missing ones take their defaults."""
        return cls(**validated(MODEL_OPTIONS, options))


def _given_parameters(settings: StageSettings | ModelSettings) -> dict[str, Any]:
    values = {name: getattr(settings, name) for name in PARAMETER_NAMES}
    return {name: value for name, value in values.items() if value is not None}


def command_default_max_examples() -> str:
    """The command's default --max-examples: $IBP_CHECK_MAX_EXAMPLES where set (validated like the
    option), else DEFAULT_MAX_EXAMPLES."""
    return os.environ.get(MAX_EXAMPLES_VARIABLE, str(DEFAULT_MAX_EXAMPLES))
