"""Real image data sets on disk: CUB-200-2011 in its own layout, or class folders (Stanford Cars,
FGVC Aircraft, anything else arranged that way).

Layouts, tried in this order:
- CUB-200-2011: images.txt, train_test_split.txt, image_class_labels.txt (and classes.txt for
  the names) beside images/.
- train/<class>/* and test/<class>/* (or val/<class>/*).
- <class>/*: without a given split, every fifth image of each class (sorted by file name) is a
  test image.

Images are read when a batch asks for them (`FileSplit.load`, called by each framework's input
pipeline, several batches at a time): the training split resizes the shorter side to the
image size, takes a random square crop and flips half of the images (the authors' 448 crops with
flips); the test split takes the centre crop.

Everything a run needs from the folder is checked before training (`image_folder` raises
`IBPInputError` naming the problem): at least two classes, no class without images, the same
classes in the training and the test split, and every file's image header readable. A file that
passes the header check but fails to decode later is named with its path too.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.accuracy.data import Dataset
from reference.contracts import IBPInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_TEST_SPLIT_NAMES = ("test", "val")
#: Without a given split, one image in this many is a test image.
_TEST_EVERY = 5

#: One split's image paths and their labels.
_Files = tuple[list[Path], list[int]]
#: What a folder layout yields: class names, then the training and the test split's files.
_Layout = tuple[list[str], _Files, _Files]


def _load_image(
    path: Path, image_size: int, crop_rng: np.random.Generator | None, flip: bool
) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise IBPInputError(f"cannot read image {path}: {error}") from None
    scale = image_size / min(image.size)
    width, height = (max(image_size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    if crop_rng is None:
        left, top = (width - image_size) // 2, (height - image_size) // 2
    else:
        left = int(crop_rng.integers(0, width - image_size + 1))
        top = int(crop_rng.integers(0, height - image_size + 1))
    pixels = np.asarray(image.crop((left, top, left + image_size, top + image_size)), np.float32)
    pixels = pixels / 255.0
    return pixels[:, ::-1] if flip else pixels


def _crop_rng(seed: int | None) -> np.random.Generator | None:
    return None if seed is None else np.random.default_rng(seed)


@dataclass
class FileSplit:
    """Image files with integer labels, read (and, for training, augmented) batch by batch."""

    paths: list
    labels: np.ndarray
    image_size: int
    augment: bool

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Any, rng: Any = None) -> np.ndarray:
        augment = self.augment and rng is not None
        flips = rng.random(len(indices)) < 0.5 if augment else np.zeros(len(indices), bool)
        seeds = rng.integers(0, 2**32, len(indices)) if augment else [None] * len(indices)
        # One batch, decoded in this process: the frameworks' pipelines (torch DataLoader
        # workers, tf.data's parallel map) load several batches at once.
        return np.stack(
            [
                _load_image(self.paths[i], self.image_size, _crop_rng(s), f)
                for i, s, f in zip(indices, seeds, flips, strict=True)
            ]
        )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _read_table(path: Path) -> dict[str, str]:
    """{first column: rest of the line} of a CUB metadata file."""
    if not path.is_file():
        raise IBPInputError(f"{path.parent} looks like CUB-200-2011 but has no {path.name}")
    table = {}
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                key, separator, value = line.strip().partition(" ")
                if not separator:
                    raise IBPInputError(f"{path}, line {number}: expected 'id value', got {line!r}")
                table[key] = value.strip()
    return table


def _cub_layout(root: Path) -> _Layout:
    images = _read_table(root / "images.txt")
    is_training = _read_table(root / "train_test_split.txt")
    class_ids = _read_table(root / "image_class_labels.txt")
    for table, name in (
        (is_training, "train_test_split.txt"),
        (class_ids, "image_class_labels.txt"),
    ):
        missing = sorted(set(images) - set(table))
        if missing:
            raise IBPInputError(f"{root / name} has no line for image id {missing[0]}")
    unknown = sorted({flag for flag in is_training.values()} - {"0", "1"})
    if unknown:
        raise IBPInputError(
            f"{root / 'train_test_split.txt'}: split flag {unknown[0]!r} is not 0 or 1"
        )
    ordered_class_ids = sorted({int(c) for c in class_ids.values()})
    names_file = root / "classes.txt"
    names = _read_table(names_file) if names_file.exists() else {}
    class_names = [names.get(str(c), str(c)) for c in ordered_class_ids]
    label_of = {c: label for label, c in enumerate(ordered_class_ids)}
    splits: dict[str, _Files] = {"1": ([], []), "0": ([], [])}
    for image_id, relative_path in sorted(images.items(), key=lambda item: int(item[0])):
        paths, labels = splits[is_training[image_id]]
        paths.append(root / "images" / relative_path)
        labels.append(label_of[int(class_ids[image_id])])
    return class_names, splits["1"], splits["0"]


def _split_folder_layout(train_root: Path, test_root: Path) -> _Layout:
    class_names = [folder.name for folder in _class_folders(train_root)]
    only_in_test = sorted({f.name for f in _class_folders(test_root)} - set(class_names))
    if only_in_test:
        raise IBPInputError(
            f"{test_root} has class folders that {train_root} lacks: {', '.join(only_in_test)}"
        )
    splits: list[_Files] = []
    for root in (train_root, test_root):
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            found = _images_in(root / name) if (root / name).is_dir() else []
            paths += found
            labels += [label] * len(found)
        splits.append((paths, labels))
    return class_names, splits[0], splits[1]


def _class_folder_layout(root: Path) -> _Layout:
    class_names = [folder.name for folder in _class_folders(root)]
    train: _Files = ([], [])
    test: _Files = ([], [])
    for label, name in enumerate(class_names):
        for position, path in enumerate(_images_in(root / name)):
            paths, labels = test if position % _TEST_EVERY == _TEST_EVERY - 1 else train
            paths.append(path)
            labels.append(label)
    return class_names, train, test


def _check_classes(
    where: str, class_names: list[str], train_labels: list[int], test_labels: list[int]
) -> None:
    """At least two classes, each with training and test images: a class missing from one split
    would silently change what the accuracy measures."""
    if len(class_names) < 2:
        found = f"1 class ({class_names[0]})" if class_names else "no class folders"
        raise IBPInputError(f"{where}: found {found}; a classifier needs at least 2 classes")
    for split, labels in (("training", train_labels), ("test", test_labels)):
        present = set(labels)
        missing = [name for label, name in enumerate(class_names) if label not in present]
        if missing:
            raise IBPInputError(
                f"{where}: no {split} images for class{'es' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}; every class needs training and test images"
            )


def _check_headers(paths: list[Path]) -> None:
    """Open every file's header (cheap: no pixels are decoded) so that a file that is not an image
    is named before training, not an hour into it."""
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError) as error:
            raise IBPInputError(f"cannot read image {path}: {error}") from None


def image_folder(data_dir: str | Path, image_size: int) -> Dataset:
    """The data set under `data_dir` in one of the layouts of this module's docstring."""
    root = Path(data_dir)
    if not root.is_dir():
        raise IBPInputError(f"--data-dir {data_dir}: no such folder")
    test_roots = [root / name for name in _TEST_SPLIT_NAMES if (root / name).is_dir()]
    if (root / "images.txt").exists():
        layout = "CUB-200-2011"
        class_names, train, test = _cub_layout(root)
    elif (root / "train").is_dir() and test_roots:
        layout = f"train/ and {test_roots[0].name}/ class folders"
        class_names, train, test = _split_folder_layout(root / "train", test_roots[0])
    else:
        layout = f"class folders, every {_TEST_EVERY}th image a test image"
        class_names, train, test = _class_folder_layout(root)
    _check_classes(f"{data_dir} ({layout})", class_names, train[1], test[1])
    _check_headers(train[0] + test[0])
    train_split = FileSplit(train[0], np.array(train[1]), image_size, augment=True)
    test_split = FileSplit(test[0], np.array(test[1]), image_size, augment=False)
    description = (
        f"{root.name} ({layout}): {len(class_names)} classes, {len(train_split)} training and "
        f"{len(test_split)} test images at {image_size}x{image_size}"
    )
    return Dataset(root.name, class_names, train_split, test_split, True, description)
