"""How numbers print in the benchmark report: ratios, errors, bytes, times, Markdown tables."""

from collections.abc import Iterable, Sequence


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}x" if value < 100 else f"{value:.0f}x"


def format_error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def format_bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.3g} MiB"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def format_load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{value:.1f}" for value in values)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")
