"""Turn results/bench-<device>.json into results/BENCHMARKS.md and the plots beside it.

    python -m bench.report [--results results/]

CPU numbers are shown only as ratios between measurements of the same run (absolute CPU times
say more about the machine than the method); a GPU run's absolute times are shown with the card.
"""

import argparse
import dataclasses
import json
import pathlib

from bench.cases import ACCURACY_TARGET, DEFAULT_VARIANT, EIGH, get_profile
from impls.testing.metadata import replace_block
from reference.conventions import DEFAULT_SQRTM_METHOD

#: The targets the project set itself (CPU, headline size, float32).
TARGET_SPEEDUP_OVER_SCIPY = 5.0
TARGET_SPEEDUP_OVER_TF_LINALG_SQRTM = 20.0
TARGET_TF_OVER_TORCH = 1.5

_MODES = {"forward": "forward", "forward_backward": "forward+backward"}


@dataclasses.dataclass
class Entry:
    info: dict
    #: The fastest round: on a shared machine other work only ever adds time, so the minimum is
    #: the least disturbed estimate of a method's own cost.
    seconds: float


class Results:
    """One results JSON: its metadata, benchmarks (by extra_info) and what did not run."""

    def __init__(self, path):
        data = json.loads(pathlib.Path(path).read_text())
        self.path = pathlib.Path(path)
        self.metadata = data["ibp_metadata"]
        self.not_run = data.get("not_run", [])
        self.entries = [Entry(b["extra_info"], b["stats"]["min"]) for b in data["benchmarks"]]
        self.device = self.metadata["device"]
        self.profile = get_profile(self.metadata["profile"], self.device)
        self.headline = self.profile.headline
        # Absolute times only from a real GPU; CPU numbers and simulated runs are ratios.
        self.absolute = self.device == "cuda" and not self.metadata["simulated_device"]

    def find(self, **criteria):
        return [e for e in self.entries if all(e.info.get(k) == v for k, v in criteria.items())]

    def one(self, **criteria):
        matches = self.find(**criteria)
        return matches[0] if len(matches) == 1 else None

    def seconds(self, **criteria):
        entry = self.one(**criteria)
        return None if entry is None else entry.seconds

    def sqrtm(self, backend, mode, cell, variant):
        options = {"method": variant.method, "num_iters": variant.num_iters}
        if mode == "forward_backward":
            options["backward"] = variant.backward
        return self.one(kind="sqrtm", backend=backend, mode=mode, **cell.info(), **options)

    def backends(self, **criteria):
        return sorted({e.info["backend"] for e in self.find(**criteria)})


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _format_ratio(value):
    if value is None:
        return "n/a"
    return f"{value:.3g}x" if value < 100 else f"{value:.0f}x"


def _format_error(value):
    return "n/a" if value is None else f"{value:.1e}"


def _format_bytes(value):
    return "n/a" if value is None else f"{value / 2**20:.3g} MiB"


def _format_seconds(value):
    if value is None:
        return "n/a"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(met):
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def _variant_of(info):
    return dataclasses.replace(
        EIGH, method=info["method"], num_iters=info.get("num_iters"), backward=info.get("backward")
    )


def _label(info):
    return info.get("method_label") or _variant_of(info).label


# ---------------------------------------------------------------------------------------------
# Targets and recommendation


def _speedup_row(what, speedup, target):
    return (
        what,
        _format_ratio(speedup),
        f">= {target:g}x faster",
        _verdict(None if speedup is None else speedup >= target),
    )


def _slowdown_row(what, slowdown):
    return (
        what,
        _format_ratio(slowdown),
        f"<= {TARGET_TF_OVER_TORCH:g}x",
        _verdict(None if slowdown is None else slowdown <= TARGET_TF_OVER_TORCH),
    )


def target_rows(results):
    """(what, measured, target, verdict) for the project's CPU targets at the headline cell, for
    the default method and, where the default is something else, for eigh."""
    cell = results.headline
    scipy_fb = results.seconds(
        kind="sqrtm", backend="scipy", mode="forward_backward", **cell.info()
    )
    tf_linalg = results.seconds(
        kind="sqrtm", backend="tf", method="tf.linalg.sqrtm", mode="forward", **cell.info()
    )
    slowdowns = tf_over_torch(results)
    rows = []
    for name, variant in {"default": DEFAULT_VARIANT, "eigh": EIGH}.items():
        if name == "eigh" and DEFAULT_VARIANT == EIGH:
            continue
        what = f"default, {variant.label}" if variant == DEFAULT_VARIANT else variant.label
        for backend in results.backends(kind="sqrtm", anchor=None):
            ours = results.sqrtm(backend, "forward_backward", cell, variant)
            rows.append(
                _speedup_row(
                    f"{backend} {what}: forward+backward vs SciPy",
                    _ratio(scipy_fb, ours and ours.seconds),
                    TARGET_SPEEDUP_OVER_SCIPY,
                )
            )
        tf_forward = results.sqrtm("tf", "forward", cell, _forward_variant(variant))
        rows.append(
            _speedup_row(
                f"tf {what}: forward vs tf.linalg.sqrtm forward",
                _ratio(tf_linalg, tf_forward and tf_forward.seconds),
                TARGET_SPEEDUP_OVER_TF_LINALG_SQRTM,
            )
        )
        for title in _MODES.values():
            label = f"{title} {variant.label}"
            rows.append(_slowdown_row(f"tf / torch, {what}, {title}", slowdowns.get(label)))
    if slowdowns:
        worst_label, worst = max(slowdowns.items(), key=lambda item: item[1])
        within = sum(value <= TARGET_TF_OVER_TORCH for value in slowdowns.values())
        rows.append(
            _slowdown_row(
                f"tf / torch, worst of {len(slowdowns)} (pass, method) pairs: {worst_label} "
                f"({within} of {len(slowdowns)} within target)",
                worst,
            )
        )
    return rows


def _forward_variant(variant):
    """Forward benchmarks are recorded without a backward choice."""
    return dataclasses.replace(variant, backward=None)


def tf_over_torch(results):
    """{mode + method label: TF time / torch time} at the headline cell."""
    cell = results.headline
    slowdowns = {}
    for mode in _MODES:
        for entry in results.find(kind="sqrtm", backend="torch", mode=mode, **cell.info()):
            if entry.info.get("anchor"):
                continue
            variant = _variant_of(entry.info)
            tf_entry = results.sqrtm("tf", mode, cell, variant)
            if tf_entry is not None:
                slowdowns[f"{_MODES[mode]} {variant.label}"] = tf_entry.seconds / entry.seconds
    return slowdowns


def tf_over_torch_table(results):
    rows = [
        (label, _format_ratio(value), "yes" if value <= TARGET_TF_OVER_TORCH else "no")
        for label, value in sorted(tf_over_torch(results).items())
    ]
    if not rows:
        return None
    return _table(("pass and method", "TF time / torch time", f"<= {TARGET_TF_OVER_TORCH:g}"), rows)


def auto_recommendation(results, backend):
    """The fastest time-to-accuracy entry that reaches the target, and all candidates."""
    candidates = results.find(kind="sqrtm_time_to_accuracy", backend=backend)
    reaching = [e for e in candidates if e.info.get("reaches_target")]
    best = min(reaching, key=lambda e: e.seconds) if reaching else None
    return best, sorted(candidates, key=lambda e: e.seconds)


# ---------------------------------------------------------------------------------------------
# Tables


def time_to_accuracy_table(results):
    rows = []
    for backend in results.backends(kind="sqrtm_time_to_accuracy"):
        best, candidates = auto_recommendation(results, backend)
        for entry in candidates:
            info = entry.info
            rows.append(
                (
                    backend,
                    _label(info),
                    info.get("num_iters") or "-",
                    _format_error(info.get("forward_error")),
                    _format_error(info.get("backward_error")),
                    _time_cell(results, entry.seconds, best and best.seconds),
                    "yes" if info.get("reaches_target") else "no",
                )
            )
    not_reached = [
        item
        for item in results.not_run
        if item["extra_info"].get("kind") == "sqrtm_time_to_accuracy"
    ]
    for item in not_reached:
        info = item["extra_info"]
        rows.append((info["backend"], _label(info), "-", "-", "-", item["reason"], "no"))
    header = (
        "backend",
        "method",
        "iterations",
        "forward error",
        "backward error",
        "time" if results.absolute else "time / fastest reaching the target (same backend)",
        f"both <= {ACCURACY_TARGET:g}",
    )
    return _table(header, rows)


def _time_cell(results, seconds, baseline):
    if results.absolute:
        return _format_seconds(seconds)
    return _format_ratio(_ratio(seconds, baseline))


def speed_accuracy_rows(results):
    """Per backend and method at the headline cell: times (relative to torch eigh unless the run
    is a GPU run), errors and saved bytes."""
    cell = results.headline
    baseline = {
        mode: results.seconds(
            kind="sqrtm", backend="torch", mode=mode, method="eigh", **cell.info()
        )
        for mode in _MODES
    }
    rows = []
    for entry in results.find(kind="sqrtm", mode="forward_backward", **cell.info()):
        info = entry.info
        forward = (
            None
            if info.get("anchor")
            else results.sqrtm(
                info["backend"], "forward", cell, _forward_variant(_variant_of(info))
            )
        )
        rows.append(
            {
                "backend": info["backend"],
                "label": _label(info),
                "method": info["method"],
                "num_iters": info.get("num_iters"),
                "backward": info.get("backward"),
                "forward_time": forward and forward.seconds,
                "forward_relative": _ratio(forward and forward.seconds, baseline["forward"]),
                "forward_error": info.get("forward_error"),
                "time": entry.seconds,
                "relative": _ratio(entry.seconds, baseline["forward_backward"]),
                "backward_error": info.get("backward_error"),
                "saved_bytes": info.get("saved_tensor_bytes"),
                "cuda_peak_bytes": info.get("cuda_peak_bytes_above_inputs"),
            }
        )
    return sorted(rows, key=lambda r: (r["backend"], r["relative"] or float("inf")))


def speed_accuracy_table(results):
    body = []
    for row in speed_accuracy_rows(results):
        if results.absolute:
            forward, total = _format_seconds(row["forward_time"]), _format_seconds(row["time"])
        else:
            forward, total = _format_ratio(row["forward_relative"]), _format_ratio(row["relative"])
        line = (
            row["backend"],
            row["label"],
            forward,
            _format_error(row["forward_error"]),
            total,
            _format_error(row["backward_error"]),
            _format_bytes(row["saved_bytes"]),
        )
        if results.device == "cuda":
            line += (_format_bytes(row["cuda_peak_bytes"]),)
        body.append(line)
    unit = "" if results.absolute else " / torch eigh"
    header = (
        "backend",
        "method",
        f"forward time{unit}",
        "forward error",
        f"forward+backward time{unit}",
        "backward error",
        "saved for backward",
    )
    if results.device == "cuda":
        header += ("CUDA peak above inputs",)
    return _table(header, body)


def grid_table(results, mode, dtype):
    """Rows: backend and method; columns: sizes. Ratios to torch eigh in the same cell (CPU), or
    absolute timings (GPU)."""
    entries = [
        e for e in results.find(kind="sqrtm", mode=mode, dtype=dtype) if "channels" in e.info
    ]
    cells = sorted({(e.info["channels"], e.info["batch"]) for e in entries})
    if not cells:
        return None
    rows = {}
    for entry in entries:
        key = (entry.info["backend"], _label(entry.info))
        rows.setdefault(key, {})[(entry.info["channels"], entry.info["batch"])] = entry.seconds
    baseline = rows.get(("torch", "eigh"), {})
    body = []
    for (backend, label), timings in sorted(rows.items()):
        values = []
        for cell in cells:
            seconds = timings.get(cell)
            if results.absolute:
                values.append(_format_seconds(seconds))
            else:
                values.append(_format_ratio(_ratio(seconds, baseline.get(cell))))
        body.append((backend, label, *values))
    header = ("backend", "method", *(f"C={c} B={b}" for c, b in cells))
    return _table(header, body)


def scipy_speedup_series(results):
    """{(backend, label): [(C, SciPy time / time)]} for forward+backward at the headline batch."""
    batch = results.headline.batch
    scipy = {
        e.info["channels"]: e.seconds
        for e in results.find(kind="sqrtm", backend="scipy", mode="forward_backward", batch=batch)
    }
    series = {}
    for entry in results.find(kind="sqrtm", mode="forward_backward", batch=batch, dtype="float32"):
        channels = entry.info["channels"]
        if entry.info["backend"] == "scipy" or channels not in scipy:
            continue
        key = (entry.info["backend"], _label(entry.info))
        series.setdefault(key, []).append((channels, scipy[channels] / entry.seconds))
    return {key: sorted(points) for key, points in series.items()}


def scipy_speedup_table(results):
    series = scipy_speedup_series(results)
    channels = sorted({c for points in series.values() for c, _ in points})
    if not channels:
        return None
    body = []
    for (backend, label), points in sorted(series.items()):
        by_channels = dict(points)
        body.append((backend, label, *(_format_ratio(by_channels.get(c)) for c in channels)))
    return _table(("backend", "method", *(f"C={c}" for c in channels)), body)


def memory_table(results):
    batch = results.headline.batch
    entries = [
        e
        for e in results.find(kind="sqrtm", mode="forward_backward", batch=batch, dtype="float32")
        if "saved_tensor_bytes" in e.info
    ]
    channels = sorted({e.info["channels"] for e in entries})
    rows = {}
    for entry in entries:
        key = (entry.info["backend"], _label(entry.info))
        rows.setdefault(key, {})[entry.info["channels"]] = entry.info["saved_tensor_bytes"]
    if not rows:
        return None
    body = [
        (backend, label, *(_format_bytes(values.get(c)) for c in channels))
        for (backend, label), values in sorted(rows.items())
    ]
    return _table(("backend", "method", *(f"C={c}" for c in channels)), body)


def head_table(results):
    entries = results.find(kind="head")
    if not entries:
        return None
    baseline = results.seconds(kind="head", backend="torch", method="eigh")
    rows = {}
    for entry in entries:
        rows.setdefault(_label(entry.info), {})[entry.info["backend"]] = entry.seconds
    backends = sorted({e.info["backend"] for e in entries})
    body = []
    for label, timings in sorted(rows.items()):
        values = [_time_cell(results, timings.get(b), baseline) for b in backends]
        tf_over_torch_value = _ratio(timings.get("tf"), timings.get("torch"))
        body.append((label, *values, _format_ratio(tf_over_torch_value)))
    unit = "" if results.absolute else " (time / torch eigh)"
    return _table(("method", *(f"{b}{unit}" for b in backends), "tf / torch"), body)


def train_step_table(results):
    entries = results.find(kind="train_step")
    if not entries:
        return None
    body = []
    groups = {}
    for entry in entries:
        groups.setdefault((entry.info.get("model"), entry.info.get("image_side")), []).append(entry)
    for (model, side), members in sorted(groups.items(), key=str):
        torch_seconds = next((e.seconds for e in members if e.info["backend"] == "torch"), None)
        for entry in sorted(members, key=lambda e: e.info["backend"]):
            time_cell = (
                _format_seconds(entry.seconds)
                if results.absolute
                else _format_ratio(_ratio(entry.seconds, torch_seconds)) + " of torch"
            )
            body.append(
                (
                    model,
                    entry.info["backend"],
                    f"B={entry.info['batch']}, {side}x{side}",
                    entry.info.get("precision", "float32"),
                    time_cell,
                )
            )
    return _table(("model", "backend", "input", "precision", "time"), body)


def matmul_floor_tables(results):
    """Matmul rates, and each Newton-Schulz time over its matmul floor (GPU runs only)."""
    rates = {}
    body = []
    for entry in results.find(kind="matmul"):
        info = entry.info
        rate = info["matmul_flops"] / entry.seconds
        rates[(info["precision"], info["shape"])] = rate
        shape = f"{info['batch']} x ({info['channels']}^2 @ {info['channels']}^2)"
        body.append((info["precision"], shape, f"{rate / 1e12:.3g} TFLOP/s"))
    if not body:
        return None, None
    rate_table = _table(("precision", "product", "rate"), sorted(body))
    floor_rows = []
    for entry in results.find(kind="sqrtm", dtype="float32"):
        flops = entry.info.get("matmul_flops")
        if flops is None:
            continue
        shape = "newton_schulz" if entry.info["channels"] == results.headline.channels else "square"
        floors = [
            flops / rates[(precision, shape)] if (precision, shape) in rates else None
            for precision in ("float32", "tf32")
        ]
        floor_rows.append(
            (
                _label(entry.info),
                _MODES[entry.info["mode"]],
                f"C={entry.info['channels']} B={entry.info['batch']}",
                f"{flops / 1e9:.3g} GFLOP",
                _format_seconds(entry.seconds),
                *(_format_ratio(_ratio(entry.seconds, floor)) for floor in floors),
            )
        )
    floor_table = _table(
        (
            "method",
            "pass",
            "size",
            "matmul FLOPs",
            "time",
            "time / float32 floor",
            "time / TF32 floor",
        ),
        sorted(floor_rows),
    )
    return rate_table, floor_table


def not_run_table(results):
    if not results.not_run:
        return None
    body = []
    for item in results.not_run:
        info = item["extra_info"]
        details = [str(info[k]) for k in ("model", "precision", "shape") if k in info]
        what = info.get("method_label") or " ".join([info.get("kind", ""), *details])
        size = (
            f"C={info['channels']} B={info['batch']}"
            if "channels" in info
            else info.get("batch", "")
        )
        body.append((item["group"], f"{info.get('backend', '')} {what}", size, item["reason"]))
    return _table(("group", "what", "size", "why not"), body)


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    """matplotlib's pyplot without a display, or None where matplotlib is missing (a bare GPU
    machine still gets its tables)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_pareto(results, path):
    pyplot = _pyplot()
    rows = [r for r in speed_accuracy_rows(results) if r["backward_error"] is not None]
    if pyplot is None or not rows:
        return None
    time_key = "time" if results.absolute else "relative"
    forward_key = "forward_time" if results.absolute else "forward_relative"
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(14, 7.5))
    markers = {"torch": "o", "tf": "s"}
    curves = {}
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
        xs = [r[time_key] for r in members]
        ys = [r["backward_error"] for r in members]
        (line,) = right.plot(xs, ys, marker=marker, label=name)
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
        seconds = entry.seconds if results.absolute else _ratio(entry.seconds, torch_eigh)
        if seconds is None:
            continue
        right.scatter(
            seconds, entry.info["backward_error"], marker="*", s=120, color="black", zorder=3
        )
        right.annotate(
            f"{entry.info['backend']} {_label(entry.info)}",
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
    return path


def plot_scipy_speedup(results, path):
    """Speed-up over SciPy against C: exact methods, the anchors and Newton-Schulz at the grid's
    largest count (the table has every method; all of them make the plot unreadable)."""
    pyplot = _pyplot()
    plotted_count = f"newton_schulz({max(results.profile.iterations)})"
    series = {
        (backend, label): points
        for (backend, label), points in scipy_speedup_series(results).items()
        if not label.startswith("newton_schulz(") or label.startswith(plotted_count)
    }
    if pyplot is None or not series:
        return None
    figure, axis = pyplot.subplots(figsize=(9, 6))
    colours = {}
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
    return path


# ---------------------------------------------------------------------------------------------
# The document


def _format_load(values):
    return "n/a" if not values else "/".join(f"{value:.1f}" for value in values)


def _environment(results):
    meta = results.metadata
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
    threads = ", ".join(f"{k}={v}" for k, v in meta["threads"].items() if v is not None)
    hardware = meta["gpu_name"] or meta["cpu_model"]
    if meta["simulated_device"]:
        hardware += " (GPU suite simulated on the CPU: dry run)"
    commit = (meta["git_commit"] or "unknown")[:12] + (
        " (uncommitted changes)" if meta["git_dirty"] else ""
    )
    return "\n".join(
        [
            f"- file: `{results.path.name}`, profile `{meta['profile']}`, {meta['date_utc']}",
            f"- hardware: {hardware}; CPU: {meta['cpu_model']}",
            f"- commit {commit}; Python {meta['python']}; {versions}",
            f"- threads: {threads}",
            f"- load average (1/5/15 min): at start "
            f"{_format_load(meta.get('load_average_at_start'))}, at end "
            f"{_format_load(meta.get('load_average_at_end'))} on "
            f"{meta['threads'].get('os_cpu_count')} CPUs (other work on the machine skews ratios)",
            f"- timing: at least {meta['min_rounds']} rounds (2 for calls over 2 s) or "
            f"{meta['time_per_case_s']} s of rounds per case, after one warm-up call; "
            "each time is the fastest round (min)",
        ]
    )


def _section(title, body, lines):
    if body:
        lines += [f"## {title}", "", body, ""]


def _recommendation_text(results):
    lines = []
    for backend in results.backends(kind="sqrtm_time_to_accuracy"):
        best, candidates = auto_recommendation(results, backend)
        fastest = candidates[0]
        if best is None:
            lines.append(f"- {backend}: no method reached both errors <= {ACCURACY_TARGET:g}.")
            continue
        others = [e for e in candidates if e is not best and e.info.get("reaches_target")]
        margin = (
            f", {_format_ratio(others[0].seconds / best.seconds)} faster than the next "
            f"({_label(others[0].info)})"
            if others
            else ""
        )
        lines.append(
            f"- {backend} on {results.device}: **{_label(best.info)}** "
            f"(forward error {_format_error(best.info.get('forward_error'))}, backward error "
            f"{_format_error(best.info.get('backward_error'))}{margin})."
        )
        if fastest is not best:
            lines.append(
                f"  Faster still but short of the target: {_label(fastest.info)} "
                f"({_format_ratio(best.seconds / fastest.seconds)} faster; forward error "
                f"{_format_error(fastest.info.get('forward_error'))}, backward error "
                f"{_format_error(fastest.info.get('backward_error'))})."
            )
    return "\n".join(lines)


def render(all_results, plots):
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.run` (CPU) and `bench/gpu.sh` (GPU) with "
        "`python -m bench.report`; do not edit by hand. Inputs are `relu_covariances` "
        "(covariances of 28x28 ReLU feature maps, eps = 1e-5), the realistic sqrtm input. "
        "Errors are relative Frobenius errors (worst sample) against the float64 SciPy "
        "reference on the same float32-rounded matrices; the cotangent is Gaussian.",
        "",
        "CPU speeds are ratios between measurements of one run on one machine; absolute times "
        "appear only for a GPU run, with the card named.",
        "",
        "Reproduce: `python -m bench.run` (CPU, default profile: every C in {64, 128, 256, 512} x "
        "B in {1, 8, 32} whose work B*C^3 is at most that of C=512, B=8, i.e. all but C=512, "
        "B=32; float64 at C=512, B=8 only; 6 minutes on 2 idle cores), "
        "`python -m bench.run --quick` (C=512, B=8 only), `python -m bench.run --full` (every "
        "size, float64 everywhere, longer timing), `bench/gpu.sh` (torch on CUDA, every size).",
        "",
    ]
    if "cuda" not in all_results or all_results["cuda"].metadata["simulated_device"]:
        lines += [
            "**GPU numbers are still unmeasured**: no GPU run has been recorded yet "
            "(`bench/gpu.sh` writes `bench-cuda.json`; it was only dry-run on a CPU).",
            "",
        ]
    for device, results in all_results.items():
        cell = results.headline
        lines += [f"# {device.upper()}", "", _environment(results), ""]
        if device == "cpu":
            _section(
                f"Targets (CPU, {cell.label}, forward+backward unless stated)",
                _table(("what", "measured", "target", "verdict"), target_rows(results)),
                lines,
            )
        _section(
            f"TensorFlow against PyTorch, same method ({cell.label})",
            tf_over_torch_table(results),
            lines,
        )
        _section(
            f'Recommended default ("auto"): fastest with forward and backward error <= '
            f"{ACCURACY_TARGET:g} on relu_covariances, {cell.label}",
            _recommendation_text(results) + f'\n\nThe current default is "{DEFAULT_SQRTM_METHOD}".',
            lines,
        )
        _section(
            f"Time to reach error <= {ACCURACY_TARGET:g} ({cell.label})",
            "Newton-Schulz at the fewest iterations that reach the target (scanned from 1), "
            "eigh as it is and computed in float64 (input cast up, root cast down).\n\n"
            + time_to_accuracy_table(results),
            lines,
        )
        pareto = plots.get((device, "pareto"))
        _section(
            f"Speed against accuracy ({cell.label})",
            (f"![speed against accuracy]({pareto.name})\n\n" if pareto else "")
            + speed_accuracy_table(results)
            + "\n\n'saved for backward': bytes of the distinct tensors autograd keeps from the "
            "forward for the backward (torch saved_tensors_hooks; exact, deterministic; not the "
            "inputs, the output, or the backward's own transient workspace). TensorFlow has no "
            "such counter: n/a.",
            lines,
        )
        speedup_plot = plots.get((device, "scipy_speedup"))
        table = scipy_speedup_table(results)
        _section(
            f"Speed-up over SciPy, forward+backward, B={cell.batch}, float32",
            table
            and (
                (f"![speed-up over SciPy]({speedup_plot.name})\n\n" if speedup_plot else "") + table
            ),
            lines,
        )
        for dtype in ("float32", "float64"):
            for mode, title in _MODES.items():
                grid = grid_table(results, mode, dtype)
                unit = "time" if results.absolute else "time / torch eigh in the same column"
                _section(f"sqrtm {title}, {dtype} ({unit})", grid, lines)
        _section(
            f"Saved for backward, B={cell.batch}, float32 (torch)", memory_table(results), lines
        )
        _section(
            f"IBP head forward+backward ({cell.label}, {results.profile.feature_side}x"
            f"{results.profile.feature_side} features, 200 classes)",
            head_table(results),
            lines,
        )
        _section("Training steps (one SGD step)", train_step_table(results), lines)
        rate_table, floor_table = matmul_floor_tables(results)
        _section("Matmul rate", rate_table, lines)
        _section("Newton-Schulz time against the matmul floor", floor_table, lines)
        _section("Not run, and why", not_run_table(results), lines)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir, readme=None):
    """Regenerate BENCHMARKS.md and the plots from every bench-<device>.json in results_dir, and
    the CPU targets table of `readme` (a Path) when given."""
    results_dir = pathlib.Path(results_dir)
    all_results = {}
    for device in ("cpu", "cuda"):
        path = results_dir / f"bench-{device}.json"
        if path.exists():
            all_results[device] = Results(path)
    plots = {}
    for device, results in all_results.items():
        suffix = "" if device == "cpu" else f"-{device}"
        plots[(device, "pareto")] = plot_pareto(results, results_dir / f"sqrtm_pareto{suffix}.png")
        plots[(device, "scipy_speedup")] = plot_scipy_speedup(
            results, results_dir / f"bench-{device}-scipy-speedup.png"
        )
    markdown = results_dir / "BENCHMARKS.md"
    markdown.write_text(render(all_results, plots))
    if readme is not None and "cpu" in all_results:
        cpu = all_results["cpu"]
        commit = (cpu.metadata["git_commit"] or "unknown")[:12]
        replace_block(
            readme,
            "bench-targets",
            _table(("what", "measured", "target", "verdict"), target_rows(cpu)),
            f"`python -m bench.run` at {commit}, {cpu.metadata['date_utc']}",
        )
    return markdown


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("results"))
    parser.add_argument(
        "--readme", type=pathlib.Path, default=None, help="README whose targets table to rewrite"
    )
    arguments = parser.parse_args(argv)
    print(write_report(arguments.results, arguments.readme))


if __name__ == "__main__":
    main()
