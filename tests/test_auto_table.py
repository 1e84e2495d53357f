"""method="auto": the lookup in the measured table (bands, fallback rule, accuracy ranges), the
shipped table's shape and consistency with its own measurements, a damaged table degrading to the
rule with one warning, and that what auto runs is the table's row, in both frameworks. Nothing
here times anything."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from bench import measure_auto as measurement
from impls import auto_table
from impls.testing.metadata import REQUIRED_KEYS, read_results
from impls.testing.numerical_error import realistic_case
from reference.conventions import AUTO_STATED_ACCURACY

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: A made-up table: torch on the CPU measured at C = 64 and 256, nothing else.
FAKE = {("torch", "cpu", 64): "eigh_float32", ("torch", "cpu", 256): "newton_schulz"}


@pytest.fixture
def fake_table(monkeypatch):
    monkeypatch.setattr(auto_table, "TABLE", auto_table.Table(FAKE))


@pytest.mark.parametrize(
    ("channels", "expected"),
    [(1, ("eigh_float32", 64)), (64, ("eigh_float32", 64)), (65, ("newton_schulz", 256))],
)
def test_a_count_takes_the_next_larger_band(fake_table, channels, expected):
    choice = auto_table.choose("torch", "cpu", channels)
    assert (choice.candidate, choice.band, choice.source) == (*expected, "measured")


@pytest.mark.parametrize(
    ("framework", "device", "channels", "expected"),
    [
        ("torch", "cpu", 257, "eigh_float64"),  # above the largest band
        ("torch", "cpu", None, "eigh_float64"),  # unknown while tracing
        ("tf", "cpu", 64, "eigh_float64"),  # framework never measured
        ("torch", "cuda", 64, "minimax_newton_schulz"),  # device never measured
        ("torch", "mps", 512, "minimax_newton_schulz"),
    ],
)
def test_unmeasured_combinations_follow_the_rule(fake_table, framework, device, channels, expected):
    choice = auto_table.choose(framework, device, channels)
    assert (choice.candidate, choice.source, choice.band) == (expected, "rule", None)


def test_unknown_candidate_is_refused():
    row = {"framework": "torch", "device": "cpu", "channels": 64, "candidate": "svd"}
    with pytest.raises(auto_table.TableError, match=r"choices\[0\]: unknown candidate 'svd'"):
        auto_table.parse({"choices": [row]})


def test_shipped_table_is_well_formed():
    metadata, document = read_results(auto_table.TABLE_PATH)
    assert set(REQUIRED_KEYS) <= set(metadata), sorted(set(REQUIRED_KEYS) - set(metadata))
    table = measurement.AutoTable.read(auto_table.TABLE_PATH)
    assert all(run["target"] == AUTO_STATED_ACCURACY for run in table.runs.values())
    # Every measured cell has every candidate, and its choice is what the rule of choice gives.
    cells = {r.cell for r in table.rows}
    for cell in cells:
        measured = sorted(r.candidate for r in table.rows if r.cell == cell)
        assert measured == sorted(auto_table.CANDIDATES), cell
    assert table.choices == measurement.choose(table.rows)
    assert {c.cell for c in table.choices} == cells
    # Both frameworks on the CPU, every band up to 512; each choice meets the target there.
    for framework in ("torch", "tf"):
        bands = sorted(c for f, d, c in cells if (f, d) == (framework, "cpu"))
        assert bands == list(measurement.DEFAULT_CHANNELS), framework
    assert all(c.meets_target for c in table.choices)
    assert auto_table.parse(document).choices == auto_table.TABLE.choices
    assert auto_table.TABLE.problem is None


def test_shipped_ranges_cover_every_measured_cell():
    """Each candidate's float32 accuracy range is measured where its choice is, and what the
    package reads is what the table says."""
    table = measurement.AutoTable.read(auto_table.TABLE_PATH)
    ranges = {(r.framework, r.device, r.channels, r.candidate) for r in table.ranges}
    assert {(*r.cell, r.candidate) for r in table.rows} <= ranges
    assert all(r.dtype == "float32" and r.max_condition >= 1 for r in table.ranges)
    assert auto_table.TABLE.ranges == {
        (r.framework, r.device, r.channels, r.candidate): r.max_condition for r in table.ranges
    }
    for choice in table.choices:
        assert auto_table.choose(*choice.cell).max_condition is not None, choice


def test_table_is_package_data():
    """An installed wheel must carry the table: sqrtm(method="auto") reads it."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    (impls_files,) = re.findall(r"^impls = \[(.*)\]$", section, re.MULTILINE)
    assert f'"{auto_table.TABLE_PATH.name}"' in impls_files
    assert auto_table.TABLE_PATH.parent == ROOT / "impls"


def _auto_and_explicit(backend, candidate, monkeypatch):
    """sqrtm(a, "auto") with the table saying `candidate` for this framework on the CPU at C = 8,
    and the same candidate called explicitly (float64 eigh: the input cast up, the root down)."""
    monkeypatch.setattr(
        auto_table, "TABLE", auto_table.Table({(backend.name, "cpu", 8): candidate})
    )
    a = realistic_case(8)[0]
    # Exactly symmetric and float32: both paths see the same matrix.
    a = ((a + np.swapaxes(a, -1, -2)) / 2).astype(np.float32)
    tensor = backend.tensor(a, "float32")
    auto = backend.numpy(backend.impl.sqrtm(tensor, method="auto"))
    method, eigh_dtype = auto_table.CANDIDATES[candidate]
    if eigh_dtype is None:
        explicit = backend.numpy(backend.impl.sqrtm(tensor, method=method))
    else:
        wide = backend.numpy(backend.impl.sqrtm(backend.tensor(a, eigh_dtype), method=method))
        explicit = wide.astype(np.float32)
    return auto, explicit


@pytest.mark.parametrize("candidate", sorted(auto_table.CANDIDATES))
def test_auto_runs_the_table_row(backend, monkeypatch, candidate):
    auto, explicit = _auto_and_explicit(backend, candidate, monkeypatch)
    assert auto.dtype == np.float32
    np.testing.assert_array_equal(auto, explicit)


def test_candidates_give_different_roots(backend, monkeypatch):
    """So that the test above could fail: no two candidates agree to the last bit here."""
    roots = [
        _auto_and_explicit(backend, candidate, monkeypatch)[1].tobytes()
        for candidate in auto_table.CANDIDATES
    ]
    assert len(set(roots)) == len(roots)


def _row(candidate, seconds, error):
    return measurement.CandidateRow(
        "torch", "cpu", 64, candidate, error, error, error <= AUTO_STATED_ACCURACY, seconds
    )


def test_choice_is_accuracy_first_then_time():
    rows = [_row("eigh_float32", 1.0, 3e-3), _row("eigh_float64", 2.0, 1e-8)]
    rows.append(_row("newton_schulz", 3.0, 1e-6))
    (choice,) = measurement.choose(rows)
    assert (choice.candidate, choice.meets_target) == ("eigh_float64", True)
    table = measurement.AutoTable(rows=rows, choices=[choice])
    assert "eigh in float32 is faster (0.50x) but misses (error 3.0e-03)" in measurement.reasons(
        table
    )


def test_without_an_accurate_candidate_the_most_accurate_is_chosen():
    rows = [_row("eigh_float32", 1.0, 3e-3), _row("newton_schulz", 2.0, 2e-3)]
    (choice,) = measurement.choose(rows)
    assert (choice.candidate, choice.meets_target) == ("newton_schulz", False)


# --- A damaged table degrades to the rule (issue 18) ----------------------------------------

_ROW = {"framework": "torch", "device": "cpu", "channels": 64, "candidate": "eigh_float32"}


def _json(document) -> bytes:
    import json

    return json.dumps(document).encode()


#: (name, the file's bytes or None for no file, what the warning must say is wrong)
DAMAGES = [
    ("missing", None, "the file is missing"),
    ("empty", b"", "the file is empty"),
    ("blank", b"  \n", "the file is empty"),
    ("truncated", b'{"choices": [{"framework": "torch", "dev', "not valid JSON (Unterminated"),
    ("not-utf8", b'{"choices": []}\xff\xfe', "not UTF-8 text (byte 15 is 0xff)"),
    ("no-choices", _json({"rows": []}), "the table has no 'choices'"),
    ("a-list", _json([_ROW]), "the table is a JSON list, not an object"),
    ("choices-not-rows", _json({"choices": {"torch": 1}}), "'choices' is not a list of objects"),
    ("band-not-int", _json({"choices": [{**_ROW, "channels": "abc"}]}), "channels 'abc' is not"),
    ("band-float", _json({"choices": [{**_ROW, "channels": 64.5}]}), "channels 64.5 is not a"),
    ("band-bool", _json({"choices": [{**_ROW, "channels": True}]}), "channels True is not a"),
    ("band-zero", _json({"choices": [{**_ROW, "channels": 0}]}), "channels 0 is not a positive"),
    ("row-key", _json({"choices": [{"framework": "torch"}]}), "choices[0] has no 'device'"),
    ("framework", _json({"choices": [{**_ROW, "framework": "jax"}]}), "unknown framework 'jax'"),
    ("candidate", _json({"choices": [{**_ROW, "candidate": "svd"}]}), "unknown candidate 'svd'"),
    ("twice", _json({"choices": [_ROW, _ROW]}), "a second choice for torch, cpu, C 64"),
    (
        "range",
        _json({"choices": [_ROW], "ranges": [{**_ROW, "max_condition": "1e5"}]}),
        "ranges[0]: max_condition '1e5' is not a number >= 1",
    ),
    ("range-key", _json({"choices": [], "ranges": [_ROW]}), "ranges[0] has no 'max_condition'"),
    ("nested", b"[" * 100_000, "not valid JSON (nested too deeply to read)"),
]


@pytest.mark.parametrize(
    ("contents", "problem"), [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES]
)
def test_a_damaged_table_warns_once_and_follows_the_rule(tmp_path, contents, problem):
    path = tmp_path / "auto_table.json"
    if contents is not None:
        path.write_bytes(contents)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = auto_table.load(path)
    assert [w.category for w in caught] == [auto_table.AutoTableWarning]
    message = str(caught[0].message)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "follows its rule everywhere" in message
    assert table.problem is not None and problem in table.problem
    for device, candidate in (("cpu", "eigh_float64"), ("cuda", "minimax_newton_schulz")):
        for framework in auto_table.FRAMEWORKS:
            choice = table.choose(framework, device, 64)
            assert (choice.candidate, choice.source) == (candidate, "rule")


def test_an_unreadable_table_is_named(tmp_path):
    """A folder where the file should be: the OS's reason, in one warning."""
    (tmp_path / "auto_table.json").mkdir()
    with pytest.warns(auto_table.AutoTableWarning, match="unreadable") as caught:
        auto_table.load(tmp_path / "auto_table.json")
    assert len(caught) == 1


def test_a_sound_table_gives_no_warning(tmp_path):
    path = tmp_path / "auto_table.json"
    shutil.copy(auto_table.TABLE_PATH, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = auto_table.load(path)
    assert table.problem is None and table.choices == auto_table.TABLE.choices


def _damaged_table(tmp_path):
    path = tmp_path / "auto_table.json"
    path.write_bytes(b'{"choices": [')
    with pytest.warns(auto_table.AutoTableWarning):
        return auto_table.load(path)


def test_sqrtm_and_the_head_follow_the_rule_under_a_damaged_table(backend, monkeypatch, tmp_path):
    """Both frameworks' default sqrtm runs the rule's candidate (float64 eigh on the CPU), and so
    does the head: the same output as under a table whose row says exactly that."""
    rule = auto_table.FALLBACK_RULE["cpu"]
    auto, explicit = _auto_and_explicit(backend, rule, monkeypatch)
    monkeypatch.setattr(auto_table, "TABLE", _damaged_table(tmp_path))
    a = realistic_case(8)[0]
    a = ((a + np.swapaxes(a, -1, -2)) / 2).astype(np.float32)
    damaged = backend.numpy(backend.impl.sqrtm(backend.tensor(a, "float32")))
    np.testing.assert_array_equal(damaged, explicit)

    x = np.random.default_rng(0).random((2, 8, 5, 5))
    head = backend.impl.IBPHead(in_channels=8)
    under_damage = backend.numpy(head(backend.feature_map(x, "float32")))
    monkeypatch.setattr(auto_table, "TABLE", auto_table.Table({(backend.name, "cpu", 8): rule}))
    np.testing.assert_array_equal(
        backend.numpy(head(backend.feature_map(x, "float32"))), under_damage
    )


#: Imports both frameworks from a copy of the packages whose table is damaged, and runs the
#: defaults; prints what auto chose.
_SCRIPT = """
import numpy as np
import impls.torch, impls.tf, torch
from impls import auto_table
a = np.eye(8, dtype=np.float32)[None] * 4
assert np.allclose(impls.torch.sqrtm(torch.tensor(a)).numpy(), 2 * np.eye(8))
assert np.allclose(impls.tf.sqrtm(a).numpy(), 2 * np.eye(8))
impls.torch.IBPHead(8)(torch.rand(2, 8, 5, 5))
impls.tf.IBPHead()(np.random.rand(2, 5, 5, 8).astype(np.float32))
print(auto_table.choose("torch", "cpu", 64).candidate, auto_table.choose("tf", "cpu", 64).candidate)
"""


#: What a user runs, each in a fresh process: the library in both frameworks, and every command
#: that reaches auto (ibp-check on the suite's own sqrtm, reproduce-accuracy's quickest run).
COMMANDS = {
    "library": ["-c", _SCRIPT],
    "ibp-check": [
        "-m", "impls.testing.check", "sqrtm", "impls.torch:sqrtm", "--framework", "torch",
        "--max-examples", "2",
    ],
    "reproduce-accuracy": [
        "-m", "bench.reproduce_accuracy", "--framework", "torch", "--config", "ibp",
        "--dataset", "synthetic", "--epochs", "1", "--quick", "--no-progress",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "command"),
    [("missing", "library"), ("truncated", "library"), ("truncated", "ibp-check")]
    + [("truncated", "reproduce-accuracy")],
)
def test_a_damaged_package_table_warns_once_per_process(tmp_path, damage, command):
    """As a user meets it: the package's own file damaged, then the library used in both
    frameworks, or a command run: one warning naming the file, the rule, and no exception."""
    root = pathlib.Path(auto_table.__file__).resolve().parents[1]
    for package in ("impls", "reference", "bench"):
        shutil.copytree(
            root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    table = tmp_path / "impls" / auto_table.TABLE_PATH.name
    if damage == "missing":
        table.unlink()
    else:
        table.write_bytes(auto_table.TABLE_PATH.read_bytes()[:500])
    completed = subprocess.run(
        [sys.executable, "-W", "default", *COMMANDS[command]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(tmp_path)},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    warned = [line for line in output.splitlines() if "AutoTableWarning" in line]
    assert len(warned) == 1, output[-3000:]
    assert f"{table}: " in warned[0]
    if command == "library":
        assert completed.stdout.split() == ["eigh_float64", "eigh_float64"]


# --- Choosing is a look-up: no file, no cache, traceable (issue 21) ---------------------------


def test_choosing_reads_no_file(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("choose read a file")

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    for framework in auto_table.FRAMEWORKS:
        for device in ("cpu", "cuda", "mps"):
            for channels in (None, 8, 100_000):
                auto_table.choose(framework, device, channels)


def test_choosing_compiles_into_one_graph():
    """torch.compile(fullgraph=True) traces straight through the choice (a graph break raises)."""
    from tests.conftest import import_framework

    torch = import_framework("torch")

    def scaled(a):
        choice = auto_table.choose("torch", a.device.type, a.shape[-1])
        scale = 2.0 if choice.method == "eigh" else 3.0
        if choice.beyond_range(1e12) or choice.eigh_dtype == "float64":
            scale += 1.0
        return a * scale

    a = torch.ones(2, 8, 8)
    torch._dynamo.reset()
    compiled = torch.compile(scaled, fullgraph=True, backend="eager")
    assert torch.equal(compiled(a), scaled(a))


# --- Accuracy ranges -------------------------------------------------------------------------


def test_a_choice_carries_its_measured_range():
    table = auto_table.Table(
        {("tf", "cpu", 64): "eigh_float32", ("tf", "cpu", 512): "eigh_float32"},
        {
            ("tf", "cpu", 64, "eigh_float32"): 1e6,
            ("tf", "cpu", 512, "eigh_float32"): 1e5,
            ("tf", "cpu", 512, "eigh_float64"): 1e8,
            ("tf", "cpu", 64, "eigh_float64"): 3e8,
            ("tf", "cpu", 512, "minimax_newton_schulz"): 1e6,
        },
    )
    assert table.choose("tf", "cpu", 60).max_condition == 1e6
    assert table.choose("tf", "cpu", 300).max_condition == 1e5
    # The rule: its candidate's range at the largest band measured there, or on the CPU.
    assert table.choose("tf", "cpu", 1024).max_condition == 1e8
    assert table.choose("tf", "cuda", 64).max_condition == 1e6
    assert table.choose("tf", "mps", None).max_condition == 1e6
    assert table.choose("torch", "cpu", 64).max_condition is None


@pytest.mark.parametrize(
    ("condition", "beyond"),
    [(1.0, False), (1e5, False), (1.1e5, True), (np.inf, True), (np.nan, True)],
)
def test_beyond_range(condition, beyond):
    assert auto_table.Choice("eigh_float32", "measured", 64, 1e5).beyond_range(condition) is beyond
    assert not auto_table.Choice("eigh_float32", "measured", 64).beyond_range(condition)
    assert auto_table.ACCURATE_CHOICE.candidate == auto_table.BEYOND_RANGE == "eigh_float64"


@pytest.mark.parametrize(
    "argv",
    [
        ["--conditions", "0.5"],
        ["--conditions", "inf"],
        ["--channels", "0"],
        ["--repeats", "-1"],
        ["--only", "timings"],
        ["--table", "/nonexistent/folder/auto_table.json"],
        ["--render", "--table", "missing_auto_table.json"],
    ],
)
def test_measuring_command_refuses_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        measurement.parse_arguments(argv)
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m bench.measure_auto")
    )
