"""ibp-check: every catalogued bug fails with its diagnosis, every correct layer passes, and the
command line keeps its exit codes and JSON schema.

The checks run with few examples and small matrices (FAST): the catalogue's bugs show on any
input their properties draw, so a short search finds them; `python -m impls.testing.check_catalogue`
scores the catalogue at the defaults.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from impls.testing import check
from impls.testing.bug_catalogue import BUGS, CORRECT
from impls.testing.check_catalogue import run_bug, run_correct

FAST = {"max_examples": 10, "max_channels": 5}
FAST_CLI = ["--max-examples", "4", "--size", "3"]

REPORT_KEYS = {
    "target",
    "stage",
    "framework",
    "dtype",
    "max_channels",
    "max_examples",
    "notes",
    "results",
    "seconds",
    "passed",
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
    pytest.importorskip("torch")


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_catalogued_bug_fails_with_its_diagnosis(backend, bug):
    outcome = run_bug(bug, backend.name, **FAST)
    assert outcome.caught, (
        f"{bug.name} [{backend.name}]: no diagnosis holds {bug.expected!r}; "
        f"failed: {outcome.failed_properties}"
    )


@pytest.mark.parametrize("layer", CORRECT, ids=lambda layer: layer.name)
def test_correct_layer_passes(backend, layer):
    outcome = run_correct(layer, backend.name, **FAST)
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
        (["impls.testing.bug_catalogue.torch_correct:pool_einsum", "--size", "1"], "at least 2"),
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
        "shape contract",
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
