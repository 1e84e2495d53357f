"""The founding question's bugs 1-3 (DESIGN.md), written as the small buggy layers a user would
write, must each fail the property suite that our own layers pass."""

import numpy as np
import pytest

from impls.testing import properties
from impls.testing.matrices import relu_feature_maps, spd_with_spectrum
from impls.testing.stage_specs import STAGES
from impls.testing.strategies import spectrum

SEED_BATCH_SIZE = 3


def torch_pool_summed_over_batch(x):
    """Bug 1: the outer product contracts the batch axis (C x B times B x C), so every sample
    gets the batch's matrix."""
    import torch

    features = x.flatten(2)
    shared = torch.einsum("bcn,bdn->cd", features, features) / features.shape[-1]
    return shared.expand(x.shape[0], -1, -1) + 1e-5 * torch.eye(x.shape[1], dtype=x.dtype)


def tf_pool_summed_over_batch(x):
    import tensorflow as tf

    c = x.shape[-1]
    shape = tf.shape(x)
    total = tf.zeros((c, c), x.dtype)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            location = x[:, i, j, :]
            total += tf.matmul(location, location, transpose_a=True)
    shared = total / tf.cast(shape[1] * shape[2], x.dtype) + 1e-5 * tf.eye(c, dtype=x.dtype)
    return tf.broadcast_to(shared, (shape[0], c, c))


def torch_fourth_root(a):
    """Bug 2: the singular values are square-rooted twice (A^(1/4))."""
    import torch

    u, s, vh = torch.linalg.svd(a)
    s = torch.where(s < 1e-10, s, torch.sqrt(s))
    return u @ torch.diag_embed(torch.sqrt(s)) @ vh


def tf_fourth_root(a):
    import tensorflow as tf

    s, u, v = tf.linalg.svd(a)
    s = tf.where(s < 1e-10, s, tf.sqrt(s))
    return u @ tf.linalg.diag(tf.sqrt(s)) @ tf.linalg.matrix_transpose(v)


def torch_pool_fixed_batch(x):
    """Bug 3: the batch size is written into the layer."""
    import torch

    c = x.shape[1]
    a = torch.zeros(SEED_BATCH_SIZE, c, c, dtype=x.dtype)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            location = x[:, :, i, j].reshape(SEED_BATCH_SIZE, c, 1)
            a = a + location @ location.mT
    return a / (x.shape[2] * x.shape[3]) + 1e-5 * torch.eye(c, dtype=x.dtype)


def tf_pool_fixed_batch(x):
    import tensorflow as tf

    c = x.shape[-1]
    a = tf.zeros((SEED_BATCH_SIZE, c, c), x.dtype)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            location = tf.reshape(x[:, i, j, :], (SEED_BATCH_SIZE, c, 1))
            a += tf.matmul(location, location, transpose_b=True)
    return a / (x.shape[1] * x.shape[2]) + 1e-5 * tf.eye(c, dtype=x.dtype)


BUGGY = {
    "batch-summed pool": {"torch": torch_pool_summed_over_batch, "tf": tf_pool_summed_over_batch},
    "fourth root": {"torch": torch_fourth_root, "tf": tf_fourth_root},
    "fixed batch size": {"torch": torch_pool_fixed_batch, "tf": tf_pool_fixed_batch},
}


@pytest.fixture
def feature_map():
    return relu_feature_maps(np.random.default_rng(0), SEED_BATCH_SIZE, 6, 4, 4)


@pytest.fixture
def covariance_batch():
    rng = np.random.default_rng(1)
    return spd_with_spectrum(rng, [spectrum(rng, "log_uniform", 6, 100.0, 1e-3) for _ in range(3)])


def test_batch_summed_pool_fails_independence(backend, feature_map):
    buggy = BUGGY["batch-summed pool"][backend.name]
    with pytest.raises(properties.PropertyViolation, match="mixes samples across the batch"):
        properties.check_per_sample_independence(
            backend, STAGES["pool"], buggy, feature_map, "float64"
        )
    with pytest.raises(properties.PropertyViolation, match="differs from the reference"):
        properties.check_reference_agreement(backend, STAGES["pool"], buggy, feature_map, "float64")


def test_fourth_root_fails_square_root_property(backend, covariance_batch):
    buggy = BUGGY["fourth root"][backend.name]
    with pytest.raises(properties.PropertyViolation, match="square root is applied twice"):
        properties.check_square_root(backend, buggy, covariance_batch, "float64", STAGES["sqrtm"])
    with pytest.raises(properties.PropertyViolation, match="differs from the reference"):
        properties.check_reference_agreement(
            backend, STAGES["sqrtm"], buggy, covariance_batch, "float64", gradient=False
        )


def test_fixed_batch_size_fails_other_batch_sizes(backend, feature_map):
    buggy = BUGGY["fixed batch size"][backend.name]
    # At the batch size it was written for, the layer is right: only other sizes expose it.
    properties.check_reference_agreement(backend, STAGES["pool"], buggy, feature_map, "float64")
    with pytest.raises(properties.PropertyViolation, match="fails on batch size 1"):
        properties.check_batch_consistency(backend, STAGES["pool"], buggy, feature_map, "float64")


@pytest.mark.parametrize("name", ["pool", "sqrtm"])
def test_our_layers_pass_the_same_checks(backend, name, feature_map, covariance_batch):
    spec = STAGES[name]
    x = feature_map if name == "pool" else covariance_batch
    fn = spec.implementation(backend)
    properties.check_reference_agreement(backend, spec, fn, x, "float64")
    properties.check_per_sample_independence(backend, spec, fn, x, "float64")
    properties.check_batch_consistency(backend, spec, fn, x, "float64")
    if name == "sqrtm":
        properties.check_square_root(backend, fn, x, "float64", spec)
