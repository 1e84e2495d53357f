"""What `sqrtm(method="auto")` runs: the measured choice for the framework, device and channel
count at hand, read from `auto_table.json` beside this module (written by
`python -m bench.auto_table`), or the documented rule where nothing was measured.

The table holds, per (framework, device, C band), the cheapest candidate (an eigendecomposition in
float32 or float64, the classic or the minimax Newton-Schulz root, each with its default
backward) whose forward and backward errors both met AUTO_STATED_ACCURACY on realistic
covariances. A channel count between bands takes the next larger band (the root gets harder as C
grows, so the larger band's choice is the safe one); a count above the largest band, an unknown
count (a traced TensorFlow graph) and a device never measured take FALLBACK_RULE.

Pure Python on the static shape: choosing never reads a tensor, so it never synchronises a device.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any

#: Where the package reads the table (package data; `bench.auto_table` writes it in a checkout).
TABLE_PATH = pathlib.Path(__file__).with_name("auto_table.json")

#: The candidates `bench.auto_table` measures: name -> (sqrtm method, eigendecomposition dtype;
#: None means the input's own compute dtype).
CANDIDATES: dict[str, tuple[str, str | None]] = {
    "eigh_float32": ("eigh", None),
    "eigh_float64": ("eigh", "float64"),
    "newton_schulz": ("newton_schulz", None),
    "minimax_newton_schulz": ("minimax_newton_schulz", None),
}

#: Where nothing was measured: on a CPU the eigendecomposition in float64 (exact to float32
#: round-off on every covariance we know, whatever C), elsewhere the minimax root with its
#: iterative backward (matrix products only, no eigensolver and no host read: what a GPU does
#: best; 59 products at C = 512, results/products.md).
FALLBACK_RULE = {"cpu": "eigh_float64", "other": "minimax_newton_schulz"}


@dataclasses.dataclass(frozen=True)
class Choice:
    """What auto runs, and why."""

    candidate: str
    #: "measured" (a row of the table) or "rule" (FALLBACK_RULE).
    source: str
    #: The band whose row was used (None for the rule).
    band: int | None = None

    @property
    def method(self) -> str:
        return CANDIDATES[self.candidate][0]

    @property
    def eigh_dtype(self) -> str | None:
        """The dtype the eigendecomposition runs in (None: the input's compute dtype)."""
        return CANDIDATES[self.candidate][1]


def parse_choices(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], str]:
    """{(framework, device, channels): candidate} from the table's "choices" rows."""
    choices = {}
    for row in rows:
        if row["candidate"] not in CANDIDATES:
            raise ValueError(f"{TABLE_PATH.name}: unknown candidate {row['candidate']!r}")
        choices[(row["framework"], row["device"], int(row["channels"]))] = row["candidate"]
    return choices


@functools.cache
def measured_choices() -> dict[tuple[str, str, int], str]:
    """The shipped table's choices, read once per process."""
    return parse_choices(json.loads(TABLE_PATH.read_text())["choices"])


def fallback(device: str) -> Choice:
    return Choice(FALLBACK_RULE["cpu" if device == "cpu" else "other"], "rule")


def choose(framework: str, device: str, channels: int | None) -> Choice:
    """The choice for `framework` ("torch", "tf") on `device` ("cpu", "cuda", ...) at C =
    `channels` (None: not known until the graph runs)."""
    if channels is None:
        return fallback(device)
    table = measured_choices()
    bands = sorted(c for f, d, c in table if (f, d) == (framework, device))
    band = next((b for b in bands if channels <= b), None)
    if band is None:
        return fallback(device)
    return Choice(table[(framework, device, band)], "measured", band)
