"""Which method of the family (`reference.methods`) a model's head implements, told from what its
located layers did on the probe images: the pooling centred or not, a matrix normalisation after
it or none, and what that normalisation is (the exact root, a power, N trace-normalised
iterations); a whole head by the reference head that reproduces its output best, an upper
triangle (B, C(C+1)/2) being MPN-COV's or iSQRT-COV's.

The parameters are told the same way (the iteration count, the power, the triangle's order, an
eps on the diagonal), so that each layer is checked against the method it implements; a count or
power the user did not mean shows in the report ("recognised as iSQRT-COV with 3 iterations"),
and `--method` with its parameters checks the head against what the user meant instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

import reference
from impls.testing.check_options import ModelSettings
from impls.testing.model_check.located import Located, channels_first
from impls.testing.model_check.traced_models import LayerCall
from reference.methods import TRIU_ORDERS, centred_pool, triu_vec
from reference.methods.bcnn import bcnn_head, bcnn_pool
from reference.methods.isqrt_cov import newton_schulz_iterations
from reference.methods.mpn_cov import matrix_power

#: Iteration counts and powers a head's normalisation is matched against.
ITERATIONS = range(1, 21)
POWERS = (0.5, 0.25, 1 / 3, 0.75, 1.0)
#: eps values a centred covariance's diagonal offset is snapped to (MPN-COV's 0, the released
#: MATLAB code's 1e-12, the usual regularisers).
EPS_VALUES = (0.0, 1e-12, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
#: Residuals within this factor of the best count as ties, which go to the simpler method (the
#: exact root before a converged iteration).
TIE = 1.5


@dataclasses.dataclass(frozen=True)
class Recognition:
    method: str
    parameters: dict[str, Any]
    evidence: str  # how it was told, in words


def _residual(actual: np.ndarray, candidate: np.ndarray) -> float:
    actual, candidate = actual.reshape(-1), candidate.reshape(-1)
    return float(np.linalg.norm(actual - candidate) / max(np.linalg.norm(actual), 1e-300))


def _offset_fit(output: np.ndarray, pooled: np.ndarray) -> tuple[float, float]:
    """(residual, offset b) of output = a pooled + b I by least squares (a sum for a mean, an
    eps on the diagonal: conventions the stage check deals with)."""
    identities = np.broadcast_to(np.eye(pooled.shape[-1]), pooled.shape)
    design = np.stack([pooled.reshape(-1), identities.reshape(-1)], 1)
    (scale, offset), *_ = np.linalg.lstsq(design, output.reshape(-1), rcond=None)
    return _residual(output, scale * pooled + offset * identities), float(offset / scale)


#: An offset below this, relative to the largest entry, is taken for none: it is round-off, or an
#: eps (the MATLAB release's 1e-12) too small to move the output, and without eps the degenerate
#: inputs' gradient, infinite by the method's definition, is not checked (no false alarm there).
NO_OFFSET = 1e-6


def _snapped_eps(offset: float, scale: float) -> float:
    """The usual eps value nearest the fitted offset (on a log scale), or 0 below NO_OFFSET."""
    if offset <= NO_OFFSET * scale:
        return 0.0
    return min(EPS_VALUES[1:], key=lambda eps: abs(np.log(offset / eps)))


def _centred(call: LayerCall, form_axis: int) -> tuple[bool, float]:
    """(whether the pooling centres, the eps on its diagonal)."""
    x = channels_first(call.input, form_axis)
    output = call.output.reshape(len(x), x.shape[1], x.shape[1]).astype(np.float64)
    covariance = centred_pool(x)
    centred, offset = _offset_fit(output, covariance)
    uncentred, _ = _offset_fit(output, bcnn_pool(x))
    return centred < uncentred, _snapped_eps(offset, float(np.abs(covariance).max()))


def _iterated(a: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(N, iSQRT-COV's root after N iterations) for N in ITERATIONS."""
    traces = np.maximum(np.trace(a, axis1=1, axis2=2), np.finfo(float).tiny)[:, None, None]
    for iterations in ITERATIONS:
        yield iterations, newton_schulz_iterations(a / traces, iterations) * np.sqrt(traces)


def _normalisations(
    a: np.ndarray, finish: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[str, dict[str, Any], np.ndarray]]:
    """(method, parameters, output) of every normalisation tried on the centred covariance a:
    MPN-COV's powers first (they win ties), then iSQRT-COV's iteration counts."""
    for alpha in POWERS:
        yield "mpn-cov", {"alpha": alpha}, finish(matrix_power(a, alpha))
    for iterations, root in _iterated(a):
        yield "isqrt-cov", {"iterations": iterations}, finish(root)


def _best(
    output: np.ndarray, candidates: Iterator[tuple[str, dict[str, Any], np.ndarray]]
) -> tuple[str, dict[str, Any]]:
    """The candidate closest to output; among near ties (TIE), the first."""
    scored = [(_residual(output, result), method, given) for method, given, result in candidates]
    least = min(residual for residual, _, _ in scored)
    _, method, given = next(c for c in scored if c[0] <= TIE * least + 1e-12)
    return method, given


def _words(method: str, parameters: dict[str, Any]) -> str:
    if method == "isqrt-cov":
        return f"{parameters['iterations']} trace-normalised Newton-Schulz iterations"
    alpha = parameters["alpha"]
    return "the matrix square root" if alpha == 0.5 else f"the matrix power {alpha:g}"


def _of_root(pool: tuple[bool, float], root: LayerCall | None) -> tuple[str, dict[str, Any], str]:
    """The method of a head located as separate layers: (whether the pooling centres, its eps)
    and the root's call, if one was located."""
    centred, eps = pool
    if not centred:
        if root is None:
            return "bcnn", {}, "an uncentred pooling and no matrix root after it: B-CNN"
        return "ibp", {}, "an uncentred pooling and a matrix square root: IBP"
    if root is None:
        return "mpn-cov", {"eps": eps}, "a centred covariance (no normalisation found after it)"
    a = root.input.reshape(len(root.input), *root.output.shape[1:]).astype(np.float64)
    method, given = _best(root.output.astype(np.float64), _normalisations(a, lambda z: z))
    if method == "mpn-cov":
        given = {**given, "eps": eps}
    return method, given, f"a centred covariance and {_words(method, given)}"


def _of_whole_head(call: LayerCall, located: Located) -> tuple[str, dict[str, Any], str]:
    """The method of a head computed by one layer."""
    x = channels_first(call.input, located.form.channel_axis or 0)
    output = call.output.reshape(len(x), -1).astype(np.float64)
    c = x.shape[1]
    if output.shape[1] != c * c:  # an upper triangle
        candidates = [
            (method, {**given, "order": order}, result)
            for order in TRIU_ORDERS
            for method, given, result in _normalisations(
                centred_pool(x), partial(triu_vec, order=order)
            )
        ]
        method, given = _best(output, iter(candidates))
        order = "row by row" if given["order"] == "row" else "column by column"
        words = f"{_words(method, given)} of a centred covariance, its upper triangle {order}"
        return method, given, words
    ibp = _residual(output, reference.ibp_head(x))
    if _residual(output, bcnn_head(x)) < ibp:
        return "bcnn", {}, "a unit-norm (B, C*C) head closer to B-CNN's (no matrix root) than IBP's"
    return "ibp", {}, "a unit-norm (B, C*C) head closer to IBP's than B-CNN's"


def given(settings: ModelSettings) -> Recognition | None:
    """The method the user named (`--method`, with the parameters given), or None."""
    if settings.method is None:
        return None
    return Recognition(settings.method, settings.parameters(), f"--method {settings.method}")


def recognise(calls: Sequence[LayerCall], located: Sequence[Located]) -> Recognition:
    """The method of the head made of the `located` layers, from their traced `calls`."""
    by_path = {call.path: call for call in calls}
    first = located[0]
    stages = {layer.stage: layer for layer in located}
    if first.stage == "head":
        method, given, evidence = _of_whole_head(by_path[first.path], first)
    elif "pool+sqrtm" in stages:
        method, given, evidence = "ibp", {}, "a layer computing a pooling and its square root: IBP"
    else:
        pool = _centred(by_path[first.path], first.form.channel_axis or 0)
        root = stages.get("sqrtm")
        method, given, evidence = _of_root(pool, None if root is None else by_path[root.path])
    return Recognition(method, given, f"recognised from its layers: {evidence}")


def with_method(located: Sequence[Located], recognition: Recognition) -> list[Located]:
    """The located layers, each carrying the head's method."""
    parameters = tuple(recognition.parameters.items())
    return [
        dataclasses.replace(
            layer,
            method=recognition.method,
            parameters=parameters,
            recognised=recognition.evidence,
        )
        for layer in located
    ]
