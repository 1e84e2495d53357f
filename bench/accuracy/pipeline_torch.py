"""The PyTorch input pipeline: a DataLoader reads (and, for training, augments) the batches that
the training loop drew, in worker processes if asked, while the model trains.

`split.load` stays the one place that decodes and augments images; the loader calls it once per
batch. Each batch draws its augmentation from a generator of its own (`data.batch_rng`), so the
number of workers never changes which crops and flips a batch gets.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bench.accuracy.data import Batches, batch_rng


class _DrawnBatches(TorchDataset):
    """Item `position` is the whole batch at that position of the loop's list: the loop, not the
    loader, decides which samples form a batch and in which order batches come."""

    def __init__(self, split: Batches, batches: list[np.ndarray], seed: int, epoch: int) -> None:
        self.split, self.batches, self.seed, self.epoch = split, batches, seed, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.batches[position]
        images = self.split.load(indices, batch_rng(self.seed, self.epoch, position))
        # Channels-last from the split, channels-first for torch.
        pixels = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
        labels = np.asarray(self.split.labels[indices], np.int64)
        return torch.from_numpy(pixels), torch.from_numpy(labels)


def make_loader(
    split: Batches,
    batches: list[np.ndarray],
    seed: int,
    epoch: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """(images float32 (B, 3, H, W), labels int64 (B,)) for each of `batches` (index lists into
    `split`), in their order; augmented when `split` augments (its `load` decides).
    `workers` processes decode ahead of the model (0: in this process)."""
    return DataLoader(
        _DrawnBatches(split, batches, seed, epoch),
        batch_size=None,  # each item is already a batch
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
    )
