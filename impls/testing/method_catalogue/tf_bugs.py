"""Buggy layers of the second-order pooling family in TensorFlow, written the way users write them
(channels-last feature maps, (B, C, C) matrices). Each is a function of one tensor;
`impls.testing.method_catalogue.BUGS` says what ibp-check --method must say of it, and `causes`
computes what it computes."""

import tensorflow as tf

from impls.testing.method_catalogue.causes import DECLARED_ITERATIONS, SQRT_EPS
from reference.conventions import SIGNED_SQRT_DELTA as DELTA


def _eye_like(a: tf.Tensor) -> tf.Tensor:
    return tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)


def _newton_schulz(normalised: tf.Tensor, iterations: int) -> tf.Tensor:
    eye = _eye_like(normalised)
    y, z = normalised, eye
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y


def isqrt_cov_root_no_post_compensation(a: tf.Tensor) -> tf.Tensor:
    """The iteration's Y returned as it is: the multiplication by sqrt(tr A) is missing."""
    return _newton_schulz(a / tf.linalg.trace(a)[:, None, None], DECLARED_ITERATIONS)


def isqrt_cov_root_batch_trace(a: tf.Tensor) -> tf.Tensor:
    """reduce_sum without an axis: the trace of the whole batch, one number for every sample."""
    trace = tf.reduce_sum(tf.linalg.diag_part(a))
    return _newton_schulz(a / trace, DECLARED_ITERATIONS) * tf.sqrt(trace)


def isqrt_cov_pool_uncentred(x: tf.Tensor) -> tf.Tensor:
    """The bilinear pooling where iSQRT-COV's covariance is meant."""
    h, w, c = x.shape[1:]
    features = tf.reshape(x, (-1, h * w, c))
    return tf.matmul(features, features, transpose_a=True) / (h * w)


def isqrt_cov_root_off_by_two(a: tf.Tensor, iter_n: int = DECLARED_ITERATIONS) -> tf.Tensor:
    """The released loop `for i in range(1, iterN - 1)` copied without the first and last steps
    written around it: iter_n - 2 iterations."""
    norm = tf.linalg.trace(a)[:, None, None]
    i3 = 3 * _eye_like(a)
    y, z = a / norm, _eye_like(a)
    for _ in range(1, iter_n - 1):
        zy = 0.5 * (i3 - z @ y)
        y, z = y @ zy, zy @ z
    return y * tf.sqrt(norm)


def mpn_cov_power_svd(a: tf.Tensor) -> tf.Tensor:
    """The power of the singular values, U S^(1/2) V^T, differentiated by autodiff."""
    s, u, v = tf.linalg.svd(a)
    return u @ tf.linalg.diag(tf.sqrt(s)) @ tf.linalg.matrix_transpose(v)


def bcnn_head_signed_sqrt_after_l2(x: tf.Tensor) -> tf.Tensor:
    h, w, c = x.shape[1:]
    features = tf.reshape(x, (-1, h * w, c))
    pooled = tf.matmul(features, features, transpose_a=True) / (h * w)
    y = tf.math.l2_normalize(tf.reshape(pooled, (tf.shape(x)[0], -1)), axis=1, epsilon=1e-24)
    return y / (tf.sqrt(tf.abs(y) + DELTA) + DELTA**0.5)


def bcnn_sqrt_plus_eps(z: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(z + SQRT_EPS)
