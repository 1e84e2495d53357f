"""Known mistakes in layers of B-CNN, MPN-COV and iSQRT-COV, as `deviations.Deviation`s (the NumPy
output the mistaken stage gives, and the words that name the cause and the fix), computed with the
parameters of the method checked. IBP's own are `deviations.BY_STAGE`.

The mistakes that depend on a count or a power (an iteration count, alpha) are found by a search:
the count whose output explains the layer's best is named, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

import reference
from impls.testing.diagnosis import deviations
from impls.testing.diagnosis.deviations import Deviation, Mistake, explains
from impls.testing.diagnosis.harmless_conventions import REGULARISER_VALUES
from reference.methods import METHODS, TRIU_ORDERS, centred_pool, triu_vec
from reference.methods.bcnn import bcnn_pool
from reference.methods.isqrt_cov import newton_schulz_iterations
from reference.methods.mpn_cov import matrix_power

if TYPE_CHECKING:
    from impls.testing.stage_specs import StageSpec

NOT_CENTRED = (
    "the covariance is not centred: X X^T / N keeps the mean feature (the pooling of B-CNN and "
    "IBP); {title} pools X Ibar X^T, so subtract each channel's mean over the H*W locations first"
)
CENTRED = (
    "the covariance is centred (the mean feature subtracted); B-CNN pools the uncentred second "
    "moment X X^T / N"
)
UNBIASED = (
    "divided by N - 1 (the unbiased covariance, torch.cov's and np.cov's default) instead of N: "
    "{title} divides by the N = H*W locations (X Ibar X^T, Ibar = (1/N)(I - 1 1^T / N))"
)
BATCH_MEAN = (
    "the mean feature is taken over every sample of the batch, not per sample: each sample's "
    "covariance then depends on the rest of the batch; take the mean over each sample's own "
    "locations"
)
NO_POST_COMPENSATION = (
    "the post-compensation is missing: Y_N of A / tr(A) is returned as it is, so the output "
    "scales with 1 / sqrt(tr A); multiply it by sqrt(tr A), per sample"
)
BATCH_TRACE = (
    "the trace is summed over every sample of the batch (a sum without an axis), not taken per "
    "sample: the layer mixes samples across the batch; take each sample's trace "
    "(a.diagonal(dim1=-2, dim2=-1).sum(-1), tf.linalg.trace)"
)
EXACT_ROOT = (
    "the output is the exact square root (an eigendecomposition, or an iteration run until it "
    "converged), not {iterations} iterations: iSQRT-COV's normalisation is its N iterations; a "
    "layer that means the exact root is MPN-COV (--method mpn-cov) or IBP's root (--method ibp)"
)
SINGULAR_VALUES = (
    "the power is applied to the singular values (U S^alpha V^T from an SVD): on a matrix that is "
    "not exactly symmetric U and V differ, and that is not the power of the matrix; take the "
    "eigendecomposition of the symmetric part, eigh((A + A^T) / 2)"
)
ONE_TRIANGLE = (
    "the power of the matrix's {which} triangle mirrored: eigh reads one triangle of its input "
    "(the lower one in torch.linalg.eigh and tf.linalg.eigh), so the skew part that round-off "
    "leaves in a computed covariance moves the result; take eigh((A + A^T) / 2)"
)
NO_POWER = "Z equals A: no power is taken"
POWER_TWICE = "the power is applied twice: Z = A^(alpha^2), alpha = {alpha:g}"
OTHER_POWER = (
    "Z is A^{found:g}, not A^{alpha:g} (--alpha {alpha:g}): pass --alpha {found:g} if that is the "
    "power the layer means"
)
OTHER_ORDER = (
    "the upper triangle comes column by column (the MATLAB releases' and the first PyTorch "
    "release's Triuvec), not row by row: pass --order {other} if the classifier after it is "
    "trained on that order"
)
SCALED_TRIANGLE = (
    "the off-diagonal entries are scaled by sqrt(2) (a vectorisation that keeps the Frobenius "
    "norm); the released Triuvec keeps each entry as it is"
)
SIGNED_SQRT_AFTER_L2 = (
    "the signed sqrt after the L2 normalisation: the output is no longer unit-norm; B-CNN takes "
    "the signed square root first, then L2-normalises"
)
SQRT_PLUS_EPS = (
    "sqrt(z + eps), eps = {eps:g}, for the signed square root: it adds sqrt(eps) at z = 0, and it "
    "takes the square root of negative entries (NaN) wherever z < -eps, as the pooled matrix of "
    "maps before a ReLU has; take sign(z) (sqrt(|z| + delta) - sqrt(delta))"
)
ROOT_IN_BCNN = (
    "a matrix square root is taken before the signed square root: that is IBP (improved bilinear "
    "pooling), whose check is --method ibp; B-CNN has no root"
)
#: Powers tried where the layer's is not the one checked.
POWERS = (0.5, 0.25, 1 / 3, 0.75, 1.0, 2.0)
#: Iteration counts tried where the layer's is not the one checked.
ITERATION_COUNTS = range(1, 41)


def _eye(c: int) -> np.ndarray:
    return np.eye(c)


def _swap(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


# -- poolings -------------------------------------------------------------------------------------


def _misread(x: np.ndarray, layout: str) -> np.ndarray:
    """The map as the layer reads it when it flattens it as if it were in the other layout."""
    b, c, h, w = x.shape
    if layout == "channels_first":
        return x.reshape(b, -1, c).transpose(0, 2, 1).reshape(b, c, h, w)
    return x.transpose(0, 2, 3, 1).reshape(b, c, h, w)


def _batch_mean_pool(x: np.ndarray, eps: float) -> np.ndarray:
    features = x.reshape(x.shape[0], x.shape[1], -1)
    centred = features - features.mean(axis=(0, 2), keepdims=True)
    return centred @ _swap(centred) / features.shape[-1] + eps * _eye(x.shape[1])


def pool_deviations(method: str, eps: float) -> tuple[Deviation, ...]:
    """The poolings' mistakes; `eps` the method's eps * I (0 where it has none)."""
    title = METHODS[method].short
    batch_sum, _, misread, _ = deviations.POOL
    own: tuple[Deviation, ...]
    if method == "bcnn":
        pooled: Callable[[np.ndarray], np.ndarray] = bcnn_pool
        own = (Deviation(CENTRED, lambda x, layout: centred_pool(x)),)
    else:

        def pooled(x: np.ndarray) -> np.ndarray:
            return centred_pool(x, eps)

        def unbiased(x: np.ndarray, layout: str) -> np.ndarray:
            n = x.shape[2] * x.shape[3]
            return centred_pool(x) * n / max(n - 1, 1) + eps * _eye(x.shape[1])

        own = (
            Deviation(
                NOT_CENTRED.format(title=title),
                lambda x, layout: bcnn_pool(x) + eps * _eye(x.shape[1]),
            ),
            Deviation(UNBIASED.format(title=title), unbiased),
            Deviation(BATCH_MEAN, lambda x, layout: _batch_mean_pool(x, eps)),
        )

    def summed(x: np.ndarray, layout: str) -> np.ndarray:
        return np.broadcast_to(pooled(x).sum(axis=0), (len(x), x.shape[1], x.shape[1]))

    return (
        *own,
        Deviation(batch_sum.cause, summed),
        Deviation(misread.cause, lambda x, layout: pooled(_misread(x, layout))),
    )


# -- roots ----------------------------------------------------------------------------------------


def _traces(a: np.ndarray) -> np.ndarray:
    return np.trace(a, axis1=1, axis2=2)[:, None, None]


def _isqrt_root(a: np.ndarray, iterations: int, norm: np.ndarray) -> np.ndarray:
    return newton_schulz_iterations(a / norm, iterations) * np.sqrt(norm)


def _svd_power(a: np.ndarray, alpha: float) -> np.ndarray:
    u, s, vh = np.linalg.svd(a)
    return (u * s[:, None, :] ** alpha) @ vh


def _triangle_power(a: np.ndarray, layout: str, alpha: float, lower: bool) -> np.ndarray:
    part = np.tril(a) if lower else np.triu(a)
    mirrored = (
        part + _swap(part) - np.eye(a.shape[-1]) * np.diagonal(a, axis1=1, axis2=2)[:, :, None]
    )
    return matrix_power(mirrored, alpha)


def skew_deviations(alpha: float) -> tuple[Deviation, ...]:
    """MPN-COV's power on a matrix with a skew part: what an SVD or a one-triangle eigh gives."""
    return (
        Deviation(SINGULAR_VALUES, lambda a, layout: _svd_power(a, alpha)),
        *(
            Deviation(
                ONE_TRIANGLE.format(which=which),
                partial(_triangle_power, alpha=alpha, lower=which == "lower"),
            )
            for which in ("lower", "upper")
        ),
    )


def root_deviations(method: str, parameters: Mapping[str, Any]) -> tuple[Deviation, ...]:
    """The matrix normalisation's mistakes of MPN-COV or iSQRT-COV (the iteration count and the
    power are searched apart: `best_iterations`, `best_power`)."""
    if method == "mpn-cov":
        alpha = float(parameters["alpha"])
        return (
            Deviation(NO_POWER, lambda a, layout: a),
            Deviation(
                POWER_TWICE.format(alpha=alpha),
                lambda a, layout: matrix_power(matrix_power(a, alpha), alpha),
            ),
        )
    iterations = int(parameters["iterations"])
    return (
        Deviation(
            NO_POST_COMPENSATION,
            lambda a, layout: newton_schulz_iterations(a / _traces(a), iterations),
        ),
        Deviation(
            BATCH_TRACE,
            lambda a, layout: _isqrt_root(a, iterations, np.sum(_traces(a))),
        ),
        Deviation(EXACT_ROOT.format(iterations=iterations), lambda a, layout: reference.sqrtm(a)),
    )


def _iterates(a: np.ndarray, norm: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(k, the root after k coupled Newton-Schulz steps on A / norm, post-compensated)."""
    eye = _eye(a.shape[-1])
    y, z = a / norm, np.broadcast_to(eye, a.shape)
    for k in ITERATION_COUNTS:
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
        yield k, y * np.sqrt(norm)


def _iteration_candidates(a: np.ndarray, iterations: int) -> Iterator[tuple[str, np.ndarray]]:
    """(cause, root) of iSQRT-COV's iteration with another count or the Frobenius norm."""
    for scaling, norm in (
        ("trace", _traces(a)),
        ("Frobenius-norm", np.linalg.norm(a, axis=(1, 2), keepdims=True)),
    ):
        for k, root in _iterates(a, norm):
            if scaling == "trace" and k == iterations:
                continue
            yield _iteration_cause(scaling, k, iterations), root


def _iteration_cause(scaling: str, k: int, iterations: int) -> str:
    if scaling == "trace":
        return (
            f"Z is what {k} iterations give, not the {iterations} the method is checked with "
            f"(--iterations {iterations}): the layer runs {k} iterations (the released code "
            "writes the first and the last of its iterN steps outside a loop of iterN - 2); pass "
            f"--iterations {k} if {k} is what the layer means"
        )
    return (
        f"Z is what {k} iterations on A / ||A||_F give: pre-normalised by the Frobenius norm, "
        "where iSQRT-COV divides by the trace (and post-compensates by sqrt(tr A))"
    )


def _power_candidates(a: np.ndarray, alpha: float) -> Iterator[tuple[str, np.ndarray]]:
    for found in POWERS:
        if abs(found - alpha) > 1e-12:
            yield OTHER_POWER.format(found=found, alpha=alpha), matrix_power(a, found)


def _searched(
    method: str, parameters: Mapping[str, Any], a: np.ndarray
) -> Iterator[tuple[str, np.ndarray]]:
    if method == "mpn-cov":
        return _power_candidates(a, float(parameters["alpha"]))
    return _iteration_candidates(a, int(parameters["iterations"]))


# -- heads ----------------------------------------------------------------------------------------


def _flat(m: np.ndarray) -> np.ndarray:
    return m.reshape(len(m), -1)


def _bcnn_head(x: np.ndarray, layout: str, delta: float, replaced: str, by: Mistake) -> np.ndarray:
    """B-CNN's head with stage `replaced` replaced by `by`."""
    stages: tuple[tuple[str, Mistake], ...] = (
        ("pool", lambda m, layout: bcnn_pool(m)),
        ("signed-sqrt", lambda m, layout: reference.signed_sqrt(m, delta)),
        ("l2", lambda m, layout: reference.l2_normalize(m)),
    )
    for name, stage in stages:
        x = (by if name == replaced else stage)(x, layout)
    return _flat(x)


def _sqrt_plus(z: np.ndarray, layout: str, eps: float) -> np.ndarray:
    return np.sqrt(np.maximum(z + eps, 0.0))


def bcnn_signed_sqrt_deviations() -> tuple[Deviation, ...]:
    """IBP's signed-sqrt mistakes, and sqrt(z + eps) (on inputs without negative entries: with
    them its output is NaN, named as such)."""
    return (
        *deviations.SIGNED_SQRT,
        *(
            Deviation(SQRT_PLUS_EPS.format(eps=eps), partial(_sqrt_plus, eps=eps))
            for eps in REGULARISER_VALUES
            if eps > 0
        ),
    )


def bcnn_head_deviations(delta: float) -> tuple[Deviation, ...]:
    replaced = [
        (name, deviation)
        for name, stage_deviations in (
            ("pool", pool_deviations("bcnn", 0.0)),
            ("signed-sqrt", deviations.SIGNED_SQRT),
            ("l2", deviations.L2),
        )
        for deviation in stage_deviations
    ]
    return (
        *(
            Deviation(
                deviation.cause,
                partial(_bcnn_head, delta=delta, replaced=name, by=deviation.forward),
            )
            for name, deviation in replaced
        ),
        Deviation(
            "the signed square root is missing",
            lambda x, layout: _flat(reference.l2_normalize(bcnn_pool(x))),
        ),
        Deviation(
            SIGNED_SQRT_AFTER_L2,
            lambda x, layout: _flat(
                reference.signed_sqrt(reference.l2_normalize(bcnn_pool(x)), delta)
            ),
        ),
        Deviation(
            ROOT_IN_BCNN,
            lambda x, layout: _flat(
                reference.l2_normalize(reference.signed_sqrt(reference.sqrtm(bcnn_pool(x)), delta))
            ),
        ),
    )


def _scaled_triangle(m: np.ndarray, order: str) -> np.ndarray:
    c = m.shape[-1]
    weights = np.where(np.eye(c, dtype=bool), 1.0, np.sqrt(2.0))
    return triu_vec(m * weights, order)


def centred_head_deviations(method: str, parameters: Mapping[str, Any]) -> tuple[Deviation, ...]:
    """MPN-COV's and iSQRT-COV's head with one stage's mistake: the pooling's, the root's, the
    triangle's."""
    eps = float(parameters.get("eps", 0.0))
    order = str(parameters["order"])
    reference_root = _root(method, parameters)

    def head(
        x: np.ndarray, layout: str, pool: Mistake | None = None, root: Mistake | None = None
    ) -> np.ndarray:
        s = pool(x, layout) if pool is not None else centred_pool(x, eps)
        z = root(s, layout) if root is not None else reference_root(s)
        return triu_vec(z, order)

    other = next(o for o in TRIU_ORDERS if o != order)
    return (
        *(Deviation(d.cause, partial(head, pool=d.forward)) for d in pool_deviations(method, eps)),
        *(
            Deviation(d.cause, partial(head, root=d.forward))
            for d in root_deviations(method, parameters)
        ),
        Deviation(
            OTHER_ORDER.format(other=other),
            lambda x, layout: triu_vec(reference_root(centred_pool(x, eps)), other),
        ),
        Deviation(
            SCALED_TRIANGLE,
            lambda x, layout: _scaled_triangle(reference_root(centred_pool(x, eps)), order),
        ),
    )


def _root(method: str, parameters: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    if method == "mpn-cov":
        alpha = float(parameters["alpha"])
        return lambda s: matrix_power(s, alpha)
    iterations = int(parameters["iterations"])
    return lambda s: _isqrt_root(s, iterations, np.maximum(_traces(s), np.finfo(float).tiny))


# -- matching -------------------------------------------------------------------------------------


def by_stage(spec: StageSpec) -> tuple[Deviation, ...]:
    """The mistakes tried for `spec`'s stage of its method (not IBP)."""
    parameters = dict(spec.parameters)
    method, stage = spec.method, spec.name
    if stage == "pool":
        return pool_deviations(method, float(parameters.get("eps", 0.0)))
    if stage == "sqrtm":
        return root_deviations(method, parameters)
    if stage == "signed-sqrt":
        return bcnn_signed_sqrt_deviations()
    if stage == "head" and method == "bcnn":
        return bcnn_head_deviations(float(parameters["delta"]))
    if stage == "head":
        return centred_head_deviations(method, parameters)
    return deviations.BY_STAGE[stage]


def _searched_causes(
    spec: StageSpec, x: np.ndarray, output: np.ndarray, expected: np.ndarray, allowed: float
) -> list[str]:
    """The iteration count or power that explains the output best, where one does."""
    if spec.method == "bcnn" or spec.name not in ("sqrtm", "head"):
        return []
    parameters = dict(spec.parameters)
    if spec.name == "sqrtm":
        a = x
        finish: Callable[[np.ndarray], np.ndarray] = lambda z: z  # noqa: E731
    else:
        a = centred_pool(x, float(parameters.get("eps", 0.0)))
        order = str(parameters["order"])
        finish = lambda z: triu_vec(z, order)  # noqa: E731
    scale = max(np.linalg.norm(output), 1e-300)
    best: tuple[float, str] | None = None
    with np.errstate(all="ignore"):
        for cause, candidate in _searched(spec.method, parameters, a):
            flat = finish(candidate).reshape(-1)
            if not explains(output.reshape(-1), flat, allowed) or explains(
                expected.reshape(-1), flat, allowed
            ):
                continue
            residual = float(np.linalg.norm(output.reshape(-1) - flat) / scale)
            if best is None or residual < best[0]:
                best = (residual, cause)
    return [] if best is None else [best[1]]


def matching(
    spec: StageSpec,
    x: np.ndarray,
    layout: str,
    output: np.ndarray,
    expected: np.ndarray,
    allowed: float,
) -> list[str]:
    """Causes of the method's mistakes that explain `output` where `expected` is not explained."""
    causes = deviations.matching_among(by_stage(spec), x, layout, output, expected, allowed, False)
    return list(dict.fromkeys(causes + _searched_causes(spec, x, output, expected, allowed)))


def skew_matching(
    spec: StageSpec,
    a: np.ndarray,
    layout: str,
    output: np.ndarray,
    expected: np.ndarray,
    allowed: float,
) -> list[str]:
    """Causes of a power that does not take the symmetric part of a non-symmetric input."""
    alpha = float(dict(spec.parameters)["alpha"])
    return deviations.matching_among(
        skew_deviations(alpha), a, layout, output, expected, allowed, False
    )
