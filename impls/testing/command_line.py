"""The command-line layer the suite's commands share (`ibp-check`, `reproduce-accuracy`): a parser
whose usage errors are one line, the argument types, options that a Python API takes under the
same names, and the exit statuses.

An argument type here is a validator first: it takes the text of a command line or a Python value
(5 or "5", (3, 16, 16) or "3,16,16") and returns the value, or raises UsageError naming what is
allowed. `argument_type` turns one into an argparse type; `Option` declares a command's option
once, so that the command line and the Python API validate it the same way:

    SIZE = Option("size", bounded(int, 2, 256), 8, "largest channel count", metavar="C")
    SIZE.add_to(parser)             # --size C
    validated([SIZE], {"size": 3})  # {"size": 3}; size=1 raises UsageError

Exit statuses: 0 passed, 1 failed, 2 usage error, 130 interrupted (Ctrl-C). `run_command` maps
the exceptions to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from reference.contracts import IBPInputError

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Width of the reports the commands print.
REPORT_WIDTH = 100

T = TypeVar("T")
Number = TypeVar("Number", int, float)
#: A value as given (command-line text or a Python value) -> the value, or UsageError.
Validator = Callable[[Any], T]


class UsageError(IBPInputError):
    """A value a command or its Python API cannot use; the message (one line) names the value and
    what is allowed. Exit status 2 on the command line; a ValueError in Python."""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit status 2 (the usage text would bury the
    message); subcommands get the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def argument_type(validate: Validator[T]) -> Callable[[str], T]:
    """`validate` as an argparse type: its UsageError becomes argparse's one-line error."""

    def parse(text: str) -> T:
        try:
            return validate(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _number(kind: Callable[[Any], Number], value: Any) -> Number:
    """`value` (text or a number) as `kind`; True, 2.5 for an int, "x" raise UsageError."""
    if isinstance(value, bool) or not isinstance(value, str | numbers.Real):
        raise UsageError(f"not a number: {value!r}")
    if kind is int and not isinstance(value, str | numbers.Integral):
        if not float(value).is_integer():
            raise UsageError(f"not a whole number: {value!r}")
        value = int(float(value))
    try:
        return kind(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        what = "a whole number" if kind is int else "a number"
        raise UsageError(f"not {what}: {value!r}") from None


def bounded(kind: Callable[[Any], Number], least: float, most: float) -> Validator[Number]:
    """A finite `kind` (int or float) in [least, most]."""

    def validate(value: Any) -> Number:
        number = _number(kind, value)
        if not math.isfinite(number) or not least <= number <= most:
            raise UsageError(f"must be in [{least:g}, {most:g}], got {value!r}")
        return number

    return validate


def positive(kind: Callable[[Any], Number]) -> Validator[Number]:
    """A finite `kind` (int or float) above 0."""
    least = 1 if kind is int else math.ulp(0.0)
    return bounded(kind, least, sys.maxsize if kind is int else sys.float_info.max)


def one_of(choices: Iterable[str]) -> Validator[str]:
    """One of `choices`, spelled exactly."""
    allowed = tuple(choices)

    def validate(value: Any) -> str:
        if value not in allowed:
            raise UsageError(f"{value!r} is not one of {', '.join(allowed)}")
        return str(value)

    return validate


def shape(length: int, names: str) -> Validator[tuple[int, ...]]:
    """`length` positive sizes, as text "3,16,16" or a sequence (3, 16, 16); `names` ("C,H,W")
    says what they are."""

    def validate(value: Any) -> tuple[int, ...]:
        parts = value.split(",") if isinstance(value, str) else value
        try:
            sizes = tuple(_number(int, part) for part in parts)
        except (UsageError, TypeError):
            raise UsageError(f"not {names} (whole numbers): {value!r}") from None
        if len(sizes) != length or min(sizes) < 1:
            raise UsageError(f"not {length} positive sizes {names}: {value!r}")
        return sizes

    return validate


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a command: `--name-with-dashes` on the command line, `name` in Python."""

    name: str
    validate: Validator[Any] | None  # None: a flag (False unless given)
    default: Any
    help: str
    metavar: str | None = None
    choices: Sequence[str] | None = None  # shown by --help; `validate` checks them

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.validate is None:
            parser.add_argument(self.flag, action="store_true", help=self.help)
            return
        parser.add_argument(
            self.flag,
            type=argument_type(self.validate),
            default=self.default,
            metavar=self.metavar
            or (("{" + ",".join(self.choices) + "}") if self.choices else None),
            help=self.help,
        )

    def check(self, value: Any) -> Any:
        """The value validated as the Python API takes it; None keeps an optional one unset."""
        if self.validate is None:
            if not isinstance(value, bool):
                raise UsageError(f"{self.name}={value!r}: must be True or False")
            return value
        if value is None and self.default is None:
            return None
        try:
            return self.validate(value)
        except UsageError as error:
            raise UsageError(f"{self.name}={value!r}: {error}") from None


def validated(options: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's value, from `given` (Python keywords) or its default, each validated; an
    unknown keyword names the known ones."""
    known = {option.name: option for option in options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(
            f"unknown option {', '.join(unknown)}; the options are {', '.join(known)} (as on the "
            "command line, with _ for -)"
        )
    return {
        name: option.check(given[name]) if name in given else option.default
        for name, option in known.items()
    }


def run_command(prog: str, body: Callable[[], int]) -> int:
    """body()'s exit status; a UsageError prints one line and gives 2, Ctrl-C 130."""
    try:
        return body()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def wrapped(text: str, indent: str = "      ", width: int = REPORT_WIDTH) -> str:
    """A report line wrapped to the report's width, continued under its text."""
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent="      ")
