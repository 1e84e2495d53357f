"""The engine of `ibp-check`: runs the suite's properties on a user's function, with hypothesis
searching for a failing input and shrinking it to a minimal one.

Before the search, one seeded first call finds out what the function needs: the batch size it
works at (a hard-coded one is found from the error), and the harmless convention it follows, if it
does not match the reference as it stands.
"""

import dataclasses
import time
from functools import partial

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from impls.testing import properties
from impls.testing.diagnosis import conventions, explain
from impls.testing.diagnosis.inputs import describe, native_shape
from impls.testing.properties import PropertyViolation
from impls.testing.stage_specs import FEATURE_MAP, STAGES
from impls.testing.strategies import batch_sizes, register_check_profile
from impls.testing.tolerances import APPROXIMATION_BUDGET

#: Largest channel count drawn, and examples per property, when the user names none: a stage check
#: stays under a minute on two CPU cores with TensorFlow eager (the slowest catalogued layer took
#: 9 s, and 25 s with the cores shared with other work: results/ibp_check.json).
DEFAULT_MAX_CHANNELS = 8
DEFAULT_MAX_EXAMPLES = 50
#: Time a property may spend; past it, the search stops and a failure found so far is reported.
DEFAULT_SECONDS_PER_PROPERTY = 7.0
#: The batch of the first call; a function that fails on it is tried on the batch sizes its error
#: names, then on common ones.
FIRST_BATCH = 2
_COMMON_BATCH_SIZES = (1, 3, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Subject:
    """The function under test, as the properties call it."""

    backend: object
    spec: object
    fn: callable
    dtype: str
    forward_only: bool


@dataclasses.dataclass(frozen=True)
class Property:
    name: str
    checks: str  # what holds for a correct stage, in words
    inputs: str  # which of the stage's StageInputs draws its examples
    check: callable  # (subject, x) -> Measurement or None; raises PropertyViolation
    least_batch: int = 1
    stages: tuple = tuple(STAGES)
    needs_gradient: bool = False


def _shape(s, x):
    return properties.check_shape(s.backend, s.spec, s.fn, x, s.dtype)


def _independence(s, x):
    return properties.check_per_sample_independence(s.backend, s.spec, s.fn, x, s.dtype)


def _batch_sizes(s, x):
    return properties.check_batch_consistency(s.backend, s.spec, s.fn, x, s.dtype)


def _forward(s, x):
    return properties.check_forward(s.backend, s.spec, s.fn, x, s.dtype)


def _square_root(s, a):
    return properties.check_square_root(s.backend, s.fn, a, s.dtype, s.spec)


def _gradient(s, x):
    return properties.check_gradient(s.backend, s.spec, s.fn, x, s.dtype)


def _degenerate(s, x):
    """Finite everywhere; an exact stage also agrees with the reference there."""
    properties.check_finite(s.backend, s.spec, s.fn, x, s.dtype, gradient=not s.forward_only)
    if not s.spec.approximate:
        gradient = not s.forward_only
        return properties.check_reference_agreement(
            s.backend, s.spec, s.fn, x, s.dtype, gradient=gradient
        )
    return None


PROPERTIES = (
    Property(
        "shape contract", "the output has the stage's shape for any input shape", "accuracy", _shape
    ),
    Property(
        "per-sample independence",
        "changing one sample leaves the other samples' outputs unchanged",
        "accuracy",
        _independence,
        least_batch=2,
    ),
    Property(
        "batch sizes",
        "a sample's output does not depend on the batch size",
        "accuracy",
        _batch_sizes,
    ),
    Property("forward", "the output agrees with the float64 reference", "accuracy", _forward),
    Property(
        "square root", "Z is symmetric and Z @ Z = A", "accuracy", _square_root, stages=("sqrtm",)
    ),
    Property(
        "gradient",
        "the gradient agrees with the reference's vector-Jacobian product",
        "gradient",
        _gradient,
        needs_gradient=True,
    ),
    Property(
        "degenerate inputs",
        "finite outputs and gradients on rank-deficient covariances, dead channels and repeated "
        "eigenvalues",
        "degenerate",
        _degenerate,
    ),
)


@dataclasses.dataclass
class PropertyResult:
    name: str
    status: str  # PASS, FAIL or SKIP
    checks: str
    diagnosis: str = None
    counterexample: str = None  # the minimal failing input in words
    counterexample_shape: tuple = None  # in the framework's layout
    error: float = None
    tolerance: float = None
    examples: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class CheckReport:
    stage: str
    framework: str
    dtype: str
    max_channels: int
    max_examples: int
    notes: list
    results: list
    seconds: float = 0.0

    @property
    def passed(self):
        return all(result.status != "FAIL" for result in self.results)

    def to_json(self):
        return {**dataclasses.asdict(self), "passed": self.passed}


def _first_call(subject, max_channels, batch):
    x = subject.spec.inputs.first(np.random.default_rng(0), batch, max_channels)
    try:
        out, _ = properties.run(subject.backend, subject.spec, subject.fn, x, subject.dtype)
    except PropertyViolation as violation:
        violation.counterexample = x
        return x, None, violation
    return x, out, None


def _working_batch(subject, max_channels, failure):
    """A batch size the function works at, tried from the numbers its error names."""
    named = [n for n in explain.numbers_in(failure.diagnosis) if 1 <= n <= 256]
    for batch in dict.fromkeys([*named, *_COMMON_BATCH_SIZES]):
        if batch == FIRST_BATCH:
            continue
        x, out, violation = _first_call(subject, max_channels, batch)
        if violation is None:
            return batch, x, out
    return None, None, None


def _output_or_none(subject, x):
    try:
        return properties.run(subject.backend, subject.spec, subject.fn, x, subject.dtype)[0]
    except PropertyViolation:
        return None


def _adopt_convention(subject, x, out, notes):
    """The subject compared up to the convention its first output follows, if it needs one."""
    spec = subject.spec
    allowed = properties.stage_tolerance(spec, "forward", subject.dtype, x)
    _, _, violation = properties.compare_forward(subject.backend, spec, x, out, subject.dtype)
    # A wrong structure (eps * ones) is a bug, which no convention may explain away.
    if violation is None or violation.structural:
        return subject
    convention = conventions.fit(spec.name, x, out, allowed, partial(_output_or_none, subject))
    if convention is None:
        return subject
    notes.append(convention.note)
    spec = dataclasses.replace(
        spec, forward=convention.forward, vjp=convention.vjp, convention=convention.note
    )
    return dataclasses.replace(subject, spec=spec)


def _counterexample_fields(subject, x):
    spec = subject.spec
    shape = native_shape(subject.backend.layout, spec.input_kind == FEATURE_MAP, x.shape)
    return describe(spec.name, subject.backend.layout, x), shape


def _search(prop, subject, strategy, profile, seconds):
    """PropertyResult of a hypothesis search; past `seconds` new inputs count as passing, so a
    search stops, and shrinking keeps the smallest failure found so far."""
    failures, measured = {}, []
    started = time.perf_counter()

    @settings(profile)
    @given(x=strategy)
    def trial(x):
        key = (x.shape, x.tobytes())
        if key in failures:
            raise failures[key]
        if time.perf_counter() - started > seconds:
            return
        try:
            # A convention without regulariser has an infinite reference slope at zero: no warning.
            with np.errstate(divide="ignore", invalid="ignore"):
                measurement = prop.check(subject, x)
        except PropertyViolation as violation:
            violation.counterexample = x
            failures[key] = violation
            raise
        measured.append(measurement)

    result = PropertyResult(prop.name, "PASS", prop.checks)
    try:
        trial()
    except PropertyViolation as violation:
        result = _failed(prop, subject, violation)
    result.examples = len(measured) + len(failures)
    result.seconds = time.perf_counter() - started
    if result.status == "PASS":
        worst = max(
            (m for m in measured if m is not None),
            key=lambda m: m.error / m.allowed if m.allowed else 0.0,
            default=None,
        )
        if worst is not None:
            result.error, result.tolerance = float(worst.error), float(worst.allowed)
    return result


def _failed(prop, subject, violation):
    described, shape = _counterexample_fields(subject, violation.counterexample)
    return PropertyResult(
        prop.name,
        "FAIL",
        prop.checks,
        diagnosis=violation.diagnosis,
        counterexample=described,
        counterexample_shape=shape,
        error=None if violation.error is None else float(violation.error),
        tolerance=None if violation.allowed is None else float(violation.allowed),
    )


def _batches(fixed_batch, least):
    """Batch sizes a property draws: any from `least`, or the one the function works at."""
    if fixed_batch is None:
        return batch_sizes.filter(lambda b: b >= least)
    return st.just(fixed_batch) if fixed_batch >= least else None


def _first_calls(subject, max_channels):
    """(subject, notes, the batch size the function is fixed to or None, results found already)."""
    notes, results, fixed_batch = [], {}, None
    x, out, failure = _first_call(subject, max_channels, FIRST_BATCH)
    if failure is not None:
        fixed_batch, x, out = _working_batch(subject, max_channels, failure)
    if fixed_batch is not None:
        cause = explain.hard_coded_batch(fixed_batch, FIRST_BATCH)
        diagnosis = f"fails on a batch of {FIRST_BATCH}: {failure.diagnosis}"
        hard_coded = PropertyViolation(diagnosis if cause in diagnosis else f"{diagnosis}; {cause}")
        hard_coded.counterexample = failure.counterexample
        results["batch sizes"] = _failed(_property("batch sizes"), subject, hard_coded)
    if out is not None:
        subject = _adopt_convention(subject, x, out, notes)
    return subject, notes, fixed_batch, results


def check(
    stage,
    fn,
    backend,
    dtype="float32",
    max_channels=DEFAULT_MAX_CHANNELS,
    max_examples=DEFAULT_MAX_EXAMPLES,
    tolerance=None,
    forward_only=False,
    seconds_per_property=DEFAULT_SECONDS_PER_PROPERTY,
):
    """Every property of `stage` on fn (one tensor of `backend`'s framework -> one tensor)."""
    started = time.perf_counter()
    spec = dataclasses.replace(
        STAGES[stage],
        approximate=stage in APPROXIMATION_BUDGET,
        symmetric_gradient=stage == "sqrtm",
        tolerance_override=tolerance,
    )
    subject = Subject(backend, spec, fn, dtype, forward_only)
    subject, notes, fixed_batch, results = _first_calls(subject, max_channels)
    profile = settings(register_check_profile(), max_examples=max_examples)
    for prop in PROPERTIES:
        if stage not in prop.stages or prop.name in results:
            continue
        batches = _batches(fixed_batch, prop.least_batch)
        if prop.needs_gradient and forward_only:
            results[prop.name] = PropertyResult(prop.name, "SKIP", prop.checks, "--forward-only")
        elif batches is None:
            skipped = f"needs a batch of {prop.least_batch}; the function works at {fixed_batch}"
            results[prop.name] = PropertyResult(prop.name, "SKIP", prop.checks, skipped)
        else:
            strategy = getattr(subject.spec.inputs, prop.inputs)(max_channels, batches)
            results[prop.name] = _search(prop, subject, strategy, profile, seconds_per_property)
    ordered = [results[p.name] for p in PROPERTIES if p.name in results]
    seconds = time.perf_counter() - started
    return CheckReport(
        stage, backend.name, dtype, max_channels, max_examples, notes, ordered, seconds
    )


def _property(name):
    return next(p for p in PROPERTIES if p.name == name)
