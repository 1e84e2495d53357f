"""The benchmark report's plots (PNG, beside BENCHMARKS.md)."""

import dataclasses
import pathlib
from typing import Any

from bench.cases import ACCURACY_TARGET
from bench.products import ProductsRow
from bench.report.formatting import ratio
from bench.report.results import Results
from bench.report.tables import SpeedAccuracyRow, scipy_speedup_series, speed_accuracy_rows
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


def _pareto_rows(results: Results) -> list[SpeedAccuracyRow]:
    return [r for r in speed_accuracy_rows(results) if r.backward_error is not None]


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


#: Markers per backend, in every plot.
_MARKERS = {"torch": "o", "tf": "s"}


def _variant_key(method: str, compute_dtype: str | None, backward: str | None) -> str:
    """A method as users call it (method, backward, eigendecomposition dtype): one colour each."""
    if compute_dtype:
        method += f" in {compute_dtype}"
    return method + (f"/{backward}" if backward else "")


@dataclasses.dataclass(frozen=True)
class _Star:
    """A method at its cheapest setting reaching the target (time-to-accuracy)."""

    backend: str
    key: str
    time: float
    backward_error: float
    products: ProductsRow | None


def _colours(keys: list[str]) -> dict[str, str]:
    """One colour per method, the same in every panel (tab10, then tab20 beyond ten)."""
    palette = [f"C{i}" for i in range(10)] + [f"tab:{c}" for c in ("olive", "cyan")]
    return {key: palette[i % len(palette)] for i, key in enumerate(sorted(set(keys)))}


def _pareto_points(results: Results) -> tuple[list[SpeedAccuracyRow], list[_Star]]:
    """(speed/accuracy rows of the headline cell, time-to-accuracy points with their products),
    times relative to torch eigh unless the run is absolute."""
    torch_eigh = results.seconds(
        kind="sqrtm",
        backend="torch",
        mode="forward_backward",
        method="eigh",
        compute_dtype=None,
        **results.headline.info(),
    )
    stars = []
    for entry in results.find(kind="sqrtm_time_to_accuracy"):
        seconds = entry.seconds if results.absolute else ratio(entry.seconds, torch_eigh)
        if seconds is not None:
            info = entry.info
            key = _variant_key(info["method"], info.get("compute_dtype"), info.get("backward"))
            star = _Star(
                info["backend"], key, seconds, info["backward_error"], results.products(info)
            )
            stars.append(star)
    return _pareto_rows(results), stars


def _plot_pareto(pyplot: Any, results: Results, path: pathlib.Path) -> None:
    """Three panels: forward time against forward error, forward+backward time against backward
    error (each method's cheapest setting reaching the target starred), and matrix products
    against CPU time, both to reach the target (matmul-only methods)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    rows, stars = _pareto_points(results)

    def row_key(row: SpeedAccuracyRow) -> str:
        return _variant_key(row.method, row.compute_dtype, row.backward)

    colour = _colours([row_key(r) for r in rows] + [s.key for s in stars])
    absolute = results.absolute
    figure, (left, middle, right) = pyplot.subplots(1, 3, figsize=(19, 7.8))
    curves: dict[tuple[str, str], list[SpeedAccuracyRow]] = {}
    for row in rows:
        curves.setdefault((row.backend, row_key(row)), []).append(row)
    for (backend, key), members in sorted(curves.items()):
        members.sort(key=lambda r: r.num_iters or 0)
        style = {"color": colour[key], "marker": _MARKERS.get(backend, "^"), "markersize": 6}
        # A forward does not depend on the backward: each iteration's forward is drawn once, in
        # the colour of the backward the library uses by default (lyapunov for newton_schulz).
        if members[0].backward in (None, "lyapunov") or members[0].method != "newton_schulz":
            points = [
                (r.shown_forward_time(absolute), r.forward_error)
                for r in members
                if r.shown_forward_time(absolute)
            ]
            if points:
                left.plot(*zip(*points, strict=True), **style)
        middle.plot(
            [r.shown_time(absolute) for r in members],
            [r.backward_error for r in members],
            **style,
        )
    for star in stars:
        middle.scatter(
            star.time,
            star.backward_error,
            marker="*",
            s=260,
            color=colour[star.key],
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
        )
        products = star.products
        if products is not None and products.matmul_only and products.meets_target:
            right.scatter(
                products.products,
                star.time,
                marker=_MARKERS.get(star.backend, "^"),
                s=70,
                color=colour[star.key],
                zorder=3,
            )
    unit = "s" if results.absolute else "time / torch eigh"
    cell = results.headline
    for axis, title, xlabel, ylabel in (
        (left, "forward", f"forward time ({unit})", "forward error"),
        (
            middle,
            "forward+backward (star: the cheapest setting reaching the target)",
            f"forward+backward time ({unit})",
            "backward error",
        ),
    ):
        axis.axhline(ACCURACY_TARGET, color="grey", linestyle=":", linewidth=1)
        axis.set_yscale("log")
        axis.set_ylabel(f"{ylabel} (relative Frobenius, worst sample)")
        axis.set_title(title, fontsize=10)
        axis.set_xscale("log")
        # Minor ticks unlabelled: on a short log axis their labels overprint each other.
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(xlabel)
        axis.grid(True, which="both", alpha=0.3)
    right.set_title(
        f"to reach {ACCURACY_TARGET:g}: GPU cost (products) against CPU time\n"
        "(matrix products only; eigh-based methods have no product count to compare)",
        fontsize=10,
    )
    right.set_xlabel(f"matrix products, forward + backward, to reach {ACCURACY_TARGET:g}")
    right.set_ylabel(f"forward+backward time to reach {ACCURACY_TARGET:g} ({unit})")
    right.grid(True, alpha=0.3)
    # Room beyond the largest count and time, so that no point sits on the frame.
    right.set_xlim(0, 1.15 * max(right.get_xlim()[1], 1))
    right.set_ylim(0, 1.15 * max(right.get_ylim()[1], 1))
    handles = [Line2D([], [], color=c, linewidth=3, label=key) for key, c in colour.items()]
    handles += [
        Line2D([], [], color="black", marker=m, linestyle="none", label=b)
        for b, m in _MARKERS.items()
    ]
    figure.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    figure.suptitle(
        f"sqrtm on relu_covariances, {cell.label}, {results.device}: lower left is better; "
        f"dotted: the {ACCURACY_TARGET:g} target. Along a Newton-Schulz curve the iteration "
        f"count grows ({', '.join(str(k) for k in results.profile.iterations_for(cell))}), "
        "from left to right",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.09, 1, 0.95))
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _plot_scipy_speedup(pyplot: Any, results: Results, path: pathlib.Path) -> None:
    """Speed-up over SciPy against C: one colour per method, one marker and line style per
    framework, and a legend of each."""
    from matplotlib.lines import Line2D

    series = _plotted_speedup_series(results)
    colour = _colours([label for _, label in series])
    styles: dict[str, Any] = {"torch": "-", "tf": "--"}
    figure, axis = pyplot.subplots(figsize=(10, 6.5))
    for (backend, label), points in sorted(series.items()):
        xs, ys = zip(*points, strict=True)
        axis.plot(
            xs,
            ys,
            color=colour[label],
            marker=_MARKERS.get(backend, "^"),
            linestyle=styles.get(backend, ":"),
        )
    axis.axhline(TARGET_SPEEDUP_OVER_SCIPY, color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("channels C")
    axis.set_ylabel("speed-up over SciPy (SciPy time / time)")
    axis.set_title(
        f"sqrtm forward+backward against SciPy, B={results.headline.batch}, float32, "
        f"{results.device}:\nhigher is better; above the dotted line meets the "
        f"{TARGET_SPEEDUP_OVER_SCIPY:g}x target",
        fontsize=11,
    )
    axis.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=c, linewidth=3, label=label) for label, c in colour.items()]
    handles += [
        Line2D([], [], color="black", marker=_MARKERS[b], linestyle=styles[b], label=b)
        for b in styles
        if any(backend == b for backend, _ in series)
    ]
    axis.legend(
        handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
