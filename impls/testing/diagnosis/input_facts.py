"""The features of an input that make a stage degenerate, and the input described in words."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import reference

#: Eigenvalues closer than this (relative to the largest) count as repeated: autodiff through
#: eigh/svd divides by their difference.
REPEATED_GAP = 1e-6


@dataclass(frozen=True)
class Degeneracy:
    smallest_gap: float = np.inf  # between eigenvalues of the decomposed matrix, relative
    condition: float = 1.0
    zero_entries: int = 0  # exact zeros of a matrix input
    dead_channels: int = 0  # channels that are zero in every location of some sample
    locations: int = 0  # N = H*W of a feature map
    channels: int = 0

    @property
    def repeated_eigenvalues(self) -> bool:
        return self.smallest_gap < REPEATED_GAP

    @property
    def rank_deficient(self) -> bool:
        return self.dead_channels > 0 or 0 < self.locations < self.channels


def native_shape(layout: str, is_feature_map: bool, shape: Sequence[int]) -> tuple[int, ...]:
    """A reference-layout (channels-first) shape in the framework's layout."""
    if is_feature_map and layout == "channels_last":
        b, c, h, w = shape
        return (b, h, w, c)
    return tuple(shape)


def _spectrum(matrices: np.ndarray) -> tuple[float, float]:
    eigenvalues = np.linalg.eigvalsh((matrices + np.swapaxes(matrices, 1, 2)) / 2)
    largest = np.maximum(np.abs(eigenvalues).max(axis=1), np.finfo(float).tiny)
    gaps = np.diff(eigenvalues, axis=1) / largest[:, None] if eigenvalues.shape[1] > 1 else []
    smallest = eigenvalues[:, 0] / largest
    with np.errstate(divide="ignore"):
        condition = np.where(smallest > 0, 1 / smallest, np.inf)
    return (float(np.min(gaps)) if len(gaps) else np.inf), float(np.max(condition))


def degeneracy(stage: str, x: np.ndarray) -> Degeneracy:
    """What is degenerate about the input x (reference layout) of `stage`."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        b, c, h, w = x.shape
        dead = int(np.max(np.sum(np.all(x.reshape(b, c, -1) == 0, axis=2), axis=1)))
        gap, condition = _spectrum(reference.bilinear_pool(x))
        return Degeneracy(gap, condition, dead_channels=dead, locations=h * w, channels=c)
    if stage == "sqrtm":
        gap, condition = _spectrum(x)
        return Degeneracy(gap, condition, channels=x.shape[1])
    return Degeneracy(zero_entries=int(np.sum(x == 0)), channels=x.shape[1])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def describe(stage: str, layout: str, x: np.ndarray) -> str:
    """'(2, 3, 3, 4) channels_last: batch 2, 4 channels, 9 locations, 1 dead channel'."""
    x = np.asarray(x)
    facts = degeneracy(stage, x)
    shape = native_shape(layout, x.ndim == 4, x.shape)
    if x.ndim == 4:
        words = [
            f"batch {x.shape[0]}",
            _count(facts.channels, "channel"),
            _count(facts.locations, "location"),
        ]
        if facts.dead_channels:
            words.append(_count(facts.dead_channels, "dead channel"))
        if facts.locations < facts.channels:
            words.append("N < C")
        return f"{shape} {layout}: " + ", ".join(words)
    words = [f"batch {x.shape[0]} of {x.shape[1]} x {x.shape[2]}"]
    if stage == "sqrtm":
        words.append(f"condition number {facts.condition:.2g}")
        if facts.repeated_eigenvalues:
            words.append(f"repeated eigenvalues (relative gap {facts.smallest_gap:.1g})")
    elif facts.zero_entries:
        words.append(f"{facts.zero_entries} exact zeros")
    return f"{shape}: " + ", ".join(words)
