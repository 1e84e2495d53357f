"""Verdicts that do not depend on a seed or a CPU: the margin from the test set's size, verdicts
over several seeds, a divergence found by its gradient whatever the loss shows, and the
comparison with the committed results (reported, and exit status 1 under --fail-on-difference)."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import reproduce_accuracy
from bench.accuracy.comparison import compare
from bench.accuracy.configurations import CONFIGURATIONS
from bench.accuracy.data import Split, synthetic
from bench.accuracy.distributed import World
from bench.accuracy.interface import StepResult, TrainingOptions
from bench.accuracy.markdown import markdown
from bench.accuracy.plan import Plan, make_runners, model_options
from bench.accuracy.records import Answers, DatasetInfo, Epoch, Results, Run
from bench.accuracy.training import RunCache, _train_epoch, train
from bench.accuracy.verdicts import Seeds, Verdict, describe, margin, verdict
from impls.testing.metadata import collect, write_results

from .conftest import import_framework


def _run(config="ibp", accuracy=0.9, seed=0, diverged=None, unanimous=0.0, framework="torch"):
    loss = None if diverged else 1.0
    return Run(
        framework=framework, dataset="synthetic", config=config, seed=seed,
        test_accuracy=accuracy, chance_rate=1 / 7, test_samples=448, batch_size=16, epochs=1,
        diverged_at_epoch=diverged, seconds=0.1, answers=Answers(unanimous, 0.5, 0.0, 0.28),
        initial_answers=None, history=(Epoch(1, "recipe_1", loss, 0.5, accuracy),),
    )  # fmt: skip


def test_the_margin_is_three_standard_errors_of_chance_on_the_test_set():
    # The default test sets: synthetic 7 x 64 images, skimage-textures 3 x 64.
    assert 100 * margin(1 / 7, 448) == pytest.approx(4.96, abs=0.01)
    assert 100 * margin(1 / 3, 192) == pytest.approx(10.21, abs=0.01)
    # Four times the samples, half the margin.
    assert margin(0.25, 400) == pytest.approx(2 * margin(0.25, 1600))


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (_run(accuracy=1 / 7 + 0.049), Verdict.AT_CHANCE),  # within the margin above chance
        (_run(accuracy=0.05), Verdict.AT_CHANCE),  # below chance learns nothing either
        (_run(accuracy=1 / 7 + 0.051), Verdict.LEARNS),
        (_run(accuracy=0.27, unanimous=1.0), Verdict.CEILING),  # one answer per batch
        (_run(accuracy=1 / 7, unanimous=1.0), Verdict.AT_CHANCE),
        (_run(accuracy=0.0, diverged=1), Verdict.DIVERGED),
    ],
    ids=["just within", "below", "just beyond", "ceiling", "unanimous at chance", "diverged"],
)
def test_verdicts(run, expected):
    assert verdict(run) is expected


def test_seeds_that_disagree_are_reported_as_such():
    assert describe([Verdict.LEARNS] * 3) == "learns"
    mixed = [Verdict.AT_CHANCE, Verdict.DIVERGED, Verdict.AT_CHANCE]
    assert describe(mixed) == "diverges in 1 of 3 seeds, at chance in 2"
    group = Seeds((_run(accuracy=0.9), _run(accuracy=0.95, seed=1), _run(accuracy=0.1, seed=2)))
    assert group.verdict == "learns in 2 of 3 seeds, at chance in 1"
    assert group.accuracy_text() == "90.0 % (10.0-95.0 %)"


def test_the_markdown_states_the_margin_and_the_spread():
    runs = [_run(accuracy=a, seed=s) for s, a in enumerate((0.9, 0.95, 0.93))]
    runs += [_run("seed", 1 / 7, 0), _run("seed", 0.0, 1, diverged=1), _run("seed", 1 / 7, 2)]
    envelope = {
        "command": "reproduce-accuracy --seeds 3", "date_utc": "2026-01-01", "git_commit": "0" * 40,
        "framework_threads": {"torch": 1}, "framework_devices": {"torch": "cpu"},
        "cpu_model": "x", "threads": {"os_cpu_count": 2}, "wall_seconds": 60.0,
        "model": {"backbone": "small", "weights": None, "recipe": "default"},
        "epochs": 1, "batch_size": 16,
    }  # fmt: skip
    text = markdown(Results(envelope, tuple(runs), {"synthetic": DatasetInfo("textures", 7)}))
    assert "5.0 points on `synthetic` (448 test images, chance 14.3 %)" in text
    assert "| `ibp` | 93.0 % (90.0-95.0 %), learns |" in text
    assert "| `seed` | 14.3 % (0.0-14.3 %), diverges in 1 of 3 seeds, at chance in 2 |" in text
    assert "spans a median of" in text and "at most 14.3 (`seed`, torch, `synthetic`)" in text


class _OneProcess:
    world = World()

    def local_part(self, indices):
        return indices

    def train_batches(self, split, batches, seed, epoch, features=None):
        return ((indices, split.labels[indices]) for indices in batches)


class _Bar:
    def update(self):
        pass


@pytest.mark.parametrize(
    ("results", "diverged"),
    [
        ([StepResult(2.0, 1, True)] * 3, False),
        ([StepResult(2.0, 1, True), StepResult(2.0, 1, False), StepResult(2.0, 1, True)], True),
        ([StepResult(2.0, 1, True), StepResult(math.nan, 0, True)], True),
    ],
    ids=["finite", "finite loss, NaN gradient", "NaN loss"],
)
def test_an_epoch_diverges_at_a_non_finite_gradient_whatever_the_loss(results, diverged):
    """TensorFlow's fused convolution + ReLU kernels turn NaN weights into finite features: the
    loss alone does not show a divergence there."""
    split = Split(np.zeros((6, 1, 1, 3), np.float32), np.zeros(6, np.int64))
    steps = iter(results)
    epoch = _train_epoch(
        lambda *_: next(steps), _OneProcess(), split, [np.arange(2)] * 3, None, 0, 0, _Bar()
    )
    assert epoch.diverged is diverged
    assert math.isnan(epoch.loss) is diverged


def test_the_question_set_up_with_its_backbone_training_diverges_in_epoch_1(backend):
    """The dead ReLU channels' identical rows: NaN gradients in the first step in both frameworks
    (explanations.py says why), recorded as diverged with no answers on every machine."""
    runner = make_runners(Plan((backend.name,), ("synthetic",), None, (0,), 1, 16, device="cpu"))[0]
    dataset = synthetic(0, 32, 16)
    options = TrainingOptions(epochs=2, batch_size=16, seed=0)
    configuration = CONFIGURATIONS["seed_fix_frozen_backbone"]
    record = train(runner, configuration, dataset, options, model_options(), RunCache())
    assert (record.diverged_at_epoch, record.test_accuracy, record.epochs) == (1, 0.0, 1)
    assert verdict(record) is Verdict.DIVERGED


# The comparison with the committed results -----------------------------------------------------

QUICK = ["--quick", "--framework", "torch", "--dataset", "synthetic", "--config", "ibp", "seed"]


def _fake_training(monkeypatch, accuracies):
    """reproduce_accuracy.run returns runs with these accuracies instead of training."""

    def run(plan, runners, datasets, progress):
        runs = [
            _run(config, accuracy, unanimous=1.0 if config == "seed" else 0.0)
            for config, accuracy in accuracies.items()
        ]
        return runs, 0.1

    monkeypatch.setattr(reproduce_accuracy, "run", run)


def _committed(tmp_path, runs, arguments=QUICK):
    """A results file as reproduce-accuracy would have written it for `arguments`."""
    plan = reproduce_accuracy.make_plan(reproduce_accuracy.parse_args(arguments))
    envelope = collect("cpu", "reproduce-accuracy", **reproduce_accuracy.settings(plan))
    path = tmp_path / "committed.json"
    write_results(path, envelope, **Results(envelope, tuple(runs)).payload())
    return path


def _main(capsys, tmp_path, committed, *extra):
    import_framework("torch")
    arguments = [*QUICK, "--no-progress", "--output-dir", str(tmp_path / "out")]
    try:
        status = reproduce_accuracy.main([*arguments, "--compare-with", str(committed), *extra])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr()


COMMITTED_SEEDS = [_run("ibp", a, s) for s, a in enumerate((0.90, 0.97, 0.93))] + [
    _run("seed", 1 / 7, 0, unanimous=1.0),
    _run("seed", 0.0, 1, diverged=1),
    _run("seed", 0.15, 2, unanimous=1.0),
]


def test_a_run_within_the_committed_verdicts_is_reproduced(capsys, tmp_path, monkeypatch):
    _fake_training(monkeypatch, {"ibp": 0.99, "seed": 1 / 7})
    committed = _committed(tmp_path, COMMITTED_SEEDS)
    status, output = _main(capsys, tmp_path, committed, "--fail-on-difference")
    assert status == 0, output.err
    assert f"reproduced 2 of 2 committed verdicts ({committed})" in output.out
    # 99 % is above the committed 90-97 %: reported, but the verdict is the same.
    assert "same verdict, accuracy outside the committed range" in output.out
    assert "torch `ibp` on synthetic: 99.0 %, learns; committed 90.0 % to 97.0 %" in output.out


def test_a_verdict_outside_the_committed_ones_is_reported_and_fails_under_the_option(
    capsys, tmp_path, monkeypatch
):
    _fake_training(monkeypatch, {"ibp": 0.10, "seed": 1 / 7})
    committed = _committed(tmp_path, COMMITTED_SEEDS)
    status, output = _main(capsys, tmp_path, committed)
    assert status == 0
    lines = output.out.splitlines()
    assert f"reproduced 1 of 2 committed verdicts ({committed})" in lines
    assert (
        "  torch `ibp` on synthetic: 10.0 %, at chance; committed 90.0 % to 97.0 % over 3 seeds, "
        "learns"
    ) in lines
    status, output = _main(capsys, tmp_path, committed, "--fail-on-difference")
    assert status == 1
    assert (tmp_path / "out" / "accuracy.json").is_file()  # the results are written all the same


def test_fail_on_difference_needs_comparable_results_before_training(capsys, tmp_path, monkeypatch):
    def refuse(*arguments):
        raise AssertionError("training started")

    monkeypatch.setattr(reproduce_accuracy, "run", refuse)
    other = _committed(tmp_path, COMMITTED_SEEDS, [*QUICK, "--epochs", "7"])
    status, output = _main(capsys, tmp_path, other, "--fail-on-difference")
    assert status == 2
    assert "was made with other settings, --epochs 7 (this run: 4)" in output.err
    missing = tmp_path / "nowhere.json"
    status, output = _main(capsys, tmp_path, missing, "--fail-on-difference")
    assert status == 2 and f"{missing}: no such file" in output.err
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"ibp_metadata": {}, "runs": [{"config": "ibp"}]')
    status, output = _main(capsys, tmp_path, damaged)
    assert status == 2 and f"{damaged}: not results of reproduce-accuracy" in output.err


def test_a_comparison_of_several_seeds_against_several_seeds():
    """Every seed of a run must get a verdict that some committed seed got."""
    committed = Results({}, tuple(COMMITTED_SEEDS))
    same = compare(Results({}, tuple(COMMITTED_SEEDS)), committed, Path("committed.json"))
    assert same.reproduced and same.compared == 2 and not same.accuracies
    one_learns = [
        *COMMITTED_SEEDS[:5],
        replace(COMMITTED_SEEDS[5], test_accuracy=0.5, answers=_run().answers),
    ]
    differs = compare(Results({}, tuple(one_learns)), committed, Path("committed.json"))
    assert [d.fresh.key[2] for d in differs.verdicts] == ["seed"]


def test_a_configuration_the_committed_results_lack_is_not_a_reproduced_verdict(
    capsys, tmp_path, monkeypatch
):
    """Compared with a file that has none of a configuration's runs, the run says so; under
    --fail-on-difference that is found before training (a CI comparing with the wrong file
    must not pass on nothing compared)."""
    _fake_training(monkeypatch, {"ibp": 0.95, "seed": 1 / 7})
    committed = _committed(tmp_path, [run for run in COMMITTED_SEEDS if run.config == "ibp"])
    status, output = _main(capsys, tmp_path, committed)
    assert status == 0, output.err
    lines = output.out.splitlines()
    assert f"reproduced 1 of 1 committed verdicts ({committed})" in lines
    assert f"not in {committed}, so not compared:" in lines
    assert "  torch `seed` on synthetic: at chance" in lines
    status, output = _main(capsys, tmp_path, committed, "--fail-on-difference")
    assert status == 2
    assert f"{committed} has no verdict for torch `seed` on synthetic" in output.err
    fresh = Results({}, (_run("ibp", 0.95), _run("seed", 1 / 7, unanimous=1.0)))
    only_ibp = Results({}, tuple(COMMITTED_SEEDS[:3]))
    comparison = compare(fresh, only_ibp, committed)
    assert not comparison.reproduced and [s.key[2] for s in comparison.missing] == ["seed"]


def test_damaged_committed_results_found_by_default_do_not_stop_the_run(
    capsys, tmp_path, monkeypatch
):
    """A results/accuracy.json that does not read (a merge conflict, say) is not compared, and
    the run says why; named with --compare-with, or needed by --fail-on-difference, it stops the
    run before training."""
    import_framework("torch")
    _fake_training(monkeypatch, {"ibp": 0.95, "seed": 1 / 7})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "accuracy.json").write_text("<<<<<<< HEAD\n")
    monkeypatch.chdir(tmp_path)
    arguments = [*QUICK, "--no-progress", "--output-dir", str(tmp_path / "out")]
    assert reproduce_accuracy.main(arguments) == 0
    output = capsys.readouterr().out
    assert "not compared: results/accuracy.json: not results of reproduce-accuracy" in output
    with pytest.raises(SystemExit) as exit_:
        reproduce_accuracy.main([*arguments, "--fail-on-difference"])
    assert exit_.value.code == 2
    assert "results/accuracy.json: not results of reproduce-accuracy" in capsys.readouterr().err


def test_results_of_other_settings_are_not_compared_naming_each_option(
    capsys, tmp_path, monkeypatch
):
    _fake_training(monkeypatch, {"ibp": 0.95, "seed": 1 / 7})
    other = _committed(tmp_path, COMMITTED_SEEDS, [*QUICK, "--recipe", "paper", "--epochs", "7"])
    status, output = _main(capsys, tmp_path, other)
    assert status == 0
    (line,) = [line for line in output.out.splitlines() if line.startswith("not compared")]
    assert line.startswith(f"not compared: {other} was made with other settings, ")
    assert "--epochs 7 (this run: 4)" in line and "--recipe paper (this run: default)" in line
