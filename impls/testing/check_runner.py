"""The engine of `ibp-check`: runs the suite's properties on a user's function, with hypothesis
searching for a failing input and shrinking it to a minimal one.

The function runs in a supervised child process (`impls.testing.sandbox`). Before the search, one
seeded first call finds out what the function needs: the batch size it works at (a hard-coded one
is found from the error), and the harmless convention it follows, if it does not match the
reference as it stands. Every numerical property first runs fixed realistic cases (ReLU feature
maps and their covariances at C = 64, condition numbers up to 1e5), then the hypothesis search.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import hypothesis
import numpy as np
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from impls.backends import Backend, get_backend
from impls.testing import framework_logs, properties
from impls.testing.check_options import StageSettings, stage_name
from impls.testing.command_line import UsageError
from impls.testing.diagnosis import explain, harmless_conventions
from impls.testing.diagnosis.input_facts import describe, native_shape
from impls.testing.method_specs import check_stage_of, method_record, resolved, stage_spec
from impls.testing.properties import DtypeViolation, Measurement, PropertyViolation, StageFunction
from impls.testing.sandbox import Sandbox, TargetStopped
from impls.testing.stage_specs import FEATURE_MAP, STAGES, Sizes, StageSpec
from impls.testing.strategies import batch_sizes, register_check_profile
from impls.testing.tolerances import APPROXIMATION_BUDGET

#: Time a property's search may spend; past it, the search stops and a failure found so far is
#: reported, and the report says that the search was cut short.
DEFAULT_SECONDS_PER_PROPERTY = 5.0
#: The batch of the first call; a function that fails on it is tried on the batch sizes its error
#: names, then on common ones.
FIRST_BATCH = 2
_COMMON_BATCH_SIZES = (1, 3, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Subject:
    """The function under test, as the properties call it."""

    backend: Backend
    spec: StageSpec
    fn: StageFunction  # the Sandbox holding the target, or a function run in this process
    dtype: str
    forward_only: bool
    strict_dtypes: bool = False


#: (subject, input) -> how far a passing input was from failing, or None; raises
#: PropertyViolation.
PropertyCheck = Callable[[Subject, np.ndarray], Measurement | None]


@dataclasses.dataclass(frozen=True)
class Property:
    name: str
    checks: str  # what holds for a correct stage, in words
    inputs: str | None  # which of the stage's StageInputs draws its examples; None: no search
    check: PropertyCheck
    least_batch: int = 1
    stages: tuple = tuple(STAGES)
    needs_gradient: bool = False
    realistic: bool = True  # runs the stage's fixed realistic cases before the search
    #: the methods it belongs to (None: every method)
    methods: tuple[str, ...] | None = None
    #: what `reference.methods.NotApplicable.property` calls it: a method that lists it as not
    #: applicable to the stage gets "N/A" with the reason, never a silent skip
    method_property: str | None = None


def _shape(s: Subject, x: np.ndarray) -> Measurement | None:
    properties.check_shape(s.backend, s.spec, s.fn, x, s.dtype)
    return _half_precision(s, x)


#: The note on half precision that comes back in float32, where --strict-dtypes is not given.
HALF_PROMOTED = (
    "half precision comes back as float32 (a float32 constant or intermediate, such as "
    "eps * eye(C) built in float32, promotes it): harmless in float32 and under autocast, but the "
    "layer leaves half precision; build the constant with the input's dtype (torch.eye(c, "
    "dtype=x.dtype), tf.eye(c, dtype=x.dtype)) to keep it. --strict-dtypes makes this a failure"
)


def _half_precision(s: Subject, x: np.ndarray) -> Measurement | None:
    """Half precision comes back in half precision. A function that refuses half precision (CPU
    eigensolvers do) breaks no contract; one that answers in another dtype does, except that
    float32 for float16 is only noted unless strict dtypes are asked for."""
    try:
        properties.run(s.backend, s.spec, s.fn, x, "float16")
    except DtypeViolation as violation:
        if violation.half_to_single and not s.strict_dtypes:
            return Measurement(0.0, 0.0, HALF_PROMOTED)
        raise
    except TargetStopped:
        raise
    except PropertyViolation:
        return None
    return None


def _in_float64(check: PropertyCheck) -> PropertyCheck:
    """`check` in float64, where round-off is far below the approximation budget, so an
    approximation that has not converged cannot hide behind float32's bound; in the user's dtype
    where the function does not take float64."""

    def exact(s: Subject, x: np.ndarray) -> Measurement | None:
        try:
            return check(dataclasses.replace(s, dtype="float64"), x)
        except TargetStopped:
            raise
        except PropertyViolation as violation:
            refused = isinstance(violation, DtypeViolation) or violation.diagnosis.startswith(
                "raised"
            )
            if not refused or s.dtype == "float64":
                raise
        return check(s, x)

    return exact


def _independence(s: Subject, x: np.ndarray) -> Measurement | None:
    return properties.check_per_sample_independence(s.backend, s.spec, s.fn, x, s.dtype)


def _batch_sizes(s: Subject, x: np.ndarray) -> Measurement:
    return properties.check_batch_consistency(s.backend, s.spec, s.fn, x, s.dtype)


def _forward(s: Subject, x: np.ndarray) -> Measurement:
    return properties.check_forward(s.backend, s.spec, s.fn, x, s.dtype)


def _square_root(s: Subject, a: np.ndarray) -> Measurement:
    return properties.check_square_root(s.backend, s.fn, a, s.dtype, s.spec)


def _gradient(s: Subject, x: np.ndarray) -> Measurement:
    return properties.check_gradient(s.backend, s.spec, s.fn, x, s.dtype)


def _symmetric_part_taken(s: Subject, a: np.ndarray) -> Measurement:
    return properties.check_symmetric_part(s.backend, s.spec, s.fn, a, s.dtype)


def _degenerate(s: Subject, x: np.ndarray) -> Measurement | None:
    """Finite everywhere; an exact stage also agrees with the reference there. The gradient is
    left out where the method's own is infinite there (with a note saying so)."""
    gradient = not s.forward_only and s.spec.degenerate_gradient is None
    properties.check_finite(s.backend, s.spec, s.fn, x, s.dtype, gradient=gradient)
    if s.spec.approximate:
        return None
    measured = properties.check_reference_agreement(
        s.backend, s.spec, s.fn, x, s.dtype, gradient=gradient
    )
    if s.forward_only or s.spec.degenerate_gradient is None:
        return measured
    return measured._replace(note=s.spec.degenerate_gradient)


PROPERTIES = (
    Property(
        "shape and dtype",
        "the output has the stage's shape for any input shape, and the input's dtype (half "
        "precision included)",
        "typical",
        _shape,
    ),
    Property(
        "per-sample independence",
        "changing one sample leaves the other samples' outputs unchanged",
        "typical",
        _independence,
        least_batch=2,
    ),
    Property(
        "batch sizes",
        "a sample's output does not depend on the batch size",
        "typical",
        _batch_sizes,
    ),
    Property("forward", "the output agrees with the float64 reference", "typical", _forward),
    Property(
        "square root",
        "Z is symmetric and Z @ Z = A",
        "typical",
        _square_root,
        stages=("sqrtm",),
        method_property="square-root",
    ),
    Property(
        "non-symmetric input",
        "on a covariance with a skew part (as round-off leaves in a computed one, made large here) "
        "the output is the power of its symmetric part (A + A^T) / 2",
        "typical",
        _symmetric_part_taken,
        stages=("sqrtm",),
        methods=("mpn-cov",),
    ),
    Property(
        "gradient",
        "the gradient agrees with the reference's vector-Jacobian product",
        "gradient",
        _gradient,
        needs_gradient=True,
    ),
    Property(
        "forward exactness",
        "on the realistic covariances, in float64, the output is within the approximation budget "
        "of the reference",
        None,
        _in_float64(_forward),
        stages=tuple(APPROXIMATION_BUDGET),
        method_property="convergence",
    ),
    Property(
        "backward exactness",
        "on the realistic covariances, in float64, the gradient is within the approximation "
        "budget of the reference (an exact forward cannot hide an inexact backward)",
        None,
        _in_float64(_gradient),
        stages=tuple(APPROXIMATION_BUDGET),
        needs_gradient=True,
        method_property="convergence",
    ),
    Property(
        "degenerate inputs",
        "finite outputs and gradients on rank-deficient covariances, dead channels and repeated "
        "eigenvalues",
        "degenerate",
        _degenerate,
        realistic=False,
    ),
)


@dataclasses.dataclass
class PropertyResult:
    """One property's verdict: `status` PASS, FAIL, SKIP or N/A (not a property of the method
    checked; `diagnosis` says why); for a FAIL, the `diagnosis` (likely cause and fix), the
    `counterexample` in words and its shape (framework layout), and the measured `error` against
    its `tolerance`; for a PASS, the worst error met and its tolerance. `examples` inputs were
    tried in `seconds`; `stopped_early` says why the search ended before max_examples; `notes` are
    what passed but deserves a word (a harmless dtype promotion)."""

    name: str
    status: str
    checks: str  # what holds for a correct stage, in words
    diagnosis: str | None = None
    counterexample: str | None = None
    counterexample_shape: tuple | None = None
    error: float | None = None
    tolerance: float | None = None
    examples: int = 0
    seconds: float = 0.0
    stopped_early: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CheckReport:
    """What `ibp-check STAGE` found: the `stage` of the `method` (with the `parameters` the stage
    takes, defaults included), the `framework` and `dtype` checked, the search's
    `size` (largest channel count drawn; the channels of a layer located in a model where
    `channels` is set) and `max_examples`, `notes` on harmless conventions the function follows,
    one PropertyResult per property in `results`, and the run's `seconds`. `passed` is True when
    no property failed. `target_output` is what the function printed (shown apart from the
    report), `framework_log` TensorFlow's own log lines (shown only where the user set
    TF_CPP_MIN_LOG_LEVEL)."""

    stage: str
    framework: str
    dtype: str
    size: int
    max_examples: int
    notes: list
    results: list
    seconds: float = 0.0
    target_output: str = ""
    framework_log: str = ""
    channels: int | None = None
    method: str = "ibp"
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(result.status != "FAIL" for result in self.results)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _first_call(
    subject: Subject, sizes: Sizes, batch: int
) -> tuple[np.ndarray, np.ndarray | None, PropertyViolation | None]:
    x = subject.spec.drawn.first(np.random.default_rng(0), batch, sizes)
    try:
        out, _ = properties.run(subject.backend, subject.spec, subject.fn, x, subject.dtype)
    except PropertyViolation as violation:
        violation.counterexample = x
        return x, None, violation
    return x, out, None


def _working_batch(
    subject: Subject, sizes: Sizes, failure: PropertyViolation
) -> tuple[int | None, np.ndarray | None, np.ndarray | None]:
    """A batch size the function works at, tried from the numbers its error names."""
    named = [n for n in explain.numbers_in(failure.diagnosis) if 1 <= n <= 256]
    for batch in dict.fromkeys([*named, *_COMMON_BATCH_SIZES]):
        if batch == FIRST_BATCH:
            continue
        x, out, violation = _first_call(subject, sizes, batch)
        if violation is None:
            return batch, x, out
    return None, None, None


def _output_or_none(subject: Subject, x: np.ndarray) -> np.ndarray | None:
    try:
        return properties.run(subject.backend, subject.spec, subject.fn, x, subject.dtype)[0]
    except PropertyViolation:
        return None


def _adopt_convention(
    subject: Subject, x: np.ndarray, out: np.ndarray, notes: list[str]
) -> Subject:
    """The subject compared up to the convention its first output follows, if it needs one."""
    spec = subject.spec
    allowed = properties.stage_tolerance(spec, "forward", subject.dtype, x)
    _, _, violation = properties.compare_forward(subject.backend, spec, x, out, subject.dtype)
    # A wrong structure (eps * ones) is a bug, which no convention may explain away.
    if violation is None or violation.structural:
        return subject
    convention = _fit_in_float64(subject, x) or harmless_conventions.fit(
        spec.name, x, out, allowed, partial(_output_or_none, subject), spec.method
    )
    if convention is None:
        return subject
    notes.append(convention.note)
    adjusted = {
        field: getattr(convention, field)
        for field in ("conditioned_matrix", "amplification")
        if getattr(convention, field) is not None
    }
    spec = dataclasses.replace(
        spec, forward=convention.forward, vjp=convention.vjp, convention=convention.note, **adjusted
    )
    return dataclasses.replace(subject, spec=spec)


def _fit_in_float64(subject: Subject, x: np.ndarray) -> harmless_conventions.Convention | None:
    """The convention fitted to the function's float64 output, or None. In float32 conventions
    that differ by a scale before L2 (a sum for a mean with another eps) give the same output
    to round-off, but not the same gradient; in float64 only the right one fits."""
    precise = dataclasses.replace(subject, dtype="float64")
    out = _output_or_none(precise, x)
    if out is None:
        return None
    allowed = properties.stage_tolerance(subject.spec, "forward", "float64", x)
    return harmless_conventions.fit(
        subject.spec.name, x, out, allowed, partial(_output_or_none, precise), subject.spec.method
    )


def _counterexample_fields(subject: Subject, x: np.ndarray) -> tuple[str, tuple[int, ...]]:
    spec = subject.spec
    shape = native_shape(subject.backend.layout, spec.input_kind == FEATURE_MAP, x.shape)
    return describe(spec.name, subject.backend.layout, x), shape


class _OutOfTime(BaseException):
    """Ends a hypothesis search whose time budget is spent (hypothesis retries Exceptions)."""


class _Stopped(BaseException):
    """Ends a hypothesis search when the target stopped: there is nothing left to call."""


def _causes_named(violation: PropertyViolation) -> int:
    """How many causes a diagnosis names (they are joined by "; also ")."""
    if explain.CAUSE_UNKNOWN in violation.diagnosis:
        return 0
    return 1 + violation.diagnosis.count("; also ")


def _search(
    prop: Property,
    subject: Subject,
    strategy: st.SearchStrategy[np.ndarray] | None,
    cases: Sequence[np.ndarray],
    profile: hypothesis.settings,
    seconds: float,
) -> PropertyResult:
    """PropertyResult of the fixed realistic `cases`, then of a hypothesis search on `strategy`.

    A realistic case that fails is reported as it is: at C = 64 every cause is told apart, where a
    shrunk input may no longer tell them apart; for the same reason the first failing input of the
    search is reported instead of the shrunk one where only it names exactly one cause.
    In the search, past `seconds` new inputs count as passing, so shrinking keeps the smallest
    failure found so far; without a failure the search ends there. Raises TargetStopped when the
    target ended or hung.
    """
    measured: list[Measurement | None] = []
    failures: dict[tuple[tuple[int, ...], bytes], PropertyViolation] = {}
    first: list[PropertyViolation] = []
    stopped: list[TargetStopped] = []
    started = time.perf_counter()
    result = PropertyResult(prop.name, "PASS", prop.checks)
    for x in cases:
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                measured.append(prop.check(subject, x))
        except PropertyViolation as violation:
            violation.counterexample = x
            if isinstance(violation, TargetStopped):
                raise
            return _finished(_failed(prop, subject, violation), len(measured) + 1, started)

    @hypothesis.settings(profile)
    @given(x=strategy if strategy is not None else st.nothing())  # not run without one
    def trial(x: np.ndarray) -> None:
        key = (x.shape, x.tobytes())
        if key in failures:
            raise failures[key]
        if time.perf_counter() - started > seconds:
            if failures:
                return
            raise _OutOfTime
        try:
            # A convention without regulariser has an infinite reference slope at zero: no warning.
            with np.errstate(divide="ignore", invalid="ignore"):
                measurement = prop.check(subject, x)
        except TargetStopped as stop:
            stop.counterexample = x
            stopped.append(stop)
            raise _Stopped from None
        except PropertyViolation as violation:
            violation.counterexample = x
            failures[key] = violation
            first.append(violation)
            raise
        measured.append(measurement)

    if strategy is not None:
        try:
            trial()
        except PropertyViolation as violation:
            if _causes_named(violation) != 1 and _causes_named(first[0]) == 1:
                violation = first[0]  # the shrunk input no longer tells the causes apart
            result = _failed(prop, subject, violation)
        except _OutOfTime:
            result.stopped_early = f"the {seconds:.0f} s budget of the property ran out"
        except _Stopped:
            raise stopped[0] from None
    result = _finished(result, len(measured) + len(failures), started)
    if result.status == "PASS":
        result.notes = list(dict.fromkeys(m.note for m in measured if m is not None and m.note))
        worst = max(
            (m for m in measured if m is not None and m.allowed),
            key=lambda m: m.error / m.allowed if m.allowed else 0.0,
            default=None,
        )
        if worst is not None:
            result.error, result.tolerance = float(worst.error), float(worst.allowed)
    return result


def _finished(result: PropertyResult, examples: int, started: float) -> PropertyResult:
    result.examples = examples
    result.seconds = time.perf_counter() - started
    return result


def _failed(prop: Property, subject: Subject, violation: PropertyViolation) -> PropertyResult:
    described = shape = None
    if violation.counterexample is not None:
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


def _batches(fixed_batch: int | None, least: int) -> st.SearchStrategy[int] | None:
    """Batch sizes a property draws: any from `least`, or the one the function works at."""
    if fixed_batch is None:
        return batch_sizes.filter(lambda b: b >= least)
    return st.just(fixed_batch) if fixed_batch >= least else None


def _first_calls(
    subject: Subject, sizes: Sizes
) -> tuple[Subject, list[str], int | None, dict[str, PropertyResult]]:
    """(subject, notes, the batch size the function is fixed to or None, results found already)."""
    notes: list[str] = []
    results: dict[str, PropertyResult] = {}
    fixed_batch = None
    x, out, failure = _first_call(subject, sizes, FIRST_BATCH)
    if isinstance(failure, TargetStopped):
        raise failure
    if failure is not None:
        fixed_batch, working_input, out = _working_batch(subject, sizes, failure)
        x = x if working_input is None else working_input
        if fixed_batch is not None:
            cause = explain.hard_coded_batch(fixed_batch, FIRST_BATCH)
            diagnosis = f"fails on a batch of {FIRST_BATCH}: {failure.diagnosis}"
            hard_coded = PropertyViolation(
                diagnosis if cause in diagnosis else f"{diagnosis}; {cause}"
            )
            hard_coded.counterexample = failure.counterexample
            results["batch sizes"] = _failed(_property("batch sizes"), subject, hard_coded)
    if out is not None:
        subject = _adopt_convention(subject, x, out, notes)
    return subject, notes, fixed_batch, results


def _not_checked(prop: Property, why: str) -> PropertyResult:
    return PropertyResult(prop.name, "FAIL", prop.checks, diagnosis=f"not checked: {why}")


def _run_property(
    prop: Property,
    subject: Subject,
    fixed_batch: int | None,
    sizes: Sizes,
    profile: hypothesis.settings,
    seconds: float,
) -> PropertyResult:
    batches = _batches(fixed_batch, prop.least_batch)
    if prop.needs_gradient and subject.forward_only:
        return PropertyResult(prop.name, "SKIP", prop.checks, "--forward-only")
    if batches is None:
        skipped = f"needs a batch of {prop.least_batch}; the function works at {fixed_batch}"
        return PropertyResult(prop.name, "SKIP", prop.checks, skipped)
    inputs = subject.spec.drawn
    strategy = None if prop.inputs is None else getattr(inputs, prop.inputs)(sizes, batches)
    batch = fixed_batch or FIRST_BATCH
    realistic = inputs.realistic if prop.realistic else None
    cases = [] if realistic is None else realistic(np.random.default_rng(1), batch, sizes)
    return _search(prop, subject, strategy, cases, profile, seconds)


def check(
    stage: str,
    target: str,
    settings: StageSettings,
    *,
    sandbox: Sandbox | None = None,
    seconds_per_property: float = DEFAULT_SECONDS_PER_PROPERTY,
    fixed: Sizes | None = None,
) -> CheckReport:
    """Every property of `stage` of `settings.method` on the function `target` names
    ('file.py:function' or 'package.module:function', one tensor in, one tensor out), run in
    `sandbox` (a fresh one when None). `fixed` holds the sizes of a layer located in a model, which
    its inputs keep. Raises UsageError for an unknown stage or one the method has not, and
    sandbox.TargetUnusable (a UsageError) when the target cannot be imported."""
    try:
        stage = stage_name(stage)
    except UsageError as error:
        raise UsageError(f"stage {error}") from None
    check_stage_of(settings.method, stage)
    with warnings.catch_warnings():
        # The reference meets singular matrices on purpose (dead channels, eps * ones): its
        # SciPy warnings say nothing the report does not.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        if sandbox is None:
            with Sandbox(settings.call_timeout) as own:
                return _check(stage, target, settings, own, seconds_per_property, fixed)
        return _check(stage, target, settings, sandbox, seconds_per_property, fixed)


def _check(
    stage: str,
    target: str,
    settings: StageSettings,
    sandbox: Sandbox,
    seconds_per_property: float,
    fixed: Sizes | None,
) -> CheckReport:
    started = time.perf_counter()
    captured_before = len(sandbox.captured())
    framework = sandbox.load(target, settings.framework)
    sandbox.call_timeout = settings.call_timeout
    spec = dataclasses.replace(
        stage_spec(settings.method, stage, settings.parameters()),
        # The other methods' references are the method itself (iSQRT-COV's N iterations): their
        # tolerance is round-off alone.
        approximate=settings.method == "ibp" and stage in APPROXIMATION_BUDGET,
        symmetric_gradient=stage == "sqrtm",
        tolerance_override=settings.tolerance,
    )
    subject = Subject(
        get_backend(framework),
        spec,
        sandbox,
        settings.dtype,
        settings.forward_only,
        settings.strict_dtypes,
    )
    sizes = fixed if fixed is not None else Sizes(settings.size)
    profile = settings_of_search(settings.max_examples)
    chosen = [
        prop
        for prop in PROPERTIES
        if stage in prop.stages and (prop.methods is None or settings.method in prop.methods)
    ]
    notes: list[str] = []
    results = _not_applicable(chosen, settings.method, stage)
    stop = None
    try:
        subject, notes, fixed_batch, found = _first_calls(subject, sizes)
        results.update(found)
    except TargetStopped as stopped:
        stop, stopped_in = stopped, f"see {chosen[0].name}"
        results[chosen[0].name] = _failed(chosen[0], subject, stopped)
    for prop in chosen:
        if prop.name in results:
            continue
        remaining = settings.time_limit - (time.perf_counter() - started)
        if stop is not None:
            results[prop.name] = _not_checked(prop, f"the function stopped ({stopped_in})")
        elif remaining <= 0:
            results[prop.name] = _not_checked(
                prop, f"the run's time limit ({settings.time_limit:g} s) ran out"
            )
        else:
            seconds = min(seconds_per_property, remaining)
            try:
                results[prop.name] = _run_property(
                    prop, subject, fixed_batch, sizes, profile, seconds
                )
            except TargetStopped as stopped:
                stop, stopped_in = stopped, f"see {prop.name}"
                results[prop.name] = _failed(prop, subject, stopped)
    ordered = [results[p.name] for p in chosen]
    log, printed = framework_logs.split(sandbox.captured()[captured_before:])
    return CheckReport(
        stage,
        framework,
        settings.dtype,
        settings.size,
        settings.max_examples,
        notes,
        ordered,
        time.perf_counter() - started,
        target_output=printed,
        framework_log=log,
        channels=sizes.channels,
        method=settings.method,
        parameters=_stage_parameters(settings, stage),
    )


def _stage_parameters(settings: StageSettings, stage: str) -> dict[str, Any]:
    """The values of the method parameters that the stage takes (defaults included)."""
    values = resolved(settings.method, settings.parameters())
    return {name: values[name] for name in method_record(settings.method).stage(stage).parameters}


def _not_applicable(chosen: list[Property], method: str, stage: str) -> dict[str, PropertyResult]:
    """N/A results of the chosen properties that `method` lists as not applicable to `stage`,
    with its reason."""
    reasons = {
        entry.property: entry.reason for entry in method_record(method).not_applicable_to(stage)
    }
    return {
        prop.name: PropertyResult(
            prop.name, "N/A", prop.checks, diagnosis=reasons[prop.method_property]
        )
        for prop in chosen
        if prop.method_property in reasons
    }


def settings_of_search(max_examples: int) -> hypothesis.settings:
    """Hypothesis's settings for a check: derandomised, nothing written."""
    return hypothesis.settings(register_check_profile(), max_examples=max_examples)


def _property(name: str) -> Property:
    return next(p for p in PROPERTIES if p.name == name)
