"""Diagnoses name what the numbers show: a factor that is a count of the input is named as that
count; a scale on s * I or on a single entry names nothing; a stopped Newton-Schulz iteration is
the iterate that matches best; error messages are the error's own line; TensorFlow's log lines
are not what a function printed."""

import dataclasses

import numpy as np
import pytest

import reference
from impls.testing import framework_logs
from impls.testing.diagnosis import deviations, explain
from impls.testing.matrices import relu_covariances, relu_feature_maps
from impls.testing.stage_specs import STAGES
from impls.testing.tolerances import jacobian_scale

SQRTM = dataclasses.replace(STAGES["sqrtm"], approximate=True, symmetric_gradient=True)
POOL = STAGES["pool"]


def _newton_schulz(a, iterations, scaling):
    if scaling == "trace":
        norm = np.trace(a, axis1=1, axis2=2)[:, None, None]
    else:
        norm = np.linalg.norm(a, axis=(1, 2), keepdims=True)
    eye = np.eye(a.shape[-1])
    y, z = a / norm, np.broadcast_to(eye, a.shape)
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * np.sqrt(norm)


@pytest.mark.parametrize(
    "divisor, named",
    [
        (144.0, "1/(H*W) = 1/144: an extra division by the number of locations H*W"),
        (144.0**2, "1/(H*W)^2 = 1/144^2"),
        (6.0, "1/C = 1/6: an extra division by the number of channels C"),
        (1 / 12.0, "sqrt(H*W) = sqrt(144)"),
    ],
)
def test_a_factor_that_is_a_count_is_named_as_it(divisor, named):
    x = relu_feature_maps(np.random.default_rng(0), 2, 6, 12, 12)
    output = reference.bilinear_pool(x) / divisor
    text = explain.explain_forward(
        POOL, "channels_first", x, output, reference.bilinear_pool(x), 1, 1e-6
    )
    assert named in text, text


def test_a_factor_that_is_no_count_stays_a_factor():
    x = relu_feature_maps(np.random.default_rng(0), 2, 6, 12, 12)
    output = 0.5 * reference.bilinear_pool(x)
    text = explain.explain_forward(
        POOL, "channels_first", x, output, reference.bilinear_pool(x), 1, 1e-6
    )
    assert "times 0.5: a missing or extra factor" in text


def test_a_single_entry_names_no_factor():
    """A centred pooling shrunk to one location and one channel returns eps: any number is a
    multiple of a 1 x 1 reference, so no factor is named."""
    x = np.full((1, 1, 1, 1), 1.7)
    output = np.full((1, 1, 1), 1e-5)
    text = explain.explain_forward(
        POOL, "channels_first", x, output, reference.bilinear_pool(x), 1, 1e-6
    )
    assert "factor" not in text


def test_on_s_times_identity_a_scale_names_no_mistake():
    """Every function of s * I, and its derivative, is a multiple of the root's: a trace-normalised
    3-iteration root there gets no cause, neither autodiff through eigh nor a factor."""
    a = 2.0 * np.eye(4)[None]
    g = np.random.default_rng(0).standard_normal(a.shape)

    def three_iterations(m):
        return _newton_schulz(m, 3, "trace")

    gradient = deviations._vjp(three_iterations, a, g)
    gradient = (gradient + gradient.transpose(0, 2, 1)) / 2
    expected = reference.sqrtm_vjp(reference.sqrtm(a), g)
    floor = jacobian_scale(a, g, reference.sqrtm(a))
    text = explain.explain_gradient(
        SQRTM, "channels_first", a, g, gradient, expected, floor, 1, 1e-3
    )
    assert explain.CAUSE_UNKNOWN in text and "eigh" not in text and "factor" not in text


def test_the_iterate_that_matches_best_is_named_even_near_convergence():
    """Frobenius-scaled Newton-Schulz after 10 iterations, in float32: the iterate is within the
    match threshold of the root, yet it, not a trace-scaled one, is what the output is."""
    a = relu_covariances(np.random.default_rng(3), 2, 64, 12, 12)
    output = _newton_schulz(a, 10, "Frobenius-norm").astype(np.float32).astype(np.float64)
    assert deviations.newton_schulz_forward_match(a, output, 1e-3) == ("Frobenius-norm", 10)
    trace = _newton_schulz(a, 3, "trace")
    assert deviations.newton_schulz_forward_match(a, trace, 1e-3) == ("trace", 3)
    assert deviations.newton_schulz_forward_match(a, reference.sqrtm(a), 1e-3) is None


def test_an_entrywise_root_is_named_as_one():
    a = relu_covariances(np.random.default_rng(1), 2, 8, 4, 4)
    for output in (np.sign(a) * np.sqrt(np.abs(a)), np.sqrt(np.abs(a))):
        text = explain.explain_forward(
            SQRTM, "channels_first", a, output, reference.sqrtm(a), 1, 1e-3
        )
        assert "an entrywise square root, not the matrix square root" in text
        assert "check STAGE" not in text


def test_error_lines_are_the_errors_own():
    keras_wrapped = RuntimeError(
        "Exception encountered when calling IBPHead.call().\n\n\x1b[1mfeature map holds NaN"
        "\x1b[0m\n\nArguments received by IBPHead.call():\n  • inputs=tf.Tensor(...)"
    )
    assert explain.first_line(keras_wrapped) == "feature map holds NaN"
    node = ValueError("{{function_node __wrapped__Reshape_device_/job:localhost}} Input to reshape")
    assert explain.first_line(node) == "Input to reshape"


def test_tensorflow_log_lines_are_not_the_functions_output():
    printed = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796410854.916853    9790 port.cc:153] oneDNN custom operations are on.\n"
        "2026-12-02 16:44:23.123456: E tensorflow/core/framework/node_def_util.cc:676] NodeDef\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.\n"
        "my layer says hello\n"
    )
    logs, rest = framework_logs.split(printed)
    assert rest == "my layer says hello\n"
    assert logs.count("\n") == 4
