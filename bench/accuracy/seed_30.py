"""Where the founding question's 30 % comes from (`reproduce-accuracy --study seed-30`): the answers
of every run as a table, and which runs of the question's set-up end near 30 % and why, from the
numbers (`training.answer_statistics`, `verdicts.mechanism`)."""

from bench.accuracy.configurations import CONFIGURATIONS
from bench.accuracy.records import Run
from bench.accuracy.verdicts import MOSTLY, mechanism, percent, run_margin
from impls.testing import founding_question as question


def _learned(run: Run) -> str:
    before = run.initial_answers.majority_class_answers if run.initial_answers else 1.0
    after = run.answers.majority_class_answers
    return ", so training taught it that" if after >= MOSTLY > before else ""


def _table(runs: list[Run]) -> list[str]:
    several = len({run.seed for run in runs}) > 1
    lines = [
        "| data set | framework | configuration | "
        + ("seed | " if several else "")
        + "test accuracy | batches with one answer | answers = batch's majority "
        "| answers = majority class (before training) | batch-majority ceiling "
        "| majority-class rate | what the answers show |",
        "|" + " --- |" * (11 if several else 10),
    ]
    for run in runs:
        answers, initial = run.answers, run.initial_answers
        before = f" ({percent(initial.majority_class_answers)})" if initial else ""
        lines.append(
            f"| `{run.dataset}` | {run.framework} | `{run.config}` | "
            + (f"{run.seed} | " if several else "")
            + f"{percent(run.test_accuracy)} | {percent(answers.unanimous_batches)} | "
            f"{percent(answers.batch_majority_answers)} | "
            f"{percent(answers.majority_class_answers)}{before} | "
            f"{percent(answers.batch_majority_ceiling)} | {percent(run.chance_rate)} | "
            f"{mechanism(run)} |"
        )
    return lines


def answers(runs: list[Run]) -> list[str]:
    """The study's section of its .md."""
    reported = question.REPORTED_ACCURACY
    lines = [
        "Every sample of a batch gets the same answer when the model sees one feature vector per "
        "batch (the batch sum): then its best is one answer per batch, the batch's most frequent "
        "class, and its accuracy is bounded by the batch-majority ceiling. A model that learned "
        "only the class prior answers the majority class and scores the majority-class rate. "
        "The answers on the test batches tell the two apart:",
        "",
        *_table(runs),
    ]
    seed_runs = [run for run in runs if CONFIGURATIONS[run.config].head == "seed"]
    lines.append("")
    for dataset in dict.fromkeys(run.dataset for run in seed_runs):
        selected = [run for run in seed_runs if run.dataset == dataset]
        best = max(selected, key=lambda run: run.answers.batch_majority_answers)
        lines.append(
            f"On `{dataset}` the question's set-up answers the batch's majority class for at most "
            f"{percent(best.answers.batch_majority_answers)} of the samples "
            f"(`{best.config}`, {best.framework}, seed {best.seed}); its best accuracy is "
            f"{percent(max(run.test_accuracy for run in selected))} against a batch-majority "
            f"ceiling of {percent(best.answers.batch_majority_ceiling)} and a majority-class rate "
            f"of {percent(best.chance_rate)}."
        )
    # Near the question's 30 %: within the margin that tells a run from chance on its test set.
    near = [run for run in seed_runs if abs(run.test_accuracy - reported) <= run_margin(run)]
    lines.append("")
    if not near:
        lines.append(
            "No run of the question's set-up ends within its test set's margin (verdicts) of the "
            f"question's {percent(reported)}."
        )
        return lines
    lines.append(
        "Runs of the question's set-up within their test set's margin (verdicts) of its "
        f"{percent(reported)}:"
    )
    lines += [
        f"- `{run.config}` on `{run.dataset}` ({run.framework}, seed {run.seed}): "
        f"{percent(run.test_accuracy)}; it {mechanism(run)} (ceiling "
        f"{percent(run.answers.batch_majority_ceiling)}, majority-class rate "
        f"{percent(run.chance_rate)}"
        + (
            f"; before training {percent(run.initial_answers.majority_class_answers)} of its "
            f"answers were the majority class{_learned(run)}"
            if run.initial_answers
            else ""
        )
        + ")."
        for run in near
    ]
    return lines
