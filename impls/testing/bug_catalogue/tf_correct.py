"""Correct IBP layers in TensorFlow, written independently of `impls.tf`, on which ibp-check must
raise no alarm. Each is a function of one channels-last tensor."""

from collections.abc import Callable
from functools import partial

import tensorflow as tf

from impls.tf import IBPHead, stages

#: The backward a tf.custom_gradient function returns beside its output.
Gradient = Callable[[tf.Tensor], tf.Tensor]

EPS = 1e-5
DELTA = 1e-5


# Our own stages, under the names the catalogue lists them by.
ours_pool = stages.bilinear_pool
ours_sqrtm = stages.sqrtm
ours_sqrtm_newton_schulz = partial(stages.sqrtm, method="newton_schulz", backward="newton_schulz")
ours_signed_sqrt = stages.signed_sqrt
ours_l2 = stages.l2_normalize


def _transpose(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(m)


def ours_head(x: tf.Tensor) -> tf.Tensor:
    return IBPHead(in_channels=x.shape[-1], dtype=x.dtype.name)(x)


def pool_loop_over_locations(x: tf.Tensor) -> tf.Tensor:
    """The seed's loop over locations, each outer product taken per sample."""
    b, h, w, c = x.shape
    a = tf.zeros((b, c, c), x.dtype)
    for i in range(h):
        for j in range(w):
            location = x[:, i, j, :]
            a += location[:, :, None] * location[:, None, :]
    return a / (h * w) + EPS * tf.eye(c, dtype=x.dtype)


def pool_einsum(x: tf.Tensor) -> tf.Tensor:
    h, w, c = x.shape[1:]
    return tf.einsum("bhwc,bhwd->bcd", x, x) / (h * w) + EPS * tf.eye(c, dtype=x.dtype)


def _lyapunov(u: tf.Tensor, root: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """Symmetric part of X with Z X + X Z = G, Z = U diag(root) U^T."""
    g = (g + _transpose(g)) / 2
    denominator = tf.maximum(root[..., :, None] + root[..., None, :], 1e-30)
    return u @ ((_transpose(u) @ g @ u) / denominator) @ _transpose(u)


@tf.custom_gradient
def sqrtm_eigh_lyapunov(a: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
    eigenvalues, u = tf.linalg.eigh((a + _transpose(a)) / 2)
    root = tf.sqrt(tf.maximum(eigenvalues, 0))

    def grad(g: tf.Tensor) -> tf.Tensor:
        return _lyapunov(u, root, g)

    return u @ tf.linalg.diag(root) @ _transpose(u), grad


@tf.custom_gradient
def sqrtm_svd_lyapunov(a: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
    """The seed's SVD root, square-rooted once, with the Lyapunov backward it had commented out."""
    s, u, v = tf.linalg.svd(a)
    root = tf.sqrt(s)

    def grad(g: tf.Tensor) -> tf.Tensor:
        return _lyapunov(u, root, g)

    return u @ tf.linalg.diag(root) @ _transpose(v), grad


def sqrtm_newton_schulz_autograd(a: tf.Tensor, iterations: int = 20) -> tf.Tensor:
    """iSQRT-COV style: Frobenius scaling, GradientTape through the iterations."""
    norm = tf.norm(a, ord="fro", axis=(-2, -1), keepdims=True)
    eye = tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)
    y, z = a / norm, eye
    for _ in range(iterations):
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def signed_sqrt_rationalised(z: tf.Tensor) -> tf.Tensor:
    """sign(z) (sqrt(|z| + d) - sqrt(d)) written as z / (sqrt(|z| + d) + sqrt(d)): autodiff then
    gives the true slope at z = 0."""
    return z / (tf.sqrt(tf.abs(z) + DELTA) + DELTA**0.5)


@tf.custom_gradient
def signed_sqrt_custom_backward(z: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
    def grad(g: tf.Tensor) -> tf.Tensor:
        return g / (2 * tf.sqrt(tf.abs(z) + DELTA))

    return tf.sign(z) * (tf.sqrt(tf.abs(z) + DELTA) - DELTA**0.5), grad


def l2_library(y: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(y, axis=[1, 2], epsilon=1e-24)


def l2_by_hand(y: tf.Tensor) -> tf.Tensor:
    norms = tf.norm(tf.reshape(y, (tf.shape(y)[0], -1)), axis=1)
    return y / tf.maximum(norms, 1e-12)[:, None, None]


def head_composed(x: tf.Tensor) -> tf.Tensor:
    """einsum pool, eigh root with a Lyapunov backward, rationalised signed sqrt, built-in L2."""
    v = signed_sqrt_rationalised(sqrtm_eigh_lyapunov(pool_einsum(x)))
    return tf.math.l2_normalize(tf.reshape(v, (tf.shape(v)[0], -1)), axis=1, epsilon=1e-24)


def head_newton_schulz(x: tf.Tensor) -> tf.Tensor:
    """Loop pool, Newton-Schulz (20 iterations, autodiff), custom signed sqrt, by-hand L2:
    returns (B, C, C)."""
    return l2_by_hand(
        signed_sqrt_custom_backward(
            sqrtm_newton_schulz_autograd(pool_loop_over_locations(x), iterations=20)
        )
    )


# Conventions that L2 normalisation makes harmless: ibp-check passes them with a note.


def pool_sum_keras_epsilon(x: tf.Tensor) -> tf.Tensor:
    """No 1/N, Keras's eps 1e-7."""
    h, w, c = x.shape[1:]
    features = tf.reshape(x, (-1, h * w, c))
    eps = tf.keras.backend.epsilon()
    return tf.matmul(features, features, transpose_a=True) + eps * tf.eye(c, dtype=x.dtype)


def signed_sqrt_bcnn(z: tf.Tensor) -> tf.Tensor:
    """The B-CNN spelling sign(z) sqrt(|z| + 1e-10)."""
    return tf.sign(z) * tf.sqrt(tf.abs(z) + 1e-10)


def head_bcnn(x: tf.Tensor) -> tf.Tensor:
    """No 1/N, Keras's eps, the B-CNN signed sqrt."""
    y = signed_sqrt_bcnn(sqrtm_eigh_lyapunov(pool_sum_keras_epsilon(x)))
    return tf.math.l2_normalize(tf.reshape(y, (tf.shape(y)[0], -1)), axis=1, epsilon=1e-24)


@tf.custom_gradient
def sqrtm_eigh_nonsymmetric_lyapunov(
    a: tf.Tensor,
) -> tuple[tf.Tensor, Gradient]:
    """The backward returns the Lyapunov solution X of Z X + X Z = G for the raw, non-symmetric
    G, as most published roots do: its symmetric part is the gradient of a symmetric input."""
    eigenvalues, u = tf.linalg.eigh((a + _transpose(a)) / 2)
    root = tf.sqrt(tf.maximum(eigenvalues, 0))

    def grad(g: tf.Tensor) -> tf.Tensor:
        denominator = tf.maximum(root[..., :, None] + root[..., None, :], 1e-30)
        return u @ ((_transpose(u) @ g @ u) / denominator) @ _transpose(u)

    return u @ tf.linalg.diag(root) @ _transpose(u), grad


def sqrtm_trace_newton_schulz_30(a: tf.Tensor) -> tf.Tensor:
    """iSQRT-COV's trace-normalised Newton-Schulz, 30 iterations, GradientTape through them."""
    norm = tf.linalg.trace(a)[:, None, None]
    eye = tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)
    y, z = a / norm, eye
    for _ in range(30):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def pool_float32_eye(x: tf.Tensor) -> tf.Tensor:
    """The map cast to float32 before the pooling, as mixed-precision code does for stability:
    half precision comes back as float32 (harmless; noted)."""
    x = tf.cast(x, tf.float32)
    h, w, c = x.shape[1:]
    return tf.einsum("bhwc,bhwd->bcd", x, x) / (h * w) + EPS * tf.eye(c)
