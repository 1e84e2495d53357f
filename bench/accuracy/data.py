"""Embedded data sets (nothing is downloaded) and the split type every data set provides.

Images are float32 RGB in [0, 1], channels-last (N, H, W, 3), the layout both frameworks' image
pipelines start from; the torch runner transposes.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from impls.testing import founding_question as question
from impls.testing.textures import (
    SYNTHETIC_MEAN,
    SYNTHETIC_NUM_CLASSES,
    SYNTHETIC_STD,
    class_name,
    synthetic_images,
)

TEXTURE_NAMES = ("brick", "grass", "gravel")


def batch_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The augmentation generator of the batch at `position` of epoch `epoch`: its own stream, so
    that loading batches in parallel, in worker processes or after a resume never changes which
    crops and flips a batch gets."""
    return np.random.default_rng([seed, epoch, position])


class Batches(Protocol):
    """What a data set's split provides: integer labels and `load`, which returns a batch of
    images (`Split` in memory, `image_folders.FileSplit` from files)."""

    @property
    def labels(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def load(self, indices: Any, rng: Any = None) -> np.ndarray: ...


@dataclass
class Split:
    """Images in memory with integer labels; `load` returns a batch of them."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Any, rng: Any = None) -> np.ndarray:
        # rng is the augmentation stream of file-backed splits; in-memory data is not augmented.
        return self.images[indices]


@dataclass
class Dataset:
    name: str
    class_names: list
    train: Batches
    test: Batches
    #: Whether `train.load` augments: frozen-backbone features can be computed once only if not.
    augments: bool = False
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def chance_rate(self) -> float:
        """Accuracy of always answering the test set's most frequent class."""
        return float(np.bincount(self.test.labels).max() / len(self.test.labels))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.test.load(np.arange(1)).shape[1:])


def _balanced_shuffled_labels(
    num_classes: int, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    # Shuffled, so that a batch of the test set is a random draw of classes (as Keras'
    # flow_from_directory shuffles): a batch-summing model must not see one class per batch.
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _unbalanced_shuffled_labels(
    num_classes: int, total: int, majority_share: float, rng: np.random.Generator
) -> np.ndarray:
    """Class 0 holds `majority_share` of `total` samples, the other classes share the rest as
    evenly as counts allow; shuffled like the balanced labels."""
    majority = round(majority_share * total)
    rest, remainder = divmod(total - majority, num_classes - 1)
    counts = [majority] + [rest + (c < remainder) for c in range(num_classes - 1)]
    return rng.permutation(np.repeat(np.arange(num_classes), counts))


def synthetic(
    seed: int,
    train_per_class: int = 160,
    test_per_class: int = 64,
    image_size: int = 32,
    majority_share: float | None = None,
) -> Dataset:
    """The synthetic textures, balanced, or (`majority_share`) with class 0 holding that share of
    as many samples as the balanced set has: the question's own data (784 training images, 7
    classes) may well have been unbalanced."""
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    splits = []
    for rng, per_class in ((train_rng, train_per_class), (test_rng, test_per_class)):
        if majority_share is None:
            labels = _balanced_shuffled_labels(SYNTHETIC_NUM_CLASSES, per_class, rng)
        else:
            total = SYNTHETIC_NUM_CLASSES * per_class
            labels = _unbalanced_shuffled_labels(SYNTHETIC_NUM_CLASSES, total, majority_share, rng)
        splits.append(Split(synthetic_images(labels, image_size, rng), labels))
    class_names = [class_name(c) for c in range(SYNTHETIC_NUM_CLASSES)]
    balance = (
        "balanced"
        if majority_share is None
        else f"class 0 ({class_names[0]}) holds {majority_share:.0%} of the images, the other "
        "classes share the rest evenly"
    )
    description = (
        f"{image_size}x{image_size} coloured Gaussian textures, {SYNTHETIC_NUM_CLASSES} "
        "classes that differ only in spatial and cross-channel correlation (stripe orientation "
        "and colour axes); every channel of every image has mean "
        f"{SYNTHETIC_MEAN} and standard deviation {SYNTHETIC_STD}; {balance}"
    )
    name = "synthetic" if majority_share is None else f"synthetic-{round(100 * majority_share)}"
    return Dataset(name, class_names, splits[0], splits[1], description=description)


#: The unbalanced variant's majority share: the question's reported plateau.
UNBALANCED_MAJORITY_SHARE = question.REPORTED_ACCURACY


def synthetic_unbalanced(
    seed: int, train_per_class: int = 160, test_per_class: int = 64, image_size: int = 32
) -> Dataset:
    return synthetic(seed, train_per_class, test_per_class, image_size, UNBALANCED_MAJORITY_SHARE)


def _texture_photographs() -> dict[str, np.ndarray]:
    import skimage.data  # the optional "data" extra: only this data set needs it

    return {name: getattr(skimage.data, name)() for name in TEXTURE_NAMES}


def _random_patches(
    photograph: np.ndarray, rows: slice, count: int, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` square patches whose every pixel lies in `rows` (a slice) of a grey photograph."""
    top = rng.integers(rows.start, rows.stop - image_size + 1, count)
    left = rng.integers(0, photograph.shape[1] - image_size + 1, count)
    patches = np.stack(
        [photograph[t : t + image_size, s : s + image_size] for t, s in zip(top, left, strict=True)]
    )
    return np.repeat(patches[..., None], 3, axis=-1).astype(np.float32) / 255.0


def skimage_textures(
    seed: int, train_per_class: int = 160, test_per_class: int = 64, image_size: int = 32
) -> Dataset:
    """Patches of the brick, grass and gravel photographs that ship with scikit-image.

    Train patches come from the top three quarters of each photograph, test patches from the
    bottom quarter, so no test pixel was seen in training. Grey photographs, copied to 3 channels.
    """
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    photographs = _texture_photographs()
    splits = []
    for rng, per_class, region in (
        (train_rng, train_per_class, "train"),
        (test_rng, test_per_class, "test"),
    ):
        labels = _balanced_shuffled_labels(len(TEXTURE_NAMES), per_class, rng)
        images = np.empty((len(labels), image_size, image_size, 3), np.float32)
        for label, name in enumerate(TEXTURE_NAMES):
            height = photographs[name].shape[0]
            boundary = height * 3 // 4
            rows = slice(0, boundary) if region == "train" else slice(boundary, height)
            chosen = labels == label
            images[chosen] = _random_patches(photographs[name], rows, chosen.sum(), image_size, rng)
        splits.append(Split(images, labels))
    description = (
        f"{image_size}x{image_size} grey patches of scikit-image's brick, grass and gravel "
        "photographs; train patches from the top three quarters, test patches from the bottom "
        "quarter"
    )
    return Dataset(
        "skimage-textures", list(TEXTURE_NAMES), splits[0], splits[1], description=description
    )


EMBEDDED_DATASETS = {
    "synthetic": synthetic,
    "synthetic-30": synthetic_unbalanced,
    "skimage-textures": skimage_textures,
}
