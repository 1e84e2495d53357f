"""tf.distribute for the TensorFlow runner: which strategy, how many processes and replicas, and
how a batch is cut among the replicas.

- "none": TensorFlow's default strategy, one device, no cross-device reduction.
- "mirrored": MirroredStrategy over the local GPUs, or over `logical_cpus` logical CPU devices
  (the CPU split into several devices, which exercises the same code on a machine without GPUs).
- "multi-worker": MultiWorkerMirroredStrategy, one process per machine, the cluster read from
  TF_CONFIG (the worker list and this process's place in it).

Every process draws the same global batches; a multi-worker process loads its part of each
(`local_part`), and each process cuts what it loaded into contiguous pieces, one per local replica.
"""

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from bench.accuracy.distributed import World
from reference.contracts import IBPInputError

STRATEGIES = ("none", "mirrored", "multi-worker")


def split_cpu(count: int) -> None:
    """Make the CPU `count` logical devices. TensorFlow fixes its devices when it first runs
    anything, so this must come before any TensorFlow op in the process."""
    if count < 1:
        raise IBPInputError(f"--tf-logical-cpus must be >= 1, got {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    configuration = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    try:
        tf.config.set_logical_device_configuration(cpu, configuration)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) == count:
            return  # an earlier runner in this process made the same split
        raise IBPInputError(
            f"--tf-logical-cpus {count}: TensorFlow has already initialised its devices in this "
            "process; the CPU can be split only before TensorFlow runs anything"
        ) from None


def cluster_from_tf_config(environ: Any = os.environ) -> tuple[int, int]:
    """(this process's rank, number of processes) from TF_CONFIG; rank 0 is the chief (the
    "chief" task if the cluster names one, else worker 0)."""
    text = environ.get("TF_CONFIG")
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not text:
        raise IBPInputError(
            f"--tf-strategy multi-worker reads the cluster from TF_CONFIG, which is "
            f"not set ({example})"
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        tasks = [
            (name, i) for name in ("chief", "worker") for i in range(len(cluster.get(name, [])))
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IBPInputError(
            f"TF_CONFIG is not a cluster and a task ({type(error).__name__}: {error}); {example}"
        ) from None
    if (kind, index) not in tasks:
        raise IBPInputError(
            f"TF_CONFIG: task {kind} {index} is not in the cluster (its tasks: "
            f"{', '.join(f'{name} {i}' for name, i in tasks) or 'none'}); {example}"
        )
    return tasks.index((kind, index)), len(tasks)


def make_strategy(
    name: str | None, gpus: bool, logical_cpus: int | None
) -> tuple[tf.distribute.Strategy, World]:
    """The strategy called `name` and the World it makes this process part of; `gpus`: whether
    to mirror over the local GPUs (else the CPU, or its `logical_cpus` logical devices)."""
    name = name or "none"
    if name not in STRATEGIES:
        raise IBPInputError(f"--tf-strategy {name}: choose one of {', '.join(STRATEGIES)}")
    if logical_cpus is not None and name == "none":
        raise IBPInputError("--tf-logical-cpus splits the CPU for --tf-strategy mirrored only")
    if name == "none":
        return tf.distribute.get_strategy(), World()
    if name == "multi-worker":
        rank, processes = cluster_from_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        replicas = strategy.num_replicas_in_sync
        return strategy, World(rank, processes, replicas, "multi-worker-mirrored")
    if logical_cpus is not None:
        split_cpu(logical_cpus)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    elif gpus:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    else:
        devices = ["/CPU:0"]
    strategy = tf.distribute.MirroredStrategy(devices)
    return strategy, World(replicas=strategy.num_replicas_in_sync, kind="mirrored")


def local_part(world: World, indices: np.ndarray) -> np.ndarray:
    """The samples of a global batch that this process loads: all of them in a one-process
    strategy (which cuts them among its replicas), every `processes`-th from `rank` otherwise."""
    return np.asarray(indices)[world.rank :: world.processes]


def piece(tensor: tf.Tensor, replica: int, replicas: int) -> tf.Tensor:
    """Replica `replica`'s contiguous piece of a batch cut into `replicas` (sizes differ by at
    most one; a batch smaller than `replicas` leaves some pieces empty)."""
    size = tf.shape(tensor)[0]
    start, stop = (size * r // replicas for r in (replica, replica + 1))
    return tensor[start:stop]
