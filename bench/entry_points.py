"""The console script of `reproduce-accuracy` (see `impls.entry_points`)."""

from typing import NoReturn

from impls.entry_points import run


def reproduce_accuracy() -> NoReturn:
    run("reproduce-accuracy", "bench", "bench.reproduce_accuracy", "command")
