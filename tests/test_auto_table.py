"""method="auto": the lookup in the measured table (bands, fallback rule), the shipped table's
shape and consistency with its own measurements, and that what auto runs is the table's row, in
both frameworks. Nothing here times anything."""

import pathlib
import re

import numpy as np
import pytest

from bench import auto_table as measurement
from impls import auto_table
from impls.testing.metadata import REQUIRED_KEYS, read_results
from impls.testing.numerical_error import realistic_case
from reference.conventions import AUTO_STATED_ACCURACY

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: A made-up table: torch on the CPU measured at C = 64 and 256, nothing else.
FAKE = {("torch", "cpu", 64): "eigh_float32", ("torch", "cpu", 256): "newton_schulz"}


@pytest.fixture
def fake_table(monkeypatch):
    monkeypatch.setattr(auto_table, "measured_choices", lambda: FAKE)


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
    with pytest.raises(ValueError, match="unknown candidate 'svd'"):
        auto_table.parse_choices([row])


def test_shipped_table_is_well_formed():
    metadata, document = read_results(auto_table.TABLE_PATH)
    assert set(REQUIRED_KEYS) <= set(metadata), sorted(set(REQUIRED_KEYS) - set(metadata))
    assert metadata["target"] == AUTO_STATED_ACCURACY
    rows = document["rows"]
    # Every measured cell has every candidate, and its choice is what the rule of choice gives.
    cells = {(r["framework"], r["device"], r["channels"]) for r in rows}
    for cell in cells:
        measured = sorted(
            r["candidate"] for r in rows if (r["framework"], r["device"], r["channels"]) == cell
        )
        assert measured == sorted(auto_table.CANDIDATES), cell
    assert document["choices"] == measurement.choose(rows)
    assert {(c["framework"], c["device"], c["channels"]) for c in document["choices"]} == cells
    # Both frameworks on the CPU, every band up to 512; each choice meets the target there.
    for framework in ("torch", "tf"):
        bands = sorted(c for f, d, c in cells if (f, d) == (framework, "cpu"))
        assert bands == list(measurement.DEFAULT_CHANNELS), framework
    assert all(c["meets_target"] for c in document["choices"])
    assert auto_table.parse_choices(document["choices"]) == auto_table.measured_choices()


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
        auto_table, "measured_choices", lambda: {(backend.name, "cpu", 8): candidate}
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
    return {
        "framework": "torch",
        "device": "cpu",
        "channels": 64,
        "candidate": candidate,
        "forward_error": error,
        "backward_error": error,
        "meets_target": error <= AUTO_STATED_ACCURACY,
        "seconds": seconds,
    }


def test_choice_is_accuracy_first_then_time():
    rows = [_row("eigh_float32", 1.0, 3e-3), _row("eigh_float64", 2.0, 1e-8)]
    rows.append(_row("newton_schulz", 3.0, 1e-6))
    (choice,) = measurement.choose(rows)
    assert (choice["candidate"], choice["meets_target"]) == ("eigh_float64", True)
    document = {"rows": rows, "choices": [choice]}
    assert "eigh in float32 is faster (0.50x) but misses (error 3.0e-03)" in measurement.reasons(
        document
    )


def test_without_an_accurate_candidate_the_most_accurate_is_chosen():
    rows = [_row("eigh_float32", 1.0, 3e-3), _row("newton_schulz", 2.0, 2e-3)]
    (choice,) = measurement.choose(rows)
    assert (choice["candidate"], choice["meets_target"]) == ("newton_schulz", False)
