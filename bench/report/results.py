"""One benchmark results file (bench-<device>.json) and the queries the report makes of it."""

import dataclasses
import pathlib
from typing import Any

from bench.cases import EIGH, Cell, NotRun, Profile, SqrtmVariant, get_profile, run_command
from bench.products import FILE_NAME as PRODUCTS_FILE
from bench.products import ProductsRow, read_rows
from impls.testing.metadata import read_results

#: Benchmark modes and how the report names them.
MODES = {"forward": "forward", "forward_backward": "forward+backward"}


@dataclasses.dataclass
class Entry:
    info: dict[str, Any]
    #: The fastest round: on a shared machine other work only ever adds time, so the minimum is
    #: the least disturbed estimate of a method's own cost.
    seconds: float


class Results:
    """One results JSON: its envelope, benchmarks (by extra_info) and what did not run."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.metadata, data = read_results(self.path)
        self.not_run = [NotRun(**item) for item in data.get("not_run", [])]
        self.entries = [Entry(b["extra_info"], b["stats"]["min"]) for b in data["benchmarks"]]
        self.device: str = self.metadata["device"]
        self.profile: Profile = get_profile(self.metadata["profile"], self.device)
        self.headline: Cell = self.profile.headline
        # Absolute times only from a real GPU; CPU numbers and simulated runs are ratios.
        self.absolute = self.device == "cuda" and not self.metadata["simulated_device"]
        # Files written before the envelope named its command were all written by bench.run.
        self.command: str = self.metadata.get("command") or run_command(
            self.profile.name, self.device
        )
        counts = self.path.parent / PRODUCTS_FILE
        # Counted once in torch: the count of a method is the same on every device and framework.
        self.products_rows = read_rows(counts)[1] if counts.exists() else []

    def products(self, info: dict[str, Any]) -> ProductsRow | None:
        """The products.json row of the method and backward that `info` describes, at the
        headline C: matrix products to reach the accuracy target (None: not counted)."""
        key = (info["method"], info.get("backward"), self.headline.channels)
        rows = [r for r in self.products_rows if (r.method, r.backward, r.channels) == key]
        return rows[0] if rows else None

    def find(self, **criteria: Any) -> list[Entry]:
        return [e for e in self.entries if all(e.info.get(k) == v for k, v in criteria.items())]

    def one(self, **criteria: Any) -> Entry | None:
        matches = self.find(**criteria)
        return matches[0] if len(matches) == 1 else None

    def seconds(self, **criteria: Any) -> float | None:
        entry = self.one(**criteria)
        return None if entry is None else entry.seconds

    def sqrtm(self, backend: str, mode: str, cell: Cell, variant: SqrtmVariant) -> Entry | None:
        options: dict[str, Any] = {"method": variant.method, "num_iters": variant.num_iters}
        if mode == "forward_backward":
            options["backward"] = variant.backward
        return self.one(kind="sqrtm", backend=backend, mode=mode, **cell.info(), **options)

    def backends(self, **criteria: Any) -> list[str]:
        return sorted({e.info["backend"] for e in self.find(**criteria)})


def seconds_of(entry: Entry | None) -> float | None:
    return None if entry is None else entry.seconds


def variant_of(info: dict[str, Any]) -> SqrtmVariant:
    return dataclasses.replace(
        EIGH, method=info["method"], num_iters=info.get("num_iters"), backward=info.get("backward")
    )


def forward_variant(variant: SqrtmVariant) -> SqrtmVariant:
    """Forward benchmarks are recorded without a backward choice."""
    return dataclasses.replace(variant, backward=None)


def method_label(info: dict[str, Any]) -> str:
    return info.get("method_label") or variant_of(info).label
