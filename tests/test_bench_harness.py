"""The benchmark harness itself: a dry run (tiny sizes, every benchmark code path) writes the
results JSON with its metadata, and the report generator turns it into Markdown and plots, for a
CPU run and for a GPU run."""

import json
import pathlib
import subprocess
import sys

import pytest

from bench import report
from bench.cases import get_profile
from impls.testing.metadata import REQUIRED_KEYS

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--dry-run", "--output", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return output


def test_dry_run_writes_results_with_metadata(dry_run):
    results = json.loads((dry_run / "bench-cpu.json").read_text())
    assert set(REQUIRED_KEYS) <= set(results["ibp_metadata"])
    assert results["ibp_metadata"]["device"] == "cpu"
    kinds = {entry["extra_info"]["kind"] for entry in results["benchmarks"]}
    assert {"sqrtm", "sqrtm_time_to_accuracy", "head", "train_step"} <= kinds
    backends = {entry["extra_info"]["backend"] for entry in results["benchmarks"]}
    assert "scipy" in backends
    # GPU-only benchmarks are recorded with their reason, not silently missing.
    assert any("GPU only" in item["reason"] for item in results["not_run"])


def test_dry_run_writes_report_and_plots(dry_run):
    markdown = (dry_run / "BENCHMARKS.md").read_text()
    assert "## Targets" in markdown
    assert "GPU numbers are still unmeasured" in markdown
    assert 'Recommended default ("auto")' in markdown
    for plot in ("sqrtm_pareto.png", "bench-cpu-scipy-speedup.png"):
        assert (dry_run / plot).stat().st_size > 0


def test_report_of_a_gpu_run_shows_times_and_matmul_floor(dry_run, tmp_path):
    results = json.loads((dry_run / "bench-cpu.json").read_text())
    results["ibp_metadata"].update(device="cuda", gpu_name="Test GPU", simulated_device=False)
    headline = get_profile("dry-run", "cuda").headline
    for precision in ("float32", "tf32"):
        flops = 2 * headline.batch * headline.channels**3
        results["benchmarks"].append(
            {
                "name": f"test_matmul_rate[{precision}]",
                "extra_info": {
                    "kind": "matmul",
                    "backend": "torch",
                    "precision": precision,
                    "shape": "newton_schulz",
                    "batch": headline.batch,
                    "channels": headline.channels,
                    "matmul_flops": flops,
                },
                "stats": {"min": 1e-6, "median": 1e-6},
            }
        )
    (tmp_path / "bench-cuda.json").write_text(json.dumps(results))
    markdown = report.write_report(tmp_path).read_text()
    assert "# CUDA" in markdown and "Test GPU" in markdown
    assert "TFLOP/s" in markdown and "time / float32 floor" in markdown
    assert "GPU numbers are still unmeasured" not in markdown
