"""reproduce-accuracy: does the model learn? Trains the IBP model, the founding question's set-up,
one ablation per bug of that set-up and baselines, in every framework; writes accuracy.json, .md
and .png to a fresh run folder, and compares its verdicts with the committed results.

With no arguments: the embedded data sets (synthetic, skimage-textures), every configuration, seed
0, on the CPU, in about 6 minutes on two cores; the results go to runs/accuracy-<time>/ (never to
a tracked file). `--output-dir results --seeds 3` regenerates the committed results.
"""

import argparse
import datetime
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from tqdm.auto import tqdm

from bench.accuracy import preflight, result_files, side_by_side
from bench.accuracy.checkpoints import CheckpointWriteError
from bench.accuracy.comparison import Committed, Comparison, compare, read_committed
from bench.accuracy.configurations import CONFIGURATIONS, STUDIES
from bench.accuracy.data import EMBEDDED_DATASETS, Dataset
from bench.accuracy.distributed import torchrun_rank_and_size
from bench.accuracy.framework_output import kept_aside, quiet_level
from bench.accuracy.interface import TrainingRunner
from bench.accuracy.markdown import console_table, markdown
from bench.accuracy.paper import PAPER_ACCURACY
from bench.accuracy.plan import (
    FULL_EPOCHS,
    QUICK_EPOCHS,
    Plan,
    configurations_for,
    load_datasets,
    make_runners,
    model_options,
    run_count,
    train_seed,
)
from bench.accuracy.plot import plot
from bench.accuracy.records import DatasetInfo, Results, Run, Settings
from impls.architectures import BACKBONES
from impls.backends import BACKENDS
from impls.testing.command_line import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Parser,
    UsageError,
    argument_type,
    positive,
)
from impls.testing.metadata import collect, run_time, write_results
from reference.contracts import IBPInputError

if TYPE_CHECKING:
    # make_runners imports the runners by name (TensorFlow only when asked for): this is where
    # mypy checks that both provide what TrainingRunner lists.
    from bench.accuracy import runner_tf, runner_torch

    _RUNNER_TYPES: tuple[type[TrainingRunner], ...] = (runner_torch.Runner, runner_tf.Runner)

DEFAULT_DATASETS = ("synthetic", "skimage-textures")
#: The largest seed: the runners seed NumPy's legacy global generator too, which takes 32 bits.
MAX_SEED = 2**32 - 1
#: Where runs go by default (a fresh folder per run; ignored by git), and the committed results
#: that a run compares itself with (and that `--output-dir results` regenerates).
RUNS_DIR, RESULTS_DIR = Path("runs"), Path("results")

EXIT_STATUS = """exit status:
  0    trained and wrote accuracy.json, .md and .png (and, with --fail-on-difference,
       reproduced every committed verdict it was compared with)
  1    the results could not be written (the previous set in the output folder is kept whole),
       or a checkpoint could not be written during training (one line naming its folder; the
       last checkpoint written there is whole, the output folder unchanged), or, with
       --fail-on-difference, a verdict differs from the committed results
  2    a usage or data error, one line on stderr, found before training: bad arguments, an
       output or checkpoint folder that cannot be written, a checkpoint of another run or a
       damaged one, a batch smaller than the processes that share it, with
       --fail-on-difference results that cannot be compared with, an image folder with
       fewer than 2 classes or different classes in train and test, an unreadable image
       (named with its path; an image whose header reads but whose pixels do not decode is
       found when it is loaded)
  130  interrupted (Ctrl-C): the output folder is as it was; checkpoints are whole, and the
       same command resumes from them
"""


def _path(text: str) -> Path:
    """A path as given; an empty one (which would mean the current folder) is a usage error."""
    if not text:
        raise UsageError("an empty path (write . for the current folder)")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="reproduce-accuracy", description=__doc__, epilog=EXIT_STATUS)
    count = argument_type(positive(int))
    path = argument_type(_path)
    parser.add_argument(
        "--framework",
        nargs="+",
        choices=sorted(BACKENDS),
        help="frameworks to train in (default: every installed one)",
    )
    datasets = [*EMBEDDED_DATASETS, "imagefolder"]
    parser.add_argument(
        "--dataset",
        nargs="+",
        choices=datasets,
        metavar="NAME",
        help=f"{', '.join(datasets)} (default: {' '.join(DEFAULT_DATASETS)}; imagefolder needs "
        "--data-dir)",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        choices=list(CONFIGURATIONS),
        metavar="NAME",
        help=f"{', '.join(CONFIGURATIONS)} (default: all but the seed_pretrained ones on "
        "embedded data, ibp on an image folder)",
    )
    parser.add_argument(
        "--study",
        choices=sorted(STUDIES),
        help="a longer study with its own data sets and configurations, written to "
        "accuracy-STUDY.json, .md and .png: "
        # argparse expands % in help texts
        + "; ".join(f"{name}: {study.description}" for name, study in STUDIES.items()).replace(
            "%", "%%"
        ),
    )
    parser.add_argument("--epochs", type=count, help=f"epochs per configuration ({FULL_EPOCHS})")
    parser.add_argument(
        "--batch-size", type=count, default=16, help="(the question's set-up always uses 16)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--threads", type=count, default=1, help="CPU threads per framework (1)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"random seed, 0 to {MAX_SEED} (default 0)",
    )
    parser.add_argument(
        "--seeds",
        type=count,
        default=1,
        metavar="N",
        help="train every configuration with N seeds, --seed to --seed + N - 1 (each draws its "
        "own embedded data and initial weights); verdicts and ranges over them (default 1; the "
        "committed results use 3)",
    )
    parser.add_argument(
        "--output-dir",
        type=path,
        help=f"where accuracy.* go (default: a new {RUNS_DIR}/accuracy-<time>/, or "
        f"{RUNS_DIR}/<image folder>-<time>/; `--output-dir {RESULTS_DIR}` regenerates the "
        "committed results)",
    )
    parser.add_argument(
        "--compare-with",
        type=path,
        metavar="FILE",
        help=f"the results to compare the verdicts with (default: {RESULTS_DIR}/accuracy.json, "
        "or the study's, where it exists)",
    )
    parser.add_argument(
        "--fail-on-difference",
        action="store_true",
        help="exit with status 1 when a verdict differs from the compared results (for CI); "
        "results that cannot be read, were made with other settings or lack a configuration of "
        "this run are found before training (exit status 2)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and few epochs, for tests")
    parser.add_argument("--data-dir", type=path, help="image folder for --dataset imagefolder")
    parser.add_argument(
        "--backbone",
        default="small",
        choices=BACKBONES,
        metavar="NAME",
        help=f"{', '.join(BACKBONES)} (default small)",
    )
    parser.add_argument("--weights", help="backbone weights: imagenet or a file (default random)")
    parser.add_argument(
        "--reduce-dim", type=count, help="1x1 conv to this many channels before the head"
    )
    parser.add_argument(
        "--image-size", type=count, help="image side (default 32 embedded, 448 image folder)"
    )
    parser.add_argument(
        "--recipe",
        choices=("default", "paper"),
        default="default",
        help="IBP root: exact (default) or the authors' 5 Newton-Schulz iterations with their "
        "iterative backward (paper); both train with the authors' two-stage optimizers",
    )
    parser.add_argument(
        "--paper-dataset",
        choices=sorted(PAPER_ACCURACY),
        help="which paper numbers to print beside an image folder's (default: from its name)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--checkpoint-dir",
        type=path,
        help="write a checkpoint after every epoch under "
        "DIR/seed-<seed>/<data set>/<framework>/<config>/; the same command with the same DIR "
        "resumes where it stopped (a checkpoint of other options is refused)",
    )
    parser.add_argument(
        "--workers",
        type=count,
        help="torch: DataLoader processes that decode image-folder batches (default: in the "
        "training process)",
    )
    parser.add_argument(
        "--tf-strategy",
        choices=("none", "mirrored", "multi-worker"),
        default="none",
        help="TensorFlow: one device (none), MirroredStrategy over the local GPUs (or "
        "--tf-logical-cpus), or MultiWorkerMirroredStrategy with the cluster from TF_CONFIG",
    )
    parser.add_argument(
        "--tf-logical-cpus",
        type=count,
        metavar="N",
        help="TensorFlow, --tf-strategy mirrored: split the CPU into N logical devices",
    )
    return parser


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The arguments, checked one by one; what needs the data or the file system is checked by
    `prepare`."""
    parser = parser or _parser()
    args = parser.parse_args(argv)
    if args.study and (args.dataset or args.config):
        parser.error(f"--study {args.study} chooses its own data sets and configurations")
    study = STUDIES.get(args.study)
    args.dataset = args.dataset or list(study.datasets if study else DEFAULT_DATASETS)
    args.config = args.config or (list(study.configurations) if study else None)
    if "imagefolder" in args.dataset and args.data_dir is None:
        parser.error("--dataset imagefolder needs --data-dir")
    if args.data_dir is not None and "imagefolder" not in args.dataset:
        parser.error("--data-dir is read only with --dataset imagefolder")
    if not 0 <= args.seed <= args.seed + args.seeds - 1 <= MAX_SEED:
        seeds = f" to {args.seed + args.seeds - 1} (--seeds {args.seeds})" if args.seeds > 1 else ""
        parser.error(f"--seed must be in [0, {MAX_SEED}], got {args.seed}{seeds}")
    available = [b.name for b in BACKENDS.values() if b.is_available()]
    missing = [name for name in args.framework or [] if name not in available]
    if missing or not available:
        parser.error(
            f"{', '.join(missing) or 'no framework'} is not installed (installed: "
            f"{', '.join(available) or 'none'}; pip install -e '.[torch]' or '.[tf-cpu]')"
        )
    args.framework = args.framework or available
    # A multi-process launch is one framework's: the other would train the same thing in every
    # process.
    if torchrun_rank_and_size() is not None and args.framework != ["torch"]:
        parser.error("under torchrun, train PyTorch only (--framework torch)")
    if args.tf_strategy == "multi-worker" and args.framework != ["tf"]:
        parser.error("--tf-strategy multi-worker trains TensorFlow only (--framework tf)")
    args.epochs = args.epochs or (QUICK_EPOCHS if args.quick else FULL_EPOCHS)
    args.output_dir = args.output_dir or default_output_dir(args)
    return args


def default_output_dir(args: argparse.Namespace) -> Path:
    """A run folder that does not exist yet: runs/accuracy[-STUDY]-<time>, or
    runs/<image folder>-<time> for user data."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (
        Path(args.data_dir).resolve().name
        if "imagefolder" in args.dataset
        else result_files.stem(args.study)
    )
    folder, number = RUNS_DIR / f"{name}-{stamp}", 1
    while folder.exists():
        number += 1
        folder = RUNS_DIR / f"{name}-{stamp}-{number}"
    return folder


def make_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        frameworks=tuple(args.framework),
        datasets=tuple(args.dataset),
        configurations=tuple(args.config) if args.config else None,
        seeds=tuple(range(args.seed, args.seed + args.seeds)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        quick=args.quick,
        image_size=args.image_size,
        data_dir=args.data_dir,
        model=model_options(args.backbone, args.weights, args.reduce_dim, args.recipe),
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        tf_strategy=args.tf_strategy,
        tf_logical_cpus=args.tf_logical_cpus,
        checkpoint_dir=args.checkpoint_dir,
        progress=not args.no_progress,
    )


def settings(plan: Plan) -> dict[str, Any]:
    """What the envelope records of the plan beyond the common envelope; `comparison.SETTINGS`
    names those that make two results comparable."""
    return {
        "seed": plan.seeds[0],
        "seeds": list(plan.seeds),
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "quick": plan.quick,
        "image_size": plan.image_size,
        "model": {
            "backbone": plan.model.backbone,
            "weights": plan.model.weights,
            "reduce_dim": plan.model.reduce_dim,
            "recipe": plan.model.recipe,
            "head_kwargs": plan.model.head_kwargs,
        },
    }


def metadata(
    args: argparse.Namespace,
    plan: Plan,
    runners: list[TrainingRunner],
    total_seconds: float,
    argv: list[str],
) -> dict[str, Any]:
    """The results envelope (impls.testing.metadata) with this run's settings."""
    devices = {runner.name: runner.describe_device() for runner in runners}
    versions: dict[str, str] = {}
    for runner in runners:
        versions.update(runner.versions())
    return collect(
        device="cpu" if set(devices.values()) == {"cpu"} else ", ".join(devices.values()),
        profile="reproduce-accuracy",
        command=shlex.join(["reproduce-accuracy", *argv]),
        wall_seconds=total_seconds,
        framework_devices=devices,
        framework_versions=versions,
        framework_threads={runner.name: runner.threads for runner in runners},
        study=args.study,
        paper_dataset=args.paper_dataset,
        distribution={runner.name: runner.world.as_metadata() for runner in runners},
        **settings(plan),
    )


def _committed(args: argparse.Namespace, plan: Plan, datasets: list[Dataset]) -> Committed:
    """The results to compare with (comparison.read_committed), found before training."""
    planned = {
        (dataset.name, framework, configuration.name)
        for dataset in datasets
        for framework in plan.frameworks
        for configuration in configurations_for(plan, dataset)
    }
    return read_committed(
        args.compare_with,
        RESULTS_DIR / f"{result_files.stem(args.study)}.json",
        args.fail_on_difference,
        Settings.from_envelope(settings(plan)),
        planned,
    )


def prepare(
    args: argparse.Namespace, plan: Plan
) -> tuple[list[TrainingRunner], dict[int, list[Dataset]], Committed]:
    """Everything checked before any training: (runners, data sets by seed, the results to compare
    with). Raises IBPInputError."""
    preflight.check_weights(plan)
    datasets = {seed: load_datasets(plan, seed) for seed in plan.seeds}
    first = datasets[plan.seeds[0]]
    for dataset in first:
        preflight.check_full_batches(plan, dataset)
    committed = _committed(args, plan, first)
    runners = make_runners(plan)
    for dataset in first:
        preflight.check_batch_size(plan, runners, dataset)
    preflight.check_models(plan, runners, first)
    chief = _is_chief(runners)
    preflight.check_checkpoint_dir(plan, chief)
    for seed, of_seed in datasets.items():
        preflight.check_checkpoints(plan, seed, runners, of_seed)
    # Last, so that no failed check leaves a folder behind; by the chief alone, the one process
    # that writes there (another one's clock could name another run folder).
    if chief:
        try:
            result_files.check_writable(args.output_dir, args.study)
        except OSError as error:
            raise IBPInputError(
                f"--output-dir {args.output_dir}: cannot write there ({error.strerror or error})"
            ) from None
    return runners, datasets, committed


def _in_order(runs: list[Run], plan: Plan, datasets: list[Dataset]) -> list[Run]:
    """Runs by seed, data set and framework (the order one process trains them in)."""
    dataset_names = [dataset.name for dataset in datasets]
    frameworks = [name for name in BACKENDS if name in plan.frameworks]
    return sorted(
        runs,
        key=lambda run: (
            plan.seeds.index(run.seed),
            dataset_names.index(run.dataset),
            frameworks.index(run.framework),
        ),
    )


def run(
    plan: Plan,
    runners: list[TrainingRunner],
    datasets: dict[int, list[Dataset]],
    progress: TextIO | None,
) -> tuple[list[Run], float]:
    """Train every (seed, data set, framework, configuration); return the runs and seconds."""
    started = time.perf_counter()
    first = datasets[plan.seeds[0]]
    bar = tqdm(
        total=run_count(plan, first),
        desc="runs",
        unit="run",
        file=progress,
        disable=progress is None or not _is_chief(runners),
    )
    with bar:
        if side_by_side.fits(runners, plan.threads, os.cpu_count() or 1):
            by_framework = side_by_side.train_side_by_side(plan, bar)
            runs = [run for runs in by_framework.values() for run in runs]
        else:
            runs = []
            for seed in plan.seeds:
                for record in train_seed(plan, seed, runners, datasets[seed], progress):
                    runs.append(record)
                    bar.update()
    return _in_order(runs, plan, first), time.perf_counter() - started


def _is_chief(runners: list[TrainingRunner]) -> bool:
    """Whether this process writes and shows progress: the only one, or rank 0 of a run spread
    over several processes (torchrun, TensorFlow workers)."""
    return all(runner.world.is_chief for runner in runners)


def write(args: argparse.Namespace, results: Results) -> None:
    """The result files, as one set (result_files). Raises OSError."""
    json_name, md_name, png_name = result_files.names(args.study)
    result_files.write_set(
        args.output_dir,
        {
            json_name: lambda path: write_results(path, results.metadata, **results.payload()),
            md_name: lambda path: path.write_text(markdown(results)),
            png_name: lambda path: plot(results, path),
        },
    )


@dataclass(frozen=True)
class _Trained:
    runners: list[TrainingRunner]
    datasets: dict[int, list[Dataset]]
    committed: Committed
    runs: list[Run]
    seconds: float


def _train(args: argparse.Namespace, plan: Plan) -> _Trained:
    """Checks, then training, with the frameworks' own output kept out of the progress bars."""
    with kept_aside() as stderr:
        runners, datasets, committed = prepare(args, plan)
        runs, seconds = run(plan, runners, datasets, stderr if plan.progress else None)
    return _Trained(runners, datasets, committed, runs, seconds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_level()  # before any framework is imported
    parser = _parser()
    args = parse_args(argv, parser)
    plan = make_plan(args)
    try:
        trained = _train(args, plan)
        if not _is_chief(trained.runners):
            return 0
        results = _results(args, plan, trained, argv)
        try:
            write(args, results)
        except OSError as error:
            message = f"cannot write the results to {args.output_dir}: {error}"
            print(f"{parser.prog}: {message}", file=sys.stderr)
            return EXIT_FAILED
    except IBPInputError as error:
        parser.error(str(error))
    except CheckpointWriteError as error:
        print(f"{parser.prog}: {error}; {args.output_dir} unchanged", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        kept = (
            f"; checkpoints in {plan.checkpoint_dir} are whole (the same command resumes)"
            if plan.checkpoint_dir
            else ""
        )
        print(f"{parser.prog}: interrupted; {args.output_dir} unchanged{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return _report(args, results, trained)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the results are in {args.output_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _results(args: argparse.Namespace, plan: Plan, trained: _Trained, argv: list[str]) -> Results:
    described = {
        dataset.name: DatasetInfo(dataset.description, dataset.num_classes)
        for dataset in trained.datasets[plan.seeds[0]]
    }
    envelope = metadata(args, plan, trained.runners, trained.seconds, argv)
    return Results(envelope, tuple(trained.runs), described)


def _report(args: argparse.Namespace, results: Results, trained: _Trained) -> int:
    """The table, the comparison and where the files went; the exit status."""
    print(console_table(results.runs, args.paper_dataset))
    comparison = _comparison(results, trained.committed)
    written = ", ".join(str(args.output_dir / name) for name in result_files.names(args.study))
    count = len(results.runs)
    took = run_time(results.metadata)
    print(f"{count} run{'' if count == 1 else 's'} in {took}; wrote {written}")
    if comparison is not None and not comparison.reproduced and args.fail_on_difference:
        return EXIT_FAILED
    return 0


def _comparison(results: Results, committed: Committed) -> Comparison | None:
    """Print how this run's verdicts compare with the committed ones; the comparison, or None
    where there was nothing to compare with."""
    if committed.results is None or committed.path is None:
        print(f"not compared: {committed.reason}")
        return None
    comparison = compare(results, committed.results, committed.path)
    print("\n".join(comparison.lines()))
    return comparison


def command() -> NoReturn:
    """The command line's entry point (the console script, `python -m`): main, then an exit that
    a late Ctrl-C cannot turn into a traceback or another status."""
    status = main()
    # The work is done and reported: a Ctrl-C now would only interrupt the frameworks' teardown
    # (torch's finalizers print "Exception ignored ... KeyboardInterrupt" and exit 0).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status == EXIT_INTERRUPTED:
        # Under `python -m`, CPython (3.11) ends by SIGINT instead of this status when the
        # KeyboardInterrupt passed through code run by exec or eval of a string (a dataclass or a
        # namedtuple being made while a framework imports), although main caught it: skip the
        # interpreter's exit path. main has stopped the children and closed every file by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    command()
