"""The one envelope of every results JSON: where, when and with what a result was produced, so a
number can always be traced to a command, a commit, library versions, hardware and the source
code it came from.

Every JSON in results/ is an object whose ENVELOPE_KEY entry is `collect()`'s dictionary (plus
whatever the writer adds through `collect(**details)`); the rest of the object is the payload.
Writers call `write_results`, readers `read_results`.

Results true to the code: the envelope records a digest of every source file its numbers depend
on (`sources`: every module of this repository the measuring process imported, the data files
those modules declare in a SOURCE_DATA mapping, and whatever the writer names for work done in
other processes), and which of them differed from the commit (`sources_dirty`). `stale()` says
whether a committed result still matches the tree; the tests fail on any that does not. A Python
file's digest is that of its syntax tree without docstrings, so comments, docstrings and
formatting never make a result stale; any change to code does.
"""

import ast
import dataclasses
import datetime
import hashlib
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


#: The folder holding the packages (impls, reference, bench) and examples/: a checkout's root,
#: whose git commit the envelope records; source paths in an envelope are relative to it.
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The folders whose modules are sources of a result.
PACKAGES = ("impls", "reference", "bench", "examples")
#: When this module was imported (a writer imports it before measuring): a source modified later
#: was edited while the numbers were measured.
_IMPORTED_AT = time.time()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=30, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def source_digest(path: pathlib.Path, view: Callable[[pathlib.Path], object] | None = None) -> str:
    """What in `path` can change numbers, as a short hex digest: a Python module's syntax tree
    without docstrings (no comments, no formatting); a data file through `view` (the part of it
    its reader uses), else its bytes."""
    if view is not None:
        data = json.dumps(view(path), sort_keys=True, default=str).encode()
    elif path.suffix == ".py":
        tree = _without_docstrings(ast.parse(path.read_bytes(), filename=str(path)))
        data = ast.dump(tree).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _relative(path: pathlib.Path, root: pathlib.Path = ROOT) -> str | None:
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        return None
    return relative.as_posix() if relative.parts[0] in PACKAGES else None


@dataclasses.dataclass(frozen=True)
class Sources:
    """The source files of a result: {path relative to ROOT: digest}, and for data files the
    module whose SOURCE_DATA view was digested."""

    digests: dict[str, str]
    views: dict[str, str]


def _data_view(module_name: str, relative: str) -> Callable[[pathlib.Path], object]:
    """The view module `module_name` declares for its data file `relative` (SOURCE_DATA)."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    for path, view in module.SOURCE_DATA.items():
        if _relative(pathlib.Path(path)) == relative:
            return view
    raise KeyError(f"{module_name}.SOURCE_DATA names no {relative}")


def _python_files(relative: str) -> list[pathlib.Path]:
    path = ROOT / relative
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [file for file in files if "__pycache__" not in file.parts]


def loaded_sources(extra: Iterable[str] = (), exclude: Iterable[pathlib.Path] = ()) -> Sources:
    """The sources of what this process computed: every module of PACKAGES it imported, every
    data file those modules declare (their SOURCE_DATA: {path: view}), and every Python file
    under the paths `extra` (relative to ROOT; for work done in child processes); minus
    `exclude` (the files the writer is about to replace: not sources of its own numbers)."""
    excluded = {_relative(pathlib.Path(path)) for path in exclude}
    views: dict[str, str] = {}
    files: set[str] = set()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file is None or (relative := _relative(pathlib.Path(file))) is None:
            continue
        files.add(relative)
        for data_path in getattr(module, "SOURCE_DATA", {}):
            if (data_relative := _relative(pathlib.Path(data_path))) is not None:
                views[data_relative] = name
    for path in extra:
        files.update(r for file in _python_files(path) if (r := _relative(file)) is not None)
    digests = {}
    for relative in sorted(files | set(views)):
        if relative in excluded or not (ROOT / relative).exists():
            continue
        view = _data_view(views[relative], relative) if relative in views else None
        digests[relative] = source_digest(ROOT / relative, view)
    return Sources(digests, {r: m for r, m in views.items() if r in digests})


def _edited_during_run(sources: Sources) -> list[str]:
    return [p for p in sources.digests if (ROOT / p).stat().st_mtime > _IMPORTED_AT]


def _uncommitted(paths: Iterable[str]) -> list[str] | None:
    """Which of `paths` differ from the commit (modified, added or untracked); None without git."""
    paths = list(paths)
    status = _git("status", "--porcelain", "--untracked-files=all", "--", *paths) if paths else ""
    if status is None:
        return None
    return sorted({line[3:].split(" -> ")[-1] for line in status.splitlines() if line.strip()})


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
    sources: Iterable[str] = (),
    writes: Iterable[pathlib.Path] = (),
    **details: Any,
) -> dict[str, Any]:
    """The envelope: everything REQUIRED_KEYS names, a little more, and the writer's `details`.

    `command` is the command line that reproduces the file, exactly as a user types it (the
    README's provenance lines quote it); `wall_seconds` is how long that command ran. `sources`
    and `writes` go to `loaded_sources` (its `extra` and `exclude`). Call it after measuring, in
    the process that measured: the sources edited since this module was imported are recorded
    (`sources_edited_during_run`; numbers of two versions of the code are true to neither, and
    `stale` says so).
    """
    gpu_name, gpu_details = _gpu()
    status = _git("status", "--porcelain")
    digested = loaded_sources(sources, writes)
    return {
        "command": command,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "sources_dirty": _uncommitted(digested.digests),
        "sources_edited_during_run": _edited_during_run(digested),
        "sources": digested.digests,
        "source_views": digested.views,
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


def _plain(value: Any) -> Any:
    """JSON-ready: typed records (dataclasses) become objects, at any depth."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def write_results(path: pathlib.Path, metadata: Mapping[str, Any], **payload: Any) -> None:
    """Write `payload` (JSON values or typed records) with its envelope to `path` (JSON), whole
    or not at all: a temporary file beside it, then renamed over it."""
    document = {ENVELOPE_KEY: dict(metadata), **_plain(payload)}
    path = pathlib.Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(partial, path)


def write_rows(
    output_dir: pathlib.Path,
    file_name: str,
    metadata: Mapping[str, Any],
    rows: Sequence[Any],
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
    """The commit in 12 characters, marked when the code measured had uncommitted changes (its
    sources; for a file older than that field, anything in the tree)."""
    commit = (metadata.get("git_commit") or "unknown")[:12]
    dirty = metadata["sources_dirty"] if "sources_dirty" in metadata else metadata.get("git_dirty")
    return commit + (" (uncommitted changes)" if dirty else "")


def stale(metadata: Mapping[str, Any], root: pathlib.Path = ROOT) -> list[str]:
    """Why a result's numbers may no longer be those of the code at `root`, one line each (none:
    fresh): no source digest, sources edited during the run or uncommitted when measured, or a
    source changed since."""
    if "sources" not in metadata:
        return ["records no source digest (measured before results carried one)"]
    problems = []
    edited = metadata.get("sources_edited_during_run")
    if edited:
        problems.append(f"{', '.join(edited)} changed while the numbers were measured")
    dirty = metadata.get("sources_dirty")
    if dirty is None:
        problems.append("measured where git could not say whether its sources were committed")
    elif dirty:
        problems.append(f"measured with uncommitted changes to {', '.join(dirty)}")
    views = metadata.get("source_views", {})
    for relative, digest in sorted(metadata["sources"].items()):
        path = root / relative
        if not path.exists():
            problems.append(f"{relative} no longer exists")
            continue
        view = _data_view(views[relative], relative) if relative in views else None
        if source_digest(path, view) != digest:
            problems.append(f"{relative} changed since")
    return problems


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
