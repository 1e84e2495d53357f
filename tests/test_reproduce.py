"""reproduce-accuracy: the synthetic data's promise, the question's set-up against the correct
model, determinism, and the image-folder path. Nothing here downloads anything."""

import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import reproduce_accuracy
from bench.accuracy import result_files, seed_30, side_by_side, verdicts
from bench.accuracy.configurations import CONFIGURATIONS, DEFAULT_CONFIGURATIONS, SEED_BUGS
from bench.accuracy.data import (
    EMBEDDED_DATASETS,
    SYNTHETIC_MEAN,
    SYNTHETIC_NUM_CLASSES,
    SYNTHETIC_STD,
    Dataset,
    Split,
    synthetic,
)
from bench.accuracy.image_folders import image_folder
from bench.accuracy.interface import TrainingOptions
from bench.accuracy.plan import QUICK_EPOCHS, Plan, model_options
from bench.accuracy.plot import family, plot
from bench.accuracy.records import Answers, Epoch, Results, Run
from bench.accuracy.training import RunCache, answer_statistics, batch_indices, train
from impls.architectures import BACKBONES
from impls.backends import BACKENDS, available_backends
from impls.testing import founding_question
from impls.testing.metadata import REQUIRED_KEYS, read_results
from reference.contracts import IBPInputError

from .conftest import import_framework

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """reproduce-accuracy pins torch to one thread and deterministic algorithms, process-wide;
    the tests that run after these in the same process must not inherit that."""
    if not BACKENDS["torch"].is_available():
        yield
        return
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _train(tmp_path, *arguments):
    """Run reproduce-accuracy into tmp_path; return the JSON it wrote."""
    output = tmp_path / "results"
    assert reproduce_accuracy.main(["--output-dir", str(output), "--no-progress", *arguments]) == 0
    for suffix in ("md", "png"):
        assert (output / f"accuracy.{suffix}").stat().st_size > 0
    _, document = read_results(output / "accuracy.json")
    return document


def _runs_by_config(results):
    return {run["config"]: run for run in results["runs"]}


# The synthetic data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_train():
    return synthetic(seed=3, train_per_class=48, test_per_class=16).train


def test_synthetic_first_order_statistics_are_the_same_for_every_class(synthetic_train):
    images, labels = synthetic_train.images, synthetic_train.labels
    per_image_mean = images.mean(axis=(1, 2))
    per_image_std = images.std(axis=(1, 2))
    # Per image, hence per class: only the clip to [0, 1] (beyond 4 sd) may move them at all.
    np.testing.assert_allclose(per_image_mean, SYNTHETIC_MEAN, atol=1e-4)
    np.testing.assert_allclose(per_image_std, SYNTHETIC_STD, atol=1e-4)
    for label in range(SYNTHETIC_NUM_CLASSES):
        pixels = images[labels == label].reshape(-1, 3)
        np.testing.assert_allclose(pixels.mean(axis=0), SYNTHETIC_MEAN, atol=1e-4)
        np.testing.assert_allclose(pixels.std(axis=0), SYNTHETIC_STD, atol=1e-4)


def _second_order_statistics(images):
    """Per image: cross-channel correlations at lag 0 and each channel's autocorrelation one pixel
    across and one pixel down."""
    centred = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(
        axis=(1, 2), keepdims=True
    )
    cross = np.einsum("nhwc,nhwd->ncd", centred, centred) / centred[0, ..., 0].size
    across = (centred[:, :, 1:] * centred[:, :, :-1]).mean(axis=(1, 2))
    down = (centred[:, 1:] * centred[:, :-1]).mean(axis=(1, 2))
    upper = np.triu_indices(3, 1)
    return np.concatenate([cross[:, upper[0], upper[1]], across, down], axis=1)


def test_synthetic_classes_differ_in_second_order_statistics(synthetic_train):
    statistics = _second_order_statistics(synthetic_train.images)
    labels = synthetic_train.labels
    means, standard_errors = [], []
    for label in range(SYNTHETIC_NUM_CLASSES):
        of_class = statistics[labels == label]
        means.append(of_class.mean(axis=0))
        standard_errors.append(of_class.std(axis=0) / np.sqrt(len(of_class)))
    for first in range(SYNTHETIC_NUM_CLASSES):
        for second in range(first + 1, SYNTHETIC_NUM_CLASSES):
            error = np.hypot(standard_errors[first], standard_errors[second])
            separation = (np.abs(means[first] - means[second]) / error).max()
            assert separation > 8, (first, second, separation)


def test_synthetic_data_depends_on_the_seed_only():
    first, again, other = (synthetic(seed, 4, 2) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first.train.images, again.train.images)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)
    assert not np.array_equal(first.train.images, other.train.images)


# The question's head ---------------------------------------------------------------------------


def _seed_model(backend):
    return importlib.import_module(f"bench.accuracy.seed_model_{backend.name}")


def _feature_maps(batch=16, channels=6, size=5, seed=0, dead_channel=True):
    """Channels-first ReLU feature maps, by default with a dead channel as random convs make."""
    x = np.maximum(np.random.default_rng(seed).standard_normal((batch, channels, size, size)), 0)
    if dead_channel:
        x[:, 0] = 0
    return x.astype(np.float32)


def _seed_vectors(backend, x, bugs):
    """The question's head up to (not including) its classifier, as NumPy (B, C, C)."""
    seed = _seed_model(backend)
    z = seed.seed_sqrtm(seed.seed_bilinear_pool(x, bugs), bugs)
    fw = backend.fw
    y = fw.sign(z) * fw.sqrt(fw.abs(z))
    return backend.numpy(seed.seed_l2_normalize(y, bugs))


def test_question_head_with_every_bug_fixed_is_the_ibp_head(backend):
    x = _feature_maps()
    tensor = backend.feature_map(x, "float32")
    fixed = _seed_vectors(backend, tensor, bugs=frozenset())
    head = backend.impl.IBPHead(x.shape[1], eps=founding_question.KERAS_EPSILON, delta=0.0)
    ours = backend.numpy(head(tensor)).reshape(fixed.shape)
    np.testing.assert_allclose(fixed, ours, rtol=1e-3, atol=1e-4)


def test_question_head_gives_every_sample_of_a_batch_the_same_features(backend):
    tensor = backend.feature_map(_feature_maps(), "float32")
    buggy = _seed_vectors(backend, tensor, bugs=frozenset(SEED_BUGS))
    np.testing.assert_allclose(buggy, np.broadcast_to(buggy[0], buggy.shape), rtol=1e-6)
    fixed = _seed_vectors(backend, tensor, bugs=frozenset(SEED_BUGS) - {"batch_sum"})
    assert np.abs(fixed[0] - fixed[1]).max() > 1e-3


def test_question_head_takes_the_fourth_root(backend):
    seed = _seed_model(backend)
    a = backend.tensor(np.broadcast_to(np.diag([16.0, 81.0, 1.0]), (16, 3, 3)), "float32")
    roots = {
        bugs: np.diag(backend.numpy(seed.seed_sqrtm(a, bugs))[0])
        for bugs in (frozenset({"fourth_root"}), frozenset())
    }
    np.testing.assert_allclose(roots[frozenset({"fourth_root"})], [2.0, 3.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(roots[frozenset()], [4.0, 9.0, 1.0], rtol=1e-5)


def test_question_head_hard_codes_the_batch_size(backend):
    seed = _seed_model(backend)
    five = backend.feature_map(_feature_maps(batch=5), "float32")
    # Batch-summed: five samples in, sixteen matrices out, silently.
    assert seed.seed_bilinear_pool(five, frozenset(SEED_BUGS)).shape[0] == 16
    with pytest.raises(Exception):  # noqa: B017 (torch and TensorFlow raise different types)
        seed.seed_bilinear_pool(five, frozenset())


BUG_SETS = [frozenset(SEED_BUGS), frozenset()] + [frozenset(SEED_BUGS) - {b} for b in SEED_BUGS]


@pytest.mark.parametrize("bugs", BUG_SETS, ids=lambda bugs: "+".join(sorted(bugs)) or "none")
def test_question_head_is_the_same_in_both_frameworks(bugs):
    backends = [BACKENDS[name] for name in ("torch", "tf")]
    for backend in backends:
        import_framework(backend.package)
    # No dead channel: with eps * ones its singular value is float32 round-off, whose (fourth)
    # root differs from one SVD implementation to the next. That is the question's bug, not ours.
    x = _feature_maps(dead_channel=False)
    vectors = [_seed_vectors(b, b.feature_map(x, "float32"), bugs) for b in backends]
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-3, atol=1e-5)


def test_question_head_in_tensorflow_is_the_question_code():
    """With every bug on, the TensorFlow head computes what the question's own functions
    (examples/seed_question_tf.py, kept verbatim) compute."""
    example = Path(__file__).parents[1] / "examples" / "seed_question_tf.py"
    import_framework("tensorflow")
    spec = importlib.util.spec_from_file_location("seed_question_tf", example)
    question = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(question)
    backend = BACKENDS["tf"]
    x = backend.feature_map(_feature_maps(), "float32")
    theirs = question.L2_NORMALIZE(
        question.SIGNED_SQRT(question.Sqrt_Root_SVD_Lyapunov(question.BILINEAR_POOLING(x)))
    )
    ours = _seed_vectors(backend, x, frozenset(SEED_BUGS))
    np.testing.assert_allclose(ours, backend.numpy(theirs), rtol=1e-4, atol=1e-7)


# Training --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_ibp_learns_and_the_question_set_up_does_not(backend, tmp_path):
    results = _train(
        tmp_path, "--quick", "--framework", backend.name, "--dataset", "synthetic",
        "--config", "ibp", "seed",
    )  # fmt: skip
    runs = _runs_by_config(results)
    assert set(runs) == {"ibp", "seed"}
    ibp, seed = runs["ibp"], runs["seed"]
    assert ibp["chance_rate"] == pytest.approx(1 / SYNTHETIC_NUM_CLASSES)
    assert ibp["test_accuracy"] >= seed["test_accuracy"] + 0.4, (ibp, seed)
    assert abs(seed["test_accuracy"] - seed["chance_rate"]) <= 0.05
    envelope = results["ibp_metadata"]
    assert len(ibp["history"]) == envelope["epochs"] == QUICK_EPOCHS
    assert {"train_loss", "train_accuracy", "test_accuracy"} <= set(ibp["history"][-1])
    assert set(REQUIRED_KEYS) <= set(envelope)
    assert envelope["command"].startswith("reproduce-accuracy --output-dir")
    assert set(envelope["framework_devices"]) == {backend.name}


@pytest.mark.slow
def test_frameworks_trained_side_by_side_give_the_numbers_of_each_alone(monkeypatch, tmp_path):
    """On the CPU the two frameworks train in two processes at once; nothing they compute
    depends on the other, so every record but its time equals that of the framework alone."""
    import_framework("torch")
    import_framework("tensorflow")
    arguments = ("--quick", "--dataset", "synthetic", "--config", "ibp", "seed")
    parallel_runs = []
    in_parallel = side_by_side.train_side_by_side

    def counted(*call: object) -> object:
        parallel_runs.append(call)
        return in_parallel(*call)

    monkeypatch.setattr(side_by_side, "train_side_by_side", counted)
    monkeypatch.setattr(reproduce_accuracy.os, "cpu_count", lambda: 2)
    together = _train(tmp_path / "both", *arguments)["runs"]
    assert len(parallel_runs) == 1
    # Each framework alone in a fresh interpreter, as each child is: a framework that already ran
    # in this test process keeps the thread pools an earlier test sized.
    alone = []
    for framework in ("torch", "tf"):
        output = tmp_path / framework
        command = ["-m", "bench.reproduce_accuracy", "--output-dir", str(output), "--no-progress"]
        command += [*arguments, "--framework", framework]
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
        alone += read_results(output / "accuracy.json")[1]["runs"]

    def without_time(runs):
        return [{key: value for key, value in run.items() if key != "seconds"} for run in runs]

    assert without_time(together) == without_time(alone)


def test_children_started_before_a_failed_start_are_stopped(monkeypatch):
    """A Ctrl-C (or a failed start) while the second framework's process starts: the first one
    must not train on, orphaned, after the parent has reported the interruption."""
    import multiprocessing.context

    plan = Plan(("torch", "tf"), ("synthetic",), ("ibp",), (0,), 1, 16, quick=True)
    started = []
    real_start = multiprocessing.context.SpawnProcess.start

    def start(process):
        if started:
            raise KeyboardInterrupt
        real_start(process)
        started.append(process)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start)
    with pytest.raises(KeyboardInterrupt):
        side_by_side.train_side_by_side(plan, bar=None)
    (first,) = started
    assert first.exitcode is not None  # stopped and joined


@pytest.mark.slow
def test_same_seed_same_numbers(backend, tmp_path):
    arguments = ["--quick", "--framework", backend.name, "--dataset", "synthetic", "--epochs", "2"]
    arguments += ["--config", "ibp", "seed_fix_batch_sum_and_low_lr", "--seed", "7"]
    first, second = (_train(tmp_path / name, *arguments) for name in ("first", "second"))
    for one, other in zip(first["runs"], second["runs"], strict=True):
        one.pop("seconds"), other.pop("seconds")
        assert one == other


# Image folders ---------------------------------------------------------------------------------


def _write_png(path, colour, rng, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(0, 40, (size[1], size[0], 3))
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)


COLOURS = {"red_bird": (200, 20, 20), "blue_bird": (20, 20, 200)}


@pytest.fixture
def class_folders(tmp_path):
    """Two classes of five images each: four train and one test image per class."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for index in range(5):
            _write_png(tmp_path / "folders" / name / f"{index:03d}.png", colour, rng)
    return tmp_path / "folders"


@pytest.fixture
def cub_layout(tmp_path):
    """CUB-200-2011's own layout: two classes, two train and one test image each."""
    root, rng = tmp_path / "CUB_200_2011", np.random.default_rng(1)
    lines = {"images": [], "split": [], "labels": [], "classes": []}
    image_id = 0
    for class_id, (name, colour) in enumerate(COLOURS.items(), start=1):
        lines["classes"].append(f"{class_id} {class_id:03d}.{name}")
        for index in range(3):
            image_id += 1
            relative = f"{class_id:03d}.{name}/{name}_{index}.png"
            _write_png(root / "images" / relative, colour, rng)
            lines["images"].append(f"{image_id} {relative}")
            lines["split"].append(f"{image_id} {int(index < 2)}")
            lines["labels"].append(f"{image_id} {class_id}")
    files = {"images": "images.txt", "split": "train_test_split.txt"}
    files.update(labels="image_class_labels.txt", classes="classes.txt")
    for key, file_name in files.items():
        (root / file_name).write_text("\n".join(lines[key]) + "\n")
    return root


def test_class_folders_are_read_with_every_fifth_image_for_testing(class_folders):
    dataset = image_folder(class_folders, image_size=24)
    assert dataset.class_names == sorted(COLOURS)
    assert (len(dataset.train), len(dataset.test)) == (8, 2)
    assert list(dataset.test.labels) == [0, 1]
    images = dataset.test.load(np.arange(2))
    assert images.shape == (2, 24, 24, 3) and images.dtype == np.float32
    # Label 0 is blue_bird: its image must be blue, so labels and files agree.
    assert images[0, ..., 2].mean() > 0.6 > images[0, ..., 0].mean()


def test_cub_layout_follows_its_split_and_labels(cub_layout):
    dataset = image_folder(cub_layout, image_size=16)
    assert dataset.class_names == ["001.red_bird", "002.blue_bird"]
    assert list(dataset.train.labels) == [0, 0, 1, 1]
    assert list(dataset.test.labels) == [0, 1]
    red = dataset.test.load(np.arange(1))[0]
    assert red[..., 0].mean() > 0.6 > red[..., 2].mean()


@pytest.mark.parametrize("layout", ["class_folders", "cub_layout"])
def test_image_folder_trains_one_step(backend, tmp_path, layout, request):
    data_dir = request.getfixturevalue(layout)
    results = _train(
        tmp_path, "--dataset", "imagefolder", "--data-dir", str(data_dir), "--framework",
        backend.name, "--config", "ibp", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--recipe", "paper",
    )  # fmt: skip
    (run,) = results["runs"]
    assert run["epochs"] == 1 and run["diverged_at_epoch"] is None
    assert run["test_samples"] == 2 and run["chance_rate"] == 0.5
    assert np.isfinite(run["history"][0]["train_loss"])


# Bad input and usage: one line on stderr, exit 2, before any training -------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run gets as far as training."""

    def refuse(*arguments, **keywords):
        raise AssertionError("training started")

    monkeypatch.setattr(reproduce_accuracy, "run", refuse)


def _usage_error(capsys, *arguments):
    """Run reproduce-accuracy, expect exit status 2; return its one line of stderr."""
    with pytest.raises(SystemExit) as exit_info:
        reproduce_accuracy.main(["--no-progress", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("reproduce-accuracy: error: "), error
    assert "Traceback" not in error
    return error


def _folder_run(data_dir, tmp_path, *arguments):
    return [
        "--dataset", "imagefolder", "--data-dir", str(data_dir), "--output-dir",
        str(tmp_path / "out"), "--framework", available_backends()[0].name, "--image-size", "16",
        *arguments,
    ]  # fmt: skip


def _class_folders_with(root, counts):
    """Class folders under root with the given number of images each."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            _write_png(root / name / f"{index:03d}.png", (100, 100, 100), rng)
    return root


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
        # NumPy's legacy seeding (both runners) takes 32 bits: refused, not a traceback at training.
        (["--seed", str(2**32)], "--seed must be in [0, 4294967295], got 4294967296"),
        (["--seed", str(2**32 - 1), "--seeds", "2"], "got 4294967295 to 4294967296 (--seeds 2)"),
        (["--image-size", "-8"], "argument --image-size: "),
        (["--image-size", "0"], "argument --image-size: "),
        (["--reduce-dim", "0"], "argument --reduce-dim: "),
        (["--epochs", "0"], "argument --epochs: "),
        (["--backbone", "vgg19"], "invalid choice: 'vgg19'"),
        (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir"),
        (["--data-dir", "somewhere"], "--data-dir is read only with --dataset imagefolder"),
        # An empty path is the current folder to pathlib: results in the working tree.
        (["--output-dir", ""], "argument --output-dir: an empty path"),
        (["--checkpoint-dir", ""], "argument --checkpoint-dir: an empty path"),
        (["--compare-with", ""], "argument --compare-with: an empty path"),
        (["--dataset", "imagefolder", "--data-dir", ""], "argument --data-dir: an empty path"),
    ],
    ids=lambda value: " ".join(map(repr, value)) if isinstance(value, list) else "",
)
def test_bad_arguments_are_usage_errors(capsys, no_training, arguments, message):
    error = _usage_error(capsys, *arguments)
    assert message in error


def test_help_lists_every_backbone(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce_accuracy.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for name in BACKBONES:
        assert name in help_text
    assert "exit status" in help_text


def test_an_unwritable_output_folder_is_found_before_training(capsys, no_training, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    arguments = ["--quick", "--dataset", "synthetic", "--output-dir", str(blocker / "results")]
    error = _usage_error(capsys, *arguments)
    assert f"--output-dir {blocker / 'results'}: cannot write there" in error


def test_a_missing_data_folder_is_named(capsys, no_training, tmp_path):
    error = _usage_error(capsys, *_folder_run(tmp_path / "nowhere", tmp_path))
    assert f"--data-dir {tmp_path / 'nowhere'}: no such folder" in error


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({}, "found no class folders; a classifier needs at least 2 classes"),
        ({"only": 6}, "found 1 class (only); a classifier needs at least 2 classes"),
        ({"cats": 6, "dogs": 6, "empty": 0}, "no training images for class empty"),
        # Four images: all for training (every fifth is a test image), none left for testing.
        ({"cats": 6, "dogs": 4}, "no test images for class dogs"),
    ],
    ids=["empty folder", "one class", "empty class folder", "class without test images"],
)
def test_image_folders_without_two_usable_classes_are_rejected(
    capsys, no_training, tmp_path, counts, message
):
    data_dir = _class_folders_with(tmp_path / "data", counts)
    data_dir.mkdir(exist_ok=True)
    assert message in _usage_error(capsys, *_folder_run(data_dir, tmp_path))


def test_train_and_test_folders_with_different_classes_name_the_difference(
    capsys, no_training, tmp_path
):
    data_dir = tmp_path / "data"
    _class_folders_with(data_dir / "train", {"cats": 2, "dogs": 2})
    _class_folders_with(data_dir / "test", {"cats": 1, "dogs": 1, "owls": 1})
    error = _usage_error(capsys, *_folder_run(data_dir, tmp_path))
    assert "has class folders that" in error and "lacks: owls" in error
    (data_dir / "test" / "owls" / "000.png").unlink()
    (data_dir / "test" / "owls").rmdir()
    (data_dir / "test" / "dogs" / "000.png").unlink()
    assert "no test images for class dogs" in _usage_error(capsys, *_folder_run(data_dir, tmp_path))


def test_a_cub_table_with_a_missing_line_is_named(capsys, no_training, tmp_path, cub_layout):
    labels = cub_layout / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    error = _usage_error(capsys, *_folder_run(cub_layout, tmp_path))
    assert f"{labels} has no line for image id 6" in error


def test_a_file_that_is_not_an_image_is_named_before_training(
    capsys, no_training, tmp_path, class_folders
):
    broken = class_folders / "red_bird" / "002.png"
    broken.write_bytes(b"not a png")
    error = _usage_error(capsys, *_folder_run(class_folders, tmp_path))
    assert f"cannot read image {broken}" in error


def test_an_image_that_fails_to_decode_is_named(class_folders):
    dataset = image_folder(class_folders, image_size=16)
    broken = dataset.train.paths[0]
    broken.write_bytes(broken.read_bytes()[:60])  # the header reads, the pixels do not
    with pytest.raises(IBPInputError, match=f"cannot read image {re.escape(str(broken))}"):
        dataset.train.load(np.arange(2))


def test_the_torch_loader_gives_the_same_augmented_batches_with_any_number_of_workers(
    class_folders,
):
    import_framework("torch")
    from bench.accuracy.pipeline_torch import make_loader

    dataset = image_folder(class_folders, image_size=16)
    batches = [np.array([0, 3, 5]), np.array([7, 1]), np.array([2, 4, 6])]
    in_process = list(make_loader(dataset.train, batches, seed=3, epoch=1))
    in_workers = list(make_loader(dataset.train, batches, seed=3, epoch=1, workers=2))
    next_epoch = list(make_loader(dataset.train, batches, seed=3, epoch=2))
    for (images, labels), (images_w, labels_w), indices in zip(
        in_process, in_workers, batches, strict=True
    ):
        assert images.shape == (len(indices), 3, 16, 16) and labels.tolist() == list(
            dataset.train.labels[indices]
        )
        assert (images == images_w).all() and (labels == labels_w).all()
    # Another epoch draws other crops and flips for the same samples.
    assert any((a[0] != b[0]).any() for a, b in zip(in_process, next_epoch, strict=True))


def test_question_set_up_with_fewer_test_images_than_its_batch_is_rejected(
    capsys, no_training, tmp_path, class_folders
):
    error = _usage_error(capsys, *_folder_run(class_folders, tmp_path, "--config", "seed"))
    assert "--config seed runs on full batches of 16 only" in error
    assert "has 8 train images" in error


def test_every_run_goes_to_a_fresh_run_folder(tmp_path, class_folders):
    args = reproduce_accuracy.parse_args(
        ["--dataset", "imagefolder", "--data-dir", str(class_folders)]
    )
    assert args.output_dir.parent == reproduce_accuracy.RUNS_DIR
    assert args.output_dir.name.startswith(f"{class_folders.name}-")
    for arguments, name in (([], "accuracy-"), (["--study", "seed-30"], "accuracy-seed-30-")):
        output = reproduce_accuracy.parse_args(arguments).output_dir
        assert output.parent == reproduce_accuracy.RUNS_DIR and output.name.startswith(name)
        assert not output.exists()
    regenerate = reproduce_accuracy.parse_args(["--output-dir", "results"]).output_dir
    assert regenerate == reproduce_accuracy.RESULTS_DIR


# The 30 % study --------------------------------------------------------------------------------


def test_unbalanced_synthetic_has_one_class_at_30_percent():
    dataset = EMBEDDED_DATASETS["synthetic-30"](seed=0, train_per_class=20, test_per_class=10)
    for split in (dataset.train, dataset.test):
        counts = np.bincount(split.labels, minlength=SYNTHETIC_NUM_CLASSES)
        assert counts[0] == round(0.3 * len(split)), counts
        assert counts[1:].max() - counts[1:].min() <= 1, counts
    assert dataset.chance_rate == pytest.approx(0.3, abs=0.01)


def _statistics(test_labels, answers, train_labels, evaluated_in=4, batch_size=4):
    dataset = Dataset("d", list("abc"), Split(None, np.array(train_labels)), Split(None, None))
    dataset.test = Split(None, np.array(test_labels))
    batches = batch_indices(len(test_labels), evaluated_in)
    answers = np.array(answers).reshape(-1)
    given = [answers[indices] for indices in batches]
    return answer_statistics(dataset, batches, given, batch_size)


def test_answers_are_told_in_batches_of_16_whatever_the_batch_evaluated():
    """A model evaluated one sample at a time gives every batch it was evaluated in one answer;
    that says nothing of how it decides. In the question's batches of 16 a per-sample model that
    is right 6 times in 7 is not unanimous, and its verdict is that it learns."""
    labels = np.arange(112) % 7
    answers = np.where(np.arange(112) % 7 == 6, 0, labels)  # wrong on one class in 7
    one_by_one = _statistics(labels, answers, labels, evaluated_in=1, batch_size=16)
    assert one_by_one == _statistics(labels, answers, labels, evaluated_in=112, batch_size=16)
    assert one_by_one.unanimous_batches == 0.0
    run = Run(
        framework="torch", dataset="synthetic", config="first_order", seed=0,
        test_accuracy=6 / 7, chance_rate=1 / 7, test_samples=112, batch_size=1, epochs=1,
        diverged_at_epoch=None, seconds=1.0, answers=one_by_one, initial_answers=None,
    )  # fmt: skip
    assert verdicts.verdict(run) is verdicts.Verdict.LEARNS
    # The question's head, one answer per batch of 16, stays unanimous in any cut of 16.
    per_batch = np.repeat(np.arange(7), 16)
    assert _statistics(labels, per_batch, labels, 16, 16).unanimous_batches == 1.0


def test_answer_statistics_tell_batch_majority_from_the_class_prior():
    labels = [0, 1, 1, 2, 2, 2, 2, 1]  # batch majorities: 1, then 2
    train = [0, 0, 0, 1, 2]  # the training set's majority class: 0
    following = _statistics(labels, [[1, 1, 1, 1], [2, 2, 2, 2]], train)
    assert following == Answers(
        unanimous_batches=1.0,
        batch_majority_answers=1.0,
        majority_class_answers=0.0,
        batch_majority_ceiling=(2 + 3) / 8,
    )
    prior = _statistics(labels, [[0, 0, 0, 0], [0, 0, 0, 0]], train)
    assert prior.unanimous_batches == 1.0 and prior.majority_class_answers == 1.0
    assert prior.batch_majority_answers == 0.0
    per_sample = _statistics(labels, [[0, 1, 1, 2], [2, 2, 0, 1]], train)
    assert per_sample.unanimous_batches == 0.0


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"unanimous_batches": 1.0, "batch_majority_answers": 0.9, "majority_class_answers": 0.3},
         "the batch-majority ceiling"),
        ({"unanimous_batches": 1.0, "batch_majority_answers": 0.5, "majority_class_answers": 1.0},
         "the class prior"),
        ({"unanimous_batches": 1.0, "batch_majority_answers": 0.2, "majority_class_answers": 0.2},
         "unrelated to the batch's majority class"),
        ({"unanimous_batches": 0.1, "batch_majority_answers": 0.2, "majority_class_answers": 0.2},
         "answers per sample"),
    ],
)  # fmt: skip
def test_mechanism_names_what_the_answers_show(answers, expected):
    run = _fake_run("seed", [0.3])
    run = replace(run, answers=replace(run.answers, **answers))
    assert expected in verdicts.mechanism(run)


def test_the_study_has_its_own_data_configurations_and_files(capsys, no_training):
    args = reproduce_accuracy.parse_args(["--study", "seed-30"])
    assert args.dataset == ["synthetic", "synthetic-30"]
    assert "seed_pretrained" in args.config and "seed_pretrained_fix_low_lr" in args.config
    assert result_files.names(args.study)[0] == "accuracy-seed-30.json"
    assert "seed_pretrained" not in DEFAULT_CONFIGURATIONS
    assert "chooses its own" in _usage_error(capsys, "--study", "seed-30", "--config", "ibp")


def test_seed_pretrained_starts_from_the_backbone_that_ibp_trained(backend):
    runner = importlib.import_module(f"bench.accuracy.runner_{backend.name}").Runner("cpu", 1)
    dataset = synthetic(seed=0, train_per_class=4, test_per_class=3)
    options = TrainingOptions(epochs=2, batch_size=16, seed=0)
    model = model_options()
    cache = RunCache()
    record = train(runner, CONFIGURATIONS["seed_pretrained"], dataset, options, model, cache)
    trained = cache.trained(runner, dataset, "ibp")
    runner.seed(0)
    initial = runner.build_model(CONFIGURATIONS["ibp"], dataset, model)
    images = dataset.test.load(np.arange(4))
    # The recipe's second stage trains the backbone, so the study's one differs from the seeded
    # initialisation; the cache holds the trained one's features (it checks them on every use).
    moved = runner.numpy(runner.backbone_features(trained, images)) - runner.numpy(
        runner.backbone_features(initial, images)
    )
    assert np.abs(moved).max() > 1e-4
    cache.features(runner, trained, dataset, "test", "ibp")
    with pytest.raises(RuntimeError, match="not the one the cache was made from"):
        cache.features(runner, initial, dataset, "test", "ibp")
    assert record.config == "seed_pretrained" and record.epochs == 2 and record.seed == 0
    assert record.initial_answers is not None and not record.diverged


def _fake_run(config, accuracies, diverged_at=None, dataset="synthetic", framework="torch", seed=0):
    history = tuple(Epoch(e + 1, "question", 1.0, 0.5, a) for e, a in enumerate(accuracies))
    answers = Answers(0.0, 0.0, 0.0, 0.28)
    return Run(
        framework=framework, dataset=dataset, config=config, seed=seed,
        test_accuracy=accuracies[-1], chance_rate=1 / 7, test_samples=448, batch_size=16,
        epochs=len(accuracies), diverged_at_epoch=diverged_at, seconds=1.0, answers=answers,
        initial_answers=None, history=history,
    )  # fmt: skip


def _results(runs):
    metadata = {"command": "reproduce-accuracy --quick", "git_commit": "abc", "seed": 0}
    return Results(metadata, tuple(runs))


def test_plot_separates_families_and_equal_curves_and_labels_divergence(tmp_path):
    runs = [
        _fake_run("ibp", [0.5, 0.9]),
        _fake_run("seed", [1 / 7, 1 / 7]),
        _fake_run("seed_fix_eps_ones", [1 / 7, 1 / 7]),
        _fake_run("seed_fix_frozen_backbone", [0.0], diverged_at=1),
    ]
    figure = plot(_results(runs), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert "reproduce-accuracy --quick" in figure.get_suptitle()
    (axis,) = figure.axes
    lines = {line.get_label(): line for line in axis.get_lines()}
    # The two seed curves have the same numbers but are drawn apart; ibp is drawn as measured.
    assert lines["seed"].get_ydata()[0] != lines["seed_fix_eps_ones"].get_ydata()[0]
    np.testing.assert_allclose(lines["ibp"].get_ydata(), [50, 90])
    assert lines["ibp"].get_color() != lines["seed"].get_color()
    assert family("seed") == family("seed_fix_eps_ones") != family("ibp")
    labels = [text.get_text() for text in axis.texts]
    assert labels == ["seed_fix_frozen_backbone: diverged"]
    assert not axis.collections  # one seed: no band


def test_plot_shows_the_range_over_seeds_as_a_band(tmp_path):
    runs = [
        _fake_run("ibp", [0.5, 0.8], seed=0),
        _fake_run("ibp", [0.6, 0.9], seed=1),
        _fake_run("ibp", [0.4, 0.95], seed=2),
        _fake_run("seed_fix_frozen_backbone", [1 / 7, 1 / 7], seed=0),
        _fake_run("seed_fix_frozen_backbone", [0.0], diverged_at=1, seed=1),
        _fake_run("seed_fix_frozen_backbone", [1 / 7, 1 / 7], seed=2),
    ]
    figure = plot(_results(runs), tmp_path / "plot.png")
    (axis,) = figure.axes
    lines = {line.get_label(): line for line in axis.get_lines()}
    np.testing.assert_allclose(lines["ibp"].get_ydata(), [50, 90])  # the median
    (band, _) = axis.collections  # one band per configuration with several seeds
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert (low, high) == pytest.approx((40, 95))
    labels = [text.get_text() for text in axis.texts]
    assert labels == ["seed_fix_frozen_backbone: diverged in 1 of 3 seeds"]
    assert "median of seeds 0, 1, 2" in figure.get_suptitle()


def test_the_study_names_the_runs_near_30_percent_and_their_mechanism():
    prior = _fake_run("seed_pretrained", [0.3], dataset="synthetic-30")
    prior = replace(
        prior,
        test_accuracy=0.299,
        chance_rate=0.299,
        answers=replace(prior.answers, unanimous_batches=1.0, majority_class_answers=1.0),
        initial_answers=replace(prior.answers, majority_class_answers=0.0),
    )
    balanced = _fake_run("seed", [1 / 7])
    balanced = replace(balanced, initial_answers=balanced.answers)
    text = "\n".join(seed_30.answers([prior, balanced]))
    assert "- `seed_pretrained` on `synthetic-30` (torch, seed 0): 29.9 %; it answers the" in text
    assert "so training taught it that" in text
    assert "- `seed` on" not in text
