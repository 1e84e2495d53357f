"""What `sqrtm(method="auto")` runs: the measured choice for the framework, device and channel
count at hand, read from `auto_table.json` beside this module (written by
`python -m bench.measure_auto`), or the documented rule where nothing was measured.

The table holds, per (framework, device, C band), the cheapest candidate (an eigendecomposition in
float32 or float64, the classic or the minimax Newton-Schulz root, each with its default
backward) whose forward and backward errors both met AUTO_STATED_ACCURACY on realistic
covariances; and each candidate's accuracy range: the largest condition number of a float32
input up to which it still met that accuracy (`bench.condition_range`). A channel count between
bands takes the next larger band (the root gets harder as C grows, so the larger band's choice is
the safe one); a count above the largest band, an unknown count (a traced TensorFlow graph) and a
device never measured take FALLBACK_RULE.

The table is read once, when this module is imported: choosing is then pure Python on the static
shape (dictionary look-ups, no file, no cache), so it never synchronises a device and a
`torch.compile(fullgraph=True)` trace goes straight through it. A missing or damaged table gives
one AutoTableWarning naming the file and what is wrong, and auto follows FALLBACK_RULE everywhere.
"""

import dataclasses
import json
import pathlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: Where the package reads the table (package data; `bench.measure_auto` writes it in a checkout).
TABLE_PATH = pathlib.Path(__file__).with_name("auto_table.json")

#: The candidates `bench.measure_auto` measures: name -> (sqrtm method, eigendecomposition dtype;
#: None means the input's own compute dtype).
CANDIDATES: dict[str, tuple[str, str | None]] = {
    "eigh_float32": ("eigh", None),
    "eigh_float64": ("eigh", "float64"),
    "newton_schulz": ("newton_schulz", None),
    "minimax_newton_schulz": ("minimax_newton_schulz", None),
}

FRAMEWORKS = ("torch", "tf")

#: Where nothing was measured: on a CPU the eigendecomposition in float64 (exact to float32
#: round-off on every covariance we know, whatever C), elsewhere the minimax root with its
#: iterative backward (matrix products only, no eigensolver and no host read: what a GPU does
#: best; 59 products at C = 512, results/products.md).
FALLBACK_RULE = {"cpu": "eigh_float64", "other": "minimax_newton_schulz"}

#: What a float32 input beyond its choice's accuracy range needs: the eigendecomposition in
#: float64, whose errors stay at float32 round-off of the input up to condition numbers of 1e8.
BEYOND_RANGE = "eigh_float64"


class AutoTableWarning(UserWarning):
    """The shipped table could not be used: auto follows FALLBACK_RULE everywhere."""


class TableError(ValueError):
    """What is wrong with a table's contents, in words."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """What auto runs, and why."""

    candidate: str
    #: "measured" (a row of the table), "rule" (FALLBACK_RULE) or "beyond range" (BEYOND_RANGE,
    #: for an input whose condition number exceeds the measured choice's max_condition).
    source: str
    #: The band whose row was used (None otherwise).
    band: int | None = None
    #: The largest condition number of a float32 input up to which this candidate met
    #: AUTO_STATED_ACCURACY forward and backward (measured at `band`, or for the rule at the
    #: largest band measured; None: not measured). Beyond it, see BEYOND_RANGE.
    max_condition: float | None = None

    @property
    def method(self) -> str:
        return CANDIDATES[self.candidate][0]

    @property
    def eigh_dtype(self) -> str | None:
        """The dtype the eigendecomposition runs in (None: the input's compute dtype)."""
        return CANDIDATES[self.candidate][1]

    def beyond_range(self, condition: float) -> bool:
        """Whether an input of this condition number (largest over smallest eigenvalue, inf
        when the smallest is not positive) is outside the measured range of this choice."""
        return self.max_condition is not None and not condition <= self.max_condition


#: The choice for an input beyond its measured range (see BEYOND_RANGE).
ACCURATE_CHOICE = Choice(BEYOND_RANGE, "beyond range")

#: A cell of the table: (framework, device, channels band).
Cell = tuple[str, str, int]
#: Where a candidate's accuracy range was measured: (framework, device, channels, candidate).
RangeKey = tuple[str, str, int, str]
#: The rule's key for a device the table does not name.
OTHER_DEVICE = "<other>"


class Table:
    """The measured choices and accuracy ranges, with every answer built when the file is read,
    so that `choose` only looks things up."""

    def __init__(
        self,
        choices: Mapping[Cell, str],
        ranges: Mapping[RangeKey, float] | None = None,
        problem: str | None = None,
    ) -> None:
        #: Why the file was not used (None: it was).
        self.problem = problem
        self.choices = dict(choices)
        self.ranges = dict(ranges or {})
        self._bands: dict[tuple[str, str], list[tuple[int, Choice]]] = {}
        for (framework, device, band), candidate in sorted(self.choices.items()):
            bound = self.ranges.get((framework, device, band, candidate))
            choice = Choice(candidate, "measured", band, bound)
            self._bands.setdefault((framework, device), []).append((band, choice))
        devices = {"cpu", OTHER_DEVICE, *(device for _, device, _ in self.choices)}
        self._rules = {
            (framework, device): self._rule(framework, device)
            for framework in FRAMEWORKS
            for device in devices
        }

    def _rule(self, framework: str, device: str) -> Choice:
        """FALLBACK_RULE's choice, with the candidate's range at the largest band measured on
        `device`, else on the CPU (float32 arithmetic rounds the same on every device, TF32 off)."""
        candidate = FALLBACK_RULE["cpu" if device == "cpu" else "other"]
        for where in (device, "cpu"):
            bands = [b for f, d, b, c in self.ranges if (f, d, c) == (framework, where, candidate)]
            if bands:
                bound = self.ranges[(framework, where, max(bands), candidate)]
                return Choice(candidate, "rule", None, bound)
        return Choice(candidate, "rule")

    def choose(self, framework: str, device: str, channels: int | None) -> Choice:
        if channels is not None:
            for band, choice in self._bands.get((framework, device), ()):
                if channels <= band:
                    return choice
        rule = self._rules.get((framework, device))
        return self._rules[(framework, OTHER_DEVICE)] if rule is None else rule

    def view(self) -> dict[str, list[Any]]:
        """What auto reads from the file (choices and ranges; not the timings beside them)."""
        return {
            "choices": sorted([*key, candidate] for key, candidate in self.choices.items()),
            "ranges": sorted([*key, bound] for key, bound in self.ranges.items()),
        }


def _field(row: Any, where: str, key: str) -> Any:
    if key not in row:
        raise TableError(f"{where} has no {key!r}")
    return row[key]


def _positive_int(value: Any, where: str) -> int:
    # bool is an int to Python, and 64.0 would be a float written by hand: neither is a band.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TableError(f"{where}: channels {value!r} is not a positive integer")
    return value


def _rows(document: Any, key: str) -> list[Any]:
    if not isinstance(document, dict):
        raise TableError(f"the table is a JSON {type(document).__name__}, not an object")
    rows = _field(document, "the table", key)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise TableError(f"{key!r} is not a list of objects")
    return rows


def _cell(row: dict[str, Any], where: str) -> tuple[str, str, int, str]:
    framework = _field(row, where, "framework")
    if framework not in FRAMEWORKS:
        raise TableError(f"{where}: unknown framework {framework!r}")
    device = _field(row, where, "device")
    if not isinstance(device, str) or not device:
        raise TableError(f"{where}: device {device!r} is not a name")
    channels = _positive_int(_field(row, where, "channels"), where)
    candidate = _field(row, where, "candidate")
    if candidate not in CANDIDATES:
        raise TableError(f"{where}: unknown candidate {candidate!r}")
    return framework, device, channels, candidate


def parse(document: Any) -> Table:
    """The Table of a parsed auto_table.json; TableError says what is wrong with it."""
    choices: dict[Cell, str] = {}
    for i, row in enumerate(_rows(document, "choices")):
        framework, device, channels, candidate = _cell(row, f"choices[{i}]")
        if (framework, device, channels) in choices:
            raise TableError(
                f"choices[{i}]: a second choice for {framework}, {device}, C {channels}"
            )
        choices[(framework, device, channels)] = candidate
    ranges: dict[RangeKey, float] = {}
    for i, row in enumerate(_rows(document, "ranges") if "ranges" in document else []):
        key = _cell(row, f"ranges[{i}]")
        bound = _field(row, f"ranges[{i}]", "max_condition")
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound >= 1:
            raise TableError(f"ranges[{i}]: max_condition {bound!r} is not a number >= 1")
        ranges[key] = float(bound)
    return Table(choices, ranges)


def load(path: pathlib.Path) -> Table:
    """The table at `path`; a missing or damaged one warns once (AutoTableWarning, naming the
    file and what is wrong) and gives the rule everywhere."""
    try:
        text = pathlib.Path(path).read_bytes().decode("utf-8")
        if not text.strip():
            raise TableError("the file is empty")
        return parse(json.loads(text))
    except FileNotFoundError:
        problem = "the file is missing"
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x})"
    except json.JSONDecodeError as error:
        problem = f"not valid JSON ({error.msg}, line {error.lineno} column {error.colno})"
    except OSError as error:
        problem = f"unreadable ({error.strerror or error})"
    except RecursionError:
        problem = "not valid JSON (nested too deeply to read)"
    except TableError as error:
        problem = str(error)
    rule = FALLBACK_RULE
    warnings.warn(
        f"{path}: {problem}; sqrtm(method='auto') follows its rule everywhere: "
        f"{rule['cpu']} on a CPU, {rule['other']} elsewhere",
        AutoTableWarning,
        stacklevel=2,
    )
    return Table({}, problem=problem)


#: The shipped table, read once at import (see the module's docstring).
TABLE = load(TABLE_PATH)


def choose(framework: str, device: str, channels: int | None) -> Choice:
    """The choice for `framework` ("torch", "tf") on `device` ("cpu", "cuda", ...) at C =
    `channels` (None: not known until the graph runs)."""
    return TABLE.choose(framework, device, channels)


def _source_view(path: pathlib.Path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutoTableWarning)
        table = load(path)
    return {"problem": table.problem, **table.view()}


#: The data files this module's behaviour depends on, each with the view of it that matters, for
#: the results envelope's source digest (impls.testing.metadata): a results file measured with
#: auto depends on its choices and ranges, not on the timings beside them.
SOURCE_DATA: dict[pathlib.Path, Callable[[pathlib.Path], object]] = {TABLE_PATH: _source_view}
