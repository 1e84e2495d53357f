"""The console scripts' first code: each command's optional dependencies (pyproject's extras) are
looked up before anything imports them, so that a missing one is one line naming the extra to
install, and a Ctrl-C while the command's modules import is one line and exit status 130, not a
traceback."""

import importlib
import importlib.util
import sys
from typing import NoReturn

#: What each extra brings that its commands import (module names, not distribution names).
EXTRAS = {
    "check": ("scipy", "hypothesis"),
    "bench": ("scipy", "hypothesis", "matplotlib", "tqdm", "pytest", "pytest_benchmark"),
}

#: Exit status of a command that was interrupted (128 + SIGINT), as every command reports it.
INTERRUPTED = 130


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def run(command: str, extra: str, module: str, function: str) -> NoReturn:
    """Exit with what `module.function()` returns (or exits with), once `extra` is installed."""
    absent = missing(extra)
    if absent:
        print(
            f"{command}: needs the '{extra}' extra, which is not installed (no "
            f"{', '.join(absent)}): pip install 'ibp-suite[{extra}]'",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        entry = getattr(importlib.import_module(module), function)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(entry())


def ibp_check() -> NoReturn:
    run("ibp-check", "check", "impls.testing.check", "main")
