"""The text of the reports `ibp-check` prints: one PASS, FAIL, NOTE or SKIP line per property
(`ibp-check STAGE`) or check (`ibp-check model`), with the diagnosis, the measurements and the
notes under it."""

from impls.testing.check_options import LAYOUTS
from impls.testing.check_runner import CheckReport, PropertyResult
from impls.testing.command_line import wrapped
from impls.testing.method_specs import DEFAULT_METHOD
from impls.testing.model_check.engine import ModelReport
from impls.testing.stage_specs import FEATURE_MAP, REALISTIC_CHANNELS, STAGES
from reference.methods import METHODS


def _measured(result: PropertyResult) -> str:
    if result.error is None:
        return ""
    return f"relative error {result.error:.2g}, tolerance {result.tolerance:.2g}"


def _searched(result: PropertyResult) -> str:
    text = f"{result.examples} examples"
    return f"{text}; search cut short: {result.stopped_early}" if result.stopped_early else text


def _sizes(report: CheckReport) -> str:
    if report.channels is not None:
        return f"at the layer's {report.channels} channels, up to {report.max_examples} examples"
    return (
        f"fixed realistic cases at {REALISTIC_CHANNELS} channels, then up to "
        f"{report.max_examples} examples per property of up to {report.size} channels"
    )


def _method(report: CheckReport) -> str:
    """' --method isqrt-cov (iterations 5, order row)'; nothing for IBP with its defaults."""
    defaults = METHODS[DEFAULT_METHOD].defaults()
    if report.method == DEFAULT_METHOD and all(
        defaults[name] == value for name, value in report.parameters.items()
    ):
        return ""
    values = ", ".join(f"{name} {value}" for name, value in report.parameters.items())
    return f" --method {report.method}" + (f" ({values})" if values else "")


def stage_report(report: CheckReport, target: str) -> str:
    """The text of `ibp-check STAGE TARGET`'s report."""
    layout = (
        LAYOUTS[report.framework]
        if STAGES[report.stage].input_kind == FEATURE_MAP
        else "matrices (B, C, C)"
    )
    lines = [
        f"ibp-check {report.stage} {target}{_method(report)}",
        wrapped(f"framework {report.framework}, {layout}, {report.dtype}; {_sizes(report)}", "  "),
        "",
    ]
    lines += [wrapped(f"NOTE  {note}", "") for note in report.notes]
    for result in report.results:
        if result.status == "FAIL":
            lines.append(wrapped(f"FAIL  {result.name}: {result.checks}", indent=""))
            lines.append(wrapped(result.diagnosis or ""))
            if result.counterexample is not None:
                lines.append(wrapped(f"counterexample: {result.counterexample}"))
            if result.error is not None:
                lines.append(wrapped(f"measured: {_measured(result)}"))
        elif result.status in ("SKIP", "N/A"):
            lines.append(wrapped(f"{result.status:<4}  {result.name}: {result.diagnosis}", ""))
        else:
            worst = f", worst {_measured(result)}" if result.error is not None else ""
            lines.append(
                wrapped(
                    f"PASS  {result.name} ({_searched(result)}{worst}, {result.seconds:.1f} s)",
                    indent="",
                )
            )
        lines += [wrapped(f"note: {note}") for note in result.notes]
    failed = sum(result.status == "FAIL" for result in report.results)
    verdict = (
        f"{failed} of {len(report.results)} properties FAIL" if failed else "all properties hold"
    )
    lines += ["", f"{verdict} ({report.seconds:.1f} s)"]
    return "\n".join(lines)


def model_report(report: ModelReport) -> str:
    """The text of `ibp-check model TARGET`'s report."""
    head = ", ".join(f"{stage} = {layer}" for layer, stage in report.head) or "none found"
    title = METHODS[report.method or DEFAULT_METHOD].short
    lines = [
        f"ibp-check model {report.target}",
        wrapped(
            f"framework {report.framework}, batch {report.batch}, {len(report.layers)} layers "
            f"traced; {title} head: {head}",
            indent="  ",
        ),
        "",
    ]
    lines += [wrapped(f"NOTE  {note}", "") for note in report.notes]
    for finding in report.findings:
        title = f"{finding.status:<4}  {finding.name}"
        lines.append(wrapped(f"{title}: {finding.summary}" if finding.summary else title, ""))
        lines += [wrapped(cause) for cause in finding.causes]
    failed = sum(finding.status == "FAIL" for finding in report.findings)
    verdict = f"{failed} of {len(report.findings)} checks FAIL" if failed else "all checks pass"
    lines += ["", f"{verdict} ({report.seconds:.0f} s)"]
    return "\n".join(lines)
