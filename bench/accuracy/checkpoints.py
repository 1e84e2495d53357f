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

from bench.accuracy.records import LoopState, RecordError
from reference.contracts import IBPInputError

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


class CheckpointWriteError(Exception):
    """A checkpoint that could not be written (a full disk, a folder made read-only during the
    run); the previous checkpoint in that folder is whole. One line, naming the folder."""


def write(directory: Path, fill: Callable[[Path], None]) -> None:
    """Replace `directory` by what `fill(fresh_directory)` writes, atomically. A file system that
    refuses any step (OSError, from `fill` too) raises CheckpointWriteError, with the previous
    checkpoint whole and no half-filled folder left beside it."""
    tmp, bak = _sibling(directory, ".tmp"), _sibling(directory, ".bak")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
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
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        # A failure between the two renames leaves the previous checkpoint aside: put it back.
        if bak.exists() and not directory.exists():
            try:
                os.replace(bak, directory)
            except OSError:
                pass  # `recover` restores it when the run starts again
        kept = (
            "the last checkpoint written there is whole, and the same command resumes from it"
            if directory.exists() or bak.exists()
            else "no checkpoint of that run was written"
        )
        raise CheckpointWriteError(
            f"cannot write a checkpoint to {directory} ({error.strerror or error}); {kept}"
        ) from None
    # Stale once the new checkpoint is in place; a bak that stays is removed by `recover`.
    shutil.rmtree(bak, ignore_errors=True)


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


#: The longest excerpt of a framework's error message that a one-line refusal quotes.
_EXCERPT = 120


def reason(error: BaseException) -> str:
    """'EOFError: Ran out of input': an exception's type and the first line of its message,
    cut to fit a one-line refusal (frameworks explain their errors at length)."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > _EXCERPT:
        first = first[: _EXCERPT - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def damaged(path: Path, what: str) -> IBPInputError:
    """The one-line error of a checkpoint file that cannot be used: it names the file and what is
    wrong, and says how to start that configuration afresh."""
    return IBPInputError(
        f"checkpoint file {path}: {what}; remove {path.parent} to train that configuration afresh"
    )


def write_loop(directory: Path, state: LoopState) -> None:
    (directory / LOOP_FILE).write_text(json.dumps(state.to_json(), indent=1))


def read_loop(directory: Path) -> LoopState:
    """The loop state of the checkpoint in `directory`; a missing, unreadable, truncated or
    foreign loop.json raises IBPInputError naming it."""
    path = directory / LOOP_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise damaged(path, "missing (not a checkpoint of reproduce-accuracy)") from None
    except OSError as error:
        raise damaged(path, f"cannot be read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise damaged(path, f"not JSON, truncated or damaged ({reason(error)})") from None
    try:
        return LoopState.from_json(data)
    except RecordError as error:
        raise damaged(path, f"not a loop state of this version ({error})") from None
