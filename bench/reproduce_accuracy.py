"""reproduce-accuracy: does the model learn? Trains the IBP model, the founding question's set-up,
one ablation per bug of that set-up and baselines, in every framework, and writes
results/accuracy.json, .md and .png.

With no arguments: the embedded data sets (synthetic, skimage-textures), every configuration, on
the CPU, in about 5 minutes on two cores.
"""

import argparse
import importlib
import shlex
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from bench.accuracy import report
from bench.accuracy.configurations import CONFIGURATIONS
from bench.accuracy.data import EMBEDDED_DATASETS
from bench.accuracy.image_folders import image_folder
from bench.accuracy.training import FeatureCache, TrainingOptions, train
from impls.backends import BACKENDS
from impls.testing.check import positive
from impls.testing.metadata import collect
from reference.conventions import DEFAULT_EPS, SIGNED_SQRT_DELTA

DEFAULT_DATASETS = ("synthetic", "skimage-textures")
#: Samples per class (train, test) and epochs: the full run and --quick (for tests).
FULL_SIZES, QUICK_SIZES = (160, 64), (32, 16)
FULL_EPOCHS, QUICK_EPOCHS = 10, 4
#: The authors' Newton-Schulz iteration count, used with their iterative backward (--recipe paper).
PAPER_NEWTON_SCHULZ_ITERATIONS = 5


def _parser():
    parser = argparse.ArgumentParser(
        prog="reproduce-accuracy",
        description=__doc__,
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
        help=f"{', '.join(CONFIGURATIONS)} (default: all on embedded data, ibp on an image folder)",
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("results"))
    parser.add_argument("--quick", action="store_true", help="tiny data and few epochs, for tests")
    parser.add_argument("--data-dir", type=Path, help="image folder for --dataset imagefolder")
    parser.add_argument(
        "--backbone", default="small", help="small, vgg16, resnet50 (default small)"
    )
    parser.add_argument("--weights", help="backbone weights: imagenet or a file (default random)")
    parser.add_argument(
        "--reduce-dim", type=int, help="1x1 conv to this many channels before the head"
    )
    parser.add_argument(
        "--image-size", type=int, help="image side (default 32 embedded, 448 image folder)"
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
    return parser


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    args.dataset = args.dataset or list(DEFAULT_DATASETS)
    if "imagefolder" in args.dataset and args.data_dir is None:
        parser.error("--dataset imagefolder needs --data-dir")
    args.framework = args.framework or [b.name for b in BACKENDS.values() if b.is_available()]
    args.epochs = args.epochs or (QUICK_EPOCHS if args.quick else FULL_EPOCHS)
    return args


def head_options(recipe):
    options = {"eps": DEFAULT_EPS, "delta": SIGNED_SQRT_DELTA}
    if recipe == "paper":
        options.update(
            method="newton_schulz",
            num_iters=PAPER_NEWTON_SCHULZ_ITERATIONS,
            backward="newton_schulz",
        )
    return options


def load_datasets(args):
    train_per_class, test_per_class = QUICK_SIZES if args.quick else FULL_SIZES
    datasets = []
    for name in args.dataset:
        if name == "imagefolder":
            datasets.append(image_folder(args.data_dir, args.image_size or 448))
        else:
            datasets.append(
                EMBEDDED_DATASETS[name](
                    args.seed, train_per_class, test_per_class, args.image_size or 32
                )
            )
    return datasets


def configurations_for(dataset, args):
    names = args.config or (["ibp"] if dataset.augments else list(CONFIGURATIONS))
    return [CONFIGURATIONS[name] for name in names]


def make_runners(args):
    """One runner per framework, in the order of the backend registry."""
    return [
        importlib.import_module(f"bench.accuracy.runner_{name}").Runner(args.device, args.threads)
        for name in BACKENDS
        if name in args.framework
    ]


def model_options(args):
    return {
        "backbone": args.backbone,
        "weights": args.weights,
        "reduce_dim": args.reduce_dim,
        "recipe": args.recipe,
        "head_kwargs": head_options(args.recipe),
    }


def metadata(args, runners, total_seconds, argv):
    where = collect(device="cpu", profile="reproduce-accuracy")
    commit = (where["git_commit"] or "unknown")[:12]
    versions = {"python": where["python"], **where["versions"]}
    for runner in runners:
        versions.update(runner.versions())
    return {
        "command": shlex.join(["reproduce-accuracy", *argv]),
        "commit": commit + (" + uncommitted changes" if where["git_dirty"] else ""),
        "versions": versions,
        "device": ", ".join(f"{r.name}: {r.describe_device()}" for r in runners),
        "cpu": where["cpu_model"],
        "threads": {runner.name: runner.threads for runner in runners},
        "date": where["date_utc"],
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "quick": args.quick,
        "model": model_options(args),
        "total_seconds": round(total_seconds, 1),
    }


def run(args):
    """Train every (data set, framework, configuration); return the run records."""
    started = time.perf_counter()
    runners = make_runners(args)
    datasets = load_datasets(args)
    options = TrainingOptions(args.epochs, args.batch_size, args.seed, not args.no_progress)
    jobs = [
        (dataset, runner, configuration)
        for dataset in datasets
        for runner in runners
        for configuration in configurations_for(dataset, args)
    ]
    cache, runs = FeatureCache(), []
    for dataset, runner, configuration in tqdm(
        jobs, desc="runs", unit="run", disable=args.no_progress
    ):
        runs.append(train(runner, configuration, dataset, options, model_options(args), cache))
    return runners, datasets, runs, time.perf_counter() - started


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    runners, datasets, runs, seconds = run(args)
    info = metadata(args, runners, seconds, argv)
    report.write(args.output_dir, info, runs, datasets, args.paper_dataset)
    print(report.console_table(runs, args.paper_dataset))
    written = ", ".join(
        str(args.output_dir / f"accuracy.{suffix}") for suffix in ("json", "md", "png")
    )
    print(f"{len(runs)} runs in {seconds / 60:.1f} min; wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
