"""Checkpoint directories written atomically: a run killed at any moment leaves either the previous
checkpoint or the new one, whole, never a mixture.

A checkpoint is filled in a fresh sibling `<name>.tmp`, then swapped in with renames, which are
atomic on one file system. A directory cannot be renamed over a non-empty one, so the old
checkpoint moves aside to `<name>.bak` first and is removed last:

    fill tmp -> rename final to bak -> rename tmp to final -> remove bak

Whatever step a kill interrupts, `recover` finds the newest whole checkpoint: a leftover tmp is
incomplete and discarded; a bak without a final is the previous checkpoint, killed between the two
renames, and is restored; a bak beside a final is stale.
"""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The training loop's state inside a checkpoint (the runner's files sit beside it).
LOOP_FILE = "loop.json"


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _sync(path: Path) -> None:
    """Flush a file or directory to disk, so that a rename that follows never makes visible a
    checkpoint whose contents a power cut would lose."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write(directory: Path, fill: Callable[[Path], None]) -> None:
    """Replace `directory` by what `fill(fresh_directory)` writes, atomically."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp, bak = _sibling(directory, ".tmp"), _sibling(directory, ".bak")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    for path in tmp.rglob("*"):
        if path.is_file():
            _sync(path)
    _sync(tmp)
    if directory.exists():
        if bak.exists():
            shutil.rmtree(bak)
        os.replace(directory, bak)
    os.replace(tmp, directory)
    _sync(directory.parent)
    if bak.exists():
        shutil.rmtree(bak)


def recover(directory: Path) -> Path | None:
    """The newest whole checkpoint at `directory` after whatever interrupted `write`, or None."""
    tmp, bak = _sibling(directory, ".tmp"), _sibling(directory, ".bak")
    if tmp.exists():
        shutil.rmtree(tmp)
    if bak.exists():
        if directory.exists():
            shutil.rmtree(bak)
        else:
            os.replace(bak, directory)
    return directory if directory.exists() else None


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=1))


def read_loop(directory: Path) -> dict[str, Any]:
    return json.loads((directory / LOOP_FILE).read_text())
