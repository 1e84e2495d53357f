"""`check_model`: every whole-model check, then the stage checks of `ibp-check` (the same engine,
`impls.testing.check_runner.check`) on each layer of the head found inside the model, at the
sizes, layout and dtype it gets there, against the reference of the method the head implements
(`model_check.recognised`, or `--method`)."""

from __future__ import annotations

import dataclasses
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from impls.testing import framework_logs
from impls.testing.check_options import (
    DEFAULT_SIZE,
    DTYPES,
    PARAMETER_NAMES,
    ModelSettings,
    StageSettings,
)
from impls.testing.check_runner import CheckReport, check
from impls.testing.model_check.checks import Finding
from impls.testing.model_check.located import FEATURE_MAP_STAGES, Located
from impls.testing.model_check.supervisor import CHECKS, ModelSandbox
from impls.testing.sandbox import Sandbox, TargetStopped
from impls.testing.stage_specs import Sizes
from reference.methods import METHODS

#: Hypothesis examples per property, and seconds per property, of the stage checks on located
#: layers: the fixed realistic cases run whatever these are, so a small search keeps the whole
#: model check within a minute.
STAGE_EXAMPLES = 10
STAGE_SECONDS_PER_PROPERTY = 3.0


@dataclasses.dataclass
class ModelReport:
    """What `ibp-check model` found: the `target` and its `framework`, the `batch` size the
    checks ran at (None where the model ran at none), its `layers` as (name, kind) in the order
    their calls end, the `head` found in it as (layer, stage), the `method` it implements (None
    without a head) with its `parameters`, one Finding per check in
    `findings` (status PASS, FAIL, NOTE or SKIP, with causes and measurements), `notes` on how it
    was checked, and the run's `seconds`. `passed` is True when no check failed.
    `target_output` is what the model printed (shown apart from the report), `framework_log`
    TensorFlow's own log lines (shown only where the user set TF_CPP_MIN_LOG_LEVEL)."""

    target: str
    framework: str
    batch: int | None
    layers: list
    head: list
    findings: list
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    target_output: str = ""
    framework_log: str = ""
    method: str | None = None
    parameters: dict = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(finding.status != "FAIL" for finding in self.findings)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _absolute(target: str) -> str:
    location, _, name = target.rpartition(":")
    if location.endswith(".py"):
        location = str(Path(location).resolve())
    return f"{location}:{name}"


def _layer_target(folder: Path, target: str, settings: ModelSettings, located: Located) -> str:
    """A module whose `layer` is the located layer of a freshly built model, as a function of the
    stage's tensors: what the stage engine loads in its own supervised child."""
    path = folder / f"located_{len(list(folder.iterdir()))}.py"
    path.write_text(
        textwrap.dedent(
            f"""\
            from impls.testing.check_options import ModelSettings
            from impls.testing.model_check.located import LayerForm, located_layer

            layer = located_layer(
                {_absolute(target)!r},
                {settings!r},
                {located.path!r},
                {located.stage!r},
                {located.form!r},
            )
            """
        )
    )
    return f"{path}:layer"


def _stage_finding(located: Located, report: CheckReport, notes: list[str]) -> Finding:
    failed = [r for r in report.results if r.status == "FAIL"]
    name = f"{located.stage} stage on layer {located.name}"
    checks = f"ibp-check {located.stage}'s properties hold on the layer"
    causes = [f"{r.name}: {r.diagnosis}" for r in failed]
    notes = notes + report.notes + [note for r in report.results for note in r.notes]
    return Finding(
        name,
        "FAIL" if failed else "PASS",
        checks,
        causes + list(dict.fromkeys(notes)),
        {"properties": [r.name for r in report.results], "channels": located.form.channels},
    )


def check_model(target: str, settings: ModelSettings) -> ModelReport:
    """Every check of `ibp-check model` on the model `target` ('file.py:function', a function
    returning a Keras model, a torch module, or (module, optimizer)). Checks not started within
    `settings.time_limit` seconds of the start are reported as not checked (the model's first
    calls always run). Raises sandbox.TargetUnusable when the model cannot be built or run."""
    started = time.perf_counter()
    clock = _Clock(started, settings.time_limit)
    with ModelSandbox(settings.call_timeout) as box:
        framework = box.load(target, settings)
        settings = dataclasses.replace(settings, framework=framework)
        try:
            summary = box.probe()
        except TargetStopped as stop:
            summary = {"failed": Finding("batch sizes", "FAIL", "", [stop.diagnosis])}
        if "failed" in summary:
            why = "not checked: the model's first calls failed (see batch sizes)"
            findings = [summary["failed"]] + [Finding(n, "FAIL", "", [why]) for n in CHECKS]
            summary = {"batch": None, "layers": [], "located": [], "compiled": False}
        else:
            findings = [summary["batch_finding"], summary["finite_finding"]]
            findings += _child_findings(box, clock)
        output = box.captured()
    findings += _head_findings(target, settings, summary["located"], summary["layers"], clock)
    log, printed = framework_logs.split(output)
    notes = (
        [
            "compiled with torch.compile: checked as the module it compiles (same parameters and "
            "function; compiling it for every check would take minutes)"
        ]
        if summary["compiled"]
        else []
    )
    head: list[Located] = summary["located"]
    if head:
        notes.append(f"the head's method: {head[0].method}, {head[0].recognised}")
    return ModelReport(
        target,
        framework,
        summary["batch"],
        summary["layers"],
        [(located.name, located.stage) for located in summary["located"]],
        findings,
        notes,
        time.perf_counter() - started,
        target_output=printed,
        framework_log=log,
        method=head[0].method if head else None,
        parameters=_parameters(head[0]) if head else {},
    )


def _parameters(located: Located) -> dict[str, Any]:
    """Every parameter of the head's method, the ones not told at their defaults."""
    return METHODS[located.method].resolve(**dict(located.parameters))


@dataclasses.dataclass(frozen=True)
class _Clock:
    """The run's time limit (`--time-limit`), counted from the start of the run."""

    started: float
    limit: float

    def remaining(self) -> float:
        return self.limit - (time.perf_counter() - self.started)

    def ran_out(self, name: str) -> Finding | None:
        """A not-checked failure of check `name` once the limit has passed, else None."""
        if self.remaining() > 0:
            return None
        return Finding(
            name, "FAIL", "", [f"not checked: the run's time limit ({self.limit:g} s) ran out"]
        )


def _child_findings(box: ModelSandbox, clock: _Clock) -> list[Finding]:
    """The whole-model checks; after the model stopped, the rest are not checked."""
    findings, stopped = [], None
    for name in CHECKS:
        if stopped is not None:
            findings.append(Finding(name, "FAIL", "", [f"not checked: {stopped}"]))
            continue
        late = clock.ran_out(name)
        if late is not None:
            findings.append(late)
            continue
        try:
            findings.append(box.run(name))
        except TargetStopped as stop:
            stopped = f"the model stopped in {name}"
            findings.append(Finding(name, "FAIL", "", [stop.diagnosis]))
    return findings


def _stage_settings(
    settings: ModelSettings, located: Located, clock: _Clock
) -> tuple[StageSettings, list[str]]:
    """The stage check of a located layer: its dtype in the model (half precision is checked in
    float32, the stage check's half-precision call included), its gradient only where something
    below it trains; and the notes that say so."""
    notes = []
    dtype = located.form.dtype
    if dtype not in DTYPES:
        notes.append(f"it gets {dtype} in the model; its properties are checked in float32")
        dtype = "float32"
    if not located.trains_below:
        notes.append(
            "nothing below it trains, so no gradient flows through it: its gradient is not checked"
        )
    given = dict(located.parameters)
    stage_settings = StageSettings(
        framework=settings.framework,
        method=located.method,
        **{name: given.get(name) for name in PARAMETER_NAMES},
        size=DEFAULT_SIZE,
        tolerance=None,
        dtype=dtype,
        max_examples=STAGE_EXAMPLES,
        forward_only=not located.trains_below,
        call_timeout=settings.call_timeout,
        time_limit=clock.remaining(),
        strict_dtypes=settings.strict_dtypes,
    )
    return stage_settings, notes


def _outside_method(layer: Located, settings: ModelSettings, name: str) -> Finding | None:
    """The finding of a layer its method cannot check: a stage the method has not (a FAIL where
    the user named the method: the head is not what they said; a NOTE where it was recognised),
    or a centred covariance of fewer locations than the method is defined on (a NOTE)."""
    method = METHODS[layer.method]
    if layer.stage not in method.stage_names:
        status = "FAIL" if settings.method is not None else "NOTE"
        return Finding(
            name,
            status,
            f"not checked: {method.short} has no {layer.stage} stage (its stages: "
            f"{', '.join(method.stage_names)}), so this head is not a {layer.method} head; check "
            "the model without --method to have its method recognised, or the layer with the "
            "method it implements",
        )
    locations = layer.form.map_shape[0] * layer.form.map_shape[1] if layer.form.map_shape else 0
    if layer.stage in FEATURE_MAP_STAGES and locations < method.min_locations:
        return Finding(
            name,
            "NOTE",
            f"not checked: the layer's feature map has {locations} location(s); {method.short}'s "
            "centred covariance is 0 there, where the method is not defined",
        )
    return None


def _head_findings(
    target: str,
    settings: ModelSettings,
    located: list[Located],
    layers: list[Any],
    clock: _Clock,
) -> list[Finding]:
    """The stage checks of the located layers, or a note where none was found."""
    if not located:
        if not layers:
            return []
        return [
            Finding(
                "head",
                "NOTE",
                "no layer turns a feature map into a (B, C, C) matrix, its flattening or its upper "
                "triangle: no stage checks ran",
            )
        ]
    findings = []
    with (
        tempfile.TemporaryDirectory(prefix="ibp-check-layers-") as folder,
        Sandbox(settings.call_timeout) as sandbox,
    ):
        for layer in located:
            name = f"{layer.stage} stage on layer {layer.name}"
            if layer.stage == "pool+sqrtm":
                findings.append(
                    Finding(
                        name,
                        "NOTE",
                        "the layer computes the pooling and the matrix square root together; "
                        "the stage checks take one stage at a time, so it is not checked on its "
                        "own (split it in two layers, or check its functions with ibp-check pool "
                        "and ibp-check sqrtm)",
                    )
                )
                continue
            unchecked = _outside_method(layer, settings, name)
            if unchecked is not None:
                findings.append(unchecked)
                continue
            late = clock.ran_out(name)
            if late is not None:
                findings.append(late)
                continue
            module = _layer_target(Path(folder), target, settings, layer)
            stage_settings, notes = _stage_settings(settings, layer, clock)
            feature_map = layer.stage in FEATURE_MAP_STAGES
            fixed = Sizes(
                DEFAULT_SIZE, layer.form.channels, layer.form.map_shape if feature_map else None
            )
            report = check(
                layer.stage,
                module,
                stage_settings,
                sandbox=sandbox,
                seconds_per_property=STAGE_SECONDS_PER_PROPERTY,
                fixed=fixed,
            )
            findings.append(_stage_finding(layer, report, notes))
    return findings
