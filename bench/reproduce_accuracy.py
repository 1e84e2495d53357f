"""reproduce-accuracy: does the model learn? Trains the IBP model, the founding question's set-up,
one ablation per bug of that set-up and baselines, in every framework, and writes
results/accuracy.json, .md and .png.

With no arguments: the embedded data sets (synthetic, skimage-textures), every configuration, on
the CPU, in about 5 minutes on two cores.
"""

import argparse
import datetime
import importlib
import multiprocessing
import os
import queue
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tqdm.auto import tqdm

from bench.accuracy import report
from bench.accuracy.configurations import (
    CONFIGURATIONS,
    DEFAULT_CONFIGURATIONS,
    STUDIES,
    Configuration,
)
from bench.accuracy.data import EMBEDDED_DATASETS, Dataset
from bench.accuracy.distributed import torchrun_rank_and_size
from bench.accuracy.image_folders import image_folder
from bench.accuracy.training import RunCache, TrainingOptions, TrainingRunner, train
from impls.architectures import BACKBONES
from impls.backends import BACKENDS
from impls.testing.check import positive
from impls.testing.metadata import collect
from reference.contracts import IBPInputError
from reference.conventions import DEFAULT_EPS, SIGNED_SQRT_DELTA

if TYPE_CHECKING:
    # make_runners imports the runners by name (TensorFlow only when asked for): this is where
    # mypy checks that both provide what TrainingRunner lists.
    from bench.accuracy import runner_tf, runner_torch

    _RUNNER_TYPES: tuple[type[TrainingRunner], ...] = (runner_torch.Runner, runner_tf.Runner)

DEFAULT_DATASETS = ("synthetic", "skimage-textures")
#: Samples per class (train, test) and epochs: the full run and --quick (for tests).
FULL_SIZES, QUICK_SIZES = (160, 64), (32, 16)
FULL_EPOCHS, QUICK_EPOCHS = 10, 4
#: The authors' Newton-Schulz iteration count, used with their iterative backward (--recipe paper).
PAPER_NEWTON_SCHULZ_ITERATIONS = 5
#: Where the embedded data sets' results go; runs on an image folder get a fresh folder under
#: RUNS_DIR instead, so that a user's run never overwrites the committed results.
RESULTS_DIR, RUNS_DIR = Path("results"), Path("runs")

EXIT_STATUS = """exit status:
  0  trained and wrote accuracy.json, .md and .png
  1  the results could not be written (the previous set in the output folder is kept whole)
  2  a usage or data error: bad arguments, an output folder that cannot be written, an image
     folder with fewer than 2 classes or different classes in train and test, an unreadable
     image (named with its path). All are checked before training, except an image whose
     header reads but whose pixels do not decode; either way one line on stderr, nothing written
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2: the usage text would bury the message."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reproduce-accuracy",
        description=__doc__,
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    parser.add_argument(
        "--epochs",
        type=positive(int),
        help=f"epochs per configuration (default {FULL_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive(int),
        default=16,
        help="(the question's set-up always uses 16)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument(
        "--threads", type=positive(int), default=1, help="CPU threads per framework (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help=f"where accuracy.* go (default: {RESULTS_DIR}/ for the embedded data sets, a new "
        f"{RUNS_DIR}/<data set>-<time>/ for an image folder)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and few epochs, for tests")
    parser.add_argument("--data-dir", type=Path, help="image folder for --dataset imagefolder")
    parser.add_argument(
        "--backbone",
        default="small",
        choices=BACKBONES,
        metavar="NAME",
        help=f"{', '.join(BACKBONES)} (default small)",
    )
    parser.add_argument("--weights", help="backbone weights: imagenet or a file (default random)")
    parser.add_argument(
        "--reduce-dim", type=positive(int), help="1x1 conv to this many channels before the head"
    )
    parser.add_argument(
        "--image-size",
        type=positive(int),
        help="image side (default 32 embedded, 448 image folder)",
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
        choices=sorted(report.PAPER_ACCURACY),
        help="which paper numbers to print beside an image folder's (default: from its name)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="write a checkpoint after every epoch under DIR/<data set>/<framework>/<config>/; "
        "the same command with the same DIR resumes where it stopped",
    )
    parser.add_argument(
        "--workers",
        type=positive(int),
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
        type=positive(int),
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
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
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
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    return args


def default_output_dir(args: argparse.Namespace) -> Path:
    if "imagefolder" not in args.dataset:
        return RESULTS_DIR
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{Path(args.data_dir).resolve().name}-{stamp}"


def head_options(recipe: str) -> dict[str, Any]:
    options: dict[str, Any] = {"eps": DEFAULT_EPS, "delta": SIGNED_SQRT_DELTA}
    if recipe == "paper":
        options.update(
            method="newton_schulz",
            num_iters=PAPER_NEWTON_SCHULZ_ITERATIONS,
            backward="newton_schulz",
        )
    return options


def load_datasets(args: argparse.Namespace) -> list[Dataset]:
    train_per_class, test_per_class = QUICK_SIZES if args.quick else FULL_SIZES
    datasets = []
    for name in args.dataset:
        if name == "imagefolder":
            datasets.append(image_folder(args.data_dir, args.image_size or 448))
            continue
        try:
            dataset = EMBEDDED_DATASETS[name](
                args.seed, train_per_class, test_per_class, args.image_size or 32
            )
        except ImportError as error:
            raise IBPInputError(
                f"--dataset {name} needs {error.name} (pip install -e '.[data]')"
            ) from None
        datasets.append(dataset)
    return datasets


def configurations_for(dataset: Dataset, args: argparse.Namespace) -> list[Configuration]:
    names = args.config or (["ibp"] if dataset.augments else DEFAULT_CONFIGURATIONS)
    return [CONFIGURATIONS[name] for name in names]


def make_runners(args: argparse.Namespace) -> list[TrainingRunner]:
    """One runner per framework, in the order of the backend registry."""
    options = {
        "torch": {"workers": args.workers or 0},
        "tf": {"strategy": args.tf_strategy, "logical_cpus": args.tf_logical_cpus},
    }
    return [
        importlib.import_module(f"bench.accuracy.runner_{name}").Runner(
            args.device, args.threads, **options[name]
        )
        for name in BACKENDS
        if name in args.framework
    ]


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "backbone": args.backbone,
        "weights": args.weights,
        "reduce_dim": args.reduce_dim,
        "recipe": args.recipe,
        "head_kwargs": head_options(args.recipe),
    }


def metadata(
    args: argparse.Namespace,
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
        seed=args.seed,
        study=args.study,
        epochs=args.epochs,
        batch_size=args.batch_size,
        quick=args.quick,
        model=model_options(args),
        distribution={runner.name: runner.world.as_metadata() for runner in runners},
    )


def _check_full_batches(
    dataset: Dataset, configurations: list[Configuration], batch_size: int
) -> None:
    """The question's layers run on full batches of 16 only: a split with fewer samples would
    give it nothing to train or evaluate on."""
    for configuration in configurations:
        if not configuration.needs_full_batches:
            continue
        needed = configuration.batch_size(batch_size)
        for split_name in ("train", "test"):
            count = len(getattr(dataset, split_name))
            if count < needed:
                raise IBPInputError(
                    f"--config {configuration.name} runs on full batches of {needed} only (the "
                    f"question's layers hard-code it), but {dataset.name} has {count} {split_name} "
                    "images"
                )


def _check_models(
    runners: list[TrainingRunner], datasets: list[Dataset], args: argparse.Namespace
) -> None:
    """Build each framework's first model once, so that bad --weights (a missing file, ImageNet
    weights that a framework does not offer) fail now, not after the other framework trained."""
    for runner in runners:
        for dataset in datasets:
            configuration = configurations_for(dataset, args)[0]
            try:
                runner.build_model(configuration, dataset, model_options(args))
            except (ValueError, OSError) as error:
                raise IBPInputError(
                    f"cannot build the {args.backbone} model in {runner.name}: {error}"
                ) from None


def prepare(args: argparse.Namespace) -> tuple[list[TrainingRunner], list[Dataset]]:
    """Everything checked before any training: (runners, data sets). Raises IBPInputError."""
    if args.weights not in (None, "imagenet") and not Path(args.weights).is_file():
        raise IBPInputError(f"--weights {args.weights}: no such file (or use imagenet)")
    datasets = load_datasets(args)
    for dataset in datasets:
        _check_full_batches(dataset, configurations_for(dataset, args), args.batch_size)
    runners = make_runners(args)
    _check_models(runners, datasets, args)
    # Last, so that no failed check leaves an empty run folder behind; by the chief alone, the
    # one process that writes there (another one's clock could name another run folder).
    if _is_chief(runners):
        try:
            report.check_writable(args.output_dir)
        except OSError as error:
            raise IBPInputError(
                f"--output-dir {args.output_dir}: cannot write there ({error.strerror or error})"
            ) from None
    return runners, datasets


def run(
    args: argparse.Namespace, runners: list[TrainingRunner], datasets: list[Dataset]
) -> tuple[list[dict[str, Any]], float]:
    """Train every (data set, framework, configuration); return the run records and seconds."""
    started = time.perf_counter()
    if _frameworks_in_parallel(runners, args.threads):
        runs = _run_frameworks_in_parallel(args, runners, datasets)
        return runs, time.perf_counter() - started
    jobs = [
        (dataset, runner, configuration)
        for dataset in datasets
        for runner in runners
        for configuration in configurations_for(dataset, args)
    ]
    cache, runs = RunCache(), []
    for dataset, runner, configuration in tqdm(
        jobs, desc="runs", unit="run", disable=args.no_progress or not _is_chief(runners)
    ):
        runs.append(
            train(runner, configuration, dataset, _options(args), model_options(args), cache)
        )
    return runs, time.perf_counter() - started


def _options(args: argparse.Namespace) -> TrainingOptions:
    return TrainingOptions(
        args.epochs, args.batch_size, args.seed, not args.no_progress, args.checkpoint_dir
    )


def _frameworks_in_parallel(runners: list[TrainingRunner], threads: int) -> bool:
    """Several frameworks, each in one process on the CPU, and a core for each of them: their runs
    do not depend on each other, so each trains in a process of its own at the same time."""
    alone = all(
        runner.describe_device() == "cpu" and runner.world.processes == runner.world.replicas == 1
        for runner in runners
    )
    # Each process sets its framework's threads to --threads in a fresh interpreter.
    fits = threads * len(runners) <= (os.cpu_count() or 1)
    return len(runners) > 1 and alone and fits


def _run_frameworks_in_parallel(
    args: argparse.Namespace, runners: list[TrainingRunner], datasets: list[Dataset]
) -> list[dict[str, Any]]:
    """The runs of `run`, in its order, each framework trained by a spawned process of its own
    (a fresh interpreter: no framework state is shared). The progress bar counts finished runs."""
    total = len(runners) * sum(len(configurations_for(d, args)) for d in datasets)
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(len(runners), mp_context=context) as pool,
        tqdm(total=total, desc="runs", unit="run", disable=args.no_progress) as bar,
    ):
        finished = manager.Queue()
        futures = {
            runner.name: pool.submit(_train_one_framework, args, runner.name, finished)
            for runner in runners
        }
        while not all(future.done() for future in futures.values()) or not finished.empty():
            try:
                bar.set_postfix_str(finished.get(timeout=0.5))
                bar.update()
            except queue.Empty:
                pass
        by_framework = {name: future.result() for name, future in futures.items()}
    return [
        record
        for dataset in datasets
        for runner in runners
        for record in by_framework[runner.name]
        if record["dataset"] == dataset.name
    ]


def _train_one_framework(
    args: argparse.Namespace, framework: str, finished: "queue.Queue[str]"
) -> list[dict[str, Any]]:
    """Every run of one framework (in a process of its own), announcing each as it ends."""
    args = argparse.Namespace(**{**vars(args), "framework": [framework]})
    (runner,) = make_runners(args)
    options = replace(_options(args), progress=False)
    cache, runs = RunCache(), []
    for dataset in load_datasets(args):
        for configuration in configurations_for(dataset, args):
            runs.append(train(runner, configuration, dataset, options, model_options(args), cache))
            finished.put(f"{framework} {dataset.name} {configuration.name}")
    return runs


def _is_chief(runners: list[TrainingRunner]) -> bool:
    """Whether this process writes and shows progress: the only one, or rank 0 of a run spread
    over several processes (torchrun, TensorFlow workers)."""
    return all(runner.world.is_chief for runner in runners)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parse_args(argv, parser)
    try:
        runners, datasets = prepare(args)
        runs, seconds = run(args, runners, datasets)
    except IBPInputError as error:
        parser.error(str(error))
    if not _is_chief(runners):
        return 0
    info = metadata(args, runners, seconds, argv)
    try:
        report.write(args.output_dir, info, runs, datasets, args.paper_dataset)
    except OSError as error:
        print(
            f"{parser.prog}: cannot write the results to {args.output_dir}: {error}",
            file=sys.stderr,
        )
        return 1
    print(report.console_table(runs, args.paper_dataset))
    written = ", ".join(str(args.output_dir / name) for name in report.result_files(args.study))
    print(f"{len(runs)} runs in {seconds / 60:.1f} min; wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
