"""Correct layers of the second-order pooling family in TensorFlow, written the way their users
write them (channels-last feature maps, (B, C, C) matrices), independently of the reference. Each
is a function of one tensor."""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from reference.conventions import SIGNED_SQRT_DELTA as DELTA

#: The backward a tf.custom_gradient function returns beside its output.
Gradient = Callable[[tf.Tensor], tf.Tensor]

ISQRT_ITERATIONS = 5  # the authors' training script
MPN_ALPHA = 0.5


def _transpose(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(m)


def _eye_like(a: tf.Tensor) -> tf.Tensor:
    return tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)


# B-CNN


def bcnn_pool(x: tf.Tensor) -> tf.Tensor:
    h, w, c = x.shape[1:]
    features = tf.reshape(x, (-1, h * w, c))
    return tf.matmul(features, features, transpose_a=True) / (h * w)


def _signed_sqrt(z: tf.Tensor) -> tf.Tensor:
    """sign(z) (sqrt(|z| + d) - sqrt(d)) written as z / (sqrt(|z| + d) + sqrt(d))."""
    return z / (tf.sqrt(tf.abs(z) + DELTA) + DELTA**0.5)


def bcnn_head(x: tf.Tensor) -> tf.Tensor:
    y = tf.reshape(_signed_sqrt(bcnn_pool(x)), (tf.shape(x)[0], -1))
    return tf.math.l2_normalize(y, axis=1, epsilon=1e-24)


@tf.custom_gradient
def _signed_sqrt_custom(z: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
    def grad(g: tf.Tensor) -> tf.Tensor:
        return g / (2 * tf.sqrt(tf.abs(z) + DELTA))

    return tf.sign(z) * (tf.sqrt(tf.abs(z) + DELTA) - DELTA**0.5), grad


def bcnn_head_einsum(x: tf.Tensor) -> tf.Tensor:
    h, w = x.shape[1:3]
    y = _signed_sqrt_custom(tf.einsum("bhwc,bhwd->bcd", x, x) / (h * w))
    y = tf.reshape(y, (tf.shape(x)[0], -1))
    return y / tf.maximum(tf.norm(y, axis=1, keepdims=True), 1e-12)


# MPN-COV and iSQRT-COV share the centred pooling.


def centred_pool_i_hat(x: tf.Tensor) -> tf.Tensor:
    """X I_hat X^T, I_hat = (1/M) I - (1/M^2) 1 1^T, as the released Covpool builds it."""
    h, w, c = x.shape[1:]
    m = h * w
    features = tf.reshape(x, (-1, m, c))  # (B, M, C): X^T
    i_hat = (-1.0 / m / m) * tf.ones((m, m), x.dtype) + (1.0 / m) * tf.eye(m, dtype=x.dtype)
    return tf.matmul(features, tf.matmul(i_hat, features), transpose_a=True)


def centred_pool_mean(x: tf.Tensor) -> tf.Tensor:
    h, w, c = x.shape[1:]
    features = tf.reshape(x, (-1, h * w, c))
    centred = features - tf.reduce_mean(features, axis=1, keepdims=True)
    return tf.matmul(centred, centred, transpose_a=True) / (h * w)


def _divided_differences(eigenvalues: tf.Tensor, alpha: float) -> tf.Tensor:
    """D_ij = (f(l_i) - f(l_j)) / (l_i - l_j) of f(l) = max(l, 0)^alpha, f'(l) where they
    coincide; computed as l_j^(alpha - 1) expm1(alpha t) / expm1(t), t = log(l_i / l_j), which keeps
    its digits where l_i and l_j differ by round-off only (the quotient as written loses them all).
    Positive eigenvalues are floored at eps^2 l_max; where one is positive, f(l_i) / |l_i - l_j|;
    where neither, 0."""
    info = np.finfo(eigenvalues.dtype.as_numpy_dtype)
    positive = eigenvalues > 0
    largest = tf.reduce_max(eigenvalues, axis=-1, keepdims=True)
    floor = tf.maximum(float(info.eps) ** 2 * largest, float(info.tiny))
    floored = tf.where(positive, tf.maximum(eigenvalues, floor), tf.ones_like(eigenvalues))
    li, lj = floored[..., :, None], floored[..., None, :]
    t = tf.math.log(li) - tf.math.log(lj)
    same = tf.equal(t, 0)
    ratio = tf.where(
        same,
        tf.fill(tf.shape(t), tf.constant(alpha, t.dtype)),
        tf.math.expm1(alpha * t) / tf.where(same, tf.ones_like(t), tf.math.expm1(t)),
    )
    both = tf.logical_and(positive[..., :, None], positive[..., None, :])
    one = tf.math.logical_xor(positive[..., :, None], positive[..., None, :])
    powered = tf.where(positive, floored**alpha, tf.zeros_like(floored))
    gap = tf.abs(eigenvalues[..., :, None] - eigenvalues[..., None, :])
    one_positive = (powered[..., :, None] + powered[..., None, :]) / tf.where(
        one, gap, tf.ones_like(gap)
    )
    zero = tf.zeros_like(gap)
    return tf.where(both, lj ** (alpha - 1) * ratio, tf.where(one, one_positive, zero))


def _power_backward(u: tf.Tensor, eigenvalues: tf.Tensor, alpha: float, g: tf.Tensor) -> tf.Tensor:
    """U [(U^T sym(G) U) * D] U^T (Daleckii-Krein), D the divided differences of the power."""
    g = (g + _transpose(g)) / 2
    return u @ ((_transpose(u) @ g @ u) * _divided_differences(eigenvalues, alpha)) @ _transpose(u)


def _matrix_power(alpha: float) -> Callable[[tf.Tensor], tf.Tensor]:
    @tf.custom_gradient
    def power(a: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
        eigenvalues, u = tf.linalg.eigh((a + _transpose(a)) / 2)

        def grad(g: tf.Tensor) -> tf.Tensor:
            return _power_backward(u, eigenvalues, alpha, g)

        powered = tf.maximum(eigenvalues, 0) ** alpha
        return u @ tf.linalg.diag(powered) @ _transpose(u), grad

    return power


mpn_cov_power = _matrix_power(MPN_ALPHA)
mpn_cov_power_quarter = _matrix_power(0.25)


def _triu(m: tf.Tensor) -> tf.Tensor:
    c = m.shape[-1]
    pairs = [[i, j] for i in range(c) for j in range(i, c)]
    return tf.transpose(tf.gather_nd(tf.transpose(m, (1, 2, 0)), pairs))


def mpn_cov_head(x: tf.Tensor) -> tf.Tensor:
    return _triu(mpn_cov_power(centred_pool_mean(x)))


def _trace(a: tf.Tensor) -> tf.Tensor:
    return tf.linalg.trace(a)[:, None, None]


def isqrt_cov_root(a: tf.Tensor, iterations: int = ISQRT_ITERATIONS) -> tf.Tensor:
    trace = _trace(a)
    eye = _eye_like(a)
    y, z = a / trace, eye
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * tf.sqrt(trace)


def isqrt_cov_root_3(a: tf.Tensor) -> tf.Tensor:
    return isqrt_cov_root(a, iterations=3)


def isqrt_cov_root_unrolled(a: tf.Tensor, iter_n: int = ISQRT_ITERATIONS) -> tf.Tensor:
    """The released Sqrtm's forward: the first step from Z = I written out, iter_n - 2 steps in
    the loop, a last step that forms only Y."""
    norm = _trace(a)
    i3 = 3 * _eye_like(a)
    normalised = a / norm
    zy = 0.5 * (i3 - normalised)
    y, z = normalised @ zy, zy
    for _ in range(1, iter_n - 1):
        zy = 0.5 * (i3 - z @ y)
        y, z = y @ zy, zy @ z
    y = 0.5 * y @ (i3 - z @ y)
    return y * tf.sqrt(norm)


def isqrt_cov_head(x: tf.Tensor) -> tf.Tensor:
    return _triu(isqrt_cov_root(centred_pool_i_hat(x)))


def _triu_mask(m: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The released Triuvec: the entries where the flattened mask is nonzero."""
    index = tf.where(tf.reshape(mask, (-1,)) > 0)[:, 0]
    return tf.gather(tf.reshape(m, (tf.shape(m)[0], -1)), index, axis=1)


def isqrt_cov_head_mask(x: tf.Tensor) -> tf.Tensor:
    root = isqrt_cov_root_unrolled(centred_pool_i_hat(x))
    c = root.shape[-1]
    return _triu_mask(root, tf.linalg.band_part(tf.ones((c, c)), 0, -1))


def isqrt_cov_head_column_order(x: tf.Tensor) -> tf.Tensor:
    root = isqrt_cov_root_unrolled(centred_pool_i_hat(x))
    c = root.shape[-1]
    return _triu_mask(root, tf.transpose(tf.linalg.band_part(tf.ones((c, c)), 0, -1)))
