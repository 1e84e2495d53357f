"""results/accuracy.json, .md and .png from the run records of `training.train`.

The Markdown explains every configuration from two parts: what the configuration changes and
why that matters (fixed text), and what was measured (generated from the numbers), so the
explanations stay true when the numbers change.
"""

import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from matplotlib.ticker import MaxNLocator

from bench.accuracy.configurations import CONFIGURATIONS, SEED_BUGS
from bench.accuracy.data import SYNTHETIC_MEAN, SYNTHETIC_STD, Dataset
from impls.testing import founding_question as question
from impls.testing.metadata import hardware, run_time, short_commit, write_results

#: A test accuracy within this many points of the chance rate counts as "at chance".
AT_CHANCE_POINTS = 5.0

#: The papers' numbers (VGG-16, 448x448; Lin & Maji, BMVC 2017; Li et al., CVPR 2018), in %:
#: improved B-CNN (the IBP head), the original B-CNN (bilinear, no matrix root) and iSQRT-COV.
PAPER_ACCURACY = {
    "cub": {"ibp": 85.8, "bilinear_no_sqrtm": 84.0, "isqrt-cov": 87.2},
    "cars": {"ibp": 92.0, "bilinear_no_sqrtm": 90.6, "isqrt-cov": 92.5},
    "aircraft": {"ibp": 88.5, "bilinear_no_sqrtm": 86.9, "isqrt-cov": 90.0},
}
PAPER_DATASET_NAMES = {"cub": "CUB-200-2011", "cars": "Stanford Cars", "aircraft": "FGVC Aircraft"}

#: Why each configuration's number is what it is, whatever that number turns out to be.
MECHANISMS = {
    "ibp": "The correct head (impls' IBPHead) and the authors' two-stage recipe: the classifier "
    "alone on the frozen backbone (SGD lr 1.0), then everything (Adam, lr 1e-4, classifier 1e-2). "
    "The `synthetic` classes differ exactly in the second-order statistics this head computes.",
    "ibp_frozen": "The same head on the backbone frozen at its seeded random initialisation, "
    "classifier only (the recipe's first stage alone): the question's set-up with every bug fixed "
    "but the frozen backbone. Random 3x3 conv + ReLU features still carry the images' spatial and "
    "cross-channel correlations, so a frozen random backbone is a fair stand-in for the question's "
    "frozen VGG: this is what the question's set-up can reach once its head and learning rate are "
    "right.",
    "seed": "The question's set-up (`examples/seed_question_tf.py`, trained as "
    "`bench/accuracy/seed_model_*.py`). Bug 1 sums "
    "the outer products over the batch, so all 16 samples of a batch get the same feature vector: "
    "per batch the classifier can only give one answer, at best the batch's most frequent class "
    "(the batch-majority ceiling below), and SGD at lr 0.001 on unit-norm features barely moves "
    "its logits.",
    "seed_fix_batch_sum": "Per-sample pooling, the rest of the question kept. The classifier now "
    "sees per-sample features, but SGD at lr 0.001 on vectors of norm 1/4 (the batch-wide L2 "
    "divides by the norm of 16 samples) moves the logits by about lr * ||v||^2 per step.",
    "seed_fix_fourth_root": "A^(1/2) instead of A^(1/4); batch sum and lr 0.001 stay.",
    "seed_fix_eps_ones": "eps * I instead of eps * ones; batch sum and lr 0.001 stay.",
    "seed_fix_batch_l2": "Per-sample L2 instead of one norm for the batch; batch sum and lr 0.001 "
    "stay.",
    "seed_fix_low_lr": "The authors' classifier optimizer (SGD lr 1.0, momentum 0.9) instead of "
    "lr 0.001. The batch sum stays: with one feature vector per batch there is nothing per sample "
    "to learn, whatever the learning rate.",
    "seed_fix_frozen_backbone": "Everything trains (still SGD lr 0.001), so gradients now flow "
    "through the question's SVD root (bug 6). torch's SVD gradient divides by differences of "
    "singular values, so equal ones (dead ReLU channels of the random backbone give them) make it "
    "NaN. TensorFlow's SVD gradient drops the terms of equal singular values, but its SVD of these "
    "nearly singular matrices can fail to converge (Eigen's BDCSVD then logs error code 3 and "
    "returns NaN); where it converges, the batch sum and lr 0.001 remain and the run stays at "
    "chance.",
    "seed_fix_batch_sum_and_low_lr": "Bugs 1 and 5 fixed together: per-sample pooling and the "
    "authors' classifier optimizer. The fourth root, eps * ones and the batch-wide L2 stay; the "
    "distance to `ibp_frozen` is what they cost.",
    "seed_pretrained": "The question's set-up on a frozen backbone that the correct model "
    "(`ibp`) trained on this data set first: a stand-in for the question's ImageNet VGG-16, whose "
    "features already separate classes. Still batch sum and SGD at lr 0.001: does a useful "
    "backbone let the question's head reach its 30 %?",
    "seed_pretrained_fix_low_lr": "`seed_pretrained` at the authors' classifier rate (SGD lr "
    "1.0, momentum 0.9). The batch sum stays, so the classifier still sees one vector per batch; "
    "but that vector is the root of a sum of covariances of features that separate the classes, "
    "so a fast classifier could learn to answer the batch's dominant class from it: the answers "
    "below show whether it does.",
    "first_order": "Global average pooling instead of bilinear pooling, same recipe as ibp. This "
    "is first-order in the backbone's features, not in the pixels: the mean of ReLU(w . x) grows "
    "with the variance w^T S w of the filter response, a second-order statistic of the image, so "
    "a ReLU network with average pooling can learn textures too. The pixels' own first-order "
    "statistics are the same for every `synthetic` image (each channel has mean "
    f"{SYNTHETIC_MEAN} and standard deviation {SYNTHETIC_STD}, tested), so a classifier on them "
    "is at chance by construction.",
    "bilinear_no_sqrtm": "The original B-CNN (bilinear pooling, signed sqrt, L2, no matrix square "
    "root), same recipe as ibp: what the matrix root adds.",
}


#: One run's record, as training.train returns it and the results file holds it.
Run = dict[str, Any]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def batch_majority_ceiling(labels: np.ndarray, batch_size: int = question.BATCH_SIZE) -> float:
    """Best accuracy of a model that gives one answer per batch of consecutive test samples."""
    full = len(labels) - len(labels) % batch_size
    batches = np.asarray(labels[:full]).reshape(-1, batch_size)
    return float(np.mean([np.bincount(batch).max() / batch_size for batch in batches]))


def expected_batch_majority(
    num_classes: int, batch_size: int = question.BATCH_SIZE, draws: int = 100_000, seed: int = 0
) -> float:
    """Mean share of the most frequent class in batches drawn from balanced classes."""
    counts = np.random.default_rng(seed).multinomial(
        batch_size, [1 / num_classes] * num_classes, draws
    )
    return float(counts.max(axis=1).mean() / batch_size)


def verdict(run: Run) -> str:
    """One phrase on a run's number: diverged, at chance, or how far above chance."""
    if run["diverged_at_epoch"] is not None:
        return f"diverged (NaN loss in epoch {run['diverged_at_epoch']}): no right answers"
    points = 100 * (run["test_accuracy"] - run["chance_rate"])
    if abs(points) <= AT_CHANCE_POINTS:
        return "at chance"
    return f"{points:+.1f} points from chance"


def paper_dataset_key(dataset_name: str, override: str | None = None) -> str | None:
    if override:
        return override
    name = dataset_name.lower()
    for key, hints in {
        "cub": ("cub", "bird"),
        "cars": ("car",),
        "aircraft": ("aircraft", "fgvc"),
    }.items():
        if any(hint in name for hint in hints):
            return key
    return None


def _frameworks(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(run["framework"] for run in runs))


def _datasets(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(run["dataset"] for run in runs))


def _run_table(runs: list[Run], frameworks: list[str], paper: dict[str, float]) -> list[str]:
    header = ["configuration", *frameworks]
    if paper:
        header.append("paper (VGG-16, 448)")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    by_key = {(run["config"], run["framework"]): run for run in runs}
    for config in dict.fromkeys(run["config"] for run in runs):
        cells = [f"`{config}`"]
        for framework in frameworks:
            run = by_key.get((config, framework))
            mark = " (diverged)" if run and run["diverged_at_epoch"] is not None else ""
            cells.append(_percent(run["test_accuracy"] if run else None) + mark)
        if paper:
            cells.append(f"{paper[config]:.1f} %" if config in paper else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def console_table(runs: list[Run], paper_key: str | None = None) -> str:
    """The results as plain text for the terminal."""
    lines = []
    for dataset in _datasets(runs):
        selected = [run for run in runs if run["dataset"] == dataset]
        frameworks = _frameworks(selected)
        paper = PAPER_ACCURACY.get(paper_dataset_key(dataset, paper_key) or "", {})
        lines.append(f"{dataset} (chance {_percent(selected[0]['chance_rate'])})")
        lines.append(
            f"{'configuration':32}"
            + "".join(f"{f:>12}" for f in frameworks)
            + (f"{'paper':>10}" if paper else "")
        )
        by_key = {(run["config"], run["framework"]): run for run in selected}
        for config in dict.fromkeys(run["config"] for run in selected):
            row = f"{config:32}"
            for framework in frameworks:
                run = by_key.get((config, framework))
                row += f"{_percent(run['test_accuracy'] if run else None):>12}"
            if paper:
                row += f"{(str(paper[config]) + ' %') if config in paper else '':>10}"
            lines.append(row)
    return "\n".join(lines)


def _measured(runs: list[Run], frameworks: list[str]) -> str:
    """ "torch 97.5 %, +83.3 points from chance; tf ..." for the runs of one configuration."""
    by_framework = {run["framework"]: run for run in runs}
    return "; ".join(
        f"{framework} {_percent(by_framework[framework]['test_accuracy'])}, "
        f"{verdict(by_framework[framework])}"
        for framework in frameworks
        if framework in by_framework
    )


def _explanations(runs: list[Run], frameworks: list[str]) -> list[str]:
    lines = []
    datasets = _datasets(runs)
    for config in dict.fromkeys(run["config"] for run in runs):
        mechanism = MECHANISMS.get(
            config, CONFIGURATIONS[config].summary if config in CONFIGURATIONS else ""
        )
        measured = " ".join(
            f"`{dataset}`: "
            + _measured(
                [r for r in runs if (r["config"], r["dataset"]) == (config, dataset)], frameworks
            )
            + "."
            for dataset in datasets
            if any((r["config"], r["dataset"]) == (config, dataset) for r in runs)
        )
        lines.append(f"- **`{config}`**: {mechanism} Measured: {measured}")
    return lines


def _above_chance(run: Run) -> bool:
    points = 100 * (run["test_accuracy"] - run["chance_rate"])
    return run["diverged_at_epoch"] is None and points > AT_CHANCE_POINTS


def _ablation_summary(runs: list[Run]) -> str:
    """Which single fixes lift the question's set-up above chance, from the numbers."""
    single_fixes = {
        run["config"] for run in runs if run["config"] in {f"seed_fix_{bug}" for bug in SEED_BUGS}
    }
    if not single_fixes:
        return ""
    lifting = sorted(
        config
        for config in single_fixes
        if all(_above_chance(run) for run in runs if run["config"] == config)
    )
    if lifting:
        return (
            "Single fixes that lift it above chance in every framework: "
            + ", ".join(f"`{config}`" for config in lifting)
            + "."
        )
    summary = "No single fix lifts it above chance in every framework."
    pair = [run for run in runs if run["config"] == "seed_fix_batch_sum_and_low_lr"]
    if not pair:
        return summary
    pair_text = ", ".join(f"{run['framework']} {_percent(run['test_accuracy'])}" for run in pair)
    if not all(_above_chance(run) for run in pair):
        return f"{summary} Even with bugs 1 and 5 fixed together it reaches only {pair_text}."
    either_left = [
        run
        for run in runs
        if run["config"] in CONFIGURATIONS
        and CONFIGURATIONS[run["config"]].seed_bugs & {"batch_sum", "low_lr"}
    ]
    highest = max(100 * (run["test_accuracy"] - run["chance_rate"]) for run in either_left)
    return (
        f"{summary} With the batch sum (bug 1) and the learning rate (bug 5) fixed together "
        f"(`seed_fix_batch_sum_and_low_lr`) it learns ({pair_text}); with either of them left "
        f"in, no run of the question's set-up gets more than {highest:.1f} points above chance."
    )


def _plateau_paragraph(runs: list[Run], datasets: list[Dataset]) -> list[str]:
    lines = [
        "With the batch-summed outer product every sample of a batch of 16 gets the same "
        "features, so a model can at best answer each batch's most frequent class. For "
        f"{question.NUM_CLASSES} balanced classes that class holds "
        f"{_percent(expected_batch_majority(question.NUM_CLASSES))} of a batch of 16 on average "
        "(the batch-majority ceiling). A model that learned only the class prior scores the "
        "majority-class rate instead, close to 30 % if one class holds 30 % of the data. Which of "
        f"the two gives the question's {_percent(question.REPORTED_ACCURACY)}, if either, is "
        f"what `reproduce-accuracy --study seed-30` measures (`{stem('seed-30')}.md`).",
    ]
    for dataset in datasets:
        selected = [run for run in runs if run["dataset"] == dataset.name]
        seed_runs = [run for run in selected if run["config"] == "seed"]
        if not seed_runs:
            continue
        ceiling = batch_majority_ceiling(dataset.test.labels)
        below = all(100 * (ceiling - run["test_accuracy"]) > AT_CHANCE_POINTS for run in seed_runs)
        where = "below it: it does not learn even the batch majority" if below else "up to it"
        measured = ", ".join(f"{r['framework']} {_percent(r['test_accuracy'])}" for r in seed_runs)
        lines += [
            "",
            f"On `{dataset.name}` ({dataset.num_classes} classes) the ceiling is "
            f"{_percent(ceiling)} on the test batches; `seed` scores {measured}, {where}. "
            f"{_ablation_summary(selected)}",
        ]
    return lines


def markdown(
    metadata: dict[str, Any],
    runs: list[Run],
    datasets: list[Dataset],
    paper_key: str | None = None,
) -> str:
    frameworks = _frameworks(runs)
    threads = ", ".join(f"{name}: {count}" for name, count in metadata["framework_threads"].items())
    devices = ", ".join(
        f"{name}: {device}" for name, device in metadata["framework_devices"].items()
    )
    model = metadata["model"]
    weights = model["weights"] or "random (seeded)"
    lines = [
        "# Does the model learn? `reproduce-accuracy`",
        "",
        f"Generated by `{metadata['command']}` on {metadata['date_utc']} (commit "
        f"{short_commit(metadata)}), {devices} ({hardware(metadata)}), CPU threads {threads}, "
        "backbone "
        f"`{model['backbone']}` with {weights} weights, recipe `{model['recipe']}`, seed "
        f"{metadata['seed']}, {metadata['epochs']} epochs per configuration, batch "
        f"{metadata['batch_size']} ({question.BATCH_SIZE} for the question's set-up, which "
        "hard-codes it). "
        f"Total time {run_time(metadata)}. Test accuracy after the last "
        f'epoch; "at chance" means within {AT_CHANCE_POINTS:.0f} points of the chance rate (the '
        "test set's most frequent class). Learning curves: "
        f"`{stem(metadata.get('study'))}.png`.",
    ]
    for dataset in datasets:
        selected = [run for run in runs if run["dataset"] == dataset.name]
        paper = PAPER_ACCURACY.get(paper_dataset_key(dataset.name, paper_key) or "", {})
        lines += [
            "",
            f"## `{dataset.name}`",
            "",
            f"{dataset.description}. Chance rate {_percent(dataset.chance_rate)}.",
            "",
            *_run_table(selected, frameworks, paper),
        ]
    lines += ["", "## What each number shows", "", *_explanations(runs, frameworks)]
    if any(run["config"] == "seed" for run in runs):
        lines += [
            "",
            "## The founding question's 30 % plateau",
            "",
            *_plateau_paragraph(runs, datasets),
        ]
    if any(CONFIGURATIONS[run["config"]].pretrained_by for run in runs):
        lines += ["", "## Where the 30 % comes from: the answers", "", *_study(runs)]
    return "\n".join(lines) + "\n"


#: Shares of answers above which a run's answers count as following a rule (one per batch, the
#: majority class): 9 in 10.
MOSTLY = 0.9
#: One answer per batch agrees with the batch's majority class for about 1/K of K balanced
#: classes by luck; a model that answers it for half of the samples or more has learned it.
FOLLOWS = 0.5


def mechanism(run: Run) -> str:
    """What a run's answers show (training.answer_statistics), in words."""
    answers = run["answers"]
    if run["diverged_at_epoch"] is not None:
        return "diverged"
    if answers["majority_class_answers"] >= MOSTLY:
        return "answers the majority class for (almost) every sample: the class prior"
    if answers["unanimous_batches"] >= MOSTLY:
        if answers["batch_majority_answers"] >= FOLLOWS:
            return (
                "one answer per batch, mostly the batch's majority class: the batch-majority "
                "ceiling"
            )
        return "one answer per batch, unrelated to the batch's majority class"
    return "answers per sample"


def _learned(run: Run) -> str:
    before = run["initial_answers"]["majority_class_answers"]
    after = run["answers"]["majority_class_answers"]
    return ", so training taught it that" if after >= MOSTLY > before else ""


def _study(runs: list[Run]) -> list[str]:
    """The answers of every run as a table, and which configuration plateaus near the
    question's 30 % and why, from the numbers."""
    reported = question.REPORTED_ACCURACY
    lines = [
        "Every sample of a batch gets the same answer when the model sees one feature vector per "
        "batch (the batch sum): then its best is one answer per batch, the batch's most frequent "
        "class, and its accuracy is bounded by the batch-majority ceiling. A model that learned "
        "only the class prior answers the majority class and scores the majority-class rate. "
        "The answers on the test batches tell the two apart:",
        "",
        "| data set | framework | configuration | test accuracy | batches with one answer "
        "| answers = batch's majority | answers = majority class (before training) "
        "| batch-majority ceiling | majority-class rate | what the answers show |",
        "|" + " --- |" * 10,
    ]
    for run in runs:
        answers, initial = run["answers"], run.get("initial_answers")
        before = f" ({_percent(initial['majority_class_answers'])})" if initial else ""
        lines.append(
            f"| `{run['dataset']}` | {run['framework']} | `{run['config']}` | "
            f"{_percent(run['test_accuracy'])} | {_percent(answers['unanimous_batches'])} | "
            f"{_percent(answers['batch_majority_answers'])} | "
            f"{_percent(answers['majority_class_answers'])}{before} | "
            f"{_percent(answers['batch_majority_ceiling'])} | {_percent(run['chance_rate'])} | "
            f"{mechanism(run)} |"
        )
    seed_runs = [run for run in runs if CONFIGURATIONS[run["config"]].head == "seed"]
    lines.append("")
    for dataset in _datasets(seed_runs):
        selected = [run for run in seed_runs if run["dataset"] == dataset]
        best = max(selected, key=lambda run: run["answers"]["batch_majority_answers"])
        lines.append(
            f"On `{dataset}` the question's set-up answers the batch's majority class for at most "
            f"{_percent(best['answers']['batch_majority_answers'])} of the samples "
            f"(`{best['config']}`, {best['framework']}); its best accuracy is "
            f"{_percent(max(run['test_accuracy'] for run in selected))} against a batch-majority "
            f"ceiling of {_percent(best['answers']['batch_majority_ceiling'])} and a "
            f"majority-class rate of {_percent(best['chance_rate'])}."
        )
    near = [
        run for run in seed_runs if abs(100 * (run["test_accuracy"] - reported)) <= AT_CHANCE_POINTS
    ]
    lines.append("")
    if not near:
        lines.append(
            f"No run of the question's set-up ends within {AT_CHANCE_POINTS:.0f} points of the "
            f"question's {_percent(reported)}."
        )
        return lines
    lines.append(
        f"Runs of the question's set-up within {AT_CHANCE_POINTS:.0f} points of its "
        f"{_percent(reported)}:"
    )
    lines += [
        f"- `{run['config']}` on `{run['dataset']}` ({run['framework']}): "
        f"{_percent(run['test_accuracy'])}; it {mechanism(run)} (ceiling "
        f"{_percent(run['answers']['batch_majority_ceiling'])}, majority-class rate "
        f"{_percent(run['chance_rate'])}; before training "
        f"{_percent(run['initial_answers']['majority_class_answers'])} of its answers were the "
        f"majority class{_learned(run)})."
        for run in near
    ]
    return lines


#: One colour map per family of configurations; its members take shades of it, in
#: CONFIGURATIONS' order, the same in every panel and report.
_FAMILY_COLOURS = {
    "ibp": "Blues",
    "question's set-up": "Oranges",
    "question's set-up, pretrained backbone": "Purples",
    "baselines": "Greens",
}
_MARKERS = "osD^vP*Xh<>"
#: The question's set-up and its ablations often give the same numbers; their curves are drawn
#: this many points apart (in CONFIGURATIONS' order) so that none hides another.
_SEED_OFFSET_POINTS = 0.6


def family(config: str) -> str:
    configuration = CONFIGURATIONS[config]
    if configuration.pretrained_by:
        return "question's set-up, pretrained backbone"
    if configuration.head == "seed":
        return "question's set-up"
    return "ibp" if configuration.head == "ibp" else "baselines"


def _style(config: str) -> tuple[Any, str]:
    """(colour, marker) of a configuration's curves."""
    members = [name for name in CONFIGURATIONS if family(name) == family(config)]
    rank = members.index(config)
    shade = 0.95 - 0.4 * rank / max(1, len(members) - 1)
    colour = matplotlib.colormaps[_FAMILY_COLOURS[family(config)]](shade)
    return colour, _MARKERS[rank % len(_MARKERS)]


def _offsets(runs: list[Run]) -> dict[tuple[str, str, str], float]:
    """Vertical offset (points) of each run's curve: the question's set-up and its variants in
    one panel are spread around their true values, the others stay where they are."""
    offsets: dict[tuple[str, str, str], float] = {}
    for panel in {(run["dataset"], run["framework"]) for run in runs}:
        seeds = [
            run["config"]
            for run in runs
            if (run["dataset"], run["framework"]) == panel
            and CONFIGURATIONS[run["config"]].head == "seed"
        ]
        for rank, config in enumerate(seeds):
            offsets[panel + (config,)] = (rank - (len(seeds) - 1) / 2) * _SEED_OFFSET_POINTS
    return offsets


def plot(runs: list[Run], path: Path, metadata: dict[str, Any]) -> Figure:
    """Test accuracy per epoch: one panel per data set and framework, one colour family per kind
    of configuration, diverged runs marked where they diverged."""
    datasets, frameworks = _datasets(runs), _frameworks(runs)
    panel_height = 3.8
    figure = Figure(figsize=(6.0 * len(frameworks), panel_height * len(datasets)))
    axes = figure.subplots(len(datasets), len(frameworks), squeeze=False, sharey=True)
    legend: dict[str, Any] = {}
    offsets = _offsets(runs)
    for run in runs:
        axis = axes[datasets.index(run["dataset"])][frameworks.index(run["framework"])]
        colour, marker = _style(run["config"])
        offset = offsets.get((run["dataset"], run["framework"], run["config"]), 0.0)
        epochs = [entry["epoch"] for entry in run["history"]]
        (line,) = axis.plot(
            epochs,
            [100 * entry["test_accuracy"] + offset for entry in run["history"]],
            "--" if CONFIGURATIONS[run["config"]].head == "seed" else "-",
            color=colour,
            marker=marker,
            markersize=4,
            linewidth=1.5,
            label=run["config"],
        )
        legend.setdefault(run["config"], line)
        if run["diverged_at_epoch"] is not None:
            x, y = epochs[-1], 100 * run["history"][-1]["test_accuracy"] + offset
            axis.plot(x, y, "X", color="red", markersize=10, zorder=5)
            axis.annotate(
                f"{run['config']}: diverged (NaN loss)",
                (x, y),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=7,
                color="red",
            )
    for row, dataset in enumerate(datasets):
        selected = [run for run in runs if run["dataset"] == dataset]
        chance = 100 * selected[0]["chance_rate"]
        seeds = [run for run in selected if CONFIGURATIONS[run["config"]].head == "seed"]
        for column, framework in enumerate(frameworks):
            axis = axes[row][column]
            legend["chance (majority-class rate)"] = axis.axhline(
                chance, color="black", linestyle=":", linewidth=1
            )
            if seeds:
                ceiling = 100 * seeds[0]["answers"]["batch_majority_ceiling"]
                legend[f"batch-majority ceiling (batch {question.BATCH_SIZE})"] = axis.axhline(
                    ceiling, color="grey", linestyle="-.", linewidth=1
                )
            axis.set_title(f"{framework}: {dataset}")
            axis.set_xlabel("epoch")
            axis.set_ylabel("test accuracy (%)")
            axis.set_ylim(-2, 104)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
    title = (
        f"Test accuracy per epoch: `{metadata['command']}` (commit {short_commit(metadata)}, seed "
        f"{metadata['seed']}). The question's set-up and its variants (dashed) are drawn "
        f"{_SEED_OFFSET_POINTS} points apart so that equal curves stay visible; exact numbers in "
        "the .md."
    )
    title = textwrap.fill(title, 60 * len(frameworks))
    figure.suptitle(title, fontsize=9)
    columns = 2 * len(frameworks)
    figure.legend(
        legend.values(), legend.keys(), loc="lower center", ncol=columns, fontsize=8, frameon=False
    )
    # Room in inches for the title's and the legend's lines, beyond the panels.
    title_height = 0.15 + 0.16 * len(title.splitlines())
    legend_height = 0.15 + 0.2 * -(-len(legend) // columns)
    height = panel_height * len(datasets) + title_height + legend_height
    figure.set_figheight(height)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))  # it makes room for the title
    figure.savefig(path, dpi=110, format="png")
    return figure


def stem(study: str | None = None) -> str:
    """The result files' name without suffix: one set for the default run, one per study."""
    return f"accuracy-{study}" if study else "accuracy"


def result_files(study: str | None = None) -> tuple[str, ...]:
    return tuple(f"{stem(study)}.{suffix}" for suffix in ("json", "md", "png"))


def check_writable(output_dir: Path) -> None:
    """Create `output_dir` and write a probe file there, so that a folder that cannot take the
    results is found before hours of training, not after. Raises OSError."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".probe-"):
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(
    output_dir: Path,
    metadata: dict[str, Any],
    runs: list[Run],
    datasets: list[Dataset],
    paper_key: str | None = None,
) -> None:
    """Write the result files (json, md, png) all or nothing: each goes to a temporary file
    beside its final name, and only once all three are complete do they replace the old set (a
    rename within one folder is atomic), so a failure leaves the previous results whole."""
    output_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        "json": lambda path: write_results(path, metadata, runs=runs),
        "md": lambda path: path.write_text(markdown(metadata, runs, datasets, paper_key)),
        "png": lambda path: plot(runs, path, metadata),
    }
    names = dict(zip(writers, result_files(metadata.get("study")), strict=True))
    temporary = {}
    try:
        for suffix, name in names.items():
            handle, temp_name = tempfile.mkstemp(dir=output_dir, prefix=f".{name}.", suffix=".tmp")
            # mkstemp makes the file private (0600); results are shared like any file written
            # with open(): the mode the user's umask gives.
            os.fchmod(handle, 0o666 & ~_umask())
            os.close(handle)
            temporary[name] = Path(temp_name)
            writers[suffix](temporary[name])
        for name, path in temporary.items():
            os.replace(path, output_dir / name)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
