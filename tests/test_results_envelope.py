"""The results envelope: what `collect` records, how a reader describes it, and the round trip
through `write_results` and `read_results`."""

import pathlib

import pytest

from impls.testing import metadata


def test_collect_holds_every_required_key_and_the_writers_details() -> None:
    envelope = metadata.collect(
        "cpu", "test", command="python -m x --y", wall_seconds=61.04, seed=3
    )
    assert set(metadata.REQUIRED_KEYS) <= set(envelope)
    assert envelope["command"] == "python -m x --y"
    assert envelope["wall_seconds"] == 61.0
    assert envelope["seed"] == 3


def test_round_trip(tmp_path: pathlib.Path) -> None:
    envelope = metadata.collect("cpu", "test", command="python -m x")
    path = tmp_path / "r.json"
    metadata.write_results(path, envelope, rows=[1, 2])
    read, document = metadata.read_results(path)
    assert read == envelope
    assert document["rows"] == [1, 2]


def test_write_rows_writes_the_document_from_the_file_it_wrote(tmp_path: pathlib.Path) -> None:
    envelope = metadata.collect("cpu", "test", command="python -m x")

    def render(path: pathlib.Path) -> str:
        return f"rows: {metadata.read_results(path)[1]['rows']}"

    output = tmp_path / "new"
    path = metadata.write_rows(output, "x.json", envelope, [{"a": 1}], ("results/x.md", render))
    assert path == output / "x.json"
    assert metadata.read_results(path)[1]["rows"] == [{"a": 1}]
    assert (output / "x.md").read_text() == "rows: [{'a': 1}]"


def test_a_file_without_the_envelope_is_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="no 'ibp_metadata' envelope"):
        metadata.read_results(path)


def _described(**changes: object) -> dict[str, object]:
    envelope = metadata.collect("cpu", "test")
    envelope.update({"cpu_model": "Some CPU", "gpu_name": None, "simulated_device": False})
    envelope.update(changes)
    envelope["threads"] = {"os_cpu_count": 2}
    return envelope


def test_hardware_names_each_part_once() -> None:
    assert metadata.hardware(_described()) == "CPU Some CPU, 2 cores"
    gpu = metadata.hardware(_described(gpu_name="Some GPU"))
    assert gpu == "GPU Some GPU (host CPU Some CPU, 2 cores)"
    assert "simulated" in metadata.hardware(_described(simulated_device=True))


def test_run_time_is_stated_from_the_file() -> None:
    assert metadata.run_time(_described(wall_seconds=30.0)) == "30 s"
    assert metadata.run_time(_described(wall_seconds=390.0)) == "6.5 min"
    assert "not recorded" in metadata.run_time(_described(wall_seconds=None))


def test_short_commit_marks_uncommitted_changes() -> None:
    assert metadata.short_commit({"git_commit": "a" * 40, "git_dirty": False}) == "a" * 12
    dirty = metadata.short_commit({"git_commit": "a" * 40, "git_dirty": True})
    assert dirty == "a" * 12 + " (uncommitted changes)"


# --- Results true to the code (issue 21) -----------------------------------------------------

MODULE = '''"""A module."""

SCALE = 2  # a comment


def double(x):
    """Twice x."""
    return SCALE * x
'''


def test_a_digest_sees_code_not_comments_docstrings_or_layout(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.py"

    def digest(text: str) -> str:
        path.write_text(text)
        return metadata.source_digest(path)

    original = digest(MODULE)
    assert digest(MODULE.replace("a comment", "another comment")) == original
    assert digest(MODULE.replace('"""Twice x."""', '"""Two times x."""')) == original
    assert digest(MODULE.replace("SCALE * x", "SCALE*x")) == original
    assert digest(MODULE.replace("SCALE = 2", "SCALE = 3")) != original
    assert digest(MODULE.replace("return SCALE * x", "return x * SCALE")) != original


def test_collect_records_the_sources_this_process_loaded() -> None:
    import bench.cases  # noqa: F401  (a module of the repository, loaded)
    from impls import auto_table

    envelope = metadata.collect("cpu", "test", writes=[metadata.ROOT / "bench" / "inputs.py"])
    sources = envelope["sources"]
    assert {"bench/cases.py", "impls/testing/metadata.py", "impls/auto_table.py"} <= set(sources)
    assert "bench/inputs.py" not in sources  # what the writer replaces is not its own source
    # The table's view (choices and ranges, not timings) is a source wherever auto was loaded.
    assert envelope["source_views"] == {"impls/auto_table.json": "impls.auto_table"}
    view = auto_table.SOURCE_DATA[auto_table.TABLE_PATH]
    digest = metadata.source_digest(auto_table.TABLE_PATH, view)
    assert sources["impls/auto_table.json"] == digest
    assert isinstance(envelope["sources_dirty"], list)
    assert not any(path.startswith(("tests/", ".venv")) for path in sources)


def test_collect_adds_the_sources_of_child_processes() -> None:
    envelope = metadata.collect("cpu", "test", sources=["reference"])
    assert {"reference/stages.py", "reference/conventions.py"} <= set(envelope["sources"])


def test_a_source_edited_during_the_run_makes_the_result_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Numbers measured while their code changed are true to neither version."""
    assert metadata.collect("cpu", "test")["sources_edited_during_run"] == []
    monkeypatch.setattr(metadata, "_IMPORTED_AT", 0.0)  # every source is "newer than the start"
    envelope = metadata.collect("cpu", "test")
    assert "impls/testing/metadata.py" in envelope["sources_edited_during_run"]
    (problem,) = [p for p in metadata.stale(envelope) if "while the numbers" in p]
    assert problem.endswith("changed while the numbers were measured")


def _tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A repository root with one module and auto's table."""
    from impls import auto_table

    (tmp_path / "impls").mkdir()
    (tmp_path / "impls" / "m.py").write_text(MODULE)
    (tmp_path / "impls" / "auto_table.json").write_bytes(auto_table.TABLE_PATH.read_bytes())
    return tmp_path


def _envelope(root: pathlib.Path, dirty: list[str] | None = None) -> dict[str, object]:
    from impls import auto_table

    view = auto_table.SOURCE_DATA[auto_table.TABLE_PATH]
    return {
        "sources": {
            "impls/m.py": metadata.source_digest(root / "impls" / "m.py"),
            "impls/auto_table.json": metadata.source_digest(root / "impls/auto_table.json", view),
        },
        "source_views": {"impls/auto_table.json": "impls.auto_table"},
        "sources_dirty": [] if dirty is None else dirty,
    }


def test_a_fresh_result_is_not_stale(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path)
    assert metadata.stale(_envelope(root), root) == []


def test_a_code_change_makes_a_result_stale(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path)
    envelope = _envelope(root)
    (root / "impls" / "m.py").write_text(MODULE.replace("# a comment", "# reworded"))
    assert metadata.stale(envelope, root) == []
    (root / "impls" / "m.py").write_text(MODULE.replace("SCALE = 2", "SCALE = 3"))
    assert metadata.stale(envelope, root) == ["impls/m.py changed since"]
    (root / "impls" / "m.py").unlink()
    assert metadata.stale(envelope, root) == ["impls/m.py no longer exists"]


def test_a_changed_auto_choice_makes_a_result_stale(tmp_path: pathlib.Path) -> None:
    """The kind of staleness the numerical-error table had: its `auto` row measured while the
    table chose float64 eigh for TensorFlow, shown after auto switched to float32. A new choice
    is caught; new timings beside unchanged choices are not a change."""
    import json

    root = _tree(tmp_path)
    table = root / "impls" / "auto_table.json"
    document = json.loads(table.read_text())
    for choice in document["choices"]:
        if choice["framework"] == "tf":
            choice["candidate"] = "eigh_float64"
    table.write_text(json.dumps(document))
    envelope = _envelope(root)
    for row in document["rows"]:
        row["seconds"] *= 2
    table.write_text(json.dumps(document))
    assert metadata.stale(envelope, root) == []
    for choice in document["choices"]:
        if choice["framework"] == "tf":
            choice["candidate"] = "eigh_float32"
    table.write_text(json.dumps(document))
    assert metadata.stale(envelope, root) == ["impls/auto_table.json changed since"]


@pytest.mark.parametrize(
    ("dirty", "problem"),
    [
        (["impls/m.py"], "measured with uncommitted changes to impls/m.py"),
        (None, "measured where git could not say whether its sources were committed"),
    ],
)
def test_a_result_measured_on_uncommitted_code_is_stale(
    tmp_path: pathlib.Path, dirty: list[str] | None, problem: str
) -> None:
    root = _tree(tmp_path)
    envelope = _envelope(root)
    envelope["sources_dirty"] = dirty
    assert metadata.stale(envelope, root) == [problem]


def test_a_result_without_a_digest_is_stale() -> None:
    assert metadata.stale({"git_dirty": False}) == [
        "records no source digest (measured before results carried one)"
    ]


def test_short_commit_marks_uncommitted_sources_only() -> None:
    clean_sources = {"git_commit": "a" * 40, "git_dirty": True, "sources_dirty": []}
    assert metadata.short_commit(clean_sources) == "a" * 12
    dirty = {"git_commit": "a" * 40, "git_dirty": False, "sources_dirty": ["impls/m.py"]}
    assert metadata.short_commit(dirty).endswith("(uncommitted changes)")


def test_a_failed_write_keeps_the_previous_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.json"
    envelope = metadata.collect("cpu", "test", command="python -m x")
    metadata.write_results(path, envelope, rows=[1])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        metadata.write_results(path, envelope, rows=[object()])
    assert path.read_bytes() == before


ROOT = pathlib.Path(__file__).resolve().parents[1]
#: Every committed result: the results folder, and auto's table (package data).
COMMITTED = sorted(
    [f"results/{path.name}" for path in (ROOT / "results").glob("*.json")]
    + ["impls/auto_table.json"]
)


def _envelopes(relative: str) -> dict[str, dict[str, object]]:
    """Every envelope of a committed results file: its own, and those of the runs it merges."""
    import json

    document = json.loads((ROOT / relative).read_text())
    envelopes = {metadata.ENVELOPE_KEY: document[metadata.ENVELOPE_KEY]}
    for part in ("runs", "range_runs"):
        merged = document.get(part, {})
        # A mapping holds the envelopes of merged runs (auto's table); a list is rows, not runs.
        for name, envelope in merged.items() if isinstance(merged, dict) else ():
            envelopes[f"{part}.{name}"] = envelope
    return envelopes


@pytest.mark.parametrize("relative", COMMITTED)
def test_committed_results_are_true_to_the_code(relative: str) -> None:
    """Stale numbers are caught, not re-rendered: every envelope of every committed result was
    measured on committed sources that the tree still holds, unchanged."""
    stale = {
        name: (envelope.get("command"), problems)
        for name, envelope in _envelopes(relative).items()
        if (problems := metadata.stale(envelope))
    }
    assert not stale, f"{relative} is stale; at a clean commit, run again:\n" + "\n".join(
        f"  `{command}` ({name}): {'; '.join(problems)}"
        for name, (command, problems) in stale.items()
    )
