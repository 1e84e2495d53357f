"""Scores ibp-check on its catalogue of known bugs: the mutation score (bugs failed with the
expected diagnosis / bugs catalogued), the diagnosis accuracy (expected cause named / another bug's
cause named / no cause named) and the false alarms on correct layers, for IBP
(`impls.testing.bug_catalogue`) and per method of the family (`impls.testing.method_catalogue`,
each checked under its own --method); and `ibp-check model` on its corpus of models
(`impls.testing.model_corpus`): false alarms on the correct models at every seed, causes named on
the buggy ones. Written with their metadata to results/ibp_check.json and results/ibp_check.md.

    python -m impls.testing.check_catalogue [--max-examples N] [--size C] [--seeds 0,1,2,3,4]
                                            [--output-dir results]
"""

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from impls.testing import method_catalogue, readme_blocks
from impls.testing.bug_catalogue import BUGS, CORRECT, FRAMEWORKS, Bug, CorrectLayer
from impls.testing.check_options import DEFAULT_MAX_EXAMPLES, DEFAULT_SIZE, StageSettings
from impls.testing.check_runner import check
from impls.testing.command_line import Parser, argument_type, bounded
from impls.testing.metadata import (
    ENVELOPE_KEY,
    collect,
    read_results,
    short_commit,
    write_results,
)
from impls.testing.model_corpus import scoring
from impls.testing.sandbox import Sandbox
from reference.methods import METHOD_NAMES


@dataclasses.dataclass
class Outcome:
    name: str
    stage: str
    framework: str
    target: str
    expected: str  # the diagnosis a bug must get; "" for a correct layer
    failed_properties: list[str]
    caught_by: list[str]  # failed properties whose diagnosis holds `expected`
    wrong_causes: list[str]  # other catalogued bugs' causes that a diagnosis names
    notes: list[str]  # harmless conventions ibp-check noted
    seconds: float
    method: str = "ibp"  # the --method it was checked under
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method's, given

    @property
    def caught(self) -> bool:
        return bool(self.caught_by)

    @property
    def diagnosis(self) -> str:
        """'expected', 'wrong' (another bug's cause named, too) or 'none'."""
        if self.wrong_causes:
            return "wrong"
        return "expected" if self.caught else "none"


#: A wrong cause is another catalogued bug's cause found in a diagnosis (bugs that share a cause
#: share its phrase, which is then not wrong): IBP's bugs' and the family's.
_CAUSES = sorted({bug.expected for bug in BUGS} | {bug.expected for bug in method_catalogue.BUGS})


def _outcome(
    name: str,
    stage: str,
    framework: str,
    target: str,
    expected: str,
    accepted: Sequence[str] = (),
    sandbox: Sandbox | None = None,
    method: str = "ibp",
    parameters: dict[str, Any] | None = None,
    **settings: Any,
) -> Outcome:
    options = {k: v for k, v in settings.items() if k != "seconds_per_property"}
    timing = {k: v for k, v in settings.items() if k == "seconds_per_property"}
    stage_settings = StageSettings.from_options(
        {"framework": framework, "method": method, **(parameters or {}), **options}
    )
    report = check(stage, target, stage_settings, sandbox=sandbox, **timing)
    failed = [r for r in report.results if r.status == "FAIL"]
    caught_by = [r.name for r in failed if expected and expected in r.diagnosis]
    wrong = sorted(
        {
            cause
            for r in failed
            for cause in _CAUSES
            if cause in r.diagnosis
            and cause not in accepted
            and not (expected and (cause in expected or expected in cause))
        }
    )
    return Outcome(
        name,
        stage,
        framework,
        target,
        expected,
        [r.name for r in failed],
        caught_by,
        wrong,
        report.notes + [note for r in report.results for note in r.notes],
        report.seconds,
        method,
        dict(parameters or {}),
    )


#: The command that regenerates results/ibp_check.*.
COMMAND = "python -m impls.testing.check_catalogue"
#: The seeds the correct models are checked at: a verdict must not depend on the seed.
MODEL_SEEDS = (0, 1, 2, 3, 4)
_positive_int = argument_type(bounded(int, 1, 100_000))
#: The catalogue's per-call limit: its slowest correct call takes well under a second, and the
#: hanging bug costs this much per framework.
CATALOGUE_CALL_TIMEOUT = 20.0


def run_bug(bug: Bug, framework: str, **settings: Any) -> Outcome:
    return _outcome(
        bug.name, bug.stage, framework, bug.target(framework), bug.expected, bug.also, **settings
    )


def run_correct(layer: CorrectLayer, framework: str, **settings: Any) -> Outcome:
    return _outcome(layer.name, layer.stage, framework, layer.target(framework), "", **settings)


def run_method_bug(bug: method_catalogue.MethodBug, framework: str, **settings: Any) -> Outcome:
    """A bug of the family's catalogue, checked under its own --method and parameters."""
    return _outcome(
        bug.name,
        bug.stage,
        framework,
        bug.target(framework),
        bug.expected,
        bug.also,
        method=bug.method,
        parameters=dict(bug.parameters),
        **settings,
    )


def run_method_correct(
    layer: method_catalogue.MethodCorrectLayer, framework: str, **settings: Any
) -> Outcome:
    """A correct layer of the family's catalogue, checked under its own --method and parameters."""
    return _outcome(
        layer.name,
        layer.stage,
        framework,
        layer.target(framework),
        "",
        method=layer.method,
        parameters=dict(layer.parameters),
        **settings,
    )


def method_scores(bugs: Sequence[Outcome], correct: Sequence[Outcome]) -> dict[str, Any]:
    """`score` per method of the family, in the order of `reference.methods.METHOD_NAMES`."""
    names = [name for name in METHOD_NAMES if any(o.method == name for o in (*bugs, *correct))]
    return {
        name: score([o for o in bugs if o.method == name], [o for o in correct if o.method == name])
        for name in names
    }


def _verdict(outcome: Outcome) -> str:
    return "FALSE ALARM" if outcome.failed_properties else "pass"


def score(bugs: Sequence[Outcome], correct: Sequence[Outcome]) -> dict[str, Any]:
    caught = sum(outcome.caught for outcome in bugs)
    return {
        "bugs": len(bugs),
        "caught": caught,
        "mutation_score": caught / len(bugs) if bugs else None,
        "diagnosis": {
            kind: sum(outcome.diagnosis == kind for outcome in bugs)
            for kind in ("expected", "wrong", "none")
        },
        "correct_layers": len(correct),
        "false_alarms": sum(bool(outcome.failed_properties) for outcome in correct),
    }


def markdown(document: dict[str, Any]) -> str:
    """results/ibp_check.md from the results JSON alone (the README-drift test re-renders it)."""
    metadata, settings, summary = document[ENVELOPE_KEY], document["settings"], document["summary"]
    counts = summary["diagnosis"]
    lines = [
        "# ibp-check on its bug catalogue",
        "",
        f"Generated by `{metadata.get('command') or COMMAND}` at commit "
        f"`{short_commit(metadata)}`, {metadata.get('date_utc')}; fixed realistic cases at 64 "
        f"channels, then {settings['max_examples']} examples per property of up to "
        f"{settings['size']} channels, float32.",
        "",
        f"**Mutation score: {summary['caught']} / {summary['bugs']} "
        f"({summary['mutation_score']:.0%})**; false alarms on correct layers: "
        f"**{summary['false_alarms']} / {summary['correct_layers']}**. Diagnosis accuracy: the "
        f"expected cause named for {counts['expected']}, another bug's cause named for "
        f"{counts['wrong']}, no cause for {counts['none']}.",
        "",
        "| bug | question bug | stage | framework | expected diagnosis | caught by "
        "| other failures | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    number = {bug.name: bug.question_bug for bug in BUGS}
    for o in document["bugs"]:
        others = [p for p in o["failed_properties"] if p not in o["caught_by"]]
        wrong = f" **wrong cause**: {'; '.join(o['wrong_causes'])}" if o["wrong_causes"] else ""
        lines.append(
            f"| {o['name']} | {number.get(o['name']) or ''} | {o['stage']} | {o['framework']} | "
            f'"{o["expected"]}" | {", ".join(o["caught_by"]) or "**missed**"}{wrong} | '
            f"{', '.join(others)} | {o['seconds']:.0f} |"
        )
    lines += [
        "",
        "| correct layer | stage | framework | verdict | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in document["correct"]:
        failed = o["failed_properties"]
        verdict = "**false alarm**: " + ", ".join(failed) if failed else "pass"
        if o["notes"]:
            verdict += ", with a note: " + "; ".join(o["notes"]).replace("|", "\\|")
        lines.append(
            f"| {o['name']} | {o['stage']} | {o['framework']} | {verdict} | {o['seconds']:.0f} |"
        )
    if "methods" in document:
        lines += ["", *_methods_markdown(document["methods"])]
    lines += ["", *scoring.markdown(document["models"])]
    return "\n".join(lines) + "\n"


def _methods_markdown(methods: dict[str, Any]) -> list[str]:
    """The family's section of results/ibp_check.md: per method, then per layer."""
    lines = [
        "## The second-order pooling family (`--method`)",
        "",
        "Correct and buggy layers of B-CNN, MPN-COV and iSQRT-COV "
        "(`impls/testing/method_catalogue/`), each checked under its own `--method` and the "
        "parameters it is written for.",
        "",
        "| method | mutation score | false alarms | expected cause named | another bug's cause "
        "| no cause |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, counts in methods["summary"].items():
        diagnosis = counts["diagnosis"]
        mutation = (
            f"{counts['caught']} / {counts['bugs']} ({counts['mutation_score']:.0%})"
            if counts["bugs"]
            else "no bugs"
        )
        lines.append(
            f"| {name} | {mutation} | {counts['false_alarms']} / {counts['correct_layers']} | "
            f"{diagnosis['expected']} | {diagnosis['wrong']} | {diagnosis['none']} |"
        )
    lines += [
        "",
        "| bug | method | stage | framework | expected diagnosis | caught by | other failures "
        "| seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in methods["bugs"]:
        others = [p for p in o["failed_properties"] if p not in o["caught_by"]]
        wrong = f" **wrong cause**: {'; '.join(o['wrong_causes'])}" if o["wrong_causes"] else ""
        lines.append(
            f"| {o['name']} | {o['method']} | {o['stage']} | {o['framework']} | "
            f'"{o["expected"]}" | {", ".join(o["caught_by"]) or "**missed**"}{wrong} | '
            f"{', '.join(others)} | {o['seconds']:.0f} |"
        )
    lines += [
        "",
        "| correct layer | method | parameters | stage | framework | verdict | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in methods["correct"]:
        failed = o["failed_properties"]
        verdict = "**false alarm**: " + ", ".join(failed) if failed else "pass"
        if o["notes"]:
            verdict += ", with a note: " + "; ".join(o["notes"]).replace("|", "\\|")
        given = ", ".join(f"{k} {v}" for k, v in o["parameters"].items()) or "defaults"
        lines.append(
            f"| {o['name']} | {o['method']} | {given} | {o['stage']} | {o['framework']} | "
            f"{verdict} | {o['seconds']:.0f} |"
        )
    return lines


@readme_blocks.register_document("results/ibp_check.md")
def ibp_check_document(root: Path) -> str:
    _, document = read_results(root / "results" / "ibp_check.json")
    return markdown(document)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = Parser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    arguments.add_argument("--max-examples", type=_positive_int, default=DEFAULT_MAX_EXAMPLES)
    arguments.add_argument("--size", type=_positive_int, default=DEFAULT_SIZE)
    arguments.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    arguments.add_argument(
        "--call-timeout",
        type=float,
        default=CATALOGUE_CALL_TIMEOUT,
        help="per-call limit (the hanging bug costs this much per framework)",
    )
    arguments.add_argument(
        "--seeds",
        default=",".join(map(str, MODEL_SEEDS)),
        help="seeds the correct models are checked at (the buggy ones at the first)",
    )
    arguments.add_argument("--output-dir", type=Path, default=Path("results"))
    args = arguments.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    started = time.perf_counter()
    settings = {
        "max_examples": args.max_examples,
        "size": args.size,
        "call_timeout": args.call_timeout,
    }
    frameworks = args.frameworks.split(",")
    bugs, correct, family_bugs, family_correct = [], [], [], []
    for framework in frameworks:
        with Sandbox() as sandbox:
            for bug in BUGS:
                if framework not in bug.frameworks:
                    continue
                bugs.append(run_bug(bug, framework, sandbox=sandbox, **settings))
                print(f"{bug.name} [{framework}]: {bugs[-1].diagnosis} cause", flush=True)
            for layer in CORRECT:
                correct.append(run_correct(layer, framework, sandbox=sandbox, **settings))
                print(f"{layer.name} [{framework}]: {_verdict(correct[-1])}", flush=True)
            for method_bug in method_catalogue.BUGS:
                outcome = run_method_bug(method_bug, framework, sandbox=sandbox, **settings)
                family_bugs.append(outcome)
                print(f"{method_bug.name} [{framework}]: {outcome.diagnosis} cause", flush=True)
            for method_layer in method_catalogue.CORRECT:
                outcome = run_method_correct(method_layer, framework, sandbox=sandbox, **settings)
                family_correct.append(outcome)
                print(f"{method_layer.name} [{framework}]: {_verdict(outcome)}", flush=True)
    correct_models, buggy_models = scoring.run_corpus(
        frameworks, seeds, lambda line: print(line, flush=True)
    )
    metadata = collect(
        device="cpu",
        profile=f"ibp-check {settings}",
        command=" ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]),
        wall_seconds=time.perf_counter() - started,
    )
    summary = score(bugs, correct)
    family_summary = method_scores(family_bugs, family_correct)
    model_summary = scoring.summary(correct_models, buggy_models)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": {**settings, "dtype": "float32", "frameworks": frameworks},
        "summary": summary,
        "bugs": [
            dataclasses.asdict(o) | {"caught": o.caught, "diagnosis": o.diagnosis} for o in bugs
        ],
        "correct": [dataclasses.asdict(o) for o in correct],
        "methods": {
            "summary": family_summary,
            "bugs": [
                dataclasses.asdict(o) | {"caught": o.caught, "diagnosis": o.diagnosis}
                for o in family_bugs
            ],
            "correct": [dataclasses.asdict(o) for o in family_correct],
        },
        "models": {
            "summary": model_summary,
            "correct": [dataclasses.asdict(o) for o in correct_models],
            "buggy": [dataclasses.asdict(o) for o in buggy_models],
        },
    }
    write_results(args.output_dir / "ibp_check.json", metadata, **payload)
    (args.output_dir / "ibp_check.md").write_text(markdown({ENVELOPE_KEY: metadata, **payload}))
    print(json.dumps({**summary, "methods": family_summary, "models": model_summary}))
    perfect = (
        all(
            counts["diagnosis"]["expected"] == counts["bugs"] and not counts["false_alarms"]
            for counts in (summary, *family_summary.values())
        )
        and model_summary["caught"] == model_summary["buggy_models"]
        and not model_summary["false_alarms"]
        and not model_summary["wrong_causes"]
    )
    return 0 if perfect else 1


if __name__ == "__main__":
    sys.exit(main())
