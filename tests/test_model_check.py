"""`ibp-check model` and the assertions for users' test suites: the founding question's model
fails naming its bugs, the fixed model passes, a low learning rate alone fails alone, and
`assert_stage` in a user's pytest file reports the diagnosis."""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from impls.testing import founding_question as question
from impls.testing.assertions import target_of
from impls.testing.check import main as ibp_check
from impls.testing.check_options import ModelSettings
from impls.testing.metadata import read_results
from impls.testing.model_check.checks import PROBE_MARGIN_SE
from impls.testing.model_check.located import locate_head
from impls.testing.model_check.recognised import given, recognise
from impls.testing.model_check.supervisor import CHECKS
from impls.testing.model_check.traced_models import LayerCall
from reference.contracts import IBPInputError
from reference.methods import centred_pool, triu_vec
from reference.methods.bcnn import bcnn_head
from reference.methods.isqrt_cov import isqrt_cov_head, isqrt_cov_root
from reference.methods.mpn_cov import matrix_power

from .conftest import import_framework

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: framework -> (package, one sample's shape for --input-shape, the examples' file suffix)
FRAMEWORKS = {"tf": ("tensorflow", None, "keras"), "torch": ("torch", (3, 32, 32), "torch")}
QUESTION_HEAD = [
    ("bilinear_pool", "pool"),
    ("svd_square_root", "sqrtm"),
    ("signed_sqrt", "signed-sqrt"),
    ("l2_normalise", "l2"),
]


@pytest.fixture(params=sorted(FRAMEWORKS), ids=str)
def framework(request):
    import_framework(FRAMEWORKS[request.param][0])
    return request.param


@functools.cache
def _report(framework, example, function):
    from impls.testing.assertions import check_model

    _, shape, suffix = FRAMEWORKS[framework]
    return check_model(f"{EXAMPLES / f'{example}_{suffix}.py'}:{function}", framework, shape)


def _finding(report, name):
    return next(f for f in report.findings if f.name == name)


def _causes(report, name):
    return " ".join(_finding(report, name).causes)


@pytest.mark.slow
def test_question_model_names_its_bugs(framework):
    report = _report(framework, "question_model", "question_model")
    assert not report.passed
    assert report.head == QUESTION_HEAD
    assert report.batch == question.BATCH_SIZE
    assert f"a batch size of {question.BATCH_SIZE} is hard-coded" in _causes(report, "batch sizes")
    for mode in ("inference", "training"):
        mixing = _finding(report, f"per-sample independence ({mode} mode)")
        assert mixing.status == "FAIL"
        assert mixing.causes[0].startswith("layer bilinear_pool")
        assert mixing.measurements["mixing_layers"] == ["bilinear_pool", "l2_normalise"]
    rate = _finding(report, "learning-rate scale")
    assert rate.status == "FAIL" and "the classifier's logits move by" in rate.causes[0]
    assert "SGD at lr 1.0" in rate.causes[0]
    probe = _finding(report, "learnability")
    assert probe.status == "FAIL" and "batch-majority ceiling" in probe.causes[0]
    assert probe.measurements["accuracy"] <= probe.measurements["batch_majority_ceiling"]
    assert "eps * ones" in _causes(report, "pool stage on layer bilinear_pool")
    assert "applied twice" in _causes(report, "sqrtm stage on layer svd_square_root")
    assert "whole batch" in _causes(report, "l2 stage on layer l2_normalise")


@pytest.mark.slow
def test_fixed_model_with_the_recipe_passes(framework):
    report = _report(framework, "fixed_model", "fixed_model")
    failed = [(f.name, f.causes) for f in report.findings if f.status == "FAIL"]
    assert failed == []
    assert [stage for _, stage in report.head] == ["pool", "sqrtm", "signed-sqrt", "l2"]
    probe = _finding(report, "learnability").measurements
    margin = PROBE_MARGIN_SE * np.sqrt(0.25 / probe["test_images"])
    assert probe["accuracy"] > probe["batch_majority_ceiling"] + margin


@pytest.mark.slow
def test_low_learning_rate_fails_on_the_learning_rate_alone(framework):
    report = _report(framework, "fixed_model", "low_learning_rate_model")
    assert [f.name for f in report.findings if f.status == "FAIL"] == ["learning-rate scale"]
    assert "the learning rate is far too small" in _causes(report, "learning-rate scale")


def main(argv):
    return ibp_check(["model", *argv])


def _call(name, kind, x, y, parametrised=False):
    return LayerCall(name, name, kind, (x,), y, "float32", False, parametrised, parametrised)


def _located(calls, framework):
    return [(layer.name, layer.stage) for layer in locate_head(calls, framework)]


def test_locate_head_by_inputs_and_outputs():
    rng = np.random.default_rng(0)
    feature_map = rng.random((2, 3, 4, 5))  # torch layout: 3 channels
    pooled = np.einsum("bchw,bdhw->bcd", feature_map, feature_map)
    root = pooled / 2.0 + 0.1  # any (B, C, C) -> (B, C, C) map that is not another stage
    signed = np.sign(root) * np.sqrt(np.abs(root))
    flat = signed.reshape(2, -1)
    normalised = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    calls = [
        _call("backbone", "Sequential", feature_map, feature_map, parametrised=True),
        _call("pool", "Pool", feature_map, pooled),
        _call("root", "Root", pooled, root),
        _call("signed", "Signed", root, signed),
        _call("flatten", "Flatten", signed, flat),
        _call("norm", "Norm", flat, normalised),
        _call("classifier", "Linear", normalised, normalised[:, :2], parametrised=True),
    ]
    assert _located(calls, "torch") == [
        ("pool", "pool"),
        ("root", "sqrtm"),
        ("signed", "signed-sqrt"),
        ("norm", "l2"),
    ]


def test_a_whole_head_is_located_as_one_layer():
    feature_map = np.random.default_rng(1).random((2, 4, 4, 3))  # Keras layout
    pooled = np.einsum("bhwc,bhwd->bcd", feature_map, feature_map).reshape(2, -1)
    head = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert _located([_call("ibp", "IBPHead", feature_map, head)], "tf") == [("ibp", "head")]


def _centred_head_calls(root, seed=0):
    """A backbone's map, its centred covariance, `root` of it (a function of the covariance)."""
    rng = np.random.default_rng(seed)
    feature_map = rng.random((2, 6, 5, 5))  # torch layout: 6 channels
    covariance = centred_pool(feature_map)
    normalised = root(covariance)
    return [
        _call("backbone", "Sequential", feature_map, feature_map, parametrised=True),
        _call("cov", "Covpool", feature_map, covariance),
        _call("root", "Sqrtm", covariance, normalised),
        _call("triu", "Triuvec", normalised, triu_vec(normalised)),
        _call("classifier", "Linear", triu_vec(normalised), normalised[:, 0], parametrised=True),
    ]


def _recognised(calls):
    located = locate_head(calls, "torch")
    return [(one.name, one.stage) for one in located], recognise(calls, located)


def test_an_isqrt_cov_head_is_recognised_with_its_iteration_count():
    head, method = _recognised(_centred_head_calls(lambda a: isqrt_cov_root(a, 3)))
    assert head == [("cov", "pool"), ("root", "sqrtm")]
    assert (method.method, method.parameters) == ("isqrt-cov", {"iterations": 3})
    assert "3 trace-normalised Newton-Schulz iterations" in method.evidence


def test_a_centred_covariance_with_the_exact_root_is_mpn_cov():
    head, method = _recognised(_centred_head_calls(lambda a: matrix_power(a, 0.5), seed=1))
    assert (method.method, method.parameters) == ("mpn-cov", {"alpha": 0.5, "eps": 0.0})


def test_an_uncentred_pooling_without_a_root_is_bcnn_and_with_one_ibp():
    rng = np.random.default_rng(2)
    feature_map = rng.random((2, 4, 3, 3))
    pooled = np.einsum("bchw,bdhw->bcd", feature_map, feature_map) / 9
    signed = np.sign(pooled) * np.sqrt(np.abs(pooled))
    flat = signed.reshape(2, -1)
    normalised = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    calls = [
        _call("pool", "Pool", feature_map, pooled),
        _call("signed", "Signed", pooled, signed),
        _call("flatten", "Flatten", signed, flat),
        _call("norm", "Norm", flat, normalised),
    ]
    assert _recognised(calls)[1].method == "bcnn"
    root = calls[1].input @ np.eye(4) * 0.5 + 0.1  # any other matrix map: the root
    with_root = [calls[0], _call("root", "Root", pooled, root)]
    assert _recognised(with_root)[1].method == "ibp"


def test_a_whole_head_with_an_upper_triangle_is_located_and_recognised():
    feature_map = np.random.default_rng(3).random((2, 5, 5, 7))  # Keras layout: 7 channels
    x = feature_map.transpose(0, 3, 1, 2)
    head = isqrt_cov_head(x, iterations=5, order="column")
    located = locate_head([_call("isqrt", "Lambda", feature_map, head)], "tf")
    assert [(one.name, one.stage) for one in located] == [("isqrt", "head")]
    method = recognise([_call("isqrt", "Lambda", feature_map, head)], located)
    assert (method.method, method.parameters) == ("isqrt-cov", {"iterations": 5, "order": "column"})


def test_a_unit_norm_head_is_told_bcnn_or_ibp_by_its_reference():
    import reference

    feature_map = np.random.default_rng(4).random((2, 5, 5, 4))  # Keras layout
    x = feature_map.transpose(0, 3, 1, 2)
    for method, head in (("bcnn", bcnn_head(x)), ("ibp", reference.ibp_head(x))):
        located, recognised = _recognised([_call("head", "Lambda", feature_map, head)])
        assert located == [("head", "head")] and recognised.method == method


def test_a_method_given_is_used_with_its_parameters():
    settings = ModelSettings.from_options({"method": "isqrt-cov", "iterations": 3})
    method = given(settings)
    assert (method.method, method.parameters) == ("isqrt-cov", {"iterations": 3})
    assert given(ModelSettings.from_options({})) is None


@pytest.mark.slow
def test_a_model_checked_under_another_method_fails_on_what_that_method_has_not():
    """The corpus's iSQRT-COV model, told it is B-CNN (no root) or iSQRT-COV at 3 iterations."""
    import_framework("torch")
    from impls.testing.assertions import check_model

    target = "impls.testing.model_corpus.torch_correct:isqrt_cov_head"
    recognised = check_model(target, "torch", (3, 32, 32))
    assert recognised.passed and recognised.method == "isqrt-cov"
    assert recognised.parameters == {"iterations": 5, "order": "row"}
    as_bcnn = check_model(target, "torch", (3, 32, 32), method="bcnn")
    sqrtm = _finding(as_bcnn, "sqrtm stage on layer 2")
    assert sqrtm.status == "FAIL" and "B-CNN has no sqrtm stage" in sqrtm.summary
    three = check_model(target, "torch", (3, 32, 32), method="isqrt-cov", iterations=3)
    root = _finding(three, "sqrtm stage on layer 2")
    assert root.status == "FAIL" and "Z is what 5 iterations give, not the 3" in _causes(
        three, "sqrtm stage on layer 2"
    )


def test_readme_example_shows_the_question_failing_and_the_fix_passing():
    """The README's generated model example (rendered from this file by the drift test) shows
    what a user should see: the question's model failing on its bugs, the fixed model passing."""
    _, document = read_results(EXAMPLES.parent / "results" / "ibp_check_model_example.json")
    question_run, fixed_run = document["runs"]
    assert question_run["arguments"] == ["model", "examples/question_model_keras.py:question_model"]
    assert question_run["exit_code"] == 1
    words = " ".join(question_run["output"].split())  # the report wraps its lines
    for text in (
        "FAIL per-sample independence (inference mode)",
        "layer bilinear_pool",
        "applied twice",
        "eps * ones",
        "the classifier's logits move by",
        "cannot pass the batch-majority ceiling",
    ):
        assert text in words, text
    assert fixed_run["arguments"] == ["model", "examples/fixed_model_keras.py:fixed_model"]
    assert fixed_run["exit_code"] == 0 and "all checks pass" in fixed_run["output"]


@pytest.mark.parametrize("shape", ["3,32", "3,0,32", "a,b,c"])
def test_cli_refuses_a_bad_input_shape_with_exit_2(shape, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["examples/fixed_model_torch.py:fixed_model", "--input-shape", shape])
    assert exit_.value.code == 2
    assert "--input-shape" in capsys.readouterr().err


def test_a_local_function_is_refused_with_a_clear_error():
    def local(x):
        return x

    with pytest.raises(IBPInputError, match="top level of a module"):
        target_of(local)


@pytest.mark.slow
def test_assert_stage_in_a_users_pytest_file_reports_the_diagnosis(tmp_path):
    import_framework("torch")
    user_tests = tmp_path / "test_user_layers.py"
    user_tests.write_text(
        textwrap.dedent(
            """\
            import torch

            from impls.testing.assertions import assert_stage


            def my_l2(y):
                return y / torch.linalg.vector_norm(y.flatten(1), dim=1)[:, None, None]


            def my_batch_l2(y):
                return y / torch.linalg.vector_norm(y)


            def test_my_l2():
                assert_stage("l2", my_l2, max_examples=10)


            def test_my_batch_l2():
                assert_stage("l2", my_batch_l2, max_examples=10)
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(user_tests),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(EXAMPLES.parent)},
    )
    # The plugin comes from the installed package's pytest11 entry point, as a user gets it.
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert "ibp-check failed" in run.stdout
    assert "FAIL  per-sample independence" in run.stdout
    assert "whole batch" in run.stdout
    assert not (tmp_path / ".hypothesis").exists()


@pytest.mark.slow
def test_batchnorm_in_training_mode_is_a_note_not_a_failure(tmp_path):
    import_framework("torch")
    from impls.testing.model_check import checks

    model_file = tmp_path / "small_model.py"
    model_file.write_text(
        textwrap.dedent(
            """\
            from torch import nn


            def model():
                return nn.Sequential(
                    nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                    nn.Linear(4 * 6 * 6, 3),
                )
            """
        )
    )
    settings = ModelSettings.from_options({"framework": "torch", "input_shape": (3, 8, 8)})
    session = checks.Session(f"{model_file}:model", settings)
    session.probe()
    assert session.batch_finding.status == "PASS"
    training = checks.independence(session, training=True)
    assert training.status == "PASS"
    assert any("1 (BatchNorm2d) mixes samples in training mode" in note for note in training.causes)
    assert checks.independence(session, training=False).status == "PASS"
    assert checks.learning_rate(session).status == "SKIP"  # no optimizer returned


TINY_TORCH_MODEL = """\
import time

import torch
from torch import nn


class Hangs(nn.Module):
    def forward(self, x):
        time.sleep(3600)


def model():
    print("building the model")
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return network, torch.optim.SGD(network.parameters(), lr=0.1)


def hanging_model():
    return Hangs()
"""


@pytest.mark.slow
def test_json_report_stays_valid_when_the_model_prints(tmp_path, capsys):
    import_framework("torch")
    (tmp_path / "tiny.py").write_text(TINY_TORCH_MODEL)
    status = main([f"{tmp_path / 'tiny.py'}:model", "--input-shape", "3,8,8", "--json"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert status == (0 if report["passed"] else 1)
    names = [f["name"] for f in report["findings"]]
    assert names[:3] == ["batch sizes", "finite outputs", CHECKS[0]]
    assert report["head"] == []  # no IBP head: a note, no stage checks
    assert "building the model" in err and "building the model" in report["target_output"]


@pytest.mark.slow
def test_a_hanging_model_fails_within_the_call_timeout(tmp_path, capsys):
    import_framework("torch")
    (tmp_path / "tiny.py").write_text(TINY_TORCH_MODEL)
    target = f"{tmp_path / 'tiny.py'}:hanging_model"
    assert main([target, "--input-shape", "3,8,8", "--call-timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  batch sizes" in out and "took longer than 2 s" in out


@pytest.mark.slow
def test_checks_not_started_within_the_time_limit_are_not_checked(tmp_path):
    import_framework("torch")
    from impls.testing.assertions import check_model

    (tmp_path / "tiny.py").write_text(TINY_TORCH_MODEL)
    report = check_model(f"{tmp_path / 'tiny.py'}:model", "torch", (3, 8, 8), time_limit=1.0)
    assert not report.passed
    assert _finding(report, "batch sizes").status == "PASS"  # the first calls always run
    for name in CHECKS:
        finding = _finding(report, name)
        assert finding.status == "FAIL"
        assert finding.causes == ["not checked: the run's time limit (1 s) ran out"]


def test_cli_refuses_a_time_limit_under_a_second(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["examples/fixed_model_torch.py:fixed_model", "--time-limit", "0.5"])
    assert exit_.value.code == 2
    assert "--time-limit" in capsys.readouterr().err
