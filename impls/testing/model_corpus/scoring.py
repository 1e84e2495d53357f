"""`ibp-check model` scored on its corpus: false alarms on the correct models at every seed, and
on the buggy ones the checks that name the bug's cause and any other bug's cause named; with the
Markdown section of results/ibp_check.md that shows it."""

import dataclasses
from collections.abc import Sequence
from typing import Any

from impls.testing.check_options import ModelSettings
from impls.testing.model_check.engine import ModelReport, check_model
from impls.testing.model_corpus import BUGGY, CAUSES, CORRECT, CorpusModel


@dataclasses.dataclass
class ModelOutcome:
    """A corpus model's checks at each seed: the failed checks (and, for a buggy model, those
    whose causes hold its expected phrase, and other bugs' phrases named) and the notes."""

    name: str
    framework: str
    description: str
    expected: str  # "" for a correct model
    question_bug: int | None
    seeds: list[int]
    failed: list[list[str]]  # per seed
    causes: list[dict[str, str]]  # per seed: each failed check's causes
    caught_by: list[str]  # checks holding `expected`, at the first seed
    wrong_causes: list[str]
    notes: list[str]  # NOTE checks, at any seed

    @property
    def false_alarm(self) -> bool:
        return not self.expected and any(self.failed)


def _phrases(report: ModelReport) -> dict[str, str]:
    """Each failed check's causes, as one text."""
    return {f.name: " ".join(f.causes) for f in report.findings if f.status == "FAIL"}


def run_model(model: CorpusModel, seeds: Sequence[int]) -> ModelOutcome:
    reports = [
        check_model(model.target, ModelSettings.from_options(model.options(seed))) for seed in seeds
    ]
    causes = [_phrases(report) for report in reports]
    failed = [list(texts) for texts in causes]
    texts = _phrases(reports[0])
    caught_by = [name for name, text in texts.items() if model.expected and model.expected in text]
    wrong = sorted(
        {
            cause
            for text in texts.values()
            for cause in CAUSES
            if cause in text and cause != model.expected and cause not in model.also
        }
    )
    notes = sorted({f.name for report in reports for f in report.findings if f.status == "NOTE"})
    return ModelOutcome(
        model.name,
        model.framework,
        model.description,
        model.expected,
        model.question_bug,
        list(seeds),
        failed,
        causes,
        caught_by,
        wrong,
        notes,
    )


def run_corpus(
    frameworks: Sequence[str], seeds: Sequence[int], progress: Any = print
) -> tuple[list[ModelOutcome], list[ModelOutcome]]:
    """(correct models at every seed, buggy models at the first)."""
    correct, buggy = [], []
    for model in CORRECT:
        if model.framework in frameworks:
            correct.append(run_model(model, seeds))
            progress(
                f"model {model.name} [{model.framework}]: "
                f"{'FALSE ALARM' if correct[-1].false_alarm else 'pass'}"
            )
    for model in BUGGY:
        if model.framework in frameworks:
            buggy.append(run_model(model, seeds[:1]))
            progress(f"model {model.name} [{model.framework}]: caught by {buggy[-1].caught_by}")
    return correct, buggy


def summary(correct: Sequence[ModelOutcome], buggy: Sequence[ModelOutcome]) -> dict[str, Any]:
    return {
        "correct_models": len(correct),
        "false_alarms": sum(o.false_alarm for o in correct),
        "buggy_models": len(buggy),
        "caught": sum(bool(o.caught_by) for o in buggy),
        "wrong_causes": sum(bool(o.wrong_causes) for o in buggy),
    }


def markdown(models: dict[str, Any]) -> list[str]:
    """The model section of results/ibp_check.md, from its JSON."""
    counts, correct, buggy = models["summary"], models["correct"], models["buggy"]
    seeds = ", ".join(map(str, correct[0]["seeds"])) if correct else ""
    lines = [
        "## `ibp-check model` on its corpus",
        "",
        "Correct models written the ways people write them (`impls/testing/model_corpus/`), and "
        "each of the founding question's bugs alone in an otherwise correct model, in both "
        f"frameworks. False alarms on the correct models (seeds {seeds}): "
        f"**{counts['false_alarms']} / {counts['correct_models']}**. Buggy models failed with "
        f"their own cause: **{counts['caught']} / {counts['buggy_models']}**; another bug's "
        f"cause named for {counts['wrong_causes']}. A NOTE is no failure (the exit status is 0): "
        "it says what the checker measured but cannot call a defect.",
        "",
        "| correct model | framework | what it is | verdict | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in correct:
        alarms = sorted({name for failed in o["failed"] for name in failed})
        verdict = "**false alarm**: " + ", ".join(alarms) if alarms else "pass"
        lines.append(
            f"| {o['name']} | {o['framework']} | {o['description']} | {verdict} | "
            f"{', '.join(o['notes'])} |"
        )
    lines += [
        "",
        "| buggy model | question bug | framework | expected cause | caught by | other failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in buggy:
        others = [name for name in o["failed"][0] if name not in o["caught_by"]]
        wrong = f" **wrong cause**: {'; '.join(o['wrong_causes'])}" if o["wrong_causes"] else ""
        lines.append(
            f'| {o["name"]} | {o["question_bug"]} | {o["framework"]} | "{o["expected"]}" | '
            f"{', '.join(o['caught_by']) or '**missed**'}{wrong} | {', '.join(others)} |"
        )
    return lines
