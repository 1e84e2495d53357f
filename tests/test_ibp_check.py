"""ibp-check: every catalogued bug fails with its diagnosis, every correct layer passes, and the
command line keeps its exit codes and JSON schema.

The checks run with few examples and small matrices (FAST), after the fixed realistic cases at
C = 64 that every check runs; one sandbox (child process) per framework serves the whole module.
`python -m impls.testing.check_catalogue` scores the catalogue at the defaults.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from impls.testing import check
from impls.testing.bug_catalogue import BUGS, CORRECT
from impls.testing.check_catalogue import run_bug, run_correct

from .conftest import import_framework

#: The fixed realistic cases run whatever these settings: the search adds few small examples.
FAST = {"max_examples": 5, "size": 5, "seconds_per_property": 1.0}
#: The hanging layer costs its call timeout: short, and far above any correct call's time.
HANG_TIMEOUT = 5.0
FAST_CLI = ["--max-examples", "4", "--size", "3"]

REPORT_KEYS = {
    "target",
    "stage",
    "framework",
    "dtype",
    "size",
    "channels",
    "max_examples",
    "notes",
    "results",
    "seconds",
    "passed",
    "target_output",
    "framework_log",
    "method",
    "parameters",
}
RESULT_KEYS = {
    "name",
    "status",
    "checks",
    "diagnosis",
    "counterexample",
    "counterexample_shape",
    "error",
    "tolerance",
    "examples",
    "seconds",
    "stopped_early",
    "notes",
}

TORCH_SIGNED_SQRT = """
    import torch

    def signed_sqrt(z):
        return z / (torch.sqrt(z.abs() + 1e-5) + 1e-5 ** 0.5)

    def signed_sqrt_without_regulariser(z):
        return torch.sign(z) * torch.sqrt(z.abs())

    def signed_sqrt_detached(z):
        return signed_sqrt(z.detach())
"""


@pytest.fixture
def torch_installed():
    """The command-line tests check PyTorch targets: without torch they have nothing to run."""
    import_framework("torch")


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_catalogued_bug_fails_with_its_diagnosis(backend, bug, sandboxes):
    if backend.name not in bug.frameworks:
        pytest.skip(f"{backend.name} cannot express {bug.name}")
    settings = FAST | ({"call_timeout": HANG_TIMEOUT} if bug.name == "hangs" else {})
    outcome = run_bug(bug, backend.name, sandbox=sandboxes(backend.name), **settings)
    assert outcome.caught, (
        f"{bug.name} [{backend.name}]: no diagnosis holds {bug.expected!r}; "
        f"failed: {outcome.failed_properties}"
    )
    assert not outcome.wrong_causes, f"{bug.name} [{backend.name}]: {outcome.wrong_causes}"


@pytest.mark.parametrize("layer", CORRECT, ids=lambda layer: layer.name)
def test_correct_layer_passes(backend, layer, sandboxes):
    outcome = run_correct(layer, backend.name, sandbox=sandboxes(backend.name), **FAST)
    assert not outcome.failed_properties, f"false alarm on {layer.name} [{backend.name}]"
    if layer.note:
        assert any(layer.note in note for note in outcome.notes), outcome.notes
    else:
        assert not outcome.notes, (
            f"a note on {layer.name}, which follows the reference: {outcome.notes}"
        )


def _write(tmp_path, source, name="layer.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.mark.usefixtures("torch_installed")
def test_cli_passes_a_correct_file_target(tmp_path, capsys):
    path = _write(tmp_path, TORCH_SIGNED_SQRT)
    assert check.main(["signed-sqrt", f"{path}:signed_sqrt", *FAST_CLI]) == 0
    out = capsys.readouterr().out
    assert "framework torch" in out and "FAIL" not in out and "all properties hold" in out


@pytest.mark.usefixtures("torch_installed")
def test_cli_fails_a_buggy_file_target_with_its_diagnosis(tmp_path, capsys):
    path = _write(tmp_path, TORCH_SIGNED_SQRT)
    target = f"{path}:signed_sqrt_without_regulariser"
    assert check.main(["signed-sqrt", target, *FAST_CLI]) == 1
    out = capsys.readouterr().out
    assert "FAIL  degenerate inputs" in out and "no regulariser" in out
    assert "counterexample:" in out


@pytest.mark.usefixtures("torch_installed")
@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["impls.testing.bug_catalogue.torch_correct"], "names no function"),
        (["no/such/file.py:f"], "no file"),
        (["impls.testing.no_such_module:f"], "importing impls.testing.no_such_module failed"),
        (["impls.testing.bug_catalogue.torch_correct:no_such"], "has no 'no_such'"),
        (["impls.testing.bug_catalogue.torch_correct:EPS"], "not a function"),
    ],
)
def test_usage_errors_exit_2_with_what_to_fix(argv_tail, message, capsys):
    assert check.main(["pool", *argv_tail]) == 2
    assert message in capsys.readouterr().err


def test_a_framework_that_cannot_be_told_asks_for_framework(tmp_path, capsys):
    path = _write(tmp_path, "def pool(x):\n    return x @ x.mT\n", name="plain.py")
    assert check.main(["pool", f"{path}:pool"]) == 2
    assert "--framework torch" in capsys.readouterr().err


@pytest.mark.usefixtures("torch_installed")
def test_an_import_error_in_the_target_exits_2(tmp_path, capsys):
    path = _write(tmp_path, "import torch\nraise RuntimeError('broken on import')\n")
    assert check.main(["pool", f"{path}:pool"]) == 2
    assert "broken on import" in capsys.readouterr().err


@pytest.mark.usefixtures("torch_installed")
def test_a_wrong_stage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check.main(["covariance", "impls.testing.bug_catalogue.torch_correct:pool_einsum"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.usefixtures("torch_installed")
def test_json_report_schema(capsys):
    target = "impls.testing.bug_catalogue.torch_bugs:l2_backward_rescale_only"
    assert check.main(["l2", target, "--json", *FAST_CLI]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) == REPORT_KEYS
    assert report["target"] == target and report["passed"] is False
    assert [r["name"] for r in report["results"]] == [
        "shape and dtype",
        "per-sample independence",
        "batch sizes",
        "forward",
        "gradient",
        "degenerate inputs",
    ]
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        assert result["status"] in ("PASS", "FAIL", "SKIP")
    failed = next(r for r in report["results"] if r["name"] == "gradient")
    assert failed["status"] == "FAIL" and "only rescales" in failed["diagnosis"]
    assert failed["error"] > failed["tolerance"] and len(failed["counterexample_shape"]) == 3


@pytest.mark.usefixtures("torch_installed")
def test_a_detached_output_has_no_gradient_unless_forward_only(tmp_path, capsys):
    target = f"{_write(tmp_path, TORCH_SIGNED_SQRT)}:signed_sqrt_detached"
    assert check.main(["signed-sqrt", target, "--json", *FAST_CLI]) == 1
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert "no gradient reaches the input" in results["gradient"]["diagnosis"]
    assert check.main(["signed-sqrt", target, "--forward-only", "--json", *FAST_CLI]) == 0
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert results["gradient"]["status"] == "SKIP"


@pytest.mark.usefixtures("torch_installed")
def test_module_entry_point_exit_codes():
    """`python -m impls.testing.check` is the command the console script runs."""
    command = [sys.executable, "-m", "impls.testing.check", "sqrtm", *FAST_CLI]
    bug = subprocess.run(
        [*command, "impls.testing.bug_catalogue.torch_bugs:sqrtm_negated_lyapunov_gradient"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bug.returncode == 1, bug.stderr
    assert "opposite sign convention" in bug.stdout


@pytest.mark.parametrize(
    "option",
    [
        ["--size", "1"],
        ["--size", "100000"],
        ["--tolerance", "nan"],
        ["--tolerance", "-1"],
        ["--max-examples", "0"],
        ["--max-examples", "100000000"],
        ["--call-timeout", "inf"],
        ["--time-limit", "0"],
    ],
)
def test_numeric_options_out_of_range_exit_2_on_one_line(option, capsys):
    target = "impls.testing.bug_catalogue.torch_correct:pool_einsum"
    with pytest.raises(SystemExit) as exit_info:
        check.main(["pool", target, *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option[0] in err


HOSTILE = """
    import sys
    import time

    import torch

    print("imported")

    def exits(a):
        sys.exit(0)

    def hangs(a):
        while True:
            time.sleep(0.05)

    def prints(a):
        print("noise from the layer")
        eigenvalues, u = torch.linalg.eigh(a)
        return (u * eigenvalues.clamp_min(0).sqrt()[..., None, :]) @ u.mT
"""


@pytest.mark.usefixtures("torch_installed")
def test_hostile_targets_fail_with_their_cause_and_json_stays_valid(tmp_path, monkeypatch, capsys):
    """An exiting or hanging target fails (exit 1) with its cause; what a target prints goes to
    stderr; nothing is written into the caller's directory."""
    path = _write(tmp_path, HOSTILE, name="hostile.py")
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    argv = ["sqrtm", "--json", "--call-timeout", "5", *FAST_CLI]
    for function, cause in [
        ("exits", "ended the process with exit code 0"),
        ("hangs", "a call took longer than 5 s"),
    ]:
        assert check.main([*argv[:1], f"{path}:{function}", *argv[1:]]) == 1
        captured = capsys.readouterr()
        report = json.loads(captured.out)
        assert report["passed"] is False
        assert cause in report["results"][0]["diagnosis"]
        assert "imported" in captured.err
    check.main(["sqrtm", f"{path}:prints", *argv[1:]])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["target_output"].count("noise from the layer") >= 1
    assert "noise from the layer" in captured.err
    assert list(caller.iterdir()) == []


@pytest.mark.usefixtures("torch_installed")
def test_a_function_of_another_stage_is_named_so(capsys):
    """A pooling function checked as the root: its errors name the stage it may be, and the
    header shows the matrix stage's input, not a feature-map layout."""
    target = "impls.testing.bug_catalogue.torch_correct:pool_einsum"
    assert check.main(["sqrtm", target, *FAST_CLI]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "matrices (B, C, C)" in out and "channels-" not in out[:200]
    assert "a pooling or a whole head (ibp-check pool, ibp-check head)" in out
