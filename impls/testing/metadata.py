"""Where and with what a benchmark ran: stored in every results JSON beside pytest-benchmark's own
machine_info, so a number can always be traced to a commit, library versions and hardware."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

#: Distributions whose versions change the numbers.
VERSIONED = ("numpy", "scipy", "torch", "tensorflow", "tensorflow-cpu", "keras", "pytest-benchmark")

#: Keys every results JSON's "ibp_metadata" holds (the harness test checks them).
REQUIRED_KEYS = (
    "git_commit",
    "git_dirty",
    "date_utc",
    "python",
    "versions",
    "cpu_model",
    "gpu_name",
    "threads",
    "device",
    "profile",
)


def _git(*args):
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _thread_counts():
    """Threads each library would use; only libraries this process already imported are asked,
    so the GPU run never imports TensorFlow just to describe it."""
    threads = {
        "os_cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        threads[variable] = os.environ.get(variable)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_inter_op"] = torch.get_num_interop_threads()
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        # 0 means "TensorFlow picks", which is one thread per core.
        threads["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        threads["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return threads


def _gpu():
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


def load_average():
    """1, 5 and 15 minute load averages: other work on a shared machine skews every ratio."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def collect(device, profile, simulated_device=False):
    """Everything REQUIRED_KEYS names, and a little more."""
    gpu_name, gpu_details = _gpu()
    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
    }
