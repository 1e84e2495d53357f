"""Properties of a correct IBP stage, each a function that raises PropertyViolation with a
diagnosis. The test suite runs them on our implementations (they must hold) and on deliberately
buggy layers (they must fail); `ibp-check` runs them on a user's function.
"""

import numpy as np

from impls.testing.stage_specs import FEATURE_MAP
from impls.testing.tolerances import condition_number, per_sample_norms, relative_error, tolerance


class PropertyViolation(AssertionError):
    """A property of a correct stage that the function under test breaks."""


def to_native(backend, spec, x, dtype):
    if spec.input_kind == FEATURE_MAP:
        return backend.feature_map(x, dtype)
    return backend.tensor(x, dtype)


def run(backend, spec, fn, x, dtype, cotangent=None):
    """fn on x (NumPy, reference layout) -> (output, gradient of <cotangent, output> or None)."""
    native = to_native(backend, spec, x, dtype)
    if cotangent is None:
        return backend.numpy(fn(native)), None
    out, (grad,) = backend.value_and_vjp(fn, [native], cotangent)
    if grad is not None and spec.input_kind == FEATURE_MAP:
        grad = grad.transpose(0, 3, 1, 2) if backend.layout == "channels_last" else grad
    return out, grad


def stage_tolerance(spec, direction, dtype, x):
    matrix = spec.conditioned_matrix(x)
    condition = 1.0 if matrix is None else condition_number(matrix)
    return tolerance(spec.name, direction, dtype, spec.channels(x), condition, spec.amplification(x, direction))


def _cotangent(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def check_reference_agreement(backend, spec, fn, x, dtype, gradient=True):
    """Forward (and backward) within the tolerance table of the float64 reference."""
    expected = spec.forward(x)
    g = _cotangent(expected.shape) if gradient else None
    out, grad = run(backend, spec, fn, x, dtype, g)
    if out.shape != expected.shape:
        raise PropertyViolation(f"output shape {out.shape}, reference {expected.shape}")
    error, allowed = relative_error(out, expected), stage_tolerance(spec, "forward", dtype, x)
    if not error <= allowed:
        raise PropertyViolation(
            f"forward differs from the reference: relative error {error:.3g} > {allowed:.3g}"
        )
    if gradient:
        if grad is None:
            raise PropertyViolation("no gradient reaches the input")
        # A gradient can vanish where the Jacobian does not (L2 of one entry): measure it against
        # ||g|| ||f(x)|| / ||x||, the Jacobian's scale for the homogeneous maps the stages are.
        input_norms = per_sample_norms(x)
        typical = np.divide(
            per_sample_norms(g) * per_sample_norms(expected),
            input_norms,
            out=np.zeros_like(input_norms),
            where=input_norms > 0,
        )
        error = relative_error(grad, spec.vjp(x, g), floor=typical)
        allowed = stage_tolerance(spec, "backward", dtype, x)
        if not error <= allowed:
            raise PropertyViolation(
                f"gradient differs from the reference VJP: relative error {error:.3g} > {allowed:.3g}"
            )
    return error


def check_per_sample_independence(backend, spec, fn, x, dtype):
    """Changing sample j leaves the output for every other sample unchanged."""
    if len(x) < 2:
        return
    before, _ = run(backend, spec, fn, x, dtype)
    changed = x.copy()
    changed[-1] = 2.0 * x[-1] + x[0]
    after, _ = run(backend, spec, fn, changed, dtype)
    allowed = stage_tolerance(spec, "forward", dtype, x)
    for i in range(len(x) - 1):
        error = relative_error(after[i : i + 1], before[i : i + 1])
        if not error <= allowed:
            raise PropertyViolation(
                f"output for sample {i} changes when sample {len(x) - 1} changes (relative change "
                f"{error:.3g}): the stage mixes samples across the batch"
            )


def check_batch_consistency(backend, spec, fn, x, dtype):
    """Each sample alone (batch size 1) and every prefix of the batch give the same outputs."""
    full, _ = run(backend, spec, fn, x, dtype)
    allowed = stage_tolerance(spec, "forward", dtype, x)
    for size in sorted({1, max(1, len(x) - 1), len(x)}):
        try:
            part, _ = run(backend, spec, fn, x[:size], dtype)
        except Exception as error:  # a hard-coded batch size fails in many ways
            raise PropertyViolation(
                f"fails on batch size {size} after working on {len(x)}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if part.shape[0] != size:
            raise PropertyViolation(f"batch of {size} gave {part.shape[0]} outputs")
        error = relative_error(part, full[:size])
        if not error <= allowed:
            raise PropertyViolation(
                f"outputs for a batch of {size} differ from the same samples in a batch of "
                f"{len(x)} (relative error {error:.3g})"
            )


def check_finite(backend, spec, fn, x, dtype):
    """Outputs and gradients are finite (rank-deficient input, dead channels, repeated roots)."""
    out, grad = run(backend, spec, fn, x, dtype, _cotangent(spec.forward(x).shape))
    if not np.all(np.isfinite(out)):
        raise PropertyViolation("non-finite output")
    if grad is None or not np.all(np.isfinite(grad)):
        raise PropertyViolation("missing or non-finite gradient")


def check_square_root(backend, fn, a, dtype, spec):
    """Z @ Z = A, Z symmetric, on SPD input."""
    z, _ = run(backend, spec, fn, a, dtype)
    allowed = stage_tolerance(spec, "forward", dtype, a)
    asymmetry = relative_error(z, np.swapaxes(z, 1, 2))
    if not asymmetry <= allowed:
        raise PropertyViolation(f"Z is not symmetric (relative asymmetry {asymmetry:.3g})")
    # ||Z Z - A|| <= 2 ||Z|| ||dZ|| and ||Z||^2 = tr(A) <= sqrt(C) ||A||: the root's tolerance
    # carried to the units of A.
    error = relative_error(z @ z, a)
    if not error <= 2 * np.sqrt(a.shape[-1]) * allowed:
        fourth = relative_error(z @ z @ z @ z, a)
        hint = ": the square root is applied twice (A^(1/4))" if fourth < error / 10 else ""
        raise PropertyViolation(f"Z @ Z differs from A (relative error {error:.3g}){hint}")
