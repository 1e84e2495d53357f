"""The family's catalogue held to its own references, in both frameworks, in float64: every correct
layer agrees with its method's reference (forward and gradient), every bug disagrees with it and is
reproduced by the cause the catalogue names.

Tolerances come from the one table (impls.testing.tolerances) at the stage's conditioning. The
iSQRT-COV root is judged with the sqrtm row although it is not the exact root: its N steps are a
polynomial p_N whose first-order error growth is at most the exact root's where the iteration has
converged and p_N' <= (3/2)^N where it has not, so the row (u kappa^(1/2) forward, u kappa backward)
bounds it on the covariances used here (kappa >= 1e2)."""

import importlib

import numpy as np
import pytest

from impls.testing import method_catalogue as catalogue
from impls.testing.matrices import relu_feature_maps
from impls.testing.tolerances import (
    APPROXIMATION_BUDGET,
    condition_number,
    jacobian_scale,
    relative_error,
    tolerance,
)
from reference.conventions import SIGNED_SQRT_DELTA
from reference.methods import FEATURE_MAP, METHODS, centred_pool
from reference.methods.bcnn import bcnn_pool

#: A bug must stand clear of round-off, not at the tolerance's edge: its error exceeds the
#: tolerance by this factor at least (the smallest measured margin is ~1e9).
BUG_MARGIN = 1e3

#: (channels, height, width): small, middle, and the realistic C = 64: 12 x 12 maps (realistic
#: side 1.5 sqrt(C), as in impls.testing.stage_specs; centred covariance condition ~1e3) and 6 x 11
#: (66 locations for 64 channels: ~1e5).
SIZES = ((5, 4, 4), (16, 6, 6), (64, 12, 12), (64, 6, 11))
#: Per-sample scales: samples of one batch differ in contrast, as images do; a trace taken over
#: the batch then differs from every sample's own.
SCALES = np.array([1.0, 3.0, 0.4])


def feature_maps(
    channels: int, height: int, width: int, signed: bool = False, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if signed:  # maps before a ReLU (after BatchNorm): covariance entries of both signs
        x = rng.standard_normal((len(SCALES), channels, height, width))
    else:
        x = relu_feature_maps(rng, len(SCALES), channels, height, width)
    return x * SCALES[:, None, None, None]


def _pooled(method: str, x: np.ndarray) -> np.ndarray:
    return bcnn_pool(x) if method == "bcnn" else centred_pool(x)


def stage_input(
    method: str, stage: str, channels: int, height: int, width: int, kind: str = "relu"
):
    """The stage's input (reference layout): feature maps, or the matrix the method's previous
    stage makes of them. kind "non-symmetric" adds a skew part (what the MPN-COV power must treat
    by its symmetric part); "signed" draws maps of both signs."""
    x = feature_maps(channels, height, width, signed=kind == "signed")
    if METHODS[method].stage(stage).input_kind == FEATURE_MAP:
        return x
    a = _pooled(method, x)
    if kind == "non-symmetric":
        r = np.random.default_rng(1).standard_normal(a.shape)
        scale = np.linalg.norm(a, axis=(1, 2))[:, None, None] / channels
        a = a + 0.3 * scale * (r - r.transpose(0, 2, 1))
    return a


def _signed_sqrt_amplification(z: np.ndarray, direction: str) -> float:
    """The signed sqrt's error growth (derivation in impls.testing.tolerances), on the pooled
    matrix itself: B-CNN has no root before it."""
    norms = np.linalg.norm(z.reshape(len(z), -1), axis=1)

    def rms(m: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(m.reshape(len(m), -1) ** 2, axis=1))

    if direction == "forward":
        y = z / (np.sqrt(np.abs(z) + SIGNED_SQRT_DELTA) + np.sqrt(SIGNED_SQRT_DELTA))
        slope = 1 / (2 * np.sqrt(np.abs(z) + SIGNED_SQRT_DELTA))
        return float(np.max(rms(slope) * norms / np.linalg.norm(y.reshape(len(y), -1), axis=1)))
    return float(np.max(rms(1 / (2 * (np.abs(z) + SIGNED_SQRT_DELTA))) * norms))


def allowed(method: str, stage: str, x: np.ndarray, direction: str) -> float:
    """The tolerance table's bound for a correct float64 layer of this stage on input x."""
    channels = x.shape[1]
    if stage in ("pool", "signed-sqrt", "l2"):
        return tolerance(stage, direction, "float64", channels)
    if stage == "sqrtm":
        symmetric = (x + x.transpose(0, 2, 1)) / 2
        return tolerance(stage, direction, "float64", channels, condition_number(symmetric))
    if method == "bcnn":  # no root: the signed sqrt of the pooled matrix sets the growth
        amplification = _signed_sqrt_amplification(bcnn_pool(x), direction)
        return tolerance("head", direction, "float64", channels, 1.0, amplification)
    return tolerance("head", direction, "float64", channels, condition_number(_pooled(method, x)))


def layer(entry, framework: str, kind: str):
    module = importlib.import_module(f"{catalogue.__name__}.{framework}_{kind}")
    return getattr(module, entry.function)


def run(backend, fn, x: np.ndarray, input_kind: str, g: np.ndarray):
    """fn's float64 output and the gradient of <g, output>, in the reference layout."""
    tensor = backend.feature_map(x) if input_kind == FEATURE_MAP else backend.tensor(x)
    out, (grad,) = backend.value_and_vjp(fn, [tensor], g)
    if grad is not None and input_kind == FEATURE_MAP and backend.layout == "channels_last":
        grad = grad.transpose(0, 3, 1, 2)
    return out, grad


def cotangent(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(2).standard_normal(shape)


def agreement(actual: np.ndarray, expected: np.ndarray, floor=0.0) -> float:
    """relative_error, NaN required at the same places in both (inf where they differ)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return np.inf
    return relative_error(np.nan_to_num(actual), np.nan_to_num(expected), floor)


CORRECT_IDS = [f"{entry.name}-{entry.stage}" for entry in catalogue.CORRECT]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"C{s[0]}-{s[1]}x{s[2]}")
@pytest.mark.parametrize("entry", catalogue.CORRECT, ids=CORRECT_IDS)
def test_correct_layer_agrees_with_its_method(backend, entry, size):
    method = METHODS[entry.method]
    reference = method.reference(entry.stage, **dict(entry.parameters))
    kinds = (
        ["relu", "non-symmetric"]
        if (entry.method, entry.stage) == ("mpn-cov", "sqrtm")
        else ["relu"]
    )
    for kind in kinds:
        x = stage_input(entry.method, entry.stage, *size, kind=kind)
        expected = reference.forward(x)
        g = cotangent(expected.shape)
        out, grad = run(
            backend, layer(entry, backend.name, "correct"), x, reference.stage.input_kind, g
        )
        forward_error = relative_error(out, expected)
        assert forward_error <= allowed(entry.method, entry.stage, x, "forward"), (
            kind,
            forward_error,
        )
        floor = jacobian_scale(x, g, expected)
        gradient_error = relative_error(grad, reference.vjp(x, g), floor)
        assert gradient_error <= allowed(entry.method, entry.stage, x, "backward"), (
            kind,
            gradient_error,
        )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"C{s[0]}-{s[1]}x{s[2]}")
@pytest.mark.parametrize("bug", catalogue.BUGS, ids=lambda bug: bug.name)
def test_bug_disagrees_and_is_reproduced_by_its_cause(backend, bug, size):
    kind = {"mpn-cov-power-svd": "non-symmetric", "bcnn-sqrt-plus-eps": "signed"}.get(
        bug.name, "relu"
    )
    x = stage_input(bug.method, bug.stage, *size, kind=kind)
    reference = METHODS[bug.method].reference(bug.stage, **dict(bug.parameters))
    expected = reference.forward(x)
    out, _ = run(
        backend,
        layer(bug, backend.name, "bugs"),
        x,
        reference.stage.input_kind,
        cotangent(expected.shape),
    )
    bound = allowed(bug.method, bug.stage, x, "forward")
    assert agreement(out, expected) > BUG_MARGIN * bound
    assert agreement(out, bug.cause(x)) <= bound


def test_svd_power_is_invisible_on_a_symmetric_matrix(backend):
    """Why the bug needs a non-symmetric input: on a symmetric PSD matrix the SVD is the
    eigendecomposition, and the SVD power is the power (a checker must draw a skew part)."""
    bug = catalogue.BY_NAME["mpn-cov-power-svd"]
    x = stage_input("mpn-cov", "sqrtm", 16, 6, 6)
    out, _ = run(backend, layer(bug, backend.name, "bugs"), x, "matrix", cotangent(x.shape))
    forward = METHODS["mpn-cov"].reference("sqrtm").forward(x)
    assert relative_error(out, forward) <= allowed("mpn-cov", "sqrtm", x, "forward")


def test_five_iterations_are_isqrt_cov_but_not_ibp(backend):
    """The issue's criterion on the realistic size: the 5-iteration root agrees with iSQRT-COV's
    reference and is further from the exact root than any converged iteration may be."""
    entry = next(e for e in catalogue.CORRECT if e.function == "isqrt_cov_root")
    x = stage_input("isqrt-cov", "sqrtm", 64, 12, 12)
    out, _ = run(backend, layer(entry, backend.name, "correct"), x, "matrix", cotangent(x.shape))
    assert relative_error(out, METHODS["isqrt-cov"].reference("sqrtm").forward(x)) <= allowed(
        "isqrt-cov", "sqrtm", x, "forward"
    )
    assert (
        relative_error(out, METHODS["ibp"].reference("sqrtm").forward(x))
        > 10 * (APPROXIMATION_BUDGET["sqrtm"]["forward"])
    )


@pytest.mark.parametrize(
    ("function", "wrong"),
    [
        ("isqrt_cov_root_3", {}),
        ("isqrt_cov_root", {"iterations": 3}),
        ("isqrt_cov_head_column_order", {}),
    ],
)
def test_a_layer_fails_under_parameters_it_was_not_written_for(backend, function, wrong):
    """The parameters matter: 3 iterations are not 5, and the column order is not the row order."""
    entry = next(e for e in catalogue.CORRECT if e.function == function)
    x = stage_input(entry.method, entry.stage, 16, 6, 6)
    reference = METHODS[entry.method].reference(entry.stage, **wrong)
    out, _ = run(
        backend,
        layer(entry, backend.name, "correct"),
        x,
        reference.stage.input_kind,
        cotangent(reference.output_shape(x.shape)),
    )
    assert relative_error(out, reference.forward(x)) > BUG_MARGIN * allowed(
        entry.method, entry.stage, x, "forward"
    )


def test_catalogue_entries_name_real_methods_stages_parameters_and_functions(backend):
    for entry in (*catalogue.CORRECT, *catalogue.BUGS):
        method = METHODS[entry.method]
        assert entry.stage in method.stage_names
        method.resolve(**dict(entry.parameters))
        module_name, function = entry.target(backend.name).split(":")
        assert callable(getattr(importlib.import_module(module_name), function))
    assert len({bug.name for bug in catalogue.BUGS}) == len(catalogue.BUGS)
    assert len({(e.name, e.stage) for e in catalogue.CORRECT}) == len(catalogue.CORRECT)
    for name in ("bcnn", "mpn-cov", "isqrt-cov"):  # every method has correct layers and bugs
        assert any(e.method == name for e in catalogue.CORRECT)
        assert any(b.method == name for b in catalogue.BUGS)


def _degenerate(method: str, stage: str) -> list[np.ndarray]:
    """Inputs in the method's domain that make the covariance singular: fewer locations than
    channels (3, at least every method's min_locations), and dead channels."""
    rng = np.random.default_rng(0)
    maps = [
        relu_feature_maps(rng, 2, 16, 1, 3),
        relu_feature_maps(rng, 2, 8, 4, 4, dead_channels=3),
    ]
    if METHODS[method].stage(stage).input_kind == FEATURE_MAP:
        return maps
    return [_pooled(method, x) for x in maps]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("entry", catalogue.CORRECT, ids=CORRECT_IDS)
def test_correct_layer_is_finite_on_degenerate_inputs(backend, entry, dtype):
    """No false alarm from the finite-values property: rank-deficient covariances give finite
    outputs and gradients in the correct layers of every method."""
    reference = METHODS[entry.method].reference(entry.stage, **dict(entry.parameters))
    fn = layer(entry, backend.name, "correct")
    for x in _degenerate(entry.method, entry.stage):
        tensor = (
            backend.feature_map(x, dtype)
            if reference.stage.input_kind == FEATURE_MAP
            else backend.tensor(x, dtype)
        )
        g = cotangent(reference.output_shape(x.shape))
        out, (grad,) = backend.value_and_vjp(fn, [tensor], g)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad)), x.shape
