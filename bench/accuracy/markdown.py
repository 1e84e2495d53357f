"""accuracy.md (and the console's table) from a results file alone (`records.Results`).

Every configuration is explained from two parts: what the configuration changes and why that
matters (fixed text, `explanations`), and what was measured (generated from the numbers: the
median and range over seeds, and the verdict of `verdicts`), so the explanations stay true when
the numbers change.
"""

import statistics
from pathlib import Path

import numpy as np

from bench.accuracy import seed_30
from bench.accuracy.configurations import CONFIGURATIONS, SEED_BUGS, STUDIES
from bench.accuracy.explanations import EXPLANATIONS
from bench.accuracy.paper import paper_accuracy
from bench.accuracy.records import Results, Run
from bench.accuracy.result_files import read, stem
from bench.accuracy.verdicts import (
    MARGIN_STANDARD_ERRORS,
    Seeds,
    Verdict,
    by_configuration,
    percent,
    run_margin,
    verdict,
)
from impls.testing import founding_question as question
from impls.testing import readme_blocks
from impls.testing.metadata import hardware, run_time, short_commit


def expected_batch_majority(
    num_classes: int, batch_size: int = question.BATCH_SIZE, draws: int = 100_000, seed: int = 0
) -> float:
    """Mean share of the most frequent class in batches drawn from balanced classes."""
    counts = np.random.default_rng(seed).multinomial(
        batch_size, [1 / num_classes] * num_classes, draws
    )
    return float(counts.max(axis=1).mean() / batch_size)


def frameworks(runs: tuple[Run, ...] | list[Run]) -> list[str]:
    return list(dict.fromkeys(run.framework for run in runs))


def datasets(runs: tuple[Run, ...] | list[Run]) -> list[str]:
    return list(dict.fromkeys(run.dataset for run in runs))


def seeds(runs: tuple[Run, ...] | list[Run]) -> list[int]:
    return list(dict.fromkeys(run.seed for run in runs))


def _configs(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(run.config for run in runs))


def _cell(group: Seeds | None) -> str:
    if group is None:
        return "-"
    return f"{group.accuracy_text()}, {group.verdict}"


def _run_table(runs: list[Run], names: list[str], paper: dict[str, float]) -> list[str]:
    header = ["configuration", *names]
    if paper:
        header.append("paper (VGG-16, 448)")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    groups = by_configuration(runs)
    dataset = runs[0].dataset
    for config in _configs(runs):
        cells = [f"`{config}`"]
        cells += [_cell(groups.get((dataset, framework, config))) for framework in names]
        if paper:
            cells.append(f"{paper[config]:.1f} %" if config in paper else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def console_table(runs: tuple[Run, ...] | list[Run], paper_key: str | None = None) -> str:
    """The results as plain text for the terminal: median accuracy (range) and verdict."""
    lines = []
    for dataset in datasets(runs):
        selected = [run for run in runs if run.dataset == dataset]
        names = frameworks(selected)
        groups = by_configuration(selected)
        paper = paper_accuracy(dataset, paper_key)
        rows = [["configuration", *names, *(["paper"] if paper else [])]]
        for config in _configs(selected):
            row = [config] + [_cell(groups.get((dataset, name, config))) for name in names]
            if paper:
                row.append(f"{paper[config]} %" if config in paper else "")
            rows.append(row)
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines.append(f"{dataset} (chance {percent(selected[0].chance_rate)})")
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _measured(groups: list[Seeds]) -> str:
    """'torch 97.5 %, +83.3 points from chance, learns; tf ...' for one configuration."""
    parts = []
    for group in groups:
        distance = group.points_from_chance()
        parts.append(
            f"{group.key[1]} {group.accuracy_text()}"
            + (f", {distance}" if distance else "")
            + f", {group.verdict}"
        )
    return "; ".join(parts)


def _explanations(runs: list[Run]) -> list[str]:
    lines = []
    groups = by_configuration(runs)
    for config in _configs(runs):
        fixed = EXPLANATIONS.get(
            config, CONFIGURATIONS[config].summary if config in CONFIGURATIONS else ""
        )
        measured = " ".join(
            f"`{dataset}`: "
            + _measured([g for key, g in groups.items() if key[0] == dataset and key[2] == config])
            + "."
            for dataset in datasets(runs)
            if any(key[0] == dataset and key[2] == config for key in groups)
        )
        lines.append(f"- **`{config}`**: {fixed} Measured: {measured}")
    return lines


def _learns_everywhere(runs: list[Run]) -> bool:
    return all(verdict(run) is Verdict.LEARNS for run in runs)


def _ablation_summary(runs: list[Run]) -> str:
    """Which single fixes lift the question's set-up above chance, from the numbers."""
    single_fixes = [c for c in _configs(runs) if c in {f"seed_fix_{bug}" for bug in SEED_BUGS}]
    if not single_fixes:
        return ""
    lifting = [c for c in single_fixes if _learns_everywhere([r for r in runs if r.config == c])]
    if lifting:
        return (
            "Single fixes that make it learn in every framework and seed: "
            + ", ".join(f"`{config}`" for config in lifting)
            + "."
        )
    summary = "No single fix makes it learn in every framework and seed."
    pair = [run for run in runs if run.config == "seed_fix_batch_sum_and_low_lr"]
    if not pair:
        return summary
    groups = by_configuration(pair)
    pair_text = ", ".join(f"{key[1]} {g.accuracy_text()}" for key, g in groups.items())
    if not _learns_everywhere(pair):
        return f"{summary} Even with bugs 1 and 5 fixed together it reaches only {pair_text}."
    either_left = [
        run
        for run in runs
        if run.config in CONFIGURATIONS
        and CONFIGURATIONS[run.config].seed_bugs & {"batch_sum", "low_lr"}
        and not run.diverged
    ]
    highest = max(100 * (run.test_accuracy - run.chance_rate) for run in either_left)
    return (
        f"{summary} With the batch sum (bug 1) and the learning rate (bug 5) fixed together "
        f"(`seed_fix_batch_sum_and_low_lr`) it learns ({pair_text}); with either of them left "
        f"in, no run of the question's set-up gets more than {highest:.1f} points above chance."
    )


def _plateau_paragraph(results: Results) -> list[str]:
    runs = list(results.runs)
    lines = [
        "With the batch-summed outer product every sample of a batch of 16 gets the same "
        "features, so a model can at best answer each batch's most frequent class. For "
        f"{question.NUM_CLASSES} balanced classes that class holds "
        f"{percent(expected_batch_majority(question.NUM_CLASSES))} of a batch of 16 on average "
        "(the batch-majority ceiling). A model that learned only the class prior scores the "
        "majority-class rate instead, close to 30 % if one class holds 30 % of the data. Which of "
        f"the two gives the question's {percent(question.REPORTED_ACCURACY)}, if either, is "
        f"what `reproduce-accuracy --study seed-30` measures (`{stem('seed-30')}.md`).",
    ]
    for dataset in datasets(runs):
        selected = [run for run in runs if run.dataset == dataset]
        seed_runs = [run for run in selected if run.config == "seed"]
        if not seed_runs:
            continue
        ceiling = statistics.median(run.answers.batch_majority_ceiling for run in seed_runs)
        below = all(
            run.answers.batch_majority_ceiling - run.test_accuracy > run_margin(run)
            for run in seed_runs
        )
        where = "below it: it does not learn even the batch majority" if below else "up to it"
        measured = ", ".join(
            f"{key[1]} {g.accuracy_text()}" for key, g in by_configuration(seed_runs).items()
        )
        classes = results.datasets[dataset].num_classes if dataset in results.datasets else "?"
        lines += [
            "",
            f"On `{dataset}` ({classes} classes) the ceiling is {percent(ceiling)} on the test "
            f"batches; `seed` scores {measured}, {where}. {_ablation_summary(selected)}",
        ]
    return lines


def _verdicts_paragraph(results: Results) -> list[str]:
    """What the verdicts mean, the margin of each data set, and the spread over seeds."""
    runs = list(results.runs)
    margins = []
    for dataset in datasets(runs):
        run = next(r for r in runs if r.dataset == dataset)
        margins.append(
            f"{100 * run_margin(run):.1f} points on `{dataset}` ({run.test_samples} test images, "
            f"chance {percent(run.chance_rate)})"
        )
    lines = [
        "Each cell: test accuracy after the last epoch (with several seeds: the median and the "
        "range over seeds) and the verdict. **at chance**: no more than a margin above the chance "
        "rate (the test set's most frequent class), or below it; the margin is "
        f"{MARGIN_STANDARD_ERRORS:.0f} standard errors of a chance-level accuracy on the test set, "
        f"{'; '.join(margins)}. **learns**: above that, answering per sample. **at the "
        "batch-majority ceiling**: above chance while giving one answer for nearly every batch "
        "(all a model that sees one feature vector per batch can learn). **diverged**: a step's "
        "loss or gradient was not finite; the run stops there and has no answers (0 %). Where "
        'seeds disagree, the verdict says so ("diverges in 1 of 3 seeds, at chance in 2").',
        "",
    ]
    groups = list(by_configuration(runs).values())
    count = len(seeds(runs))
    if count == 1:
        lines.append(
            f"One seed ({runs[0].seed}): the spread over seeds is not measured in this run "
            "(`--seeds 3` measures it)."
        )
        return lines
    widest = max(groups, key=lambda g: g.high - g.low)
    spans = [100 * (g.high - g.low) for g in groups]
    mixed = [g for g in groups if g.unanimous is None]
    lines.append(
        f"Spread over {count} seeds ({', '.join(map(str, seeds(runs)))}; each draws its own data "
        "and initial weights): a configuration's test accuracy spans a median of "
        f"{statistics.median(spans):.1f} points and at most {max(spans):.1f} "
        f"(`{widest.key[2]}`, {widest.key[1]}, `{widest.key[0]}`). "
        + (
            "Configurations whose verdict differs between seeds: "
            + "; ".join(f"`{g.key[2]}` ({g.key[1]}, `{g.key[0]}`): {g.verdict}" for g in mixed)
            + "."
            if mixed
            else "Every configuration has the same verdict in every seed."
        )
    )
    return lines


def markdown(results: Results) -> str:
    """The whole of accuracy.md, from the results file alone (drift-tested against the committed
    one: tests/test_readme_blocks.py)."""
    metadata, runs = results.metadata, list(results.runs)
    paper_key = metadata.get("paper_dataset")
    names = frameworks(runs)
    threads = ", ".join(f"{name}: {count}" for name, count in metadata["framework_threads"].items())
    devices = ", ".join(
        f"{name}: {device}" for name, device in metadata["framework_devices"].items()
    )
    model = metadata["model"]
    weights = model["weights"] or "random (seeded)"
    seed_list = ", ".join(map(str, seeds(runs)))
    lines = [
        "# Does the model learn? `reproduce-accuracy`",
        "",
        f"Generated by `{metadata['command']}` on {metadata['date_utc']} (commit "
        f"{short_commit(metadata)}), {devices} ({hardware(metadata)}), CPU threads {threads}, "
        f"backbone `{model['backbone']}` with {weights} weights, recipe `{model['recipe']}`, "
        f"seed{'s' if len(seeds(runs)) > 1 else ''} {seed_list}, {metadata['epochs']} epochs per "
        f"configuration, batch {metadata['batch_size']} ({question.BATCH_SIZE} for the "
        "question's set-up, which hard-codes it). "
        f"Total time {run_time(metadata)}. Learning curves: `{stem(metadata.get('study'))}.png`.",
        "",
        *_verdicts_paragraph(results),
    ]
    for dataset in datasets(runs):
        selected = [run for run in runs if run.dataset == dataset]
        info = results.datasets.get(dataset)
        about = f"{info.description}. " if info else ""
        lines += [
            "",
            f"## `{dataset}`",
            "",
            f"{about}Chance rate {percent(selected[0].chance_rate)}.",
            "",
            *_run_table(selected, names, paper_accuracy(dataset, paper_key)),
        ]
    lines += ["", "## What each number shows", "", *_explanations(runs)]
    if any(run.config == "seed" for run in runs):
        lines += ["", "## The founding question's 30 % plateau", "", *_plateau_paragraph(results)]
    if any(CONFIGURATIONS[run.config].pretrained_by for run in runs):
        lines += ["", "## Where the 30 % comes from: the answers", "", *seed_30.answers(runs)]
    return "\n".join(lines) + "\n"


def _committed(study: str | None) -> readme_blocks.Renderer:
    def render(root: Path) -> str:
        return markdown(read(root / "results" / f"{stem(study)}.json"))

    return render


# The committed documents, rendered from the committed results files.
for _study in (None, *STUDIES):
    readme_blocks.register_document(f"results/{stem(_study)}.md")(_committed(_study))
