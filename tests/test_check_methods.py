"""ibp-check --method: every layer of the family's catalogue is checked against its own method's
reference, in both frameworks. Each catalogued bug fails with its own cause and no other; every
correct layer passes; properties that are not the method's are N/A with the reason; under IBP
nothing changes; a stage or parameter the method has not is a one-line usage error.

The sandbox checks run with few examples (FAST), after the fixed realistic cases at C = 64 that
every check runs; one sandbox per framework serves the module. The diagnoses and tolerances are
also tested in-process, on NumPy inputs.
"""

import dataclasses

import numpy as np
import pytest

from impls.testing import check, method_catalogue, method_specs
from impls.testing.assertions import check_stage
from impls.testing.check_catalogue import (
    markdown,
    method_scores,
    run_method_bug,
    run_method_correct,
)
from impls.testing.check_options import ModelSettings, StageSettings
from impls.testing.command_line import EXIT_USAGE, UsageError
from impls.testing.diagnosis import explain, method_deviations
from impls.testing.matrices import centred_relu_covariances, relu_feature_maps
from impls.testing.metadata import ENVELOPE_KEY
from impls.testing.method_specs import (
    centring_amplification,
    iteration_amplification,
    spread,
    stage_spec,
)
from impls.testing.properties import with_skew_part
from impls.testing.stage_specs import STAGES, Sizes
from impls.testing.strategies import batch_sizes
from impls.testing.tolerances import relative_error
from reference.methods import METHODS, centred_pool, triu_vec
from reference.methods.isqrt_cov import isqrt_cov_root, newton_schulz_iterations

#: The fixed realistic cases run whatever these settings: the search adds few small examples.
FAST = {"max_examples": 5, "size": 5, "seconds_per_property": 1.0}
TORCH_CORRECT = "impls.testing.method_catalogue.torch_correct"


# -- the catalogue, through the sandbox -----------------------------------------------------------


@pytest.mark.parametrize("bug", method_catalogue.BUGS, ids=lambda bug: bug.name)
def test_a_catalogued_bug_fails_with_its_own_cause(backend, bug, sandboxes):
    outcome = run_method_bug(bug, backend.name, sandbox=sandboxes(backend.name), **FAST)
    assert outcome.caught, (
        f"{bug.name} [{backend.name}]: no diagnosis holds {bug.expected!r}; "
        f"failed: {outcome.failed_properties}"
    )
    assert not outcome.wrong_causes, f"{bug.name} [{backend.name}]: {outcome.wrong_causes}"


@pytest.mark.parametrize(
    "layer", method_catalogue.CORRECT, ids=lambda layer: f"{layer.name}-{layer.stage}"
)
def test_a_correct_layer_passes_under_its_own_method(backend, layer, sandboxes):
    outcome = run_method_correct(layer, backend.name, sandbox=sandboxes(backend.name), **FAST)
    assert not outcome.failed_properties, f"false alarm on {layer.name} [{backend.name}]"


def test_five_iterations_pass_under_isqrt_cov_and_fail_under_ibp(backend, sandboxes):
    """The issue's own case: the authors' 5 iterations are iSQRT-COV, and not IBP's root."""
    target = f"impls.testing.method_catalogue.{backend.name}_correct:isqrt_cov_root"
    box = sandboxes(backend.name)
    options = {"framework": backend.name, "max_examples": 5, "size": 5}
    from impls.testing.check_runner import check as run

    own = run(
        "sqrtm", target, StageSettings.from_options({**options, "method": "isqrt-cov"}), sandbox=box
    )
    assert own.passed and own.method == "isqrt-cov" and own.parameters == {"iterations": 5}
    ibp = run("sqrtm", target, StageSettings.from_options(options), sandbox=box)
    failed = {r.name: r.diagnosis for r in ibp.results if r.status == "FAIL"}
    assert "has not converged" in failed["forward exactness"]
    assert "after 5 iterations" in failed["forward exactness"]


def test_properties_that_are_not_the_methods_are_na_with_the_reason(sandboxes):
    from impls.testing.check_runner import check as run

    settings = StageSettings.from_options(
        {"framework": "torch", "method": "isqrt-cov", "max_examples": 3, "size": 4}
    )
    report = run("sqrtm", f"{TORCH_CORRECT}:isqrt_cov_root", settings, sandbox=sandboxes("torch"))
    statuses = {r.name: (r.status, r.diagnosis) for r in report.results}
    reasons = {e.property: e.reason for e in METHODS["isqrt-cov"].not_applicable_to("sqrtm")}
    assert statuses["square root"] == ("N/A", reasons["square-root"])
    for name in ("forward exactness", "backward exactness"):
        assert statuses[name] == ("N/A", reasons["convergence"])
    # Every other property of the stage ran, and the report says what was not applicable.
    assert [s for s, _ in statuses.values()].count("PASS") == 6
    assert "N/A square root: N iterations are not the root" in " ".join(check_text(report).split())


def check_text(report):
    from impls.testing.report_text import stage_report

    return stage_report(report, "target")


def test_the_power_of_singular_values_fails_only_on_non_symmetric_input(sandboxes):
    """D's risk 2: the SVD power is the root of a symmetric PSD matrix; the property that adds
    a skew part runs under MPN-COV only (IBP's correct SVD root would fail it)."""
    from impls.testing.check_runner import check as run

    target = "impls.testing.method_catalogue.torch_bugs:mpn_cov_power_svd"
    settings = StageSettings.from_options(
        {
            "framework": "torch",
            "method": "mpn-cov",
            "max_examples": 3,
            "size": 4,
            "forward_only": True,
        }
    )
    report = run("sqrtm", target, settings, sandbox=sandboxes("torch"))
    failed = [r.name for r in report.results if r.status == "FAIL"]
    assert failed == ["non-symmetric input"]
    ibp = run(
        "sqrtm",
        "impls.testing.bug_catalogue.torch_correct:sqrtm_svd_lyapunov",
        StageSettings.from_options({"framework": "torch", "max_examples": 3, "size": 4}),
        sandbox=sandboxes("torch"),
    )
    assert "non-symmetric input" not in [r.name for r in ibp.results] and ibp.passed


# -- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, named",
    [
        (["l2", f"{TORCH_CORRECT}:bcnn_pool", "--method", "isqrt-cov"], "pool, sqrtm, head"),
        (
            ["sqrtm", f"{TORCH_CORRECT}:bcnn_pool", "--method", "bcnn"],
            "pool, signed-sqrt, l2, head",
        ),
        (
            ["sqrtm", f"{TORCH_CORRECT}:bcnn_pool", "--method", "isqrt-cov", "--eps", "1"],
            "no parameter 'eps'",
        ),
        (["sqrtm", f"{TORCH_CORRECT}:bcnn_pool", "--iterations", "3"], "iterations"),
        (
            ["sqrtm", f"{TORCH_CORRECT}:bcnn_pool", "--method", "isqrt-cov", "--iterations", "0"],
            "--iterations",
        ),
        (
            ["head", f"{TORCH_CORRECT}:bcnn_pool", "--method", "mpn-cov", "--order", "diagonal"],
            "--order",
        ),
        (["head", f"{TORCH_CORRECT}:bcnn_pool", "--method", "mpn-cov", "--alpha", "0"], "--alpha"),
        (["pool", f"{TORCH_CORRECT}:bcnn_pool", "--method", "svd"], "--method"),
        (["model", f"{TORCH_CORRECT}:bcnn_pool", "--iterations", "3"], "needs --method"),
    ],
)
def test_a_stage_or_parameter_the_method_has_not_is_one_usage_line(
    argv, named, capsys, monkeypatch
):
    def no_process(*args, **kwargs):
        raise AssertionError("a process started")

    monkeypatch.setattr("impls.testing.check_runner.Sandbox", no_process)
    monkeypatch.setattr("impls.testing.model_check.engine.ModelSandbox", no_process)
    try:
        status = check.main(argv)
    except SystemExit as exited:
        status = exited.code
    assert status == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err


def test_the_api_takes_the_methods_keywords_and_refuses_the_same(monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process started")

    monkeypatch.setattr("impls.testing.check_runner.Sandbox", no_process)
    with pytest.raises(
        UsageError, match="isqrt-cov has no l2 stage; its stages: pool, sqrtm, head"
    ):
        check_stage("l2", f"{TORCH_CORRECT}:bcnn_pool", method="isqrt-cov")
    with pytest.raises(UsageError, match="its parameters: eps, alpha, order"):
        check_stage("sqrtm", f"{TORCH_CORRECT}:bcnn_pool", method="mpn-cov", iterations=3)
    with pytest.raises(UsageError, match="iterations=2.5"):
        StageSettings.from_options({"method": "isqrt-cov", "iterations": 2.5})
    settings = StageSettings.from_options({"method": "isqrt-cov", "iterations": "3"})
    assert settings.parameters() == {"iterations": 3}
    with pytest.raises(UsageError, match="needs --method"):
        ModelSettings.from_options({"alpha": 0.25})


# -- IBP is as it was -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_under_ibp_with_its_defaults_the_stages_are_ibps_own(stage):
    spec = stage_spec("ibp", stage)
    assert dataclasses.replace(spec, parameters=()) == STAGES[stage]
    assert dict(spec.parameters) == METHODS["ibp"].defaults()


def test_under_ibp_other_eps_and_delta_bind_the_reference():
    rng = np.random.default_rng(0)
    x = relu_feature_maps(rng, 2, 6, 4, 4)
    spec = stage_spec("ibp", "head", {"eps": 1e-3, "delta": 0.0})
    import reference

    assert np.allclose(spec.forward(x), reference.ibp_head(x, eps=1e-3, delta=0.0))
    assert np.allclose(spec.conditioned_matrix(x), reference.bilinear_pool(x, eps=1e-3))


# -- inputs and tolerances ------------------------------------------------------------------------


def test_spread_gives_every_sample_a_centred_covariance():
    """D's risk 1: a map constant over its locations has S = 0, where iSQRT-COV is 0 / 0."""
    x = np.zeros((3, 4, 2, 1))
    x[1, 2] = 5.0  # constant, not zero
    x[2] = relu_feature_maps(np.random.default_rng(0), 1, 4, 2, 1)[0]
    spread_x = spread(x)
    traces = np.trace(centred_pool(spread_x), axis1=1, axis2=2)
    assert np.all(traces > 0)
    assert np.array_equal(spread_x[2], x[2])  # a sample with a covariance is left as it is
    assert spread(spread_x) is spread_x


def test_the_drawn_maps_of_centred_methods_have_a_covariance():
    from hypothesis import given, settings

    sizes = Sizes(6)
    strategy = method_specs.CENTRED_POOL_INPUTS.degenerate(sizes, batch_sizes)

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(x=strategy)
    def drawn(x):
        assert x.shape[2] * x.shape[3] >= 2
        assert np.all(np.trace(centred_pool(x), axis1=1, axis2=2) > 0)

    drawn()


def test_bcnn_signed_sqrt_meets_entries_of_both_signs_first():
    """D's risk 3: sqrt(y + eps) differs from the reference by a constant on ReLU maps; the
    first input is the second moment of maps before a ReLU."""
    spec = stage_spec("bcnn", "signed-sqrt")
    first = spec.drawn.first(np.random.default_rng(0), 2, Sizes(8))
    assert np.any(first < -1e-5)


def test_the_iteration_growth_is_the_smaller_of_the_roots_and_the_polynomials():
    a = centred_relu_covariances(np.random.default_rng(0), 2, 16, 6, 6)
    from impls.testing.tolerances import condition_number

    kappa = condition_number(a)
    assert iteration_amplification(a, 3, "forward") == pytest.approx(1.5**3)
    assert iteration_amplification(a, 40, "forward") == pytest.approx(kappa**0.5)
    assert iteration_amplification(a, 40, "backward") == pytest.approx(kappa)


def test_centring_amplification_is_what_the_mean_carries():
    rng = np.random.default_rng(0)
    x = relu_feature_maps(rng, 2, 8, 5, 5)
    assert centring_amplification(x) > 1
    assert centring_amplification(x - x.mean(axis=(2, 3), keepdims=True)) == pytest.approx(1)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_the_bcnn_heads_growth_is_the_signed_sqrts_on_the_pooled_matrix(direction):
    """D's risk 4: B-CNN has no root, so the signed square root's growth is computed on X X^T / N
    itself (the catalogue test's own derivation), not on its root as IBP's is."""
    from reference.methods.bcnn import bcnn_pool

    from .test_method_catalogue import _signed_sqrt_amplification

    x = relu_feature_maps(np.random.default_rng(6), 2, 8, 5, 5)
    growth = stage_spec("bcnn", "head").amplification(x, direction)
    assert growth == pytest.approx(_signed_sqrt_amplification(bcnn_pool(x), direction))
    assert growth != pytest.approx(STAGES["head"].amplification(x, direction))


def test_a_float32_isqrt_cov_root_sits_far_inside_its_tolerance():
    """The derived tolerance against measured float32 errors: 5 iterations at C = 64,
    condition numbers to 1e5."""
    import torch

    from impls.testing.method_catalogue import torch_correct

    spec = stage_spec("isqrt-cov", "sqrtm")
    from impls.testing.properties import stage_tolerance

    for a in spec.drawn.realistic(np.random.default_rng(1), 2, Sizes(8)):
        out = torch_correct.isqrt_cov_root(torch.tensor(a, dtype=torch.float32)).numpy()
        error = relative_error(out, isqrt_cov_root(a))
        assert error <= stage_tolerance(spec, "forward", "float32", a) / 10


# -- diagnoses, in-process ------------------------------------------------------------------------


def _forward_diagnosis(method, stage, x, output, **parameters):
    spec = stage_spec(method, stage, parameters)
    expected = spec.forward(x)
    return explain.explain_forward(
        spec, "channels_first", x, output, expected, relative_error(output, expected), 1e-6
    )


def _covariances(seed=0):
    return centred_relu_covariances(np.random.default_rng(seed), 2, 12, 5, 5)


@pytest.mark.parametrize("run", [1, 3, 4, 7])
def test_the_iteration_count_run_is_named(run):
    a = _covariances()
    diagnosis = _forward_diagnosis("isqrt-cov", "sqrtm", a, isqrt_cov_root(a, run))
    assert f"Z is what {run} iterations give, not the 5" in diagnosis
    assert "has not converged" not in diagnosis


def test_frobenius_pre_normalisation_is_named():
    a = _covariances()
    norm = np.linalg.norm(a, axis=(1, 2), keepdims=True)
    output = newton_schulz_iterations(a / norm, 5) * np.sqrt(norm)
    assert "Frobenius norm" in _forward_diagnosis("isqrt-cov", "sqrtm", a, output)


def test_the_exact_root_under_isqrt_cov_is_named_as_the_exact_root():
    import reference

    a = _covariances()
    assert "the exact square root" in _forward_diagnosis(
        "isqrt-cov", "sqrtm", a, reference.sqrtm(a)
    )


def test_the_triangles_order_and_scaling_are_named():
    x = relu_feature_maps(np.random.default_rng(2), 2, 6, 4, 4)
    root = isqrt_cov_root(centred_pool(x))
    column = _forward_diagnosis("isqrt-cov", "head", x, triu_vec(root, "column"))
    assert "pass --order column" in column
    scaled = root * np.where(np.eye(6, dtype=bool), 1.0, np.sqrt(2))
    assert "scaled by sqrt(2)" in _forward_diagnosis("isqrt-cov", "head", x, triu_vec(scaled))


def test_the_unbiased_covariance_is_named():
    x = relu_feature_maps(np.random.default_rng(3), 2, 6, 3, 3)
    output = centred_pool(x) * 9 / 8
    assert "divided by N - 1" in _forward_diagnosis("mpn-cov", "pool", x, output)


def test_another_power_is_named_with_its_value():
    from reference.methods.mpn_cov import matrix_power

    a = _covariances(1)
    diagnosis = _forward_diagnosis("mpn-cov", "sqrtm", a, matrix_power(a, 0.25))
    assert "Z is A^0.25, not A^0.5" in diagnosis


def test_a_root_in_a_bcnn_head_is_named_as_ibp():
    import reference

    x = relu_feature_maps(np.random.default_rng(4), 2, 6, 4, 4)
    output = reference.ibp_head(x, eps=0.0)
    assert "that is IBP" in _forward_diagnosis("bcnn", "head", x, output)


def test_one_triangle_read_by_eigh_is_named_on_a_skewed_input():
    from reference.methods.mpn_cov import matrix_power

    a = with_skew_part(_covariances(5))
    lower = np.tril(a) + np.swapaxes(np.tril(a, -1), 1, 2)
    spec = stage_spec("mpn-cov", "sqrtm")
    expected = spec.forward(a)
    output = matrix_power(lower)
    diagnosis = explain.explain_skewed(
        spec, "channels_first", a, output, expected, relative_error(output, expected), 1e-6
    )
    assert "lower triangle" in diagnosis


def test_the_method_table_has_every_deviation_stage():
    for name, method in METHODS.items():
        if name == "ibp":
            continue
        for stage in method.stage_names:
            assert method_deviations.by_stage(stage_spec(name, stage))


# -- results --------------------------------------------------------------------------------------


def _outcome(**fields):
    from impls.testing.check_catalogue import Outcome

    base = dict(
        name="x",
        stage="sqrtm",
        framework="torch",
        target="t",
        expected="",
        failed_properties=[],
        caught_by=[],
        wrong_causes=[],
        notes=[],
        seconds=1.0,
    )
    return Outcome(**{**base, **fields})


def test_scores_are_per_method_and_the_results_page_shows_them():
    bugs = [
        _outcome(name="b1", method="isqrt-cov", expected="3 iterations", caught_by=["forward"]),
        _outcome(name="b2", method="bcnn", expected="signed sqrt after the L2"),
    ]
    correct = [_outcome(name="c1", method="isqrt-cov"), _outcome(name="c2", method="bcnn")]
    summary = method_scores(bugs, correct)
    assert list(summary) == ["bcnn", "isqrt-cov"]
    assert summary["isqrt-cov"]["caught"] == 1 and summary["bcnn"]["diagnosis"]["none"] == 1
    document = {
        ENVELOPE_KEY: {"command": "cmd", "git_commit": "abc", "date_utc": "today"},
        "settings": {"max_examples": 5, "size": 5},
        "summary": {
            "bugs": 0,
            "caught": 0,
            "mutation_score": 0.0,
            "diagnosis": {"expected": 0, "wrong": 0, "none": 0},
            "correct_layers": 0,
            "false_alarms": 0,
        },
        "bugs": [],
        "correct": [],
        "models": {
            "summary": {
                "correct_models": 0,
                "false_alarms": 0,
                "buggy_models": 0,
                "caught": 0,
                "wrong_causes": 0,
            },
            "correct": [],
            "buggy": [],
        },
    }
    without = markdown(document)
    assert "second-order pooling family" not in without  # a page of an older run renders as it did
    with_methods = markdown(
        {
            **document,
            "methods": {
                "summary": summary,
                "bugs": [
                    dataclasses.asdict(o) | {"caught": o.caught, "diagnosis": o.diagnosis}
                    for o in bugs
                ],
                "correct": [dataclasses.asdict(o) for o in correct],
            },
        }
    )
    assert "| isqrt-cov | 1 / 1 (100%) | 0 / 1 | 1 | 0 | 0 |" in with_methods
    assert "| bcnn | 0 / 1 (0%) | 0 / 1 | 0 | 0 | 1 |" in with_methods
