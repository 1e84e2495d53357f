"""Properties of a correct IBP stage, each a function that raises PropertyViolation with a
diagnosis. The test suite runs them on our implementations (they must hold) and on deliberately
buggy layers (they must fail); `ibp-check` runs them on a user's function.

Inputs are NumPy arrays in the reference layout (feature maps channels-first); `run` hands each
function its framework's tensor and layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from impls.testing.diagnosis import explain
from impls.testing.diagnosis.deviations import FOURTH_ROOT
from impls.testing.stage_specs import FEATURE_MAP, StageSpec
from impls.testing.tolerances import (
    APPROXIMATION_BUDGET,
    UNIT_ROUNDOFF,
    condition_number,
    jacobian_scale,
    relative_error,
    tolerance,
)

if TYPE_CHECKING:
    from impls.backends import Backend


class PropertyViolation(AssertionError):
    """A property of a correct stage that the function under test breaks.

    `diagnosis` (likely cause and fix) may be given as a callable: it is worked out once, when
    read, so a search that meets many failing inputs pays for the words of the reported one only.
    """

    def __init__(
        self,
        diagnosis: str | Callable[[], str],
        error: float | None = None,
        allowed: float | None = None,
    ) -> None:
        super().__init__()
        self._diagnosis = diagnosis
        self.error, self.allowed = error, allowed
        self.counterexample: np.ndarray | None = None  # set by the search that found it
        self.structural = False  # a wrong structure (eps * ones), not a wrong number

    @functools.cached_property
    def diagnosis(self) -> str:
        if not callable(self._diagnosis):
            return self._diagnosis
        with np.errstate(all="ignore"):  # diagnoses probe NaN and inf on purpose
            return self._diagnosis()

    def __str__(self) -> str:
        return self.diagnosis


class Measurement(NamedTuple):
    """How far a passing example was from failing: error against its tolerance; and what the
    report should note about it (a harmless dtype promotion), if anything."""

    error: float
    allowed: float
    note: str | None = None


def to_native(backend: Backend, spec: StageSpec, x: np.ndarray, dtype: str) -> Any:
    if spec.input_kind == FEATURE_MAP:
        return backend.feature_map(x, dtype)
    return backend.tensor(x, dtype)


class DtypeViolation(PropertyViolation):
    """The output's dtype (`returned`) is not the input's (`given`)."""

    def __init__(self, given: str, returned: str) -> None:
        super().__init__(
            f"returns {returned} for {given} input: the output dtype must be the input's (a "
            f"constant or intermediate built in {returned}, or a cast, promotes it); build "
            "them with the input's dtype"
        )
        self.given, self.returned = given, returned

    @property
    def half_to_single(self) -> bool:
        """Half precision promoted to float32: what a float32 constant (eps * eye(C)) does to a
        float16 input; harmless in float32 and under autocast, unlike float32 -> float64."""
        return self.given in HALF_PRECISION and self.returned == "float32"


HALF_PRECISION = ("float16", "bfloat16")


def _checked(
    backend: Backend, spec: StageSpec, fn: Callable[..., Any], x: np.ndarray, dtype: str
) -> Callable[[Any], Any]:
    """fn with its output checked against the shape and dtype contract, as a tensor of (B, C*C)
    for a head."""

    def call(tensor: Any) -> Any:
        out = fn(tensor)
        if isinstance(out, np.ndarray) or not hasattr(out, "shape"):
            raise PropertyViolation(
                f"returns a {type(out).__name__}, not a {backend.name} tensor: the computation "
                "leaves the framework, so no gradient can flow through it"
            )
        shape = tuple(int(d) for d in out.shape)
        if not spec.accepts_output_shape(shape, x.shape):
            raise PropertyViolation(
                functools.partial(explain.explain_shape, spec, backend.layout, x.shape, shape)
            )
        returned = backend.dtype_name(out)
        if returned != dtype:
            raise DtypeViolation(dtype, returned)
        if spec.flat_output:
            out = backend.fw.reshape(out, spec.output_shape(x.shape))
        return out

    return call


@runtime_checkable
class Remote(Protocol):
    """A function that runs elsewhere (`impls.testing.sandbox.Sandbox`): it takes the arrays."""

    def run_stage(
        self, method: str, stage: str, x: np.ndarray, dtype: str, cotangent: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


#: What a property runs: a framework function of one tensor, or one run elsewhere.
StageFunction = Callable[..., Any] | Remote


def run(
    backend: Backend,
    spec: StageSpec,
    fn: StageFunction,
    x: np.ndarray,
    dtype: str,
    cotangent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """fn on x (NumPy, reference layout) -> (output, gradient of <cotangent, output> or None)."""
    if isinstance(fn, Remote):
        return fn.run_stage(spec.method, spec.name, x, dtype, cotangent)
    return call_here(backend, spec, fn, x, dtype, cotangent)


def call_here(
    backend: Backend,
    spec: StageSpec,
    fn: Callable[..., Any],
    x: np.ndarray,
    dtype: str,
    cotangent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`run` in this process. The function must leave its input as it was: a layer that writes
    into its input corrupts the activations the rest of the network saved."""
    native = to_native(backend, spec, x, dtype)
    before = backend.numpy(native).copy()
    call = _checked(backend, spec, fn, x, dtype)
    try:
        if cotangent is None:
            out, grad = backend.numpy(call(native)), None
        else:
            out, (grad,) = backend.value_and_vjp(call, [native], cotangent)
    except PropertyViolation:
        raise
    except Exception as error:
        raise PropertyViolation(
            functools.partial(explain.explain_exception, error, dtype, spec)
        ) from error
    if not np.array_equal(backend.numpy(native), before, equal_nan=True):
        raise PropertyViolation(
            "the function changed its input tensor in place (+=, .add_(), out=, a slice "
            "assignment): the layer below saved that tensor for its own backward; compute on a "
            "copy or out of place"
        )
    if grad is not None and spec.input_kind == FEATURE_MAP:
        grad = grad.transpose(0, 3, 1, 2) if backend.layout == "channels_last" else grad
    return out, grad


def stage_tolerance(spec: StageSpec, direction: str, dtype: str, x: np.ndarray) -> float:
    if spec.tolerance_override is not None:
        return spec.tolerance_override
    matrix = spec.conditioned_matrix(x)
    condition = 1.0 if matrix is None else condition_number(matrix)
    allowed = tolerance(
        spec.name, direction, dtype, spec.channels(x), condition, spec.amplification(x, direction)
    )
    if spec.approximate:
        allowed = max(allowed, APPROXIMATION_BUDGET[spec.name][direction])
    return allowed


def _cotangent(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _symmetric_part(m: np.ndarray) -> np.ndarray:
    return (m + np.swapaxes(m, -1, -2)) / 2


def check_shape(
    backend: Backend, spec: StageSpec, fn: StageFunction, x: np.ndarray, dtype: str
) -> None:
    """The output has the stage's shape for an input of any shape (checked inside `run`)."""
    run(backend, spec, fn, x, dtype)


def compare_forward(
    backend: Backend, spec: StageSpec, x: np.ndarray, out: np.ndarray, dtype: str
) -> tuple[np.ndarray, Measurement, PropertyViolation | None]:
    """(reference output, Measurement, PropertyViolation or None) for the output of one call."""
    expected = spec.forward(x)
    error, allowed = relative_error(out, expected), stage_tolerance(spec, "forward", dtype, x)
    measured = Measurement(error, allowed)
    leak = explain.dead_row_leak(spec, x, out, UNIT_ROUNDOFF[dtype])
    if error <= allowed and not leak:
        return expected, measured, None
    diagnosis = functools.partial(
        explain.explain_forward, spec, backend.layout, x, out, expected, error, allowed, leak
    )
    violation = PropertyViolation(diagnosis, error, allowed)
    violation.structural = bool(leak)
    return expected, measured, violation


def check_forward(
    backend: Backend, spec: StageSpec, fn: StageFunction, x: np.ndarray, dtype: str
) -> Measurement:
    """Forward within the tolerance table of the float64 reference."""
    out, _ = run(backend, spec, fn, x, dtype)
    _, measured, violation = compare_forward(backend, spec, x, out, dtype)
    if violation:
        raise violation
    return measured


def check_gradient(
    backend: Backend,
    spec: StageSpec,
    fn: StageFunction,
    x: np.ndarray,
    dtype: str,
    include_forward: bool = False,
) -> Measurement:
    """Gradient within the tolerance table of the reference VJP (and, with include_forward, the
    forward of the same call)."""
    g = _cotangent(spec.output_shape(x.shape))
    out, grad = run(backend, spec, fn, x, dtype, g)
    expected_out, _, forward_violation = compare_forward(backend, spec, x, out, dtype)
    if forward_violation and include_forward:
        raise forward_violation
    if grad is None:
        raise PropertyViolation(explain.NO_GRADIENT)
    if spec.symmetric_gradient:
        grad = _symmetric_part(grad)
    expected = spec.vjp(x, g)
    typical = jacobian_scale(x, g, expected_out)
    error = relative_error(grad, expected, floor=typical)
    allowed = stage_tolerance(spec, "backward", dtype, x)
    if error <= allowed:
        return Measurement(error, allowed)
    if spec.name == "signed-sqrt" and _regularised_at_zeros(x, g, expected):
        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) differentiated by autodiff: sign and |z| have
        # slope 0 at z = 0, so exact zeros get gradient 0 instead of 1 / (2 sqrt(delta)).
        zeroed = np.where(x == 0, 0.0, expected)
        at_zeros = relative_error(grad, zeroed, floor=typical)
        if at_zeros <= allowed:
            return Measurement(at_zeros, allowed, explain.ZERO_SLOPE_AT_ZERO)
    if forward_violation:
        raise PropertyViolation(
            f"gradient differs from the reference VJP (relative error {error:.3g} > "
            f"{allowed:.3g}), but the forward already differs on this input (relative error "
            f"{forward_violation.error:.3g}): fix the forward first (see the forward property)",
            error,
            allowed,
        )
    diagnosis = functools.partial(
        explain.explain_gradient,
        spec,
        backend.layout,
        x,
        g,
        grad,
        expected,
        typical,
        error,
        allowed,
    )
    raise PropertyViolation(diagnosis, error, allowed)


#: The least regulariser delta a signed square root's slope at zero, 1 / (2 sqrt(delta)), may
#: imply for that slope to count as finite: the reference holds a missing one at float64's
#: round-off (2e-16), where the true slope is infinite.
LEAST_DELTA = 1e-15


def _regularised_at_zeros(x: np.ndarray, g: np.ndarray, expected: np.ndarray) -> bool:
    """Whether x has exact zeros where the reference's slope is that of a regulariser."""
    zeros = (x == 0) & (g != 0)
    if not np.any(zeros):
        return False
    slopes = np.abs(expected[zeros] / g[zeros])
    return bool(np.all(1 / (4 * slopes**2) > LEAST_DELTA))


def check_reference_agreement(
    backend: Backend,
    spec: StageSpec,
    fn: StageFunction,
    x: np.ndarray,
    dtype: str,
    gradient: bool = True,
) -> Measurement:
    """Forward (and backward) within the tolerance table of the float64 reference."""
    if gradient:
        return check_gradient(backend, spec, fn, x, dtype, include_forward=True)
    return check_forward(backend, spec, fn, x, dtype)


def check_per_sample_independence(
    backend: Backend, spec: StageSpec, fn: StageFunction, x: np.ndarray, dtype: str
) -> Measurement | None:
    """Changing sample j leaves the output for every other sample unchanged."""
    if len(x) < 2:
        return None
    before, _ = run(backend, spec, fn, x, dtype)
    changed = x.copy()
    changed[-1] = 2.0 * x[-1] + x[0]
    after, _ = run(backend, spec, fn, changed, dtype)
    _require_finite(backend, spec, x if not np.all(np.isfinite(before)) else changed, before, after)
    allowed = stage_tolerance(spec, "forward", dtype, x)
    largest = 0.0
    for i in range(len(x) - 1):
        error = relative_error(after[i : i + 1], before[i : i + 1])
        if not error <= allowed:
            raise PropertyViolation(
                explain.explain_mixing(spec, i, len(x) - 1, error, allowed), error, allowed
            )
        largest = max(largest, error)
    return Measurement(largest, allowed)


def _require_finite(backend: Backend, spec: StageSpec, x: np.ndarray, *outputs: np.ndarray) -> None:
    """A comparison of outputs means nothing where one is NaN or inf: that is named as such."""
    if not all(np.all(np.isfinite(out)) for out in outputs):
        raise PropertyViolation(
            functools.partial(explain.explain_non_finite, spec, backend.layout, x, "output")
        )


def check_batch_consistency(
    backend: Backend, spec: StageSpec, fn: StageFunction, x: np.ndarray, dtype: str
) -> Measurement:
    """Each sample alone (batch size 1) and every prefix of the batch give the same outputs."""
    full, _ = run(backend, spec, fn, x, dtype)
    _require_finite(backend, spec, x, full)
    allowed = stage_tolerance(spec, "forward", dtype, x)
    largest = 0.0
    for size in sorted({1, max(1, len(x) - 1), len(x)}):
        try:
            part, _ = run(backend, spec, fn, x[:size], dtype)
        except PropertyViolation as violation:  # a hard-coded batch size fails in many ways
            hint = ""
            if size != len(x) and len(x) in explain.numbers_in(violation.diagnosis):
                hint = f"; {explain.hard_coded_batch(len(x), size)}"
            raise PropertyViolation(
                f"fails on batch size {size} after working on {len(x)}: {violation.diagnosis}{hint}"
            ) from violation
        _require_finite(backend, spec, x[:size], part)
        error = relative_error(part, full[:size])
        if not error <= allowed:
            raise PropertyViolation(
                f"outputs for a batch of {size} differ from the same samples in a batch of "
                f"{len(x)} (relative error {error:.3g} > {allowed:.3g}): the result depends on the "
                "rest of the batch",
                error,
                allowed,
            )
        largest = max(largest, error)
    return Measurement(largest, allowed)


def check_finite(
    backend: Backend,
    spec: StageSpec,
    fn: StageFunction,
    x: np.ndarray,
    dtype: str,
    gradient: bool = True,
) -> None:
    """Outputs and gradients are finite (rank-deficient input, dead channels, repeated roots)."""
    cotangent = _cotangent(spec.output_shape(x.shape)) if gradient else None
    out, grad = run(backend, spec, fn, x, dtype, cotangent)
    if not np.all(np.isfinite(out)):
        raise PropertyViolation(
            functools.partial(explain.explain_non_finite, spec, backend.layout, x, "output")
        )
    if not gradient:
        return None
    if grad is None:
        raise PropertyViolation(f"missing gradient: {explain.NO_GRADIENT}")
    if not np.all(np.isfinite(grad)):
        raise PropertyViolation(
            functools.partial(explain.explain_non_finite, spec, backend.layout, x, "gradient")
        )
    return None


def check_square_root(
    backend: Backend, fn: StageFunction, a: np.ndarray, dtype: str, spec: StageSpec
) -> Measurement:
    """Z @ Z = A, Z symmetric, on SPD input."""
    z, _ = run(backend, spec, fn, a, dtype)
    allowed = stage_tolerance(spec, "forward", dtype, a)
    asymmetric = explain.asymmetric_root(z, allowed)
    if asymmetric:
        raise PropertyViolation(asymmetric, relative_error(z, np.swapaxes(z, 1, 2)), allowed)
    # ||Z Z - A|| <= 2 ||Z|| ||dZ|| and ||Z||^2 = tr(A) <= sqrt(C) ||A||: the root's tolerance
    # carried to the units of A.
    error, allowed = relative_error(z @ z, a), 2 * np.sqrt(a.shape[-1]) * allowed
    if error <= allowed:
        return Measurement(error, allowed)
    text = f"Z @ Z differs from A (relative error {error:.3g} > {allowed:.3g})"
    if relative_error(z @ z @ z @ z, a) < error / 10:
        raise PropertyViolation(f"{text}: {FOURTH_ROOT}", error, allowed)
    causes = explain.root_causes(a, z, allowed)
    raise PropertyViolation(
        text + (": " + "; also ".join(causes) if causes else ""), error, allowed
    )


#: The skew part `check_symmetric_part` adds, relative to ||A|| / C per entry: large enough that
#: the power of the singular values (U S^alpha V^T) is far from that of the symmetric part.
SKEW_SIZE = 0.3


def with_skew_part(a: np.ndarray) -> np.ndarray:
    """a plus a seeded skew-symmetric part of SKEW_SIZE ||a|| / C per entry; its symmetric part
    is a."""
    r = np.random.default_rng(0).standard_normal(a.shape)
    scale = np.linalg.norm(a, axis=(1, 2))[:, None, None] / a.shape[-1]
    return a + SKEW_SIZE * scale * (r - np.swapaxes(r, 1, 2))


def check_symmetric_part(
    backend: Backend, spec: StageSpec, fn: StageFunction, a: np.ndarray, dtype: str
) -> Measurement:
    """On a plus a skew part, the output is the reference's, which takes the symmetric part."""
    skewed = with_skew_part(a)
    out, _ = run(backend, spec, fn, skewed, dtype)
    expected = spec.forward(skewed)
    error, allowed = relative_error(out, expected), stage_tolerance(spec, "forward", dtype, skewed)
    if error <= allowed:
        return Measurement(error, allowed)
    diagnosis = functools.partial(
        explain.explain_skewed, spec, backend.layout, skewed, out, expected, error, allowed
    )
    raise PropertyViolation(diagnosis, error, allowed)
