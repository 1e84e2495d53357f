"""The likely cause of a failed property and its fix, in plain words. Each function gets what the
property measured and returns the sentence a user reads."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from impls.testing.diagnosis import deviations, method_deviations
from impls.testing.diagnosis.input_facts import degeneracy, describe, native_shape
from impls.testing.tolerances import relative_error

if TYPE_CHECKING:
    from impls.testing.stage_specs import StageSpec

AUTODIFF_THROUGH_EIGH = (
    "autodiff through eigh/svd divides by differences of eigenvalues (s_i - s_j), which vanish "
    "when eigenvalues repeat (dead channels, N < C); give the root its own backward, the Lyapunov "
    "solution dA = U [(U^T dZ U)_ij / (s_i + s_j)] U^T (torch.autograd.Function, "
    "tf.custom_gradient)"
)
NO_REGULARISER = (
    "the signed square root has no regulariser: its slope 1 / (2 sqrt|z|) is infinite at z = 0, "
    "where dead channels put exact zeros; use sign(z) * (sqrt(|z| + delta) - sqrt(delta)), "
    "delta = 1e-5"
)
SINGULAR_ROOT = (
    "the root's derivative is infinite at a zero eigenvalue (s_i + s_j = 0 in the Lyapunov "
    "backward): keep eps * I in the pooled matrix, or floor that denominator"
)
ZERO_NORM = "a division by a zero norm: divide by max(||y||, 1e-12)"
ZERO_SLOPE_AT_ZERO = (
    "signed sqrt: autodiff gives sign(z) (sqrt(|z| + delta) - sqrt(delta)) slope 0 at exact zeros "
    "(sign and |z| have slope 0 there), where the true slope is 1 / (2 sqrt(delta)); harmless "
    "where the zeros come from dead ReLU channels, whose gradient the ReLU stops anyway. "
    "z / (sqrt(|z| + delta) + sqrt(delta)), the same function, gets the true slope"
)
NO_GRADIENT = (
    "no gradient reaches the input: the output is cut from the autodiff graph (.detach(), .data, "
    "a NumPy round trip, tf.stop_gradient, tf.py_function without a gradient); if nothing below "
    "this layer ever trains, pass --forward-only"
)
MIXING_HINTS = {
    "pool": "a matmul or sum over the batch axis",
    "sqrtm": "a decomposition or norm taken over the whole batch",
    "signed-sqrt": "a quantity computed over the whole batch",
    "l2": "a norm over the whole batch, e.g. tf.math.l2_normalize(x, axis=None)",
    "head": "a matmul or sum over the batch axis in the pooling, or a norm over the whole batch",
}
#: The family's own hints where IBP's do not fit: (method, stage) -> hint.
METHOD_MIXING_HINTS = {
    ("isqrt-cov", "sqrtm"): "the trace summed over every sample (a sum without an axis)",
    ("isqrt-cov", "head"): "the trace or the mean feature taken over every sample",
    ("mpn-cov", "head"): "the mean feature taken over every sample",
    ("isqrt-cov", "pool"): "the mean feature taken over every sample",
    ("mpn-cov", "pool"): "the mean feature taken over every sample",
}
#: The stages a head computes, per method, for the causes of a non-finite output.
HEAD_STAGES = {
    "ibp": ("pool", "sqrtm", "signed-sqrt", "l2"),
    "bcnn": ("pool", "signed-sqrt", "l2"),
    "mpn-cov": ("pool", "sqrtm"),
    "isqrt-cov": ("pool", "sqrtm"),
}
ZERO_TRACE = (
    "a trace of 0: S / tr S is 0 / 0 where the centred covariance is 0 (a map constant over its "
    "locations, or one location); iSQRT-COV is not defined there, so floor the trace (at the "
    "smallest normal number: the output is then 0)"
)
_NON_FINITE_OUTPUT = {
    "pool": "the pooling produces it from finite input: look for a division by a count that is 0",
    "sqrtm": "the square root of slightly negative eigenvalues (round-off on a nearly singular "
    "matrix): clamp the eigenvalues at 0 before the square root",
    "signed-sqrt": "the square root of negative entries: take sign(z) * sqrt(|z|)",
    "l2": ZERO_NORM,
}
_NUMBER = re.compile(r"\d+")
#: Said where no known mistake's computation reproduces what the function returned: a cause is
#: named only when its candidate matches the output or gradient numerically.
CAUSE_UNKNOWN = "cause unknown"
_UNKNOWN = f": {CAUSE_UNKNOWN} (no known mistake reproduces it; see the measurements)"


#: What Keras and TensorFlow wrap around an error's own message.
_WRAPPER_LINES = ("Exception encountered when calling", "Arguments received by")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TF_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's own message: without the line Keras puts before it
    ("Exception encountered when calling Lambda.call()"), its colour codes, or TensorFlow's
    {{function_node ...}} prefix."""
    lines = [_TF_NODE.sub("", _ANSI.sub("", line)).strip() for line in str(error).splitlines()]
    meaningful = [line for line in lines if line and not line.startswith(_WRAPPER_LINES)]
    text = meaningful[0] if meaningful else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_RANK_WORDS = ("rank", "dimension", "unpack", "dims", "4d", "4-d", "ndim", "shape")


def explain_exception(error: BaseException, dtype: str, spec: StageSpec | None = None) -> str:
    text = f"raised {type(error).__name__}: {first_line(error)}"
    message = str(error).lower()
    if "inplace operation" in message or "in-place operation" in message:
        text += (
            "; a tensor that autodiff saved for the backward was changed in place (+=, .mul_(), "
            "out=, a slice assignment) after use: compute out of place"
        )
    if (
        spec is not None
        and spec.input_kind == "matrix"
        and not isinstance(error, IndexError)  # an index past a hard-coded batch size
        and any(w in message for w in _RANK_WORDS)
    ):
        text += (
            f"; {spec.name} gets matrices (B, C, C): a function that expects a 4-D feature map "
            "is a pooling or a whole head (ibp-check pool, ibp-check head)"
        )
    if ("double" in message or "float64" in message) and (
        "float" in message.replace("float64", "")
    ):
        text += (
            f"; the function mixes dtypes (float32 constants with this {dtype} input?): build "
            "constants with the input's dtype, or pass --dtype with the dtype your network uses"
        )
    return text


def numbers_in(text: str) -> list[int]:
    return [int(n) for n in _NUMBER.findall(text)]


def hard_coded_batch(working: int, failing: int) -> str:
    return (
        f"the layer works on a batch of {working} but not of {failing}: a batch size of "
        f"{working} is hard-coded; take it from the input (x.shape[0] in PyTorch, "
        "tf.shape(x)[0] in TensorFlow)"
    )


def explain_shape(
    spec: StageSpec, layout: str, input_shape: Sequence[int], output_shape: Sequence[int]
) -> str:
    expected = spec.output_shape(tuple(input_shape))
    native = native_shape(layout, len(input_shape) == 4, input_shape)
    text = f"output shape {tuple(output_shape)} for an input of shape {native}; expected {expected}"
    cause = _shape_cause(spec, layout, tuple(input_shape), tuple(output_shape), expected)
    return f"{text}: {cause}" if cause else text


def _shape_cause(
    spec: StageSpec,
    layout: str,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    expected: Sequence[int],
) -> str | None:
    batch = input_shape[0]
    channels = input_shape[1]
    if spec.triu_output and tuple(output_shape) in (
        (batch, channels, channels),
        (batch, channels * channels),
    ):
        return (
            "the whole matrix, not its upper triangle: MPN-COV and iSQRT-COV vectorise the upper "
            f"triangle, diagonal included, C(C+1)/2 = {expected[1]} entries (Triuvec)"
        )
    if output_shape == expected[1:]:
        return (
            "the output has no batch axis: the stage contracts the batch axis (a matmul over the "
            "batch), so every sample gets the same result"
        )
    if len(output_shape) == len(expected) and output_shape[1:] == expected[1:]:
        if output_shape[0] == 1:
            return f"one output for a batch of {batch}: the stage sums over the batch axis"
        return hard_coded_batch(output_shape[0], batch)
    if len(input_shape) != 4 or len(output_shape) != 3:
        return None
    channels, height, width = input_shape[1:]
    side = output_shape[1]
    if output_shape[1:] == (height * width,) * 2:
        return deviations.POOL[1].cause
    if output_shape[1] == output_shape[2] and side in (height, width) and side != channels:
        axes = "(B, C, H, W)" if layout == "channels_first" else "(B, H, W, C)"
        return (
            f"the pooling runs over the wrong axis: an axis of size {side} (not the {channels} "
            f"channels) is taken as the channel axis; feature maps here are {layout} {axes}"
        )
    return None


def explain_mixing(
    spec: StageSpec, sample: int, changed: int, change: float, allowed: float
) -> str:
    hint = METHOD_MIXING_HINTS.get((spec.method, spec.name), MIXING_HINTS[spec.name])
    return (
        f"output for sample {sample} changes when sample {changed} changes (relative change "
        f"{change:.3g} > {allowed:.3g}): the stage mixes samples across the batch ({hint})"
    )


def _non_finite_output(method: str, stage: str) -> str:
    if method == "isqrt-cov" and stage == "sqrtm":
        return ZERO_TRACE
    return _NON_FINITE_OUTPUT[stage]


def explain_non_finite(spec: StageSpec, layout: str, x: np.ndarray, where: str) -> str:
    facts = degeneracy(spec.name, x)
    stages = HEAD_STAGES[spec.method] if spec.name == "head" else (spec.name,)
    if where == "output":
        causes = [_non_finite_output(spec.method, stage) for stage in stages]
    else:
        causes = []
        if "sqrtm" in stages and facts.repeated_eigenvalues:
            causes.append(AUTODIFF_THROUGH_EIGH)
        if "signed-sqrt" in stages and (facts.zero_entries or facts.dead_channels):
            causes.append(NO_REGULARISER)
        if "sqrtm" in stages and (facts.rank_deficient or facts.condition > 1e12):
            causes.append(SINGULAR_ROOT)
        if "l2" in stages and (facts.zero_entries or facts.dead_channels):
            causes.append(ZERO_NORM)
    text = f"non-finite {where} (NaN or inf) on {describe(spec.name, layout, x)}"
    return text + (": likely " + "; or ".join(causes) if causes else "")


def _dead_rows(x: np.ndarray, output: np.ndarray) -> np.ndarray | None:
    """Mask of the off-diagonal entries in the rows of dead channels, or None where the output
    is not a (B, C, C) pooled matrix of x."""
    if x.ndim != 4 or output.ndim != 3 or output.shape[1:] != (x.shape[1],) * 2:
        return None
    dead = np.all(x.reshape(x.shape[0], x.shape[1], -1) == 0, axis=2)
    return dead[:, :, None] & ~np.eye(x.shape[1], dtype=bool)[None]


def dead_row_leak(spec: StageSpec, x: np.ndarray, output: np.ndarray, roundoff: float) -> float:
    """How far the rows of dead channels of a pooled matrix are from zero off the diagonal (0 when
    they are zero). They are exact zeros at any precision, so eps * ones shows there even where it
    is below the round-off of the other entries."""
    mask = _dead_rows(x, output) if spec.name == "pool" else None
    if mask is None:
        return 0.0
    leak = float(np.abs(output[mask]).max(initial=0.0))
    return leak if leak > 1e-3 * roundoff * np.abs(output).max(initial=0.0) else 0.0


def _structure_cause(x: np.ndarray, output: np.ndarray, leak: float) -> str:
    values = output[_dead_rows(x, output)]
    eps_like = np.abs(values).max() <= 1e-2 * np.abs(output).max()
    if eps_like and np.ptp(values) <= 1e-6 * np.abs(values).max():
        return (
            f"eps is added to every entry (eps * ones, here {values[0]:.2g}) instead of the "
            "diagonal (eps * I): the rows of dead channels are not zero off the diagonal, and the "
            "matrix of a rank-deficient map stays singular, so the square root's gradient blows up "
            "there; add eps * eye(C)"
        )
    return (
        f"the rows of dead channels are not zero off the diagonal (up to {leak:.2g}): the pooled "
        "matrix holds more than X X^T / N + eps I"
    )


def explain_forward(
    spec: StageSpec,
    layout: str,
    x: np.ndarray,
    output: np.ndarray,
    expected: np.ndarray,
    error: float,
    allowed: float,
    leak: float = 0.0,
) -> str:
    if error <= allowed:
        text = f"forward agrees with the reference to {error:.3g}, but not in its structure"
    else:
        text = f"forward differs from the reference: relative error {error:.3g} > {allowed:.3g}"
    if not np.all(np.isfinite(output)):
        return f"{text}; {explain_non_finite(spec, layout, x, 'output')}"
    if spec.method == "ibp":
        causes = deviations.matching(spec.name, x, layout, output, expected, allowed)
    else:
        causes = method_deviations.matching(spec, x, layout, output, expected, allowed)
    # IBP's root is the root: an iteration stopped early and the eigenvalues' errors say how far
    # from it the output is. The family's roots are their own (a power, N iterations).
    if spec.name == "sqrtm" and spec.method == "ibp":
        causes += root_causes(x, output, allowed)
        if not causes:
            text += _eigenvalue_measurement(x, output)
    if leak:
        structure = _structure_cause(x, output, leak)
        causes = [structure, *causes] if structure.startswith("eps") or not causes else causes
    if not causes and not _isotropic(spec, x):
        scale = _scale(output, expected)
        if scale is not None:
            causes.append(f"the output is the reference's times {_factor(scale, x)}")
    text += ": " + "; also ".join(causes) if causes else _UNKNOWN
    if spec.convention:
        text += f" (compared up to the convention noted: {spec.convention})"
    return text


#: A scale within 10 % of 1 is an inaccuracy, not a missing factor (2, 1/N, -1).
_LEAST_FACTOR = 0.1


def _isotropic(spec: StageSpec, x: np.ndarray) -> bool:
    """Whether a root's input is s * I (every eigenvalue equal): there any function of A, and its
    derivative, is a multiple of the root's, so a scale names no mistake."""
    if spec.name != "sqrtm":
        return False
    eigenvalues = np.linalg.eigvalsh((x + np.swapaxes(x, 1, 2)) / 2)
    spread = eigenvalues[:, -1] - eigenvalues[:, 0]
    return bool(np.all(spread <= 1e-6 * np.abs(eigenvalues).max(axis=1)))


def _informative(expected: np.ndarray) -> bool:
    """Whether a scale fitted to `expected` says anything: with fewer than two entries of weight
    (a shrunk 1 x 1 case), any output is some multiple of it."""
    magnitudes = np.abs(expected.reshape(-1))
    return int(np.sum(magnitudes > 1e-6 * magnitudes.max(initial=0.0))) >= 2


def _scale(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """c, a factor, with actual = c * expected to 1e-3, or None."""
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    if not _informative(expected) or not np.all(np.isfinite(actual)):
        return None
    scale = float(actual @ expected) / float(expected @ expected)
    residual = np.linalg.norm(actual - scale * expected) / max(np.linalg.norm(actual), 1e-300)
    if residual > deviations.match_threshold(0.0) or scale == 0:
        return None
    return scale if abs(scale - 1) > _LEAST_FACTOR else None


#: Powers of a count a factor is matched against, and how a factor of that power came about.
_POWERS = {
    -1.0: "an extra division by {what}",
    1.0: "a multiplication by {what} (or a division by it left out)",
    -2.0: "an extra division by {what}, squared",
    2.0: "a multiplication by {what}, squared",
    -0.5: "an extra division by the square root of {what}",
    0.5: "a multiplication by the square root of {what}",
}
#: How close a factor must come to a count's power to be named as it.
_COUNT_MATCH = 1e-3


def _counts(x: np.ndarray) -> dict[str, tuple[int, str]]:
    """The counts of an input a factor may be made of: symbol -> (value, words)."""
    counts = {"C": (x.shape[1], "the number of channels C")}
    if x.ndim == 4:
        counts["H*W"] = (x.shape[2] * x.shape[3], "the number of locations H*W")
    return counts


def _power_label(symbol: str, value: int, power: float) -> str:
    grouped = f"({symbol})" if "*" in symbol else symbol
    base = {0.5: f"sqrt({symbol})", 1.0: grouped, 2.0: f"{grouped}^2"}[abs(power)]
    number = {0.5: f"sqrt({value})", 1.0: f"{value}", 2.0: f"{value}^2"}[abs(power)]
    return f"1/{base} = 1/{number}" if power < 0 else f"{base} = {number}"


def _factor(scale: float, x: np.ndarray) -> str:
    """'1/(H*W) = 1/144: an extra division by the number of locations H*W', where the factor is a
    count of the input (or its square, root or reciprocal); '0.5: a missing or extra factor'."""
    for symbol, (value, words) in _counts(x).items():
        for power, how in _POWERS.items():
            if value > 1 and abs(scale / value**power - 1) <= _COUNT_MATCH:
                return f"{_power_label(symbol, value, power)}: {how.format(what=words)}"
    return f"{scale:.4g}: a missing or extra factor"


def root_causes(a: np.ndarray, z: np.ndarray, allowed: float) -> list[str]:
    """What is wrong with a root Z of A beyond the known deviations: asymmetry, or an iteration
    stopped early, found by running that iteration and matching its output."""
    asymmetric = asymmetric_root(z, allowed)
    if asymmetric:
        return [asymmetric]
    stopped = deviations.newton_schulz_forward_match(a, z, allowed)
    if stopped is None:
        return []
    scaling, iterations = stopped
    return [
        f"Z is what Newton-Schulz ({scaling} scaling) gives after {iterations} iterations: it "
        "has not converged on this covariance (its small eigenvalues sit far below the scaling "
        f"and converge last; condition number {_condition(a):.2g}); iterate until the change "
        "per iteration is at round-off, or use an eigendecomposition"
    ]


def _condition(a: np.ndarray) -> float:
    eigenvalues = np.linalg.eigvalsh((a + np.swapaxes(a, 1, 2)) / 2)
    return float(np.max(eigenvalues[:, -1] / np.maximum(eigenvalues[:, 0], np.finfo(float).tiny)))


def asymmetric_root(z: np.ndarray, allowed: float) -> str | None:
    asymmetry = relative_error(z, np.swapaxes(z, 1, 2))
    if asymmetry <= allowed:
        return None
    return (
        f"Z is not symmetric (relative asymmetry {asymmetry:.3g} > {allowed:.3g}): U diag(s) V^T "
        "with V from another decomposition, or a transposed factor; use U diag(sqrt(s)) U^T from "
        "eigh"
    )


def _eigenvalue_measurement(a: np.ndarray, z: np.ndarray) -> str:
    """Where Z commutes with A (a function of A: an iteration or a fixed-degree approximant), how
    its roots of the smallest and the largest eigenvalue compare with the true ones."""
    eigenvalues, u = np.linalg.eigh((a + np.swapaxes(a, 1, 2)) / 2)
    in_eigenbasis = np.swapaxes(u, 1, 2) @ z @ u
    diagonal = np.diagonal(in_eigenbasis, axis1=1, axis2=2)
    off_diagonal = np.linalg.norm(in_eigenbasis - diagonal[:, :, None] * np.eye(a.shape[1]))
    if off_diagonal > 1e-3 * np.linalg.norm(z):
        return ""
    ratio = diagonal / np.sqrt(np.maximum(eigenvalues, np.finfo(float).tiny))
    worst = int(np.argmax(np.abs(ratio[:, 0] - 1)))
    return (
        f"; Z shares A's eigenvectors, and its roots of the smallest and the largest eigenvalue "
        f"are off by {ratio[worst, 0] - 1:+.2%} and {ratio[worst, -1] - 1:+.2%} (condition "
        f"number {_condition(a):.2g})"
    )


NEGATED_LYAPUNOV = (
    "a Lyapunov solver with the opposite sign convention (MATLAB's lyap and the authors' "
    "sqrt_svd_lyap solve Z X + X Z = -C, so they expect -dL/dZ); negate the upstream gradient "
    "before the solve, or drop the minus"
)


def explain_gradient(
    spec: StageSpec,
    layout: str,
    x: np.ndarray,
    cotangent: np.ndarray,
    gradient: np.ndarray,
    expected: np.ndarray,
    floor: np.ndarray,
    error: float,
    allowed: float,
) -> str:
    text = f"gradient differs from the reference VJP: relative error {error:.3g} > {allowed:.3g}"
    if not np.all(np.isfinite(gradient)):
        return f"{text}; {explain_non_finite(spec, layout, x, 'gradient')}"
    tolerance = deviations.match_threshold(allowed)

    def close(actual: np.ndarray, candidate: np.ndarray) -> bool:
        return relative_error(actual, candidate, floor=floor) <= tolerance

    candidates = None if spec.method == "ibp" else method_deviations.by_stage(spec)
    # The family's mistakes can have a zero gradient on a small input (a root without its
    # post-compensation is constant on 1 x 1 matrices): they are tried first there.
    mistaken = (
        []
        if candidates is None
        else deviations.matching_gradient(
            spec.name, x, layout, cotangent, gradient, expected, close, candidates
        )
    )
    if not mistaken and not np.any(gradient) and np.any(expected):
        return f"{text}: the gradient is zero where the reference's is not; {NO_GRADIENT}"
    if candidates is None:
        mistaken = deviations.matching_gradient(
            spec.name, x, layout, cotangent, gradient, expected, close
        )
    causes = [f"it is the gradient of a stage where {cause}" for cause in mistaken]
    causes += [
        cause
        for candidate, cause in _gradient_mistakes(spec, x, cotangent)
        if close(gradient, candidate) and not close(expected, candidate)
    ]
    # The Lyapunov equation and the eigendecomposition are the roots of IBP and MPN-COV only.
    eigen_root = spec.method in ("ibp", "mpn-cov")
    if spec.name == "sqrtm" and spec.method == "ibp" and not causes:
        iterations = deviations.lyapunov_iteration_match(x, cotangent, gradient, close)
        if iterations is not None:
            causes.append(
                f"it is what the coupled Newton-Schulz iteration for the Lyapunov equation (on "
                f"[[Z, dZ], [0, -Z]]) gives after {iterations} iterations: the backward has not "
                "converged on this covariance; iterate until the change per iteration is at "
                "round-off, or solve the Lyapunov equation in the eigenbasis"
            )
    scale = None if _isotropic(spec, x) else _fitted_scale(gradient, expected, close)
    if not causes and scale is not None:
        negated = spec.name == "sqrtm" and eigen_root
        sign = NEGATED_LYAPUNOV if negated else "the backward has the wrong sign"
        causes.append(
            f"the gradient is the reference's times -1: {sign}"
            if abs(scale + 1) < 0.05
            else f"the gradient is the reference's times {_factor(scale, x)}"
        )
    if (
        not causes
        and spec.name == "sqrtm"
        and eigen_root
        and _error_in_close_pairs(x, gradient, expected)
    ):
        causes.append(f"wrong on {describe(spec.name, layout, x)}: {AUTODIFF_THROUGH_EIGH}")
    text += ": " + "; also ".join(causes) if causes else _UNKNOWN
    if spec.convention:
        text += f" (compared up to the convention noted: {spec.convention})"
    return text


#: Eigenvalues this close (relative to the largest) make autodiff's 1 / (s_i - s_j) lose the
#: digits of a float32 gradient.
_CLOSE_PAIR = 1e-3
#: The share of the eigenbasis's entries in close pairs above which their error says nothing.
_MOST_PAIRS = 0.75


def _error_in_close_pairs(a: np.ndarray, gradient: np.ndarray, expected: np.ndarray) -> bool:
    """Whether the gradient's error lies in the eigenspaces of nearly equal eigenvalues, where
    autodiff through eigh/svd divides by s_i - s_j: nine tenths of it or more. Within such an
    eigenspace the basis is arbitrary, so its diagonal entries count too."""
    s, u = np.linalg.eigh((a + np.swapaxes(a, 1, 2)) / 2)
    error = np.swapaxes(u, 1, 2) @ (gradient - expected) @ u
    gap = np.abs(s[:, :, None] - s[:, None, :]) / np.abs(s).max(axis=1)[:, None, None]
    close = gap < _CLOSE_PAIR
    close_pairs = close & (close.sum(axis=2) > 1)[:, :, None]
    total = np.sum(error**2)
    # Where (nearly) every pair is close (s * I), any error lies there: that tells nothing.
    telling = close_pairs.mean() <= _MOST_PAIRS
    return bool(telling and total > 0 and np.sum(error[close_pairs] ** 2) >= 0.81 * total)


def _fitted_scale(
    actual: np.ndarray, expected: np.ndarray, close: Callable[[np.ndarray, np.ndarray], bool]
) -> float | None:
    """c, a factor, with actual = c * expected, or None."""
    denominator = float(np.sum(expected * expected))
    if denominator == 0 or not _informative(expected):
        return None
    scale = float(np.sum(actual * expected)) / denominator
    return scale if close(actual, scale * expected) and abs(scale - 1) > _LEAST_FACTOR else None


def _gradient_mistakes(
    spec: StageSpec, x: np.ndarray, g: np.ndarray
) -> Iterator[tuple[np.ndarray, str]]:
    """(gradient a known mistaken backward gives, cause) for the stage."""
    if spec.name == "l2":
        norms = np.linalg.norm(x.reshape(len(x), -1), axis=1).reshape(-1, 1, 1)
        yield (
            g / np.maximum(norms, 1e-12),
            (
                "the backward only rescales (g / ||y||) and drops the projection: the Jacobian of "
                "y / ||y|| is (I - v v^T) / ||y||, so subtract v (v . g) / ||y||"
            ),
        )
    if spec.name == "sqrtm" and spec.method == "ibp":
        a = (x + np.swapaxes(x, 1, 2)) / 2
        solved = np.stack(
            [scipy.linalg.solve_continuous_lyapunov(m, gi) for m, gi in zip(a, g, strict=True)]
        )
        yield (
            (solved + np.swapaxes(solved, 1, 2)) / 2,
            ("the Lyapunov equation is solved with A instead of Z = A^(1/2): solve Z X + X Z = dZ"),
        )


def explain_skewed(
    spec: StageSpec,
    layout: str,
    a: np.ndarray,
    output: np.ndarray,
    expected: np.ndarray,
    error: float,
    allowed: float,
) -> str:
    """Why a power differs from that of the symmetric part on a matrix with a skew part."""
    text = (
        f"on a covariance plus a skew part the output is not the power of the symmetric part "
        f"(A + A^T) / 2: relative error {error:.3g} > {allowed:.3g}"
    )
    if not np.all(np.isfinite(output)):
        return f"{text}; non-finite output (NaN or inf)"
    causes = method_deviations.skew_matching(spec, a, layout, output, expected, allowed)
    return text + (": " + "; also ".join(causes) if causes else _UNKNOWN)
