"""The benchmark report's plots (PNG, beside BENCHMARKS.md)."""

import pathlib
from typing import Any

from bench.cases import ACCURACY_TARGET
from bench.report.formatting import ratio
from bench.report.results import Results, method_label
from bench.report.tables import scipy_speedup_series, speed_accuracy_rows
from bench.report.targets import TARGET_SPEEDUP_OVER_SCIPY


def _pyplot() -> Any:
    """matplotlib's pyplot without a display, or None where matplotlib is missing (a bare GPU
    machine still gets its tables)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _pareto_rows(results: Results) -> list[dict[str, Any]]:
    return [r for r in speed_accuracy_rows(results) if r["backward_error"] is not None]


def _plotted_speedup_series(results: Results) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Exact methods, the anchors and Newton-Schulz at the grid's largest count (the table has
    every method; all of them make the plot unreadable)."""
    plotted_count = f"newton_schulz({max(results.profile.iterations)})"
    return {
        (backend, label): points
        for (backend, label), points in scipy_speedup_series(results).items()
        if not label.startswith("newton_schulz(") or label.startswith(plotted_count)
    }


def plot_names(results: Results) -> dict[str, str]:
    """{kind: file name} of each plot this results file has the data for."""
    suffix = "" if results.device == "cpu" else f"-{results.device}"
    names = {}
    if _pareto_rows(results):
        names["pareto"] = f"sqrtm_pareto{suffix}.png"
    if _plotted_speedup_series(results):
        names["scipy_speedup"] = f"bench-{results.device}-scipy-speedup.png"
    return names


def draw(results: Results, kind: str, path: pathlib.Path) -> bool:
    """Draw plot `kind` (a key of `plot_names`) to `path`; False where matplotlib is missing."""
    pyplot = _pyplot()
    if pyplot is None:
        return False
    {"pareto": _plot_pareto, "scipy_speedup": _plot_scipy_speedup}[kind](pyplot, results, path)
    return True


def _plot_pareto(pyplot: Any, results: Results, path: pathlib.Path) -> None:
    rows = _pareto_rows(results)
    time_key = "time" if results.absolute else "relative"
    forward_key = "forward_time" if results.absolute else "forward_relative"
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(14, 7.5))
    markers = {"torch": "o", "tf": "s"}
    curves: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for row in rows:
        curve = (row["backend"], row["method"], row["backward"])
        curves.setdefault(curve, []).append(row)
    for (backend, method, backward), members in sorted(curves.items(), key=str):
        members.sort(key=lambda r: r["num_iters"] or 0)
        name = f"{backend} {method}" + (f"/{backward}" if backward else "")
        marker = markers.get(backend, "^")
        forward_points = [(r[forward_key], r["forward_error"]) for r in members if r[forward_key]]
        if forward_points and backward in (None, "lyapunov"):
            xs, ys = zip(*forward_points, strict=True)
            left.plot(xs, ys, marker=marker, label=f"{backend} {method}")
        times = [r[time_key] for r in members]
        errors = [r["backward_error"] for r in members]
        (line,) = right.plot(times, errors, marker=marker, label=name)
        for row in members:
            if row["num_iters"]:
                right.annotate(
                    str(row["num_iters"]),
                    (row[time_key], row["backward_error"]),
                    fontsize=7,
                    color=line.get_color(),
                )
    torch_eigh = results.seconds(
        kind="sqrtm",
        backend="torch",
        mode="forward_backward",
        method="eigh",
        compute_dtype=None,
        **results.headline.info(),
    )
    for entry in results.find(kind="sqrtm_time_to_accuracy"):
        seconds = entry.seconds if results.absolute else ratio(entry.seconds, torch_eigh)
        if seconds is None:
            continue
        right.scatter(
            seconds, entry.info["backward_error"], marker="*", s=120, color="black", zorder=3
        )
        right.annotate(
            f"{entry.info['backend']} {method_label(entry.info)}",
            (seconds, entry.info["backward_error"]),
            fontsize=6,
            xytext=(4, -8),
            textcoords="offset points",
        )
    unit = "s" if results.absolute else "time / torch eigh"
    cell = results.headline
    for axis, title, xlabel in (
        (left, "forward", f"forward time ({unit})"),
        (right, "forward+backward", f"forward+backward time ({unit})"),
    ):
        axis.axhline(ACCURACY_TARGET, color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"{title.split('+')[-1]} relative Frobenius error (worst sample)")
        axis.set_title(f"{title}: relu_covariances, {cell.label}, {results.device}")
        axis.grid(True, which="both", alpha=0.3)
        # Below the axes: inside, the legend hides the points it names.
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    figure.text(
        0.5,
        0.005,
        "numbers: Newton-Schulz iterations; stars: each method at its cheapest setting that "
        f"reaches the target; dotted: the {ACCURACY_TARGET:g} target",
        ha="center",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _plot_scipy_speedup(pyplot: Any, results: Results, path: pathlib.Path) -> None:
    """Speed-up over SciPy against C."""
    series = _plotted_speedup_series(results)
    figure, axis = pyplot.subplots(figsize=(9, 6))
    colours: dict[str, str] = {}
    for (backend, label), points in sorted(series.items()):
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        xs, ys = zip(*points, strict=True)
        axis.plot(
            xs,
            ys,
            color=colour,
            marker="o" if backend == "torch" else "s",
            linestyle="-" if backend == "torch" else "--",
            label=f"{backend} {label}",
        )
    axis.axhline(TARGET_SPEEDUP_OVER_SCIPY, color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("channels C")
    axis.set_ylabel("speed-up over SciPy (SciPy time / time)")
    axis.set_title(
        f"sqrtm forward+backward, B={results.headline.batch}, float32, {results.device} "
        "(solid: torch, dashed: TF; dotted: the 5x target)"
    )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
