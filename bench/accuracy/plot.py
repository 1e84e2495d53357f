"""accuracy.png: test accuracy per epoch, one panel per data set and framework, one colour family
per kind of configuration; with several seeds, the median curve and a band from the lowest to the
highest seed; runs that diverged marked where they diverged."""

import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from matplotlib.ticker import MaxNLocator

from bench.accuracy.configurations import CONFIGURATIONS
from bench.accuracy.markdown import datasets, frameworks, seeds
from bench.accuracy.records import Results, Run
from bench.accuracy.verdicts import Seeds, by_configuration
from impls.testing import founding_question as question
from impls.testing.metadata import short_commit

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
#: Opacity of the band between the lowest and the highest seed.
_BAND_ALPHA = 0.18


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
    """Vertical offset (points) of each configuration's curve: the question's set-up and its
    variants in one panel are spread around their true values, the others stay where they are."""
    offsets: dict[tuple[str, str, str], float] = {}
    for panel in dict.fromkeys((run.dataset, run.framework) for run in runs):
        seed_configs = list(
            dict.fromkeys(
                run.config
                for run in runs
                if (run.dataset, run.framework) == panel
                and CONFIGURATIONS[run.config].head == "seed"
            )
        )
        for rank, config in enumerate(seed_configs):
            offsets[panel + (config,)] = (rank - (len(seed_configs) - 1) / 2) * _SEED_OFFSET_POINTS
    return offsets


def _curves(group: Seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, median, lowest, highest) test accuracy in % at each epoch, over the seeds that
    reached it (a diverged seed stops early)."""
    longest = max(group.runs, key=lambda run: len(run.history))
    epochs = np.array([entry.epoch for entry in longest.history])
    values = [
        [100 * run.history[index].test_accuracy for run in group.runs if len(run.history) > index]
        for index in range(len(epochs))
    ]
    return (
        epochs,
        np.array([np.median(at) for at in values]),
        np.array([min(at) for at in values]),
        np.array([max(at) for at in values]),
    )


def _mark_divergence(axis: Any, group: Seeds, offset: float) -> None:
    diverged = [run for run in group.runs if run.diverged]
    if not diverged:
        return
    first = min(diverged, key=lambda run: len(run.history))
    x, y = first.history[-1].epoch, 100 * first.history[-1].test_accuracy + offset
    axis.plot(x, y, "X", color="red", markersize=10, zorder=5)
    seeds_text = "" if len(group.runs) == 1 else f" in {len(diverged)} of {len(group.runs)} seeds"
    axis.annotate(
        f"{group.key[2]}: diverged{seeds_text}",
        (x, y),
        xytext=(6, 4),
        textcoords="offset points",
        fontsize=7,
        color="red",
    )


def plot(results: Results, path: Path) -> Figure:
    runs = list(results.runs)
    names, dataset_names = frameworks(runs), datasets(runs)
    panel_height = 3.8
    figure = Figure(figsize=(6.0 * len(names), panel_height * len(dataset_names)))
    axes = figure.subplots(len(dataset_names), len(names), squeeze=False, sharey=True)
    legend: dict[str, Any] = {}
    offsets = _offsets(runs)
    for key, group in by_configuration(runs).items():
        dataset, framework, config = key
        axis = axes[dataset_names.index(dataset)][names.index(framework)]
        colour, marker = _style(config)
        offset = offsets.get(key, 0.0)
        epochs, median, low, high = _curves(group)
        (line,) = axis.plot(
            epochs,
            median + offset,
            "--" if CONFIGURATIONS[config].head == "seed" else "-",
            color=colour,
            marker=marker,
            markersize=4,
            linewidth=1.5,
            label=config,
        )
        if len(group.runs) > 1:
            axis.fill_between(
                epochs, low + offset, high + offset, color=colour, alpha=_BAND_ALPHA, linewidth=0
            )
        legend.setdefault(config, line)
        _mark_divergence(axis, group, offset)
    for row, dataset in enumerate(dataset_names):
        selected = [run for run in runs if run.dataset == dataset]
        chance = 100 * selected[0].chance_rate
        seed_runs = [run for run in selected if CONFIGURATIONS[run.config].head == "seed"]
        for column, framework in enumerate(names):
            axis = axes[row][column]
            legend["chance (majority-class rate)"] = axis.axhline(
                chance, color="black", linestyle=":", linewidth=1
            )
            if seed_runs:
                ceiling = 100 * float(
                    np.median([run.answers.batch_majority_ceiling for run in seed_runs])
                )
                legend[f"batch-majority ceiling (batch {question.BATCH_SIZE})"] = axis.axhline(
                    ceiling, color="grey", linestyle="-.", linewidth=1
                )
            axis.set_title(f"{framework}: {dataset}")
            axis.set_xlabel("epoch")
            axis.set_ylabel("test accuracy (%)")
            axis.set_ylim(-2, 104)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
    seed_list = seeds(runs)
    spread = (
        f"median of seeds {', '.join(map(str, seed_list))}, band: lowest to highest seed"
        if len(seed_list) > 1
        else f"seed {seed_list[0]}"
    )
    metadata = results.metadata
    title = (
        f"Test accuracy per epoch: `{metadata['command']}` (commit {short_commit(metadata)}, "
        f"{spread}). The question's set-up and its variants (dashed) are drawn "
        f"{_SEED_OFFSET_POINTS} points apart so that equal curves stay visible; exact numbers in "
        "the .md."
    )
    title = textwrap.fill(title, 60 * len(names))
    figure.suptitle(title, fontsize=9)
    columns = 2 * len(names)
    figure.legend(
        legend.values(), legend.keys(), loc="lower center", ncol=columns, fontsize=8, frameon=False
    )
    # Room in inches for the title's and the legend's lines, beyond the panels.
    title_height = 0.15 + 0.16 * len(title.splitlines())
    legend_height = 0.15 + 0.2 * -(-len(legend) // columns)
    height = panel_height * len(dataset_names) + title_height + legend_height
    figure.set_figheight(height)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))  # it makes room for the title
    figure.savefig(path, dpi=110, format="png")
    return figure
