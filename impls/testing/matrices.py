"""Seeded NumPy generators of the inputs the IBP head meets: feature maps and their covariances.

Hypothesis strategies (`impls.testing.strategies`) and benchmarks build on these, so a "realistic
covariance" means the same thing everywhere.
"""

import numpy as np

from reference.conventions import DEFAULT_EPS


def relu_feature_maps(
    rng: np.random.Generator,
    batch: int,
    channels: int,
    height: int,
    width: int,
    dead_channels: int = 0,
    offset: float = 0.5,
) -> np.ndarray:
    """ReLU(x + offset), x Gaussian with mixed channels: like conv features, nonnegative with one
    dominant covariance eigenvalue (their mean). `dead_channels` channels are exactly zero."""
    mixing = rng.standard_normal((channels, channels)) / np.sqrt(channels)
    scales = np.exp(rng.uniform(-1.0, 1.0, channels))
    x = rng.standard_normal((batch, height * width, channels)) @ (mixing * scales)
    x = np.maximum(x + offset, 0.0).transpose(0, 2, 1).reshape(batch, channels, height, width)
    if dead_channels:
        x[:, rng.choice(channels, dead_channels, replace=False)] = 0.0
    return x


def relu_covariances(
    rng: np.random.Generator,
    batch: int,
    channels: int,
    height: int = 28,
    width: int = 28,
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """Covariances X X^T / N + eps I of `relu_feature_maps`: the realistic sqrtm input."""
    x = relu_feature_maps(rng, batch, channels, height, width)
    features = x.reshape(batch, channels, height * width)
    return features @ features.transpose(0, 2, 1) / (height * width) + eps * np.eye(channels)


def spd_with_spectrum(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    """Q diag(eigenvalues) Q^T for a random orthogonal Q: each row of `eigenvalues` one sample."""
    eigenvalues = np.atleast_2d(np.asarray(eigenvalues, dtype=np.float64))
    batch, channels = eigenvalues.shape
    q, r = np.linalg.qr(rng.standard_normal((batch, channels, channels)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    m = (q * eigenvalues[:, None, :]) @ q.transpose(0, 2, 1)
    return (m + m.transpose(0, 2, 1)) / 2


def signed_feature_maps(
    rng: np.random.Generator, batch: int, channels: int, height: int, width: int
) -> np.ndarray:
    """Feature maps before a ReLU (after a BatchNorm): Gaussian with mixed channels, of both
    signs, so that their second moments X X^T / N have entries of both signs."""
    mixing = rng.standard_normal((channels, channels)) / np.sqrt(channels)
    x = rng.standard_normal((batch, height * width, channels)) @ mixing
    return x.transpose(0, 2, 1).reshape(batch, channels, height, width)


def centred_relu_covariances(
    rng: np.random.Generator, batch: int, channels: int, height: int, width: int
) -> np.ndarray:
    """Centred covariances (X - mean)(X - mean)^T / N of `relu_feature_maps`: the realistic input
    of MPN-COV's and iSQRT-COV's matrix normalisation (no eps; full rank where N > C)."""
    x = relu_feature_maps(rng, batch, channels, height, width).reshape(batch, channels, -1)
    centred = x - x.mean(axis=2, keepdims=True)
    return centred @ centred.transpose(0, 2, 1) / (height * width)
