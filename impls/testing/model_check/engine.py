"""`check_model`: every whole-model check, then the stage checks of `ibp-check` (the same engine,
`impls.testing.check_runner.check`) on each layer of the IBP head found inside the model."""

from __future__ import annotations

import dataclasses
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from impls.testing.check_runner import DEFAULT_TIME_LIMIT, check
from impls.testing.model_check.checks import Finding
from impls.testing.model_check.supervisor import CHECKS, ModelSandbox
from impls.testing.sandbox import DEFAULT_CALL_TIMEOUT, Sandbox, TargetStopped

#: Hypothesis examples per property, and seconds per property, of the stage checks on located
#: layers: the fixed realistic cases at C = 64 run whatever these are, so a small search keeps the
#: whole model check within a few minutes.
STAGE_EXAMPLES = 10
STAGE_SECONDS_PER_PROPERTY = 3.0


@dataclasses.dataclass
class ModelReport:
    target: str
    framework: str
    batch: int | None  # the batch size the checks ran at; None where the model ran at none
    layers: list  # (name, kind) in the order the model calls them
    head: list  # (layer, stage) of the IBP head found in the model
    findings: list
    seconds: float = 0.0
    target_output: str = ""  # what the model printed, shown apart from the report

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


def _layer_target(
    folder: Path, target: str, framework: str, input_shape: Any, seed: int, layer: str
) -> str:
    """A module whose `layer` is the located layer of a freshly built model: what the stage
    engine loads in its own supervised child."""
    path = folder / f"located_{len(list(folder.iterdir()))}.py"
    path.write_text(
        textwrap.dedent(
            f"""\
            from impls.testing.model_check.frameworks import located_layer

            layer = located_layer({_absolute(target)!r}, {framework!r}, {input_shape!r},
                                  {seed!r}, {layer!r})
            """
        )
    )
    return f"{path}:layer"


def _stage_finding(layer: str, stage: str, report: Any) -> Finding:
    failed = [r for r in report.results if r.status == "FAIL"]
    name = f"{stage} stage on layer {layer}"
    checks = f"ibp-check {stage}'s properties hold on the layer"
    causes = [f"{r.name}: {r.diagnosis}" for r in failed]
    return Finding(
        name,
        "FAIL" if failed else "PASS",
        checks,
        causes,
        {"properties": [r.name for r in report.results]},
    )


def check_model(
    target: str,
    framework: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    time_limit: float = DEFAULT_TIME_LIMIT,
    stage_examples: int = STAGE_EXAMPLES,
) -> ModelReport:
    """Every check of `ibp-check model` on the model `target` ('file.py:function', a function
    returning a Keras model, a torch module, or (module, optimizer)). Checks not started within
    `time_limit` seconds of the start are reported as not checked (the model's first calls always
    run). Raises sandbox.TargetUnusable when the model cannot be built or run."""
    started = time.perf_counter()
    clock = _Clock(started, time_limit)
    with ModelSandbox(call_timeout) as box:
        framework = box.load(target, framework, input_shape, seed)
        try:
            summary = box.probe()
        except TargetStopped as stop:
            summary = {"failed": Finding("batch sizes", "FAIL", "", [stop.diagnosis])}
        if "failed" in summary:
            why = "not checked: the model's first calls failed (see batch sizes)"
            findings = [summary["failed"]] + [Finding(n, "FAIL", "", [why]) for n in CHECKS]
            summary = {"batch": None, "layers": [], "located": []}
        else:
            findings = [summary["batch_finding"]] + _child_findings(box, clock)
        output = box.captured()
    if summary["located"]:
        findings += _stage_findings(
            target,
            framework,
            input_shape,
            seed,
            summary["located"],
            call_timeout,
            stage_examples,
            clock,
        )
    elif summary["layers"]:
        findings.append(
            Finding(
                "IBP head",
                "NOTE",
                "no layer turns a feature map into a (B, C, C) matrix or its flattening: no "
                "stage checks ran",
            )
        )
    report = ModelReport(
        target,
        framework,
        summary["batch"],
        summary["layers"],
        summary["located"],
        findings,
        target_output=output,
    )
    report.seconds = time.perf_counter() - started
    return report


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


def _stage_findings(
    target: str,
    framework: str,
    input_shape: tuple[int, ...] | None,
    seed: int,
    located: list[tuple[str, str]],
    call_timeout: float,
    examples: int,
    clock: _Clock,
) -> list[Finding]:
    findings = []
    with (
        tempfile.TemporaryDirectory(prefix="ibp-check-layers-") as folder,
        Sandbox(call_timeout) as sandbox,
    ):
        for layer, stage in located:
            late = clock.ran_out(f"{stage} stage on layer {layer}")
            if late is not None:
                findings.append(late)
                continue
            module = _layer_target(Path(folder), target, framework, input_shape, seed, layer)
            report = check(
                stage,
                module,
                framework,
                sandbox=sandbox,
                max_examples=examples,
                seconds_per_property=STAGE_SECONDS_PER_PROPERTY,
                call_timeout=call_timeout,
                time_limit=clock.remaining(),
            )
            findings.append(_stage_finding(layer, stage, report))
    return findings
