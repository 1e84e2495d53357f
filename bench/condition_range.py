"""The accuracy range of `auto`'s candidates: up to which condition number each one's forward AND
backward relative errors stay within AUTO_STATED_ACCURACY, measured in both frameworks on the
benchmarks' conditioned inputs (`bench.inputs.Inputs.conditioned_case`: logspace spectra and
covariances of 7x7 ReLU feature maps at scale, condition numbers 1e2 to 1e8 in half decades),
each in float32 and float64, with the float64 SciPy reference computed on the rounded input.

`python -m bench.measure_auto` runs it (`--only ranges` runs nothing else, and times nothing):
the points go to results/condition_range.json, each candidate's float32 range to the `ranges` of
impls/auto_table.json (what `sqrtm(method="auto")` checks an input against), and results/auto.md
shows both.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.cases import Cell, candidate_variant
from bench.inputs import SPECTRA, Inputs
from impls.auto_table import CANDIDATES
from impls.testing.tolerances import condition_number
from reference.conventions import AUTO_STATED_ACCURACY

FILE_NAME = "condition_range.json"
#: Condition numbers measured: 1e2 to 1e8 in half decades.
CONDITIONS = tuple(10.0 ** (k / 2) for k in range(4, 17))
DTYPES = ("float32", "float64")
DEFAULT_CHANNELS = (64, 128, 256, 512)
#: Samples per point; the errors are the worst sample's.
BATCH = 2


def candidates(dtype: str) -> list[str]:
    """The candidates that differ in `dtype`: in float64 "eigh_float32" (the input's own dtype)
    is already the float64 eigendecomposition."""
    return [c for c in CANDIDATES if not (dtype == "float64" and c == "eigh_float64")]


@dataclasses.dataclass(frozen=True)
class RangePoint:
    """One candidate's errors on one batch of conditioned matrices."""

    framework: str
    device: str
    channels: int
    dtype: str
    spectrum: str
    candidate: str
    #: The condition number asked for (of the float64 matrix before rounding to `dtype`).
    condition: float
    #: The largest condition number of the rounded matrices, None where one is not positive
    #: definite (float32 round-off, about 6e-8 of the largest eigenvalue, moves the smallest).
    input_condition: float | None
    forward_error: float
    backward_error: float

    @property
    def meets_target(self) -> bool:
        return max(self.forward_error, self.backward_error) <= AUTO_STATED_ACCURACY


@dataclasses.dataclass(frozen=True)
class Range:
    """Up to which condition number a candidate met the target, in every spectrum."""

    framework: str
    device: str
    channels: int
    candidate: str
    dtype: str
    #: The largest condition number measured with every point up to it within the target, in
    #: every spectrum (inputs that rounding left indefinite excluded); 1.0 when the smallest one
    #: measured already missed.
    max_condition: float
    #: The largest condition number measured (a range that reaches it may extend further).
    measured_up_to: float

    @property
    def key(self) -> tuple[str, str, int, str, str]:
        return (self.framework, self.device, self.channels, self.candidate, self.dtype)


def ranges(points: Sequence[RangePoint]) -> list[Range]:
    """Each (framework, device, C, candidate, dtype)'s range over its points, on the grid of
    condition numbers asked for: a grid value counts as met when every point there met the
    target, and the range ends before the first that did not (so it holds between grid values
    too). A point whose input rounding left indefinite does not count: it has no condition
    number, its reference root is clamped and its gradient is not defined."""
    groups: dict[tuple[str, str, int, str, str], dict[float, bool]] = {}
    for p in points:
        if p.input_condition is not None:
            met = groups.setdefault((p.framework, p.device, p.channels, p.candidate, p.dtype), {})
            met[p.condition] = met.get(p.condition, True) and p.meets_target
    result = []
    for key, met in groups.items():
        bound = 1.0
        for condition in sorted(met):
            if not met[condition]:
                break
            bound = condition
        result.append(Range(*key, max_condition=bound, measured_up_to=max(met)))
    return sorted(result, key=lambda r: r.key)


def _input_condition(matrices: np.ndarray) -> float | None:
    value = condition_number(matrices)
    return value if math.isfinite(value) else None


def measure(
    device: str, channels: Sequence[int], conditions: Sequence[float] = CONDITIONS
) -> list[RangePoint]:
    """Every point on `device`, for every framework the benchmarks run there."""
    from tqdm import tqdm

    from bench.adapters import adapter_for, benchmarked_backends
    from bench.sqrtm_error import SqrtmErrors

    adapters = {b.name: adapter_for(b, device) for b in benchmarked_backends(device)}
    inputs = Inputs()
    total = sum(len(candidates(d)) for d in DTYPES) * len(conditions) * len(SPECTRA)
    points = []
    with tqdm(
        total=total * len(channels) * len(adapters), desc=f"condition range ({device})"
    ) as bar:
        for c in channels:
            for dtype in DTYPES:
                cell = Cell(c, BATCH, dtype)
                for spectrum in SPECTRA:
                    for condition in conditions:
                        case = inputs.conditioned_case(cell, spectrum, condition)
                        measured = _input_condition(case.matrices)
                        for name, adapter in adapters.items():
                            errors = SqrtmErrors(adapter, case, dtype)
                            for candidate in candidates(dtype):
                                forward, backward = errors.errors(candidate_variant(candidate))
                                points.append(
                                    RangePoint(
                                        name,
                                        device,
                                        c,
                                        dtype,
                                        spectrum,
                                        candidate,
                                        condition,
                                        measured,
                                        forward,
                                        backward,
                                    )
                                )
                                bar.update()
    return points


def read_points(document: dict[str, Any]) -> list[RangePoint]:
    return [RangePoint(**row) for row in document["rows"]]


def format_condition(value: float) -> str:
    """1e+05 as 1e5, 3.16e+05 as 3e5 (the grid's half decades)."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def range_text(bound: Range) -> str:
    """The range's end, in words: "1e5", "1e8 (the largest measured)" or "none measured"."""
    if bound.max_condition >= bound.measured_up_to:
        return f"{format_condition(bound.max_condition)} (the largest measured)"
    if bound.max_condition < min(CONDITIONS):
        return "none measured"
    return format_condition(bound.max_condition)


def _label(candidate: str, dtype: str) -> str:
    method, eigh_dtype = CANDIDATES[candidate]
    if method == "eigh":
        return f"eigh in {eigh_dtype or dtype}"
    return f"{method} (defaults)"


def ranges_table(bounds: Sequence[Range]) -> str:
    """Rows: framework, dtype and candidate; columns: C. Each cell the largest condition number
    up to which both errors stayed within the target."""
    channels = sorted({b.channels for b in bounds})
    by_key = {b.key: b for b in bounds}
    rows = list(dict.fromkeys((b.framework, b.device, b.dtype, b.candidate) for b in bounds))
    lines = [
        "| framework, device | input | candidate | "
        + " | ".join(f"C={c}" for c in channels)
        + " |",
        "|---|---|---|" + "---|" * len(channels),
    ]
    for framework, device, dtype, candidate in rows:
        cells = [
            range_text(by_key[(framework, device, c, candidate, dtype)])
            if (framework, device, c, candidate, dtype) in by_key
            else "not measured"
            for c in channels
        ]
        lines.append(
            f"| {framework}, {device} | {dtype} | {_label(candidate, dtype)} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def errors_table(points: Sequence[RangePoint], channels: int, dtype: str = "float32") -> str:
    """The worse of forward and backward error at each condition number asked for (columns), per
    framework, candidate and spectrum, at C = `channels`; "indefinite" where the rounded input
    was not positive definite (not counted in the range)."""
    chosen = [p for p in points if (p.channels, p.dtype) == (channels, dtype)]
    conditions = sorted({p.condition for p in chosen})
    by_key = {(p.framework, p.candidate, p.spectrum, p.condition): p for p in chosen}
    rows = list(dict.fromkeys((p.framework, p.candidate, p.spectrum) for p in chosen))
    lines = [
        "| framework | candidate | spectrum | "
        + " | ".join(format_condition(c) for c in conditions)
        + " |",
        "|---|---|---|" + "---|" * len(conditions),
    ]
    for framework, candidate, spectrum in rows:
        cells = []
        for condition in conditions:
            point = by_key[(framework, candidate, spectrum, condition)]
            worst = f"{max(point.forward_error, point.backward_error):.0e}"
            if point.input_condition is None:
                cells.append(f"({worst}, indefinite)")
            else:
                cells.append(worst if point.meets_target else f"**{worst}**")
        lines.append(
            f"| {framework} | {_label(candidate, dtype)} | {spectrum} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
