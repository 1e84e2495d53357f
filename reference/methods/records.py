"""The second-order pooling family as typed records: which stages a method has, what each stage's
float64 reference forward and vector-Jacobian product are, and the method's parameters.

A checker asks `method.reference("sqrtm", iterations=3)` for a stage with the parameters bound, and
gets the same two calls for every method: `forward(x)` and `vjp(x, g)`, both of the stage's input
(feature maps channels-first (B, C, H, W), matrices (B, C, C)).
"""

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from reference.contracts import (
    IBPInputError,
    check_choice,
    check_non_negative,
    check_positive_int,
)
from reference.stages import Array, ArrayLike

#: What a stage takes: the names `impls.testing.stage_specs` uses.
FEATURE_MAP, MATRIX = "feature_map", "matrix"
#: What a stage returns: (B, C, C); (B, C*C), a (C, C) matrix flattened row by row; or
#: (B, C(C+1)/2), the upper triangle of a (C, C) matrix.
MATRIX_OUTPUT, FLAT_OUTPUT, TRIU_OUTPUT = "matrix", "flat", "triu"

ParameterValue = float | int | str

#: How a parameter's value is checked.
NON_NEGATIVE, POSITIVE, COUNT, CHOICE = "non-negative", "positive", "count", "choice"


@dataclass(frozen=True)
class Parameter:
    name: str  # the keyword of the stage functions and of `--<name>` on the command line
    default: ParameterValue
    kind: str  # NON_NEGATIVE, POSITIVE, COUNT or CHOICE
    description: str
    choices: tuple[str, ...] = ()

    def check(self, value: object) -> None:
        """Raise IBPInputError unless `value` is a valid value of this parameter."""
        if self.kind == NON_NEGATIVE:
            check_non_negative(value, self.name)
        elif self.kind == COUNT:
            check_positive_int(value, self.name)
        elif self.kind == CHOICE:
            check_choice(value, self.choices, self.name)
        elif (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise IBPInputError(f"{self.name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class MethodStage:
    name: str  # the checker's stage name: pool, sqrtm, signed-sqrt, l2 or head
    input_kind: str  # FEATURE_MAP or MATRIX
    output: str  # MATRIX_OUTPUT, FLAT_OUTPUT or TRIU_OUTPUT
    forward: Callable[..., Array]  # (x, **parameters) -> float64 output
    vjp: Callable[..., Array]  # (x, g, **parameters) -> gradient of <g, forward(x)> in x
    parameters: tuple[str, ...]  # the method's parameters this stage takes
    description: str

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input of `input_shape` (reference layout)."""
        b, c = input_shape[0], input_shape[1]
        if self.output == TRIU_OUTPUT:
            return (b, c * (c + 1) // 2)
        if self.output == FLAT_OUTPUT:
            return (b, c * c)
        return (b, c, c)


@dataclass(frozen=True)
class BoundStage:
    """A stage with its parameter values: what a checker compares a user's layer with."""

    stage: MethodStage
    parameters: tuple[tuple[str, ParameterValue], ...]

    def forward(self, x: ArrayLike) -> Array:
        return self.stage.forward(x, **dict(self.parameters))

    def vjp(self, x: ArrayLike, g: ArrayLike) -> Array:
        return self.stage.vjp(x, g, **dict(self.parameters))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.stage.output_shape(input_shape)


@dataclass(frozen=True)
class NotApplicable:
    """A property of the IBP checks that does not hold for a method, and why: reported as not
    applicable, never skipped silently."""

    property: str  # "square-root" (Z Z = A) or "convergence" (the approximation budget)
    stage: str
    reason: str


@dataclass(frozen=True)
class Method:
    name: str  # the --method keyword
    title: str  # the paper
    stages: tuple[MethodStage, ...]
    parameters: tuple[Parameter, ...]
    not_applicable: tuple[NotApplicable, ...] = ()
    #: The fewest locations (H W) a feature map must have for the method to be defined: the
    #: centred covariance of one location is 0, and iSQRT-COV divides by its trace (0 / 0; the
    #: reference returns the limit 0, the authors' code NaN). The same holds for any map constant
    #: over its locations: a checker draws maps whose centred covariance is not 0.
    min_locations: int = 1
    short: str = ""  # the name a report gives it: IBP, B-CNN, MPN-COV, iSQRT-COV

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    def stage(self, name: str) -> MethodStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise IBPInputError(
            f"{self.name} has no stage {name!r}; its stages: {', '.join(self.stage_names)}"
        )

    def defaults(self) -> dict[str, ParameterValue]:
        return {parameter.name: parameter.default for parameter in self.parameters}

    def resolve(self, **overrides: ParameterValue) -> dict[str, ParameterValue]:
        """The defaults with `overrides` applied, each checked; an unknown name is an error."""
        known = {parameter.name: parameter for parameter in self.parameters}
        for name, value in overrides.items():
            if name not in known:
                listed = ", ".join(known) or "none"
                raise IBPInputError(
                    f"{self.name} has no parameter {name!r}; its parameters: {listed}"
                )
            known[name].check(value)
        return {**self.defaults(), **overrides}

    def reference(self, stage: str, **overrides: ParameterValue) -> BoundStage:
        """Stage `stage` with the method's parameters (defaults, or `overrides`) bound."""
        chosen = self.stage(stage)
        values = self.resolve(**overrides)
        return BoundStage(chosen, tuple((name, values[name]) for name in chosen.parameters))

    def not_applicable_to(self, stage: str) -> tuple[NotApplicable, ...]:
        return tuple(entry for entry in self.not_applicable if entry.stage == stage)
