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
