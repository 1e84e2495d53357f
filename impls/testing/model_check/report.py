"""The text of an `ibp-check model` report: PASS/FAIL lines with their causes, as the stage
checks print theirs."""

import textwrap

from impls.testing.model_check.engine import ModelReport

_WIDTH = 100


def _wrapped(text: str, indent: str = "      ") -> str:
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent="      ")


def format_report(report: ModelReport) -> str:
    head = ", ".join(f"{stage} = {layer}" for layer, stage in report.head) or "none found"
    lines = [
        f"ibp-check model {report.target}",
        _wrapped(
            f"framework {report.framework}, batch {report.batch}, {len(report.layers)} layers "
            f"traced; IBP head: {head}",
            indent="  ",
        ),
        "",
    ]
    for finding in report.findings:
        title = f"{finding.status:<4}  {finding.name}"
        lines.append(_wrapped(f"{title}: {finding.summary}" if finding.summary else title, ""))
        lines += [_wrapped(cause) for cause in finding.causes]
    failed = sum(finding.status == "FAIL" for finding in report.findings)
    verdict = f"{failed} of {len(report.findings)} checks FAIL" if failed else "all checks pass"
    lines += ["", f"{verdict} ({report.seconds:.0f} s)"]
    return "\n".join(lines)
