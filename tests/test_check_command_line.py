"""The command-line layer and the checker's options: one validation for the command line and the
Python API, before any process starts; one-line usage errors with exit status 2; Ctrl-C 130."""

import dataclasses
import math

import pytest

from impls.testing import assertions, check
from impls.testing.check_options import (
    MODEL_OPTIONS,
    STAGE_OPTIONS,
    ModelSettings,
    StageSettings,
)
from impls.testing.command_line import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    bounded,
    one_of,
    positive,
    run_command,
    shape,
)
from reference.contracts import IBPInputError

TARGET = "impls.testing.bug_catalogue.torch_correct:pool_einsum"


@pytest.mark.parametrize(
    "validate, value, expected",
    [
        (bounded(int, 2, 8), "3", 3),
        (bounded(int, 2, 8), 8, 8),
        (bounded(int, 2, 8), 4.0, 4),
        (bounded(float, 0.1, 10), "0.5", 0.5),
        (positive(int), "7", 7),
        (positive(float), 1e-300, 1e-300),
        (one_of(("a", "b")), "b", "b"),
        (shape(3, "C,H,W"), "3,16,16", (3, 16, 16)),
        (shape(3, "C,H,W"), (3, 16, 16), (3, 16, 16)),
        (shape(3, "C,H,W"), [3, 16, 16], (3, 16, 16)),
    ],
)
def test_validators_take_text_and_python_values(validate, value, expected):
    assert validate(value) == expected


@pytest.mark.parametrize(
    "validate, value",
    [
        (bounded(int, 2, 8), "1"),
        (bounded(int, 2, 8), 2.5),
        (bounded(int, 2, 8), True),
        (bounded(int, 2, 8), "x"),
        (bounded(float, 0.1, 10), math.nan),
        (bounded(float, 0.1, 10), "inf"),
        (bounded(float, 0.1, 10), -1),
        (positive(int), 0),
        (one_of(("a", "b")), "A"),
        (shape(3, "C,H,W"), "3,16"),
        (shape(3, "C,H,W"), "3,0,16"),
        (shape(3, "C,H,W"), "a,b,c"),
        (shape(3, "C,H,W"), 3),
    ],
)
def test_validators_refuse_with_one_line_naming_the_value(validate, value):
    with pytest.raises(UsageError) as refused:
        validate(value)
    assert "\n" not in str(refused.value) and repr(value) in str(refused.value)
    assert isinstance(refused.value, IBPInputError) and isinstance(refused.value, ValueError)


def test_settings_records_hold_exactly_the_commands_options():
    """The Python API's keyword names are the command line's option names."""
    for record, options in ((StageSettings, STAGE_OPTIONS), (ModelSettings, MODEL_OPTIONS)):
        assert [f.name for f in dataclasses.fields(record)] == [o.name for o in options]
    defaults = StageSettings.from_options({})
    assert defaults.size == 8 and defaults.dtype == "float32" and not defaults.strict_dtypes


def test_the_api_documents_every_option():
    for option in STAGE_OPTIONS[1:]:
        assert option.name in assertions.check_stage.__doc__, option.name
    for option in MODEL_OPTIONS[1:]:
        assert option.name in assertions.check_model.__doc__, option.name


@pytest.mark.parametrize(
    "stage, options, named",
    [
        ("Pool", {}, "'Pool'"),
        ("sqrt", {}, "'sqrt'"),
        ("", {}, "''"),
        ("model", {}, "'model'"),
        ("pool", {"framework": "jax"}, "framework='jax'"),
        ("pool", {"dtype": "bogus"}, "dtype='bogus'"),
        ("pool", {"tolerance": math.nan}, "tolerance=nan"),
        ("pool", {"call_timeout": -1}, "call_timeout=-1"),
        ("pool", {"size": 1}, "size=1"),
        ("pool", {"max_channels": 4}, "max_channels"),
        ("pool", {"forward_only": "yes"}, "forward_only='yes'"),
    ],
)
def test_the_stage_api_refuses_bad_values_before_any_process_starts(
    stage, options, named, monkeypatch
):
    def no_process(*args, **kwargs):
        raise AssertionError("a process started")

    monkeypatch.setattr("impls.testing.check_runner.Sandbox", no_process)
    with pytest.raises(UsageError, match="^[^\n]*$") as refused:
        assertions.check_stage(stage, TARGET, **options)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"input_shape": "3,16"}, "input_shape='3,16'"),
        ({"seed": -1}, "seed=-1"),
        ({"time_limit": 0.5}, "time_limit=0.5"),
        ({"framework": "jax"}, "framework='jax'"),
        ({"logits": ""}, "logits=''"),
    ],
)
def test_the_model_api_refuses_bad_values_before_any_process_starts(options, named, monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process started")

    monkeypatch.setattr("impls.testing.model_check.engine.ModelSandbox", no_process)
    with pytest.raises(UsageError) as refused:
        assertions.check_model("examples/fixed_model_torch.py:fixed_model", **options)
    assert named in str(refused.value)


def test_model_settings_take_a_shape_as_text_or_tuple():
    text = ModelSettings.from_options({"input_shape": "3,16,16", "logits": "0"})
    assert text.input_shape == (3, 16, 16) and text.logits == 0
    assert ModelSettings.from_options({"input_shape": (3, 16, 16)}).input_shape == (3, 16, 16)
    assert ModelSettings.from_options({"logits": "logits"}).logits == "logits"


@pytest.mark.parametrize(
    "argv, option",
    [
        (["pool", TARGET, "--size", "1"], "--size"),
        (["pool", TARGET, "--tolerance", "nan"], "--tolerance"),
        (["pool", TARGET, "--dtype", "bogus"], "--dtype"),
        (["pool", TARGET, "--framework", "jax"], "--framework"),
        (["model", TARGET, "--input-shape", "3,16"], "--input-shape"),
        (["model", TARGET, "--seed", "-1"], "--seed"),
        (["Pool", TARGET], "invalid choice"),
        ([], "required"),
    ],
)
def test_the_command_line_refuses_the_same_values_on_one_line(argv, option, capsys):
    with pytest.raises(SystemExit) as exited:
        check.main(argv)
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option in err


def test_a_bad_max_examples_in_the_environment_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("IBP_CHECK_MAX_EXAMPLES", "lots")
    with pytest.raises(SystemExit) as exited:
        check.main(["pool", TARGET])
    assert exited.value.code == EXIT_USAGE and "--max-examples" in capsys.readouterr().err


def test_run_command_maps_usage_errors_and_ctrl_c_to_their_exit_statuses(capsys):
    def refused():
        raise UsageError("no such thing")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command("tool", refused) == EXIT_USAGE
    assert capsys.readouterr().err == "tool: error: no such thing\n"
    assert run_command("tool", interrupted) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    assert run_command("tool", lambda: 1) == 1
