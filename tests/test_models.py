"""Full IBP models in both frameworks: architectures, weight transfer, checkpoints, training.

Every comparison between the frameworks is held to a bound derived from rounding, never to a
number measured on one CPU: backbone features to the gamma_n bound of their convs
(`backbone_rounding_bound`), logits in float64 to what the head's conditioning makes of the
features' difference (`head_difference_bound`). In float32 the rank-deficient covariances of small
images (fewer locations than channels) let the root amplify rounding past any bound that could
tell a copy from a near miss, so there the features and the exact round trip of the weights are
what is checked.
"""

import contextlib

import numpy as np
import pytest

from .conftest import import_framework

torch = import_framework("torch")
tf = import_framework("tensorflow")
keras = import_framework("keras")

import impls  # noqa: E402
import reference  # noqa: E402
from impls import WeightTransferError, transfer_weights  # noqa: E402
from impls.architectures import CAFFE_MEAN_RGB_UNIT, TORCHVISION_URLS  # noqa: E402
from impls.testing.tolerances import (  # noqa: E402
    UNIT_ROUNDOFF,
    condition_number,
    relative_error,
    tolerance,
)
from impls.tf import models as keras_models  # noqa: E402
from impls.torch import models as torch_models  # noqa: E402
from reference.conventions import DEFAULT_EPS, SIGNED_SQRT_DELTA  # noqa: E402

NUM_CLASSES = 5
#: image side and channel reduction per backbone: small images keep VGG/ResNet cheap on a CPU;
#: ResNet's 2048 channels would make the head's eigendecomposition dominate, so it reduces.
CASES = {"small": (32, None), "vgg16": (32, None), "resnet50": (64, 32), "resnet50_v1": (64, 32)}


def images(side, batch=2, seed=0, dtype="float32"):
    """RGB noise images in [0, 1], channels-last, each with its own brightness and colour cast so
    that their features (dominated by their mean) differ."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.3, 3.0, size=(batch, 1, 1, 3))
    return (rng.uniform(size=(batch, side, side, 3)) ** gamma).astype(dtype)


def channels_first(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def torch_forward(module, x):
    with torch.no_grad():
        out = module(channels_first(x)).numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


@contextlib.contextmanager
def keras_floatx(dtype):
    # Keras fixes its global dtype policy when the first layer is made: floatx alone is not
    # enough once any other test has built a layer in this process.
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def randomise_torch(model, seed=1):
    """Give every BatchNorm, bias and preprocessing constant a value its default would not have,
    so that a transfer which dropped or swapped one cannot pass."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.2, 0.2)
                uniform(module.running_mean, -0.2, 0.2)
                uniform(module.running_var, 0.5, 2.0)
            elif isinstance(module, torch_models.ImageNormalization):
                uniform(module.mean, 0.3, 0.6)
                uniform(module.std, 0.2, 0.3)
            elif isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and module.bias is not None:
                uniform(module.bias, -0.05, 0.05)
    return model


def randomise_keras(model, seed=1):
    rng = np.random.default_rng(seed)

    def uniform(variable, low, high):
        variable.assign(rng.uniform(low, high, variable.shape).astype(variable.dtype))

    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            uniform(layer.gamma, 0.5, 1.5)
            uniform(layer.beta, -0.2, 0.2)
            uniform(layer.moving_mean, -0.2, 0.2)
            uniform(layer.moving_variance, 0.5, 2.0)
        elif isinstance(layer, keras_models.ImageNormalization):
            uniform(layer.mean, 0.3, 0.6)
            uniform(layer.std, 0.2, 0.3)
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            uniform(layer.bias, -0.05, 0.05)
    uniform(model.get_layer("head").classifier.bias, -0.05, 0.05)
    return model


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it on its worker."""
    torch.manual_seed(0)
    keras.utils.set_random_seed(0)


def conv_fan_ins(model):
    """Fan-in (inputs per output, bias included) of every conv of a torch or Keras model."""
    if isinstance(model, torch.nn.Module):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        return [m.weight[0].numel() + 1 for m in convs]
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    return [int(np.prod(layer.kernel.shape[:3])) + 1 for layer in convs]


def backbone_rounding_bound(model, dtype):
    """The relative difference two correct frameworks may show on the same backbone's features.

    Rounding model: a conv output is a dot product of n = fan-in terms plus a bias, off by at most
    n * u relative to the sum of the terms' magnitudes (the classical gamma_n bound); after
    BatchNorm or He initialisation every layer keeps its activations at unit scale, so relative
    errors add along the depth instead of growing. Depth = every conv of the model (the
    shortcut convs of ResNet counted as if in series): depth * max fan-in * u bounds the sum.
    Measured float64 differences (~3e-15 for ResNet-50) sit four decades below it, so no CPU's
    choice of kernels or summation order can reach it, while a wrong weight moves features by O(1).
    """
    fan_ins = conv_fan_ins(model)
    return len(fan_ins) * max(fan_ins) * UNIT_ROUNDOFF[dtype]


def head_difference_bound(features, other_features, weight, logits, dtype, eps=DEFAULT_EPS):
    """Largest relative difference of logits that two correct heads (pool, sqrtm, signed sqrt, L2,
    classifier `weight` (K, C*C)) may show when one sees `features` (B, H, W, C) and the other
    `other_features`, each rounding in `dtype`. First-order perturbation bound per sample, with X
    the (C, N) feature matrix, A = X X^T / N + eps I, A0 = A - eps I, r the features' relative
    difference and u the unit round-off; each step's factor is a norm bound, not a fit:
    - pool: dA = (dX X^T + X dX^T) / N, ||dA|| <= 2 r sqrt(lmax(A0) tr(A0)); each head's sums of N
      terms add N u tr(A0) and its (backward stable) eigensolver C u ||A||.
    - root: the derivative of sqrtm divides by s_i + s_j >= 2 sqrt(lmin(A)); each head's
      reconstruction U S U^T adds C u ||Z||.
    - signed sqrt: slope <= 1 / (2 sqrt(delta)); L2: Jacobian norm 1 / ||Y||.
    - classifier: ||W||_2 ||dv||, and each head's C^2-term dot products add C^2 u ||W||_F.
    A factor 4 covers the second-order terms (r << 1 here). Rank-deficient covariances (fewer
    locations than channels) have lmin = eps, which is what makes this bound large in float32.
    """
    u = UNIT_ROUNDOFF[dtype]
    _, h, w, c = features.shape
    n = h * w
    spectral, frobenius = np.linalg.norm(weight, 2), np.linalg.norm(weight)
    bounds = []
    for x, other, sample_logits in zip(features, other_features, logits, strict=True):
        x, other = (m.astype(np.float64).reshape(n, c).T for m in (x, other))
        r = np.linalg.norm(other - x) / np.linalg.norm(x)
        a0 = x @ x.T / n
        a = a0 + eps * np.eye(c)
        eigenvalues = np.linalg.eigvalsh(a)
        trace = np.trace(a0)
        d_a = 2 * r * np.sqrt(eigenvalues[-1] * trace) + 2 * u * (n * trace + c * np.linalg.norm(a))
        root_norm = np.sqrt(np.sum(eigenvalues))
        d_z = d_a / (2 * np.sqrt(eigenvalues[0])) + 2 * c * u * root_norm
        y = reference.signed_sqrt(reference.sqrtm(a[None]))
        d_v = d_z / (2 * np.sqrt(SIGNED_SQRT_DELTA)) / np.linalg.norm(y)
        d_logits = spectral * d_v + 2 * c * c * u * frobenius
        bounds.append(4 * d_logits / np.linalg.norm(sample_logits))
    return float(max(bounds))


def assert_informative(logits):
    """Random models can collapse to input-independent logits; comparing those proves nothing.
    Deep random nets come close (random VGG-16 moves its logits by ~1 % between images), so the
    bar is that the images' differences stand far above the tolerances of the comparisons."""
    spread = np.ptp(logits, axis=0).max() / np.abs(logits).max()
    assert spread > 1e-3, f"the logits barely depend on the image (spread {spread:.2g})"


def assert_same_function(torch_model, keras_model, x, dtype):
    """Both models compute the same function up to rounding: features within the backbone's
    rounding bound, logits within what the head makes of the features' measured difference."""
    torch_features = torch_forward(torch_model.backbone, x)
    keras_features = keras_model.get_layer("backbone")(x).numpy()
    feature_error = relative_error(keras_features, torch_features)
    assert feature_error < backbone_rounding_bound(torch_model, dtype)
    torch_logits, keras_logits = torch_forward(torch_model, x), keras_model(x).numpy()
    weight = torch_model.head.classifier.weight.detach().double().numpy()
    allowed = head_difference_bound(torch_features, keras_features, weight, torch_logits, dtype)
    # Informative: far below what an untransferred model differs by (> 1e-2, checked by callers).
    assert allowed < 1e-3
    assert relative_error(keras_logits, torch_logits) < allowed


@pytest.mark.parametrize("name", list(CASES))
def test_transfer_gives_the_same_logits_both_ways(name):
    """float64, so that the bounds are tight enough to tell a copy from a near miss."""
    side, reduce_dim = CASES[name]
    x = images(side, dtype="float64")
    torch_model, torch_copy = (
        torch_models.build_model(name, NUM_CLASSES, reduce_dim=reduce_dim).double().eval()
        for _ in range(2)
    )
    with keras_floatx("float64"):
        keras_model = keras_models.build_model(name, NUM_CLASSES, reduce_dim=reduce_dim)

    torch_logits, untouched = torch_forward(randomise_torch(torch_model), x), keras_model(x).numpy()
    transfer_weights(torch_model, keras_model)
    assert_informative(torch_logits)
    assert relative_error(untouched, torch_logits) > 1e-2  # the copy is what makes them agree
    assert_same_function(torch_model, keras_model, x, "float64")

    keras_logits = randomise_keras(keras_model, seed=2)(x).numpy()
    assert relative_error(torch_forward(torch_copy, x), keras_logits) > 1e-2
    transfer_weights(keras_model, torch_copy)
    assert_same_function(torch_copy, keras_model, x, "float64")


@pytest.mark.parametrize("name", list(CASES))
def test_transfer_in_float32_and_back(name):
    """float32 features agree within the backbone's rounding bound and the weights survive the
    round trip bit for bit. The logits are compared in float64 (above): on these rank-deficient
    covariances (ResNet: 4 locations, 32 channels) the root's conditioning amplifies float32
    rounding beyond any bound that could tell a copy from a miss."""
    side, reduce_dim = CASES[name]
    x = images(side)
    torch_model = randomise_torch(
        torch_models.build_model(name, NUM_CLASSES, reduce_dim=reduce_dim)
    )
    torch_model.eval()
    keras_model = keras_models.build_model(name, NUM_CLASSES, reduce_dim=reduce_dim)
    transfer_weights(torch_model, keras_model)

    torch_features = torch_forward(torch_model.backbone, x)
    keras_features = keras_model.get_layer("backbone")(x).numpy()
    allowed = backbone_rounding_bound(torch_model, "float32")
    assert relative_error(keras_features, torch_features) < allowed

    returned = torch_models.build_model(name, NUM_CLASSES, reduce_dim=reduce_dim)
    transfer_weights(keras_model, returned)
    original, copy = torch_model.state_dict(), returned.state_dict()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(copy[key], value, rtol=0, atol=0, msg=key)


def test_transfer_copies_batch_norm_epsilon_into_traced_models():
    """eps is not a weight; with running variances near it, a stale eps changes the features."""
    x = images(16)
    torch_model = randomise_torch(torch_models.build_model("small", NUM_CLASSES, reduce_dim=8))
    batch_norm = torch_model.backbone.reduce[1]
    batch_norm.eps = 1e-3
    with torch.no_grad():
        batch_norm.running_var.fill_(1e-4)
    keras_model = keras_models.build_model("small", NUM_CLASSES, reduce_dim=8)
    keras_backbone = keras_model.get_layer("backbone")
    keras_backbone.predict(x, verbose=0)  # traces with Keras' eps
    transfer_weights(torch_model, keras_model)
    assert keras_backbone.get_layer("reduce.1").epsilon == 1e-3
    expected = torch_forward(torch_model.backbone.eval(), x)
    allowed = backbone_rounding_bound(torch_model, "float32")
    assert relative_error(keras_backbone.predict(x, verbose=0), expected) < allowed


@pytest.mark.parametrize(
    ("torch_args", "keras_args", "message"),
    [
        (("small", 5), ("vgg16", 5), "different layers"),
        (("small", 5), ("small", 6), "shape"),
        (("small", 5), ("small", 5, None, 8), "different layers"),
        (("resnet50", 5, None, 8), ("resnet50_v1", 5, None, 8), "bias"),
    ],
    ids=["other-backbone", "other-classes", "extra-reduction", "resnet-v1.5-vs-v1"],
)
def test_transfer_refuses_different_architectures(torch_args, keras_args, message):
    torch_model = torch_models.build_model(*torch_args)
    keras_model = keras_models.build_model(*keras_args)
    for src, dst in [(torch_model, keras_model), (keras_model, torch_model)]:
        with pytest.raises(WeightTransferError, match=message):
            transfer_weights(src, dst)


def test_transfer_needs_one_model_of_each_framework():
    model = torch_models.build_model("small", NUM_CLASSES)
    with pytest.raises(WeightTransferError, match="one torch and one Keras"):
        impls.transfer_weights(model, model)


# ----- architectures -----


def test_small_backbone_shapes():
    x = images(48)
    torch_backbone = torch_models.build_backbone("small")
    keras_backbone = keras_models.build_backbone("small")
    assert torch_backbone.out_channels == 64
    assert torch_forward(torch_backbone, x).shape == (2, 12, 12, 64)
    assert keras_backbone(x).shape == (2, 12, 12, 64)
    assert keras_backbone.layers[-1].name == "features.9"  # ends in a ReLU
    assert isinstance(torch_backbone.features[-1], torch.nn.ReLU)


def test_torchvision_layout():
    """Key names, shapes and parameter counts of torchvision's VGG-16 features (14,714,688
    parameters) and ResNet-50 without fc (23,508,032), so its checkpoints load as they are."""
    vgg = torch_models.build_backbone("vgg16").state_dict()
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")}
    assert set(vgg) - {"preprocess.mean", "preprocess.std"} == expected
    assert sum(v.numel() for k, v in vgg.items() if not k.startswith("preprocess")) == 14_714_688

    resnet = torch_models.build_backbone("resnet50")
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items()}
    assert len(shapes) == 320 - 2 + 2  # torchvision's keys, minus fc, plus the preprocessing
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer3.0.downsample.0.weight"] == (1024, 512, 1, 1)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert resnet.layer2[0].conv2.stride == (2, 2) and resnet.layer2[0].conv1.stride == (1, 1)
    assert sum(p.numel() for p in resnet.parameters()) == 23_508_032


def test_keras_resnet_variants_match_their_sources():
    """Trainable counts: torchvision's ResNet-50 without fc and keras.applications' ResNet50
    without top (23,534,592: the v1 convs carry biases)."""
    counts = {
        name: sum(
            int(np.prod(v.shape)) for v in keras_models.build_backbone(name).trainable_weights
        )
        for name in ("resnet50", "resnet50_v1")
    }
    assert counts == {"resnet50": 23_508_032, "resnet50_v1": 23_534_592}


def test_any_input_size_and_channel_reduction():
    torch_backbone = torch_models.build_backbone("resnet50", reduce_dim=16)
    keras_backbone = keras_models.build_backbone("resnet50", reduce_dim=16)
    x = images(45, batch=1)  # odd sizes exercise the padding of strided convs and pools
    assert torch_backbone.out_channels == 16
    assert torch_forward(torch_backbone.eval(), x).shape == (1, 2, 2, 16)
    assert keras_backbone(x).shape == (1, 2, 2, 16)
    for side in (32, 57):
        logits = keras_models.build_model("small", NUM_CLASSES)(images(side, batch=3))
        assert logits.shape == (3, NUM_CLASSES)


def test_unknown_backbone_and_weights_are_refused(tmp_path):
    for module in (torch_models, keras_models):
        with pytest.raises(ValueError, match="unknown backbone"):
            module.build_backbone("vgg19")
        with pytest.raises(ValueError, match="path"):
            module.build_backbone("small", weights=str(tmp_path / "missing.file"))


# ----- ImageNet weights, without the network -----


def test_torch_imagenet_weights_come_from_torchvision(monkeypatch):
    source = torch_models.build_backbone("vgg16")
    checkpoint = {k: v for k, v in source.state_dict().items() if not k.startswith("preprocess")}
    checkpoint["classifier.6.weight"] = torch.zeros(1000, 4096)  # torchvision's ImageNet classifier
    requested = []

    def fake_download(url, *args, **kwargs):
        requested.append(url)
        return checkpoint

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    backbone = torch_models.build_backbone("vgg16", weights="imagenet").eval()
    assert requested == [TORCHVISION_URLS["vgg16"]]
    x = images(32)
    np.testing.assert_array_equal(torch_forward(backbone, x), torch_forward(source.eval(), x))
    with pytest.raises(ValueError, match="no ImageNet weights"):
        torch_models.build_backbone("resnet50_v1", weights="imagenet")
    assert requested == [TORCHVISION_URLS["vgg16"]]


@pytest.mark.parametrize(
    ("name", "application", "module", "last_layer"),
    [
        ("vgg16", "VGG16", "vgg16", "block5_conv3"),
        ("resnet50_v1", "ResNet50", "resnet50", "conv5_block3_out"),
    ],
)
def test_keras_imagenet_weights_come_from_keras_applications(
    monkeypatch, name, application, module, last_layer
):
    """Random keras.applications weights stand in for the ImageNet ones: the backbone on RGB in
    [0, 1] must compute what keras.applications computes on preprocess_input(255 * RGB)."""
    build_application = getattr(keras.applications, application)
    sources = []

    def without_download(**kwargs):
        sources.append(build_application(**{**kwargs, "weights": None}))
        return sources[-1]

    monkeypatch.setattr(keras.applications, application, without_download)
    backbone = keras_models.build_backbone(name, weights="imagenet")
    source = sources[0]
    reference = keras.Model(source.input, source.get_layer(last_layer).output)
    preprocess_input = getattr(keras.applications, module).preprocess_input
    x = images(64)
    expected = reference(preprocess_input(255.0 * x)).numpy()
    allowed = backbone_rounding_bound(backbone, "float32")
    assert relative_error(backbone(x).numpy(), expected) < allowed
    np.testing.assert_allclose(backbone.get_layer("preprocess").mean.numpy(), CAFFE_MEAN_RGB_UNIT)


def test_keras_applications_weights_do_not_fit_resnet_v15():
    with pytest.raises(ValueError, match="resnet50_v1"):
        keras_models.build_backbone("resnet50", weights="imagenet")


# ----- checkpoints -----


def test_torch_state_dict_round_trip(tmp_path):
    x = images(32)
    model = randomise_torch(torch_models.build_model("small", NUM_CLASSES, reduce_dim=8)).eval()
    expected = torch_forward(model, x)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)

    fresh = torch_models.build_model("small", NUM_CLASSES, reduce_dim=8).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    np.testing.assert_array_equal(torch_forward(fresh, x), expected)
    loaded = torch_models.build_model("small", NUM_CLASSES, weights=path, reduce_dim=8).eval()
    np.testing.assert_array_equal(torch_forward(loaded, x), expected)


def test_torch_backbone_files(tmp_path):
    x = images(32)
    source = randomise_torch(torch_models.build_backbone("small", reduce_dim=8)).eval()
    backbone_file = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), backbone_file)
    loaded = torch_models.build_backbone("small", weights=backbone_file, reduce_dim=8).eval()
    np.testing.assert_array_equal(torch_forward(loaded, x), torch_forward(source, x))
    model = torch_models.build_model("small", NUM_CLASSES, weights=backbone_file, reduce_dim=8)
    np.testing.assert_array_equal(torch_forward(model.backbone.eval(), x), torch_forward(source, x))

    full_file = tmp_path / "full.pt"
    torch.save(model.state_dict(), full_file)
    from_full = torch_models.build_backbone("small", weights=full_file, reduce_dim=8).eval()
    np.testing.assert_array_equal(torch_forward(from_full, x), torch_forward(source, x))

    with pytest.raises(ValueError, match="do not fit"):
        torch_models.build_backbone("small", weights=backbone_file, reduce_dim=None)
    with pytest.raises(RuntimeError, match="size mismatch"):
        torch_models.build_backbone("small", weights=backbone_file, reduce_dim=4)


def test_torchvision_style_file_keeps_torchvision_preprocessing(tmp_path):
    source = torch_models.build_backbone("small")
    checkpoint = {k: v for k, v in source.state_dict().items() if not k.startswith("preprocess")}
    checkpoint["fc.weight"] = torch.zeros(1000, 64)
    path = tmp_path / "torchvision_style.pth"
    torch.save(checkpoint, path)
    loaded = torch_models.build_backbone("small", weights=path)
    torch.testing.assert_close(
        loaded.preprocess.mean.flatten(), torch.tensor([0.485, 0.456, 0.406])
    )
    torch.testing.assert_close(loaded.features[0].weight, source.features[0].weight)


def test_keras_weight_files(tmp_path):
    x = images(32)
    model = randomise_keras(keras_models.build_model("small", NUM_CLASSES, reduce_dim=8))
    expected = model(x).numpy()
    backbone_expected = model.get_layer("backbone")(x).numpy()

    model.save_weights(tmp_path / "model.weights.h5")
    model.get_layer("backbone").save_weights(tmp_path / "backbone.weights.h5")
    model.save(tmp_path / "model.keras")

    for weights in ("model.weights.h5", "model.keras"):
        loaded = keras_models.build_model(
            "small", NUM_CLASSES, weights=tmp_path / weights, reduce_dim=8
        )
        np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-6)
    for weights in ("backbone.weights.h5", "model.keras"):
        backbone = keras_models.build_backbone("small", weights=tmp_path / weights, reduce_dim=8)
        np.testing.assert_allclose(backbone(x).numpy(), backbone_expected, rtol=1e-6)

    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.get_layer("head"), impls.tf.IBPHead)
    np.testing.assert_allclose(restored(x).numpy(), expected, rtol=1e-6)

    for weights in ("model.keras", "model.weights.h5"):
        with pytest.raises(ValueError, match="do not fit"):
            keras_models.build_model("small", NUM_CLASSES, weights=tmp_path / weights)
    with pytest.raises(ValueError, match="do not fit"):
        keras_models.build_backbone("small", weights=tmp_path / "backbone.weights.h5")


# ----- training -----


@pytest.mark.slow
def test_compiled_head_matches_eager():
    """torch.compile (inductor, CPU) of the head: same logits and same gradients as eager."""
    head = impls.torch.IBPHead(32, NUM_CLASSES)
    x = torch.relu(torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(0)))
    results = []
    for module in (head, torch.compile(head)):
        features = x.clone().requires_grad_()
        logits = module(features)
        gradients = torch.autograd.grad(logits.square().sum(), [features, *head.parameters()])
        results.append((logits, gradients))
    (eager, eager_gradients), (compiled, compiled_gradients) = results
    # Fused kernels reorder float32 sums: the suite's head tolerances at this covariance's
    # condition bound the difference, forward and backward.
    features = x.permute(0, 2, 3, 1).double().numpy().reshape(2, -1, 32)
    covariances = features.transpose(0, 2, 1) @ features / 36 + DEFAULT_EPS * np.eye(32)
    kappa = condition_number(covariances)
    forward_allowed = tolerance("head", "forward", "float32", 32, kappa)
    assert relative_error(compiled.detach(), eager.detach()) < forward_allowed
    backward_allowed = tolerance("head", "backward", "float32", 32, kappa)
    for got, expected in zip(compiled_gradients, eager_gradients, strict=True):
        assert relative_error(got[None], expected[None]) < backward_allowed


def torch_step(model, optimizer, x, labels):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(channels_first(x)), torch.as_tensor(labels))
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return gradients


def keras_step(model, optimizer, x, labels):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(gradients, variables, strict=True))
    return {v.path: g.numpy() for v, g in zip(variables, gradients, strict=True)}


def assert_useful_gradients(gradients, expected_count):
    assert len(gradients) == expected_count
    for name, gradient in gradients.items():
        gradient = np.asarray(gradient)
        assert np.all(np.isfinite(gradient)), f"non-finite gradient for {name}"
        assert np.any(gradient != 0), f"all-zero gradient for {name}"


@pytest.mark.slow
def test_vgg16_training_step_at_224():
    x, labels = images(224), np.array([0, 3])
    torch_model = torch_models.build_model("vgg16", NUM_CLASSES).train()
    keras_model = keras_models.build_model("vgg16", NUM_CLASSES)
    transfer_weights(torch_model, keras_model)
    torch_features = torch_forward(torch_model.backbone, x)
    keras_features = keras_model.get_layer("backbone")(x).numpy()
    allowed = backbone_rounding_bound(torch_model, "float32")
    assert relative_error(keras_features, torch_features) < allowed

    before = {name: p.detach().clone() for name, p in torch_model.named_parameters()}
    optimizer = torch_models.recipe_optimizer(torch_model, 2)
    assert_useful_gradients(torch_step(torch_model, optimizer, x, labels), 2 * 13 + 2)
    unchanged = [n for n, p in torch_model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged

    before = {v.path: v.numpy().copy() for v in keras_model.trainable_variables}
    optimizer = keras_models.recipe_optimizer(keras_model, 2)
    assert_useful_gradients(keras_step(keras_model, optimizer, x, labels), 2 * 13 + 2)
    unchanged = [
        v.path for v in keras_model.trainable_variables if np.all(v.numpy() == before[v.path])
    ]
    assert not unchanged


def backbone_state(model):
    if isinstance(model, torch.nn.Module):
        return {k: v.clone().numpy() for k, v in model.backbone.state_dict().items()}
    return {v.path: v.numpy().copy() for v in model.get_layer("backbone").weights}


def largest_steps(before, after, keys):
    return max(float(np.max(np.abs(after[k] - before[k]))) for k in keys)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_recipe_freezes_then_fine_tunes(framework):
    """Stage 1 leaves the backbone untouched (BatchNorm statistics included); stage 2's first Adam
    step moves every weight by about its group's learning rate: 1e-4 backbone, 1e-2 head."""
    x, labels = images(32, batch=4), np.array([0, 1, 2, 3])
    if framework == "torch":
        models, step = torch_models, torch_step
        model = torch_models.build_model("small", NUM_CLASSES, reduce_dim=8).train()

        def head_state():
            return {k: v.clone().numpy() for k, v in model.head.state_dict().items()}
    else:
        models, step = keras_models, keras_step
        model = keras_models.build_model("small", NUM_CLASSES, reduce_dim=8)

        def head_state():
            return {v.path: v.numpy().copy() for v in model.get_layer("head").weights}

    frozen_backbone, head_before = backbone_state(model), head_state()
    step(model, models.recipe_optimizer(model, 1), x, labels)
    for key, value in backbone_state(model).items():
        np.testing.assert_array_equal(value, frozen_backbone[key], err_msg=key)
    assert largest_steps(head_before, head_state(), head_before) > 0

    head_before = head_state()
    step(model, models.recipe_optimizer(model, 2), x, labels)
    backbone_after = backbone_state(model)
    trained = [k for k in backbone_after if "kernel" in k or k.endswith("weight")]
    assert largest_steps(frozen_backbone, backbone_after, trained) == pytest.approx(1e-4, rel=0.02)
    assert largest_steps(head_before, head_state(), head_before) == pytest.approx(1e-2, rel=0.02)


def test_torch_frozen_backbone_stays_in_eval_mode():
    model = torch_models.build_model("small", NUM_CLASSES, reduce_dim=8)
    torch_models.freeze_backbone(model)
    model.train()
    assert model.training and model.head.training and not model.backbone.reduce[1].training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    torch_models.freeze_backbone(model, frozen=False)
    assert model.backbone.reduce[1].training
    assert all(p.requires_grad for p in model.parameters())
