"""The targets the project set itself (CPU, headline size, float32), and the method that
`sqrtm(method="auto")` should pick according to a run."""

from bench.cases import DEFAULT_VARIANT, EIGH
from bench.report.formatting import format_ratio, ratio, verdict
from bench.report.results import MODES, Entry, Results, forward_variant, seconds_of, variant_of

TARGET_SPEEDUP_OVER_SCIPY = 5.0
TARGET_SPEEDUP_OVER_TF_LINALG_SQRTM = 20.0
TARGET_TF_OVER_TORCH = 1.5

#: (what, measured, target, verdict)
TargetRow = tuple[str, str, str, str]


def _speedup_row(what: str, speedup: float | None, target: float) -> TargetRow:
    return (
        what,
        format_ratio(speedup),
        f">= {target:g}x faster",
        verdict(None if speedup is None else speedup >= target),
    )


def _slowdown_row(what: str, slowdown: float | None) -> TargetRow:
    return (
        what,
        format_ratio(slowdown),
        f"<= {TARGET_TF_OVER_TORCH:g}x",
        verdict(None if slowdown is None else slowdown <= TARGET_TF_OVER_TORCH),
    )


def target_rows(results: Results) -> list[TargetRow]:
    """The project's CPU targets at the headline cell, for the default method and, where the
    default is something else, for eigh."""
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
                    ratio(scipy_fb, seconds_of(ours)),
                    TARGET_SPEEDUP_OVER_SCIPY,
                )
            )
        tf_forward = results.sqrtm("tf", "forward", cell, forward_variant(variant))
        rows.append(
            _speedup_row(
                f"tf {what}: forward vs tf.linalg.sqrtm forward",
                ratio(tf_linalg, seconds_of(tf_forward)),
                TARGET_SPEEDUP_OVER_TF_LINALG_SQRTM,
            )
        )
        for title in MODES.values():
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


def tf_over_torch(results: Results) -> dict[str, float]:
    """{mode + method label: TF time / torch time} at the headline cell."""
    cell = results.headline
    slowdowns = {}
    for mode in MODES:
        for entry in results.find(kind="sqrtm", backend="torch", mode=mode, **cell.info()):
            if entry.info.get("anchor"):
                continue
            variant = variant_of(entry.info)
            tf_entry = results.sqrtm("tf", mode, cell, variant)
            if tf_entry is not None:
                slowdowns[f"{MODES[mode]} {variant.label}"] = tf_entry.seconds / entry.seconds
    return slowdowns


def auto_recommendation(results: Results, backend: str) -> tuple[Entry | None, list[Entry]]:
    """The fastest time-to-accuracy entry that reaches the target, and all candidates."""
    candidates = results.find(kind="sqrtm_time_to_accuracy", backend=backend)
    reaching = [e for e in candidates if e.info.get("reaches_target")]
    best = min(reaching, key=lambda e: e.seconds) if reaching else None
    return best, sorted(candidates, key=lambda e: e.seconds)
