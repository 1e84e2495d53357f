"""A run's verdicts against the committed results, configuration by configuration.

A configuration's verdict is reproduced when every seed of this run gets a verdict that some seed
of the committed results got (so a fresh seed-0 run reproduces "diverges in 1 of 3 seeds" by
diverging or by staying at chance). The accuracies are compared too: one outside the committed
range over seeds is reported, but only a verdict decides whether the run reproduced the results;
a configuration that the committed results lack has no verdict to reproduce, and is reported as
such. Only runs trained with the settings the committed ones were are compared (`incomparable`).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from bench.accuracy import result_files
from bench.accuracy.identity import SET_BY, option_difference
from bench.accuracy.records import Results, Settings
from bench.accuracy.verdicts import Seeds, by_configuration, percent
from reference.contracts import IBPInputError

#: The option that sets each of the settings (those of a checkpoint's identity, and --quick).
_OPTIONS = {**SET_BY, "quick": "--quick"}


def incomparable(committed: Settings, fresh: Settings) -> list[str]:
    """'--epochs 10 (this run: 4)' for each setting in which two results files differ."""
    ours = asdict(fresh)
    return [
        option_difference(_OPTIONS[name], value, ours[name])
        for name, value in asdict(committed).items()
        if value != ours[name]
    ]


@dataclass(frozen=True)
class Difference:
    """A configuration whose runs differ from the committed ones."""

    fresh: Seeds
    committed: Seeds

    def line(self) -> str:
        committed = self.committed
        count = len(committed.runs)
        numbers = (
            f"{percent(committed.low)} to {percent(committed.high)} over {count} seeds"
            if count > 1
            else percent(committed.low)
        )
        return (
            f"{_named(self.fresh)}: {self.fresh.accuracy_text()}, {self.fresh.verdict}; "
            f"committed {numbers}, {committed.verdict}"
        )


@dataclass(frozen=True)
class Comparison:
    #: the committed results file
    source: Path
    #: configurations compared (in both this run and the committed results)
    compared: int
    #: configurations whose verdict differs
    verdicts: tuple[Difference, ...]
    #: configurations with the committed verdict but an accuracy outside the committed range
    accuracies: tuple[Difference, ...]
    #: configurations of this run that the committed results lack: nothing to reproduce
    missing: tuple[Seeds, ...] = ()

    @property
    def reproduced(self) -> bool:
        """Every configuration of this run has a committed verdict, and reproduces it."""
        return not self.verdicts and not self.missing

    def lines(self) -> list[str]:
        lines = []
        if self.compared:
            done = self.compared - len(self.verdicts)
            lines.append(f"reproduced {done} of {self.compared} committed verdicts ({self.source})")
        if self.missing:
            lines.append(f"not in {self.source}, so not compared:")
            lines += [f"  {_named(seeds)}: {seeds.verdict}" for seeds in self.missing]
        if self.verdicts:
            lines.append("verdicts that differ:")
            lines += [f"  {difference.line()}" for difference in self.verdicts]
        if self.accuracies:
            lines.append(
                "same verdict, accuracy outside the committed range (expected now and then: "
                "seeds and CPUs round differently):"
            )
            lines += [f"  {difference.line()}" for difference in self.accuracies]
        return lines


def compare(fresh: Results, committed: Results, source: Path) -> Comparison:
    """This run's configurations against the committed results."""
    ours, theirs = by_configuration(list(fresh.runs)), by_configuration(list(committed.runs))
    shared = [key for key in ours if key in theirs]
    verdicts, accuracies = [], []
    for key in shared:
        difference = Difference(ours[key], theirs[key])
        if not set(ours[key].verdicts) <= set(theirs[key].verdicts):
            verdicts.append(difference)
        elif ours[key].low < theirs[key].low or ours[key].high > theirs[key].high:
            accuracies.append(difference)
    missing = tuple(seeds for key, seeds in ours.items() if key not in theirs)
    return Comparison(source, len(shared), tuple(verdicts), tuple(accuracies), missing)


def _named(seeds: Seeds) -> str:
    dataset, framework, config = seeds.key
    return f"{framework} `{config}` on {dataset}"


@dataclass(frozen=True)
class Committed:
    """The results a run compares itself with, found and read before training: the results and
    their file, or why there is nothing to compare with."""

    path: Path | None = None
    results: Results | None = None
    reason: str = ""


def read_committed(
    named: Path | None,
    default: Path,
    strict: bool,
    fresh: Settings,
    planned: set[tuple[str, str, str]],
) -> Committed:
    """The results to compare a run of `fresh` settings and `planned` configurations (data set,
    framework, configuration) with: the file `named` (--compare-with), else `default` where it
    exists. A named file that cannot be read raises IBPInputError; so does, when `strict`
    (--fail-on-difference), anything that would leave a planned configuration uncompared. A
    default file that cannot be read (a merge conflict, say) is not compared, and says why."""
    path = named if named is not None else default
    if named is None and not default.is_file():
        return _nothing(strict, f"no {default} here (--compare-with FILE)")
    try:
        results = result_files.read(path)
    except IBPInputError as error:
        if named is not None or strict:
            raise
        return Committed(reason=str(error))
    changed = incomparable(results.settings, fresh)
    if changed:
        return _nothing(strict, f"{path} was made with other settings, {'; '.join(changed)}")
    absent = planned - {run.key for run in results.runs}
    if absent and strict:
        names = ", ".join(f"{f} `{c}` on {d}" for d, f, c in sorted(absent))
        raise IBPInputError(f"--fail-on-difference: {path} has no verdict for {names}")
    return Committed(path, results)


def _nothing(strict: bool, reason: str) -> Committed:
    if strict:
        raise IBPInputError(f"--fail-on-difference: {reason}; nothing to compare with")
    return Committed(reason=reason)
