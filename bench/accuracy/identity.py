"""What a checkpoint belongs to: the configuration, data set, framework, seed and every option
that changes the numbers a run computes. A run resumes a checkpoint only if its own identity is
the same; `differences` names every option that is not, with both values, for the one-line
refusal before training.
"""

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.accuracy.data import Dataset


def data_digest(dataset: Dataset) -> str:
    """A digest of a data set's class names and both splits' labels: another data set of the same
    name and size, or the same images relabelled, gives another digest."""
    digest = hashlib.sha256()
    digest.update("\n".join(map(str, dataset.class_names)).encode())
    for split in (dataset.train, dataset.test):
        digest.update(np.asarray(split.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    framework: str
    dataset: str
    config: str
    seed: int
    epochs: int
    #: the global batch as the configuration trains on it
    batch_size: int
    image_size: int
    train_samples: int
    test_samples: int
    data: str
    backbone: str
    weights: str | None
    reduce_dim: int | None
    recipe: str
    #: the IBP head's options (eps, signed-sqrt regulariser, root method): JSON, sorted keys
    head: str
    device: str
    threads: str
    processes: int
    replicas: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: How each part of the identity is set, for the refusal's message (one entry per field, tested).
SET_BY = {
    "framework": "--framework",
    "dataset": "--dataset",
    "config": "--config",
    "seed": "--seed",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "image_size": "--image-size",
    "train_samples": "the training set's size (--quick)",
    "test_samples": "the test set's size (--quick)",
    "data": "the data (class names and labels, digest)",
    "backbone": "--backbone",
    "weights": "--weights",
    "reduce_dim": "--reduce-dim",
    "recipe": "--recipe",
    "head": "the head's options (--recipe)",
    "device": "--device",
    "threads": "--threads",
    "processes": "the number of processes",
    "replicas": "the number of model replicas",
}


def differences(saved: dict[str, Any], current: Identity) -> list[str]:
    """'--image-size 32 (this run: 16)' for every part of `current` that `saved` (a checkpoint's
    identity, as JSON) has otherwise or lacks."""
    found = []
    for name, value in current.to_json().items():
        theirs = saved.get(name, "(not recorded)")
        if theirs != value:
            found.append(option_difference(SET_BY[name], theirs, value))
    return found


def option_difference(option: str, theirs: Any, ours: Any) -> str:
    """'--image-size 32 (this run: 16)': how an option of a saved run differs from this run's."""
    return f"{option} {shown(theirs)} (this run: {shown(ours)})"


def shown(value: Any) -> str:
    """An option's value as the command line would take it (none, on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)
