"""What a run's number means: learns, at chance, at the batch-majority ceiling, or diverged, with a
margin derived from the test set's size; and what one configuration's runs over several seeds
say together.

The margin: a model that learned nothing about the images answers independently of their labels,
so its accuracy on n test samples scatters around at most the chance rate c (the share of the
most frequent class) with standard error sqrt(c (1 - c) / n). A run counts as above chance only
beyond MARGIN_STANDARD_ERRORS of those: on the default test sets 5.0 points (synthetic, 448
samples, c = 1/7) and 10.2 points (skimage-textures, 192 samples, c = 1/3). A model that gives one
answer per batch is bounded by the batch-majority ceiling instead of learning per sample.
"""

import enum
import math
import statistics
from collections import Counter
from dataclasses import dataclass

from bench.accuracy.records import Run

#: Standard errors of a chance-level accuracy beyond which a run counts as above chance: a model
#: that learned nothing exceeds it with probability 0.13 % (one-sided, normal approximation).
MARGIN_STANDARD_ERRORS = 3.0
#: Shares of answers above which a run's answers count as following a rule (one per batch, the
#: majority class): 9 in 10.
MOSTLY = 0.9
#: One answer per batch agrees with the batch's majority class for about 1/K of K balanced
#: classes by luck; a model that answers it for half of the samples or more has learned it.
FOLLOWS = 0.5


class Verdict(enum.Enum):
    LEARNS = "learns"
    AT_CHANCE = "at chance"
    CEILING = "at the batch-majority ceiling"
    DIVERGED = "diverged"


#: How several seeds' verdicts are told, in this order: "diverges in 1 of 3 seeds, at chance in 2".
_IN_SEEDS = {
    Verdict.DIVERGED: "diverges",
    Verdict.LEARNS: "learns",
    Verdict.CEILING: "reaches the batch-majority ceiling",
    Verdict.AT_CHANCE: "at chance",
}


def margin(chance_rate: float, test_samples: int) -> float:
    """The accuracy above the chance rate beyond which a run learned something."""
    return MARGIN_STANDARD_ERRORS * math.sqrt(chance_rate * (1 - chance_rate) / test_samples)


def run_margin(run: Run) -> float:
    return margin(run.chance_rate, run.test_samples)


def verdict(run: Run) -> Verdict:
    """Diverged (a loss or gradient that was not finite); at chance (no more than the margin above
    the chance rate, or below it); at the batch-majority ceiling (above it, with one answer for
    nearly every batch: all a model that sees one feature vector per batch can learn); learns."""
    if run.diverged:
        return Verdict.DIVERGED
    if run.test_accuracy <= run.chance_rate + run_margin(run):
        return Verdict.AT_CHANCE
    if run.answers.unanimous_batches >= MOSTLY:
        return Verdict.CEILING
    return Verdict.LEARNS


def describe(verdicts: list[Verdict]) -> str:
    """One verdict if every seed gives it, else how many give which."""
    counts = Counter(verdicts)
    if len(counts) == 1:
        return verdicts[0].value
    parts = [(v, counts[v]) for v in _IN_SEEDS if v in counts]
    first, count = parts[0]
    words = [f"{_IN_SEEDS[first]} in {count} of {len(verdicts)} seeds"]
    words += [f"{_IN_SEEDS[v]} in {n}" for v, n in parts[1:]]
    return ", ".join(words)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


@dataclass(frozen=True)
class Seeds:
    """One configuration's runs on one data set in one framework, one per seed."""

    runs: tuple[Run, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.runs[0].key

    @property
    def accuracies(self) -> list[float]:
        return [run.test_accuracy for run in self.runs]

    @property
    def low(self) -> float:
        return min(self.accuracies)

    @property
    def high(self) -> float:
        return max(self.accuracies)

    @property
    def median(self) -> float:
        return statistics.median(self.accuracies)

    @property
    def verdicts(self) -> list[Verdict]:
        return [verdict(run) for run in self.runs]

    @property
    def verdict(self) -> str:
        return describe(self.verdicts)

    @property
    def unanimous(self) -> Verdict | None:
        """The verdict of every seed, or None where they differ."""
        return self.verdicts[0] if len(set(self.verdicts)) == 1 else None

    def accuracy_text(self) -> str:
        """'97.5 %' for one seed, '97.5 % (96.1-98.9 %)' (median, range) for several."""
        if len(self.runs) == 1:
            return percent(self.median)
        return f"{percent(self.median)} ({100 * self.low:.1f}-{percent(self.high)})"

    def points_from_chance(self) -> str:
        """'+83.3 points from chance' (median; none for diverged runs, which have no answers)."""
        measured = [run for run in self.runs if not run.diverged]
        if not measured:
            return ""
        points = statistics.median(100 * (r.test_accuracy - r.chance_rate) for r in measured)
        return f"{points:+.1f} points from chance"


def by_configuration(runs: list[Run]) -> dict[tuple[str, str, str], Seeds]:
    """The runs grouped by (data set, framework, configuration), in the order they first come."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    return {key: Seeds(tuple(group)) for key, group in groups.items()}


def mechanism(run: Run) -> str:
    """What a run's answers show, in words."""
    answers = run.answers
    if run.diverged:
        return "diverged"
    if answers.majority_class_answers >= MOSTLY:
        return "answers the majority class for (almost) every sample: the class prior"
    if answers.unanimous_batches >= MOSTLY:
        if answers.batch_majority_answers >= FOLLOWS:
            return (
                "one answer per batch, mostly the batch's majority class: the batch-majority "
                "ceiling"
            )
        return "one answer per batch, unrelated to the batch's majority class"
    return "answers per sample"
