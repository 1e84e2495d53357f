"""The result files of a run (accuracy.json, .md and .png, or accuracy-STUDY.*), written as one set:
all of them or none.

Into a folder that does not exist yet, the set is written to a fresh hidden sibling folder and
renamed into place, one atomic rename: a failure or a kill at any moment leaves no folder, or the
whole set. Into an existing folder (`--output-dir results`, which holds other files too) each
file is written beside its final name first; then the old files are kept as hard links
(byte for byte, no copy), the new ones renamed over them one by one, and if any rename fails
every file already replaced is renamed back, so a failure at any file leaves the previous set
as it was. (A kill between two of those renames, microseconds apart, is the one window this
cannot close.)
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.accuracy.records import RecordError, Results
from impls.testing.metadata import read_results
from reference.contracts import IBPInputError

SUFFIXES = ("json", "md", "png")
#: Writes one file at the path it is given.
Writer = Callable[[Path], object]


def stem(study: str | None = None) -> str:
    """The result files' name without suffix: one set for the default run, one per study."""
    return f"accuracy-{study}" if study else "accuracy"


def names(study: str | None = None) -> tuple[str, ...]:
    return tuple(f"{stem(study)}.{suffix}" for suffix in SUFFIXES)


def read(path: Path) -> Results:
    """The results in a results file; one that cannot be read raises IBPInputError naming it."""
    try:
        metadata, document = read_results(path)
        return Results.from_json(metadata, document)
    except FileNotFoundError:
        raise IBPInputError(f"{path}: no such file") from None
    except OSError as error:
        raise IBPInputError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (ValueError, RecordError) as error:  # JSONDecodeError and UnicodeDecodeError too
        raise IBPInputError(f"{path}: not results of reproduce-accuracy ({error})") from None


def check_writable(output_dir: Path, study: str | None = None) -> None:
    """Find, before any training, what would keep the set from being written: a folder (or the
    folder it will be created in) where no file can be created, or a result file's name taken
    by something that is not a file. Creates the parent folders, never `output_dir` itself (a
    failed run leaves no empty run folder). Raises OSError."""
    if output_dir.exists():
        if not output_dir.is_dir():
            raise NotADirectoryError(f"{output_dir} is not a folder")
        for name in names(study):
            target = output_dir / name
            if target.exists() and not target.is_file():
                raise IsADirectoryError(f"{target} is in the way: not a file")
        probe_folder = output_dir
    else:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        probe_folder = output_dir.parent
    with tempfile.NamedTemporaryFile(dir=probe_folder, prefix=".probe-"):
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fill(folder: Path, writers: dict[str, Writer]) -> dict[str, Path]:
    """Each file written beside its final name in `folder` (a hidden temporary name), with the
    mode that the user's umask gives any file; their paths by final name."""
    written: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            # mkstemp makes the file private (0600); results are shared like any file written
            # with open().
            os.fchmod(handle, 0o666 & ~_umask())
            os.close(handle)
            written[name] = Path(temporary)
            write(written[name])
    except BaseException:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    return written


def _write_new_folder(output_dir: Path, writers: dict[str, Writer]) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        os.chmod(fresh, 0o777 & ~_umask())  # mkdtemp's folder is private
        for name, path in _fill(fresh, writers).items():
            os.replace(path, fresh / name)
        os.rename(fresh, output_dir)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _kept(path: Path) -> Path | None:
    """A hard link to the file at `path` under a hidden name (a copy where the file system has no
    hard links), or None if there is no file."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{os.getpid()}.previous")
    backup.unlink(missing_ok=True)
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def _restore(output_dir: Path, replaced: list[str], backups: dict[str, Path | None]) -> list[str]:
    """Put the previous files back where new ones replaced them; the names it could not."""
    stranded = []
    for name in reversed(replaced):
        backup = backups[name]
        try:
            if backup is None:
                (output_dir / name).unlink(missing_ok=True)
            else:
                os.replace(backup, output_dir / name)
        except OSError:
            stranded.append(name)
    return stranded


def _replace_in_folder(output_dir: Path, writers: dict[str, Writer]) -> None:
    written = _fill(output_dir, writers)
    backups: dict[str, Path | None] = {}
    replaced: list[str] = []
    stranded: list[str] = []
    try:
        for name in written:
            backups[name] = _kept(output_dir / name)
        for name, path in written.items():
            os.replace(path, output_dir / name)
            replaced.append(name)
    except BaseException as error:
        stranded = _restore(output_dir, replaced, backups)
        if stranded:
            kept = ", ".join(f"{name} in {backups[name]}" for name in stranded)
            raise OSError(f"{error}; the previous files could not be put back: {kept}") from error
        raise
    finally:
        leftovers: list[tuple[str, Path | None]] = [*written.items(), *backups.items()]
        for name, leftover in leftovers:
            if leftover is not None and name not in stranded:
                leftover.unlink(missing_ok=True)


def write_set(output_dir: Path, writers: dict[str, Writer]) -> None:
    """Write the files `writers` make (by name) into `output_dir` as one set (module docstring).
    Raises OSError (or what a writer raises), with the previous set kept whole."""
    if output_dir.exists():
        _replace_in_folder(output_dir, writers)
    else:
        _write_new_folder(output_dir, writers)
