"""The Markdown tables of the benchmark report, each from one results file."""

import dataclasses
from typing import Any

from bench.cases import ACCURACY_TARGET
from bench.products import format_products
from bench.report.formatting import (
    format_bytes,
    format_error,
    format_ratio,
    format_seconds,
    ratio,
    table,
)
from bench.report.results import (
    MODES,
    Entry,
    Results,
    forward_variant,
    method_label,
    seconds_of,
    variant_of,
)
from bench.report.targets import TARGET_TF_OVER_TORCH, auto_recommendation, tf_over_torch


def tf_over_torch_table(results: Results) -> str | None:
    rows = [
        (label, format_ratio(value), "yes" if value <= TARGET_TF_OVER_TORCH else "no")
        for label, value in sorted(tf_over_torch(results).items())
    ]
    if not rows:
        return None
    return table(("pass and method", "TF time / torch time", f"<= {TARGET_TF_OVER_TORCH:g}"), rows)


def time_to_accuracy_table(results: Results) -> str:
    rows = []
    for backend in results.backends(kind="sqrtm_time_to_accuracy"):
        best, candidates = auto_recommendation(results, backend)
        for entry in candidates:
            info = entry.info
            rows.append(
                (
                    backend,
                    method_label(info),
                    info.get("num_iters") or "-",
                    format_error(info.get("forward_error")),
                    format_error(info.get("backward_error")),
                    _time_cell(results, entry.seconds, seconds_of(best)),
                    "yes" if info.get("reaches_target") else "no",
                    format_products(results.products(info)),
                )
            )
    not_reached = [
        item for item in results.not_run if item.extra_info.get("kind") == "sqrtm_time_to_accuracy"
    ]
    for item in not_reached:
        info = item.extra_info
        rows.append(
            (
                info["backend"],
                method_label(info),
                "-",
                "-",
                "-",
                item.reason,
                "no",
                format_products(results.products(info)),
            )
        )
    header = (
        "backend",
        "method",
        "iterations",
        "forward error",
        "backward error",
        "time" if results.absolute else "time / fastest reaching the target (same backend)",
        f"both <= {ACCURACY_TARGET:g}",
        f"matrix products to {ACCURACY_TARGET:g}, C={results.headline.channels}",
    )
    return table(header, rows)


def _time_cell(results: Results, seconds: float | None, baseline: float | None) -> str:
    if results.absolute:
        return format_seconds(seconds)
    return format_ratio(ratio(seconds, baseline))


@dataclasses.dataclass(frozen=True)
class SpeedAccuracyRow:
    """One backend's method at the headline cell: times (relative to torch eigh unless the run is
    a GPU run), errors and saved bytes."""

    backend: str
    label: str
    method: str
    num_iters: int | None
    backward: str | None
    compute_dtype: str | None
    forward_time: float | None
    forward_relative: float | None
    forward_error: float | None
    time: float
    relative: float | None
    backward_error: float | None
    saved_bytes: int | None
    cuda_peak_bytes: int | None

    def shown_time(self, absolute: bool) -> float | None:
        return self.time if absolute else self.relative

    def shown_forward_time(self, absolute: bool) -> float | None:
        return self.forward_time if absolute else self.forward_relative


def speed_accuracy_rows(results: Results) -> list[SpeedAccuracyRow]:
    """Per backend and method at the headline cell, fastest first."""
    cell = results.headline
    baseline = {
        mode: results.seconds(
            kind="sqrtm", backend="torch", mode=mode, method="eigh", **cell.info()
        )
        for mode in MODES
    }
    rows = []
    for entry in results.find(kind="sqrtm", mode="forward_backward", **cell.info()):
        info = entry.info
        forward = (
            None
            if info.get("anchor")
            else results.sqrtm(info["backend"], "forward", cell, forward_variant(variant_of(info)))
        )
        rows.append(
            SpeedAccuracyRow(
                backend=info["backend"],
                label=method_label(info),
                method=info["method"],
                num_iters=info.get("num_iters"),
                backward=info.get("backward"),
                compute_dtype=info.get("compute_dtype"),
                forward_time=seconds_of(forward),
                forward_relative=ratio(seconds_of(forward), baseline["forward"]),
                forward_error=info.get("forward_error"),
                time=entry.seconds,
                relative=ratio(entry.seconds, baseline["forward_backward"]),
                backward_error=info.get("backward_error"),
                saved_bytes=info.get("saved_tensor_bytes"),
                cuda_peak_bytes=info.get("cuda_peak_bytes_above_inputs"),
            )
        )
    return sorted(rows, key=lambda r: (r.backend, r.relative or float("inf")))


def speed_accuracy_table(results: Results) -> str:
    body = []
    for row in speed_accuracy_rows(results):
        if results.absolute:
            forward, total = format_seconds(row.forward_time), format_seconds(row.time)
        else:
            forward, total = format_ratio(row.forward_relative), format_ratio(row.relative)
        line: tuple[str, ...] = (
            row.backend,
            row.label,
            forward,
            format_error(row.forward_error),
            total,
            format_error(row.backward_error),
            format_bytes(row.saved_bytes),
        )
        if results.device == "cuda":
            line += (format_bytes(row.cuda_peak_bytes),)
        body.append(line)
    unit = "" if results.absolute else " / torch eigh"
    header: tuple[str, ...] = (
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
    return table(header, body)


def grid_table(results: Results, mode: str, dtype: str) -> str | None:
    """Rows: backend and method; columns: sizes. Ratios to torch eigh in the same cell (CPU), or
    absolute timings (GPU)."""
    entries = [
        e for e in results.find(kind="sqrtm", mode=mode, dtype=dtype) if "channels" in e.info
    ]
    cells = sorted({(e.info["channels"], e.info["batch"]) for e in entries})
    if not cells:
        return None
    rows: dict[Any, dict[Any, Any]] = {}
    for entry in entries:
        key = (entry.info["backend"], method_label(entry.info))
        rows.setdefault(key, {})[(entry.info["channels"], entry.info["batch"])] = entry.seconds
    baseline = rows.get(("torch", "eigh"), {})
    body = []
    for (backend, label), timings in sorted(rows.items()):
        values = []
        for cell in cells:
            seconds = timings.get(cell)
            if results.absolute:
                values.append(format_seconds(seconds))
            else:
                values.append(format_ratio(ratio(seconds, baseline.get(cell))))
        body.append((backend, label, *values))
    header = ("backend", "method", *(f"C={c} B={b}" for c, b in cells))
    return table(header, body)


def scipy_speedup_series(results: Results) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(backend, label): [(C, SciPy time / time)]} for forward+backward at the headline batch."""
    batch = results.headline.batch
    scipy = {
        e.info["channels"]: e.seconds
        for e in results.find(kind="sqrtm", backend="scipy", mode="forward_backward", batch=batch)
    }
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for entry in results.find(kind="sqrtm", mode="forward_backward", batch=batch, dtype="float32"):
        channels = entry.info["channels"]
        if entry.info["backend"] == "scipy" or channels not in scipy:
            continue
        key = (entry.info["backend"], method_label(entry.info))
        series.setdefault(key, []).append((channels, scipy[channels] / entry.seconds))
    return {key: sorted(points) for key, points in series.items()}


def scipy_speedup_table(results: Results) -> str | None:
    series = scipy_speedup_series(results)
    channels = sorted({c for points in series.values() for c, _ in points})
    if not channels:
        return None
    body = []
    for (backend, label), points in sorted(series.items()):
        by_channels = dict(points)
        body.append((backend, label, *(format_ratio(by_channels.get(c)) for c in channels)))
    return table(("backend", "method", *(f"C={c}" for c in channels)), body)


def memory_table(results: Results) -> str | None:
    batch = results.headline.batch
    entries = [
        e
        for e in results.find(kind="sqrtm", mode="forward_backward", batch=batch, dtype="float32")
        if "saved_tensor_bytes" in e.info
    ]
    channels = sorted({e.info["channels"] for e in entries})
    rows: dict[Any, dict[Any, Any]] = {}
    for entry in entries:
        key = (entry.info["backend"], method_label(entry.info))
        rows.setdefault(key, {})[entry.info["channels"]] = entry.info["saved_tensor_bytes"]
    if not rows:
        return None
    body = [
        (backend, label, *(format_bytes(values.get(c)) for c in channels))
        for (backend, label), values in sorted(rows.items())
    ]
    return table(("backend", "method", *(f"C={c}" for c in channels)), body)


def head_table(results: Results) -> str | None:
    entries = results.find(kind="head")
    if not entries:
        return None
    baseline = results.seconds(kind="head", backend="torch", method="eigh")
    rows: dict[Any, dict[Any, Any]] = {}
    for entry in entries:
        rows.setdefault(method_label(entry.info), {})[entry.info["backend"]] = entry.seconds
    backends = sorted({e.info["backend"] for e in entries})
    body = []
    for label, timings in sorted(rows.items()):
        values = [_time_cell(results, timings.get(b), baseline) for b in backends]
        tf_over_torch_value = ratio(timings.get("tf"), timings.get("torch"))
        body.append((label, *values, format_ratio(tf_over_torch_value)))
    unit = "" if results.absolute else " (time / torch eigh)"
    return table(("method", *(f"{b}{unit}" for b in backends), "tf / torch"), body)


def train_step_table(results: Results) -> str | None:
    entries = results.find(kind="train_step")
    if not entries:
        return None
    body = []
    groups: dict[tuple[Any, Any], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.info.get("model"), entry.info.get("image_side")), []).append(entry)
    for (model, side), members in sorted(groups.items(), key=str):
        torch_seconds = next((e.seconds for e in members if e.info["backend"] == "torch"), None)
        for entry in sorted(members, key=lambda e: e.info["backend"]):
            time_cell = (
                format_seconds(entry.seconds)
                if results.absolute
                else format_ratio(ratio(entry.seconds, torch_seconds)) + " of torch"
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
    return table(("model", "backend", "input", "precision", "time"), body)


def matmul_floor_tables(results: Results) -> tuple[str | None, str | None]:
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
    rate_table = table(("precision", "product", "rate"), sorted(body))
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
                method_label(entry.info),
                MODES[entry.info["mode"]],
                f"C={entry.info['channels']} B={entry.info['batch']}",
                f"{flops / 1e9:.3g} GFLOP",
                format_seconds(entry.seconds),
                *(format_ratio(ratio(entry.seconds, floor)) for floor in floors),
            )
        )
    floor_table = table(
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


def not_run_table(results: Results) -> str | None:
    if not results.not_run:
        return None
    body = []
    for item in results.not_run:
        info = item.extra_info
        details = [str(info[k]) for k in ("model", "precision", "shape") if k in info]
        what = info.get("method_label") or " ".join([info.get("kind", ""), *details])
        size = (
            f"C={info['channels']} B={info['batch']}"
            if "channels" in info
            else info.get("batch", "")
        )
        body.append((item.group, f"{info.get('backend', '')} {what}", size, item.reason))
    return table(("group", "what", "size", "why not"), body)
