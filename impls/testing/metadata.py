"""The one envelope of every results JSON: where, when and with what a result was produced, so a
number can always be traced to a command, a commit, library versions and hardware.

Every JSON in results/ is an object whose ENVELOPE_KEY entry is `collect()`'s dictionary (plus
whatever the writer adds through `collect(**details)`); the rest of the object is the payload.
Writers call `write_results`, readers `read_results`.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: The key of the envelope in every results JSON. Not "metadata": pytest-benchmark's own JSON,
#: which the benchmark results extend, has "machine_info" and "commit_info" of its own.
ENVELOPE_KEY = "ibp_metadata"

#: Distributions whose versions change the numbers.
VERSIONED = ("numpy", "scipy", "torch", "tensorflow", "tensorflow-cpu", "keras", "pytest-benchmark")

#: Keys every envelope holds (the harness and README-drift tests check them).
REQUIRED_KEYS = (
    "command",
    "git_commit",
    "git_dirty",
    "date_utc",
    "wall_seconds",
    "python",
    "versions",
    "cpu_model",
    "gpu_name",
    "threads",
    "device",
    "profile",
)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _thread_counts() -> dict[str, Any]:
    """Threads each library would use; only libraries this process already imported are asked,
    so the GPU run never imports TensorFlow just to describe it."""
    threads: dict[str, Any] = {
        "os_cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        threads[variable] = os.environ.get(variable)
    torch, tf = sys.modules.get("torch"), sys.modules.get("tensorflow")
    if torch is not None:
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_inter_op"] = torch.get_num_interop_threads()
    if tf is not None:
        # 0 means "TensorFlow picks", which is one thread per core.
        threads["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        threads["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return threads


def _gpu() -> tuple[str | None, dict[str, Any] | None]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None, None
    properties = torch.cuda.get_device_properties(0)
    details = {
        "name": properties.name,
        "total_memory_bytes": properties.total_memory,
        "multiprocessors": properties.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    return properties.name, details


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on a shared machine skews every ratio."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def collect(
    device: str,
    profile: str,
    *,
    command: str | None = None,
    wall_seconds: float | None = None,
    simulated_device: bool = False,
    **details: Any,
) -> dict[str, Any]:
    """The envelope: everything REQUIRED_KEYS names, a little more, and the writer's `details`.

    `command` is the command line that reproduces the file, exactly as a user types it (the
    README's provenance lines quote it); `wall_seconds` is how long that command ran.
    """
    gpu_name, gpu_details = _gpu()
    status = _git("status", "--porcelain")
    return {
        "command": command,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": _versions(),
        "cpu_model": _cpu_model(),
        "gpu_name": gpu_name,
        "gpu": gpu_details,
        "threads": _thread_counts(),
        "load_average_at_end": load_average(),
        "device": device,
        # A dry run of the GPU suite on a machine without one runs its code paths on the CPU.
        "simulated_device": simulated_device,
        "profile": profile,
        **details,
    }


def write_results(path: pathlib.Path, metadata: Mapping[str, Any], **payload: Any) -> None:
    """Write `payload` with its envelope to `path` (JSON)."""
    document = {ENVELOPE_KEY: dict(metadata), **payload}
    pathlib.Path(path).write_text(json.dumps(document, indent=1) + "\n")


def write_rows(
    output_dir: pathlib.Path,
    file_name: str,
    metadata: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    document: tuple[str, Callable[[pathlib.Path], str]] | None = None,
) -> pathlib.Path:
    """Write a measuring command's `rows` with their envelope to `output_dir`/`file_name` and,
    given `document` (its path in the repository, the renderer reading that JSON), the document
    rendered from the file just written, beside it. Returns the JSON's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / file_name
    write_results(path, metadata, rows=list(rows))
    if document is not None:
        name, render = document
        (output_dir / pathlib.PurePath(name).name).write_text(render(path))
    return path


def read_results(path: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(envelope, whole document) of a results JSON."""
    document = json.loads(pathlib.Path(path).read_text())
    if ENVELOPE_KEY not in document:
        raise ValueError(f"{path} has no {ENVELOPE_KEY!r} envelope: not written by this suite")
    return document[ENVELOPE_KEY], document


def short_commit(metadata: Mapping[str, Any]) -> str:
    """The commit in 12 characters, marked when the tree had uncommitted changes."""
    commit = (metadata.get("git_commit") or "unknown")[:12]
    return commit + (" (uncommitted changes)" if metadata.get("git_dirty") else "")


def hardware(metadata: Mapping[str, Any]) -> str:
    """What ran the code, in words: the GPU and its host CPU, or the CPU alone."""
    cpu = f"CPU {metadata['cpu_model']}, {metadata['threads'].get('os_cpu_count')} cores"
    if metadata.get("simulated_device"):
        return f"{cpu} (GPU suite simulated on the CPU: dry run)"
    if metadata.get("gpu_name"):
        return f"GPU {metadata['gpu_name']} (host {cpu})"
    return cpu


def run_time(metadata: Mapping[str, Any]) -> str:
    """How long the producing command ran, in words; files older than the field say so."""
    seconds = metadata.get("wall_seconds")
    if seconds is None:
        return "not recorded (this file predates the field)"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
