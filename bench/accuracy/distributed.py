"""Where this process stands in a training run that may span several processes and devices.

Every process of a run draws the same global batches from the same seeded generator; each loads
its own part of every batch, and the framework's engine (torch DistributedDataParallel,
tf.distribute) reduces the gradients and metrics. Only the chief (rank 0) writes files and shows
progress bars.
"""

import os
from dataclasses import asdict, dataclass
from typing import Any

#: How a run is spread: one device, torch DDP on CPU (gloo) or GPU (NCCL), TensorFlow's
#: MirroredStrategy (several local devices) or MultiWorkerMirroredStrategy (several machines).
KINDS = ("single", "ddp-gloo", "ddp-nccl", "mirrored", "multi-worker-mirrored")


@dataclass(frozen=True)
class World:
    """`processes`: processes in the run; `replicas`: model copies across all of them (a
    TensorFlow process may hold several, one per local device)."""

    rank: int = 0
    processes: int = 1
    replicas: int = 1
    kind: str = "single"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"World kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 <= self.rank < self.processes or self.replicas < self.processes:
            raise ValueError(f"inconsistent World: {self}")

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


def torchrun_rank_and_size(environ: Any = os.environ) -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun (which sets RANK and
    WORLD_SIZE for each process it starts), else None."""
    if "WORLD_SIZE" not in environ or "RANK" not in environ:
        return None
    return int(environ["RANK"]), int(environ["WORLD_SIZE"])
