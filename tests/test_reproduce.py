"""reproduce-accuracy: the synthetic data's promise, the question's set-up against the correct
model, determinism, and the image-folder path. Nothing here downloads anything."""

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import reproduce_accuracy
from bench.accuracy.configurations import SEED_BUGS
from bench.accuracy.data import SYNTHETIC_MEAN, SYNTHETIC_NUM_CLASSES, SYNTHETIC_STD, synthetic
from bench.accuracy.image_folders import image_folder
from impls.backends import BACKENDS


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
    return json.loads((output / "accuracy.json").read_text())


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
    head = backend.impl.IBPHead(x.shape[1], eps=_seed_model(backend).KERAS_EPSILON, delta=0.0)
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
    backends = [b for b in BACKENDS.values() if b.is_available()]
    if len(backends) < 2:
        pytest.skip("needs both frameworks")
    # No dead channel: with eps * ones its singular value is float32 round-off, whose (fourth)
    # root differs from one SVD implementation to the next. That is the question's bug, not ours.
    x = _feature_maps(dead_channel=False)
    vectors = [_seed_vectors(b, b.feature_map(x, "float32"), bugs) for b in backends]
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-3, atol=1e-5)


def test_question_head_in_tensorflow_is_the_question_code():
    """With every bug on, the TensorFlow head computes what the question's own functions
    (examples/seed_question_tf.py, kept verbatim) compute."""
    example = Path(__file__).parents[1] / "examples" / "seed_question_tf.py"
    if not example.exists() or not BACKENDS["tf"].is_available():
        pytest.skip("needs TensorFlow and examples/seed_question_tf.py")
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
    assert len(ibp["history"]) == results["metadata"]["epochs"] == reproduce_accuracy.QUICK_EPOCHS
    assert {"train_loss", "train_accuracy", "test_accuracy"} <= set(ibp["history"][-1])
    assert {"commit", "versions", "device", "threads", "date", "seed"} <= set(results["metadata"])


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
