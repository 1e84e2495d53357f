"""The head as a layer of its framework: classifier, persistence, graph mode, autocast."""

from pathlib import Path

import numpy as np
import pytest

import reference
from impls.backends import Backend
from impls.testing.tolerances import condition_number, relative_error, tolerance

from .conftest import import_framework


def test_head_with_classifier_matches_reference(backend: Backend) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 5, 5))
    head = backend.impl.IBPHead(
        in_channels=4, num_classes=2, **({"dtype": "float64"} if backend.name == "tf" else {})
    )
    if backend.name == "torch":
        head = head.double()
    logits = backend.numpy(head(backend.feature_map(x)))
    if backend.name == "torch":
        weight = head.classifier.weight.detach().numpy()
        bias = head.classifier.bias.detach().numpy()
    else:
        kernel, bias = (w.numpy() for w in head.classifier.weights)
        weight = kernel.T
    expected = reference.linear(reference.ibp_head(x), weight, bias)
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_keras_model_trains_in_graph_mode_and_reloads(tmp_path: Path, method: str) -> None:
    keras = import_framework("keras")
    import impls.tf as ibp_tf

    rng = np.random.default_rng(1)
    images, labels = rng.random((8, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 8)
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            ibp_tf.IBPHead(num_classes=3, method=method),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(True))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images, labels, batch_size=3, epochs=1, verbose=0)  # last batch of 2
    assert np.isfinite(history.history["loss"][0])
    after = [w.numpy() for w in model.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    assert all(not np.array_equal(b, a) for b, a in zip(before, after, strict=True)), (
        "a weight did not train"
    )

    path = tmp_path / "ibp.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.layers[-1].get_config() == model.layers[-1].get_config()
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_head_keeps_the_input_dtype(backend: Backend, dtype: str) -> None:
    """Half precision is computed in float32 inside and returned in its dtype; float64 is computed
    in float64 (so it meets the float64 reference at float64 round-off)."""
    x = np.random.default_rng(5).random((2, 3, 4, 4))
    head = backend.impl.IBPHead(3)
    out = head(backend.feature_map(x, dtype))
    assert backend.dtype_name(out) == dtype
    expected = reference.ibp_head(x)
    kappa = condition_number(reference.bilinear_pool(x))
    allowed = tolerance("head", "forward", dtype, 3, kappa)
    assert relative_error(backend.numpy(out), expected) < allowed


def test_keras_head_config_round_trip() -> None:
    import_framework("tensorflow")
    import impls.tf as ibp_tf

    head = ibp_tf.IBPHead(
        in_channels=5,
        num_classes=4,
        eps=1e-3,
        method="newton_schulz",
        num_iters=9,
        backward="autograd",
        delta=1e-4,
    )
    clone = ibp_tf.IBPHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()


def test_torch_head_under_autocast_stays_float32_inside() -> None:
    torch = import_framework("torch")
    import impls.torch as ibp_torch

    x = torch.rand(2, 6, 5, 5)
    features = ibp_torch.IBPHead(in_channels=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = features(x)
    # Pool, root, signed sqrt and L2 ignore autocast: float32, and the same numbers as without it.
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, features(x), rtol=1e-6, atol=1e-7)

    head = ibp_torch.IBPHead(in_channels=6, num_classes=3)
    expected = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
    # The classifier is autocast's to run in bfloat16 (8-bit mantissa: each operand rounded by up
    # to 2^-8 relative), so the logits may move by a few 1e-3 of the vector's unit norm.
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=2e-2, rtol=2e-2)
    logits.float().sum().backward()


def test_torch_state_dict_round_trip() -> None:
    torch = import_framework("torch")
    import impls.torch as ibp_torch

    head = ibp_torch.IBPHead(in_channels=4, num_classes=3)
    clone = ibp_torch.IBPHead(in_channels=4, num_classes=3)
    clone.load_state_dict(head.state_dict())
    x = torch.rand(2, 4, 3, 3)
    torch.testing.assert_close(clone(x), head(x))
