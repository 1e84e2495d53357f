"""Known mistakes, each as the NumPy output that the mistaken stage gives and the words that name
the cause and the fix. An output that matches one (up to a scale) is explained by it."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

import reference
from reference.conventions import DEFAULT_EPS

#: (x in the reference layout, framework layout) -> the mistaken output
Mistake = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class Deviation:
    cause: str
    forward: Mistake


def _swap(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


def _pool(features: np.ndarray) -> np.ndarray:
    """(B, C, N) -> X X^T / N + eps I."""
    return features @ _swap(features) / features.shape[-1] + DEFAULT_EPS * np.eye(features.shape[1])


def _locations(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _pool_summed_over_batch(x: np.ndarray, layout: str) -> np.ndarray:
    second_moments = reference.bilinear_pool(x, eps=0.0)
    shared = second_moments.sum(axis=0) + DEFAULT_EPS * np.eye(x.shape[1])
    return np.broadcast_to(shared, second_moments.shape)


def _pool_of_locations(x: np.ndarray, layout: str) -> np.ndarray:
    features = _swap(_locations(x))
    return _pool(features)


def _pool_of_misread_layout(x: np.ndarray, layout: str) -> np.ndarray:
    b, c = x.shape[:2]
    if layout == "channels_first":  # (B, C, H, W) memory read as (B, N, C)
        return _pool(_swap(x.reshape(b, -1, c)))
    return _pool(x.transpose(0, 2, 3, 1).reshape(b, c, -1))  # (B, H, W, C) memory read as (B, C, N)


def _centred_pool(x: np.ndarray, layout: str) -> np.ndarray:
    features = _locations(x)
    return _pool(features - features.mean(axis=-1, keepdims=True))


POOL = (
    Deviation(
        "the pooling sums over the batch axis (a matmul that contracts the batch, (C x B) times "
        "(B x C)), so every sample gets the same matrix; contract each sample's locations only",
        _pool_summed_over_batch,
    ),
    Deviation(
        "an N x N outer product over locations (X^T X) instead of the C x C one over channels "
        "(X X^T); contract the location axis",
        _pool_of_locations,
    ),
    Deviation(
        "the channels are read from the wrong axis: the map is reshaped as if it were in the other "
        "layout without moving the channel axis, which scrambles channels and locations; flatten "
        "(B, C, H, W) to (B, C, H*W) in PyTorch, (B, H, W, C) to (B, H*W, C) in TensorFlow",
        _pool_of_misread_layout,
    ),
    Deviation(
        "the covariance is centred (the mean feature subtracted); IBP pools the uncentred second "
        "moment X X^T / N",
        _centred_pool,
    ),
)

FOURTH_ROOT = (
    "Z @ Z equals A^(1/2), not A: the square root is applied twice (A^(1/4)); take the square "
    "root of the eigenvalues or singular values once"
)

SQRTM = (
    Deviation(FOURTH_ROOT, lambda a, layout: reference.sqrtm(reference.sqrtm(a))),
    Deviation("Z equals A: no square root is taken", lambda a, layout: a),
)

SIGNED_SQRT = (
    Deviation(
        "the sign is dropped: sqrt(|z|) turns negative entries positive; multiply by sign(z)",
        lambda z, layout: np.abs(reference.signed_sqrt(z)),
    ),
    Deviation("the output equals the input: no square root is taken", lambda z, layout: z),
)


def _normalised(y: np.ndarray, axis: int | tuple[int, ...] | None) -> np.ndarray:
    norms = np.sqrt(np.sum(y**2, axis=axis, keepdims=True))
    return y / np.maximum(norms, np.finfo(float).tiny)


L2 = (
    Deviation(
        "normalised by the norm of the whole batch (tf.math.l2_normalize(x, axis=None), "
        "x / x.norm()): divide each sample by the norm of its own C*C entries",
        lambda y, layout: _normalised(y, None),
    ),
    Deviation(
        "each row is normalised on its own (axis=-1): the norm runs over all C*C entries of a "
        "sample (axis=(1, 2))",
        lambda y, layout: _normalised(y, -1),
    ),
    Deviation(
        "each column is normalised on its own (axis=1): the norm runs over all C*C entries of a "
        "sample (axis=(1, 2))",
        lambda y, layout: _normalised(y, -2),
    ),
    Deviation(
        "divides by the squared norm instead of the norm",
        lambda y, layout: (
            _normalised(y, (1, 2)) / np.sqrt(np.sum(y**2, axis=(1, 2), keepdims=True))
        ),
    ),
)

_REFERENCE_STAGES = (
    ("pool", lambda x, layout: reference.bilinear_pool(x)),
    ("sqrtm", lambda a, layout: reference.sqrtm(a)),
    ("signed-sqrt", lambda z, layout: reference.signed_sqrt(z)),
    ("l2", lambda y, layout: reference.l2_normalize(y)),
)
_MISSING = {
    "sqrtm": "the matrix square root is missing",
    "signed-sqrt": "the signed square root is missing",
}
BY_STAGE = {"pool": POOL, "sqrtm": SQRTM, "signed-sqrt": SIGNED_SQRT, "l2": L2}


def _pipeline(replaced: str, replacement: Mistake) -> Mistake:
    def head(x: np.ndarray, layout: str) -> np.ndarray:
        for name, stage in _REFERENCE_STAGES:
            x = replacement(x, layout) if name == replaced else stage(x, layout)
        return x.reshape(len(x), -1)

    return head


def _head_deviations() -> tuple[Deviation, ...]:
    """The head with one stage replaced by one of that stage's mistakes, or left out."""
    deviations = [
        Deviation(deviation.cause, _pipeline(name, deviation.forward))
        for name, stage_deviations in BY_STAGE.items()
        for deviation in stage_deviations
    ]
    deviations += [
        Deviation(cause, _pipeline(name, lambda m, layout: m)) for name, cause in _MISSING.items()
    ]
    return tuple(deviations)


BY_STAGE["head"] = _head_deviations()


#: What each stage computes, in words, for a function checked as another stage.
_COMPUTES = {
    "sqrtm": "the matrix square root Z (Z @ Z = A)",
    "signed-sqrt": "the signed square root sign(z) sqrt(|z|), entry by entry",
    "l2": "the L2 normalisation y / ||y||",
    "pool": "a pooling X X^T / N of the matrix's columns as locations",
}


def _other_stage(name: str, computes: Mistake) -> Deviation:
    return Deviation(
        f"the output is {_COMPUTES[name]}, which the {name} stage computes; if that is the "
        f"function's job, check it as that stage (ibp-check {name} ...)",
        computes,
    )


def _pool_of_matrix(m: np.ndarray, layout: str) -> np.ndarray:
    """A pooling function handed a matrix (B, C, C) reads it as C channels at C locations."""
    return reference.bilinear_pool(m[..., None])


ENTRYWISE_ROOT = (
    "an entrywise square root, not the matrix square root: sqrt is taken of each entry of A, "
    "while the matrix root Z satisfies Z @ Z = A; take U diag(sqrt(s)) U^T from eigh (s clamped "
    "at 0), or this library's sqrtm"
)

#: A function checked as one stage that implements another: its output is that stage's.
OTHER_STAGES = {
    "sqrtm": (
        Deviation(ENTRYWISE_ROOT, lambda m, layout: np.sign(m) * np.sqrt(np.abs(m))),
        Deviation(ENTRYWISE_ROOT, lambda m, layout: np.sqrt(np.abs(m))),
        Deviation(ENTRYWISE_ROOT, lambda m, layout: reference.signed_sqrt(m)),
        _other_stage("l2", lambda m, layout: reference.l2_normalize(m)),
        _other_stage("pool", _pool_of_matrix),
    ),
    "signed-sqrt": (
        _other_stage("sqrtm", lambda m, layout: reference.sqrtm(m)),
        _other_stage("l2", lambda m, layout: reference.l2_normalize(m)),
    ),
    "l2": (
        _other_stage("signed-sqrt", lambda m, layout: reference.signed_sqrt(m)),
        _other_stage("sqrtm", lambda m, layout: reference.sqrtm(m)),
    ),
}


#: Stages whose harmless conventions scale the output (a missing 1/N): their mistakes are matched
#: up to a scale. The others are matched as they are.
_SCALED = ("pool",)
#: Largest input whose mistakes' gradients are worked out by finite differences.
_LARGEST_DIFFERENTIATED = 256


def matching(
    stage: str, x: np.ndarray, layout: str, output: np.ndarray, expected: np.ndarray, allowed: float
) -> list[str]:
    """Causes of the deviations of `stage` that explain `output` and that the reference's own
    output `expected` does not match (on a 1 x 1 input many mistakes coincide)."""
    candidates = (*BY_STAGE[stage], *OTHER_STAGES.get(stage, ()))
    return matching_among(candidates, x, layout, output, expected, allowed, stage in _SCALED)


def matching_among(
    candidates: Sequence[Deviation],
    x: np.ndarray,
    layout: str,
    output: np.ndarray,
    expected: np.ndarray,
    allowed: float,
    up_to_scale: bool,
) -> list[str]:
    """Causes of the `candidates` that explain `output` and not `expected`."""
    output, expected = _flat(output), _flat(expected)
    causes = []
    with np.errstate(all="ignore"):
        for deviation in candidates:
            try:
                candidate = _flat(deviation.forward(x, layout))
            except (ValueError, np.linalg.LinAlgError):  # another stage's input contract
                continue
            if candidate.shape != output.shape or not np.all(np.isfinite(candidate)):
                continue
            if explains(output, candidate, allowed, up_to_scale) and not explains(
                expected, candidate, allowed, up_to_scale
            ):
                causes.append(deviation.cause)
    return list(dict.fromkeys(causes))


def matching_gradient(
    stage: str,
    x: np.ndarray,
    layout: str,
    cotangent: np.ndarray,
    gradient: np.ndarray,
    expected: np.ndarray,
    close: Callable[[np.ndarray, np.ndarray], bool],
    candidates: Sequence[Deviation] | None = None,
) -> list[str]:
    """Causes of the deviations of `stage` (or of `candidates`, another method's) whose gradient
    (by central differences in float64) is `gradient`, where the reference's, `expected`, is not;
    `close(a, b)` judges."""
    if stage == "head" or x.size > _LARGEST_DIFFERENTIATED:
        return []
    causes = []
    with np.errstate(all="ignore"):
        for deviation in BY_STAGE[stage] if candidates is None else candidates:

            def mistaken(m: np.ndarray, forward: Mistake = deviation.forward) -> np.ndarray:
                return forward(m, layout)

            candidate = _vjp(mistaken, x, cotangent)
            if candidate is None or not np.all(np.isfinite(candidate)):
                continue
            if close(gradient, candidate) and not close(expected, candidate):
                causes.append(deviation.cause)
    return causes


def _vjp(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, cotangent: np.ndarray
) -> np.ndarray | None:
    """<cotangent, f(x)> differentiated by central differences, or None where shapes differ."""
    output = f(x)
    if output.size != cotangent.size:
        return None
    cotangent = cotangent.reshape(output.shape)
    step = 1e-6 * max(np.abs(x).max(), 1e-3)
    gradient = np.zeros(x.size)
    for i in range(x.size):
        flat_shift = np.zeros(x.size)
        flat_shift[i] = step
        shift = flat_shift.reshape(x.shape)
        gradient[i] = np.sum(cotangent * (f(x + shift) - f(x - shift))) / (2 * step)
    return gradient.reshape(x.shape)


def _flat(array: npt.ArrayLike) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).reshape(-1)


def match_threshold(allowed: float) -> float:
    """How close an output must come to a mistake's to be explained by it: ten times the
    tolerance, but never looser than 5 % (a user's --tolerance may be loose) nor tighter than 1e-3
    (the float64 tolerance would demand that the user repeat the mistake to round-off)."""
    return min(max(10 * allowed, 1e-3), 0.05)


def explains(
    actual: np.ndarray, candidate: np.ndarray, allowed: float, up_to_scale: bool = False
) -> bool:
    """actual = candidate (or c * candidate, one scalar c within three decades of 1: a sum for a
    mean, a missing 1/N) to match_threshold(allowed) relative."""
    norm = np.linalg.norm(candidate)
    if norm == 0 or not np.all(np.isfinite(actual)):
        return False
    scale = float(actual @ candidate) / norm**2 if up_to_scale else 1.0
    residual = np.linalg.norm(actual - scale * candidate) / max(np.linalg.norm(actual), 1e-300)
    return 1e-3 <= abs(scale) <= 1e3 and residual <= match_threshold(allowed)


#: Iteration counts tried when matching an output with an iteration stopped early.
_ITERATIONS = range(1, 41)


def _newton_schulz(a: np.ndarray, iterations: int, scaling: str) -> Iterator[np.ndarray]:
    """The coupled Newton-Schulz root after each iteration: Y0 = A / n, Z0 = I, T = (3I - Z Y) / 2,
    Y <- Y T, Z <- T Z, root Y sqrt(n), with n the Frobenius norm or the trace."""
    if scaling == "Frobenius-norm":
        norm = np.linalg.norm(a, axis=(1, 2), keepdims=True)
    else:
        norm = np.trace(a, axis1=1, axis2=2)[:, None, None]
    eye = np.eye(a.shape[-1])
    y, z = a / norm, np.broadcast_to(eye, a.shape)
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
        yield y * np.sqrt(norm)


#: An iterate this close to the one before has stopped changing: later ones are the same.
_STOPPED_CHANGING = 1e-14
#: How much better than the true root a stopped iteration must explain an output to be named.
_BETTER_THAN_ROOT = 10.0


def newton_schulz_forward_match(
    a: np.ndarray, z: np.ndarray, allowed: float
) -> tuple[str, int] | None:
    """(scalings, iterations): the Newton-Schulz iterate that explains `z` best, where it explains
    z to the match threshold and far better than the true root does; else None. Every iterate is
    compared, converged ones included: a Frobenius-scaled iterate close to the root can still be
    the one the function returns. Where both scalings explain z equally well (a covariance with
    one dominant eigenvalue, whose trace and Frobenius norm nearly agree), both are named."""
    a = (a + _swap(a)) / 2
    root = reference.sqrtm(a)
    scale = max(np.linalg.norm(z), 1e-300)
    from_root = np.linalg.norm(z - root) / scale
    residuals: list[tuple[float, int, str]] = []
    with np.errstate(all="ignore"):
        for scaling in ("Frobenius-norm", "trace"):
            previous = None
            for iterations, candidate in enumerate(_newton_schulz(a, _ITERATIONS[-1], scaling), 1):
                residuals.append((np.linalg.norm(z - candidate) / scale, iterations, scaling))
                change = np.inf if previous is None else np.linalg.norm(candidate - previous)
                if change <= _STOPPED_CHANGING * np.linalg.norm(candidate):
                    break
                previous = candidate
    finite = [r for r in residuals if np.isfinite(r[0])]
    if not finite:
        return None
    closest, iterations, _ = min(finite)
    if closest > match_threshold(allowed) or closest * _BETTER_THAN_ROOT > from_root:
        return None
    # Both scalings are named where they explain z equally well (to round-off).
    scalings = [
        name for residual, k, name in finite if k == iterations and residual <= 10 * closest + 1e-12
    ]
    return " or ".join(scalings), iterations


def _lyapunov_iterations(z: np.ndarray, dz: np.ndarray) -> Iterator[np.ndarray]:
    """The coupled Newton-Schulz sign iteration on M = [[Z, dZ], [0, -Z]] / ||Z||: its blocks
    B -> (3B - B^3) / 2, C -> (3C - B^2 C + B C B - C B^2) / 2 tend to I and 2X, with
    Z X + X Z = dZ; yields X after each iteration."""
    norm = np.linalg.norm(z, axis=(1, 2), keepdims=True)
    b, c = z / norm, dz / norm
    for _ in _ITERATIONS:
        b2 = b @ b
        b, c = (3 * b - b2 @ b) / 2, (3 * c - b2 @ c + b @ c @ b - c @ b2) / 2
        yield c / 2


def lyapunov_iteration_match(
    a: np.ndarray,
    dz: np.ndarray,
    gradient: np.ndarray,
    close: Callable[[np.ndarray, np.ndarray], bool],
) -> int | None:
    """The iteration count at which the Lyapunov iteration (with the exact root) gives
    `gradient`, short of convergence, or None."""
    z = reference.sqrtm((a + _swap(a)) / 2)
    expected = reference.sqrtm_vjp(z, dz)
    with np.errstate(all="ignore"):
        for iterations, x in enumerate(_lyapunov_iterations(z, dz), 1):
            candidate = (x + _swap(x)) / 2
            if close(expected, candidate):
                return None
            if close(gradient, candidate):
                return iterations
    return None
