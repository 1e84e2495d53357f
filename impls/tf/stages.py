"""The IBP stages in TensorFlow, channels-last; each function mirrors `reference.stages`."""

import numpy as np
import tensorflow as tf

from reference.contracts import (
    NON_FINITE_MESSAGE,
    IBPInputError,
    check_choice,
    check_feature_map,
    check_square_batch,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_NEWTON_SCHULZ_BACKWARD,
    DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    DEFAULT_SQRTM_METHOD,
    L2_NORM_FLOOR,
    NEWTON_SCHULZ_BACKWARDS,
    SIGNED_SQRT_DELTA,
    SQRTM_METHODS,
)

_HALF_DTYPES = (tf.float16, tf.bfloat16)


def _check_finite(x, name):
    message = NON_FINITE_MESSAGE.format(name=name)
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(x))):
            raise IBPInputError(message)
        return x
    return tf.debugging.assert_all_finite(x, message)


def compute_dtype(x):
    """Half precision is too coarse for a covariance or an eigendecomposition: work in float32."""
    return tf.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _finfo(dtype):
    return np.finfo(dtype.as_numpy_dtype)


def _transpose(m):
    return tf.linalg.matrix_transpose(m)


def _symmetric_part(m):
    return (m + _transpose(m)) / 2


def _eye_like(m):
    return tf.eye(tf.shape(m)[-1], batch_shape=tf.shape(m)[:-2], dtype=m.dtype)


def _frobenius_norm(m):
    norm = tf.norm(m, ord="fro", axis=(-2, -1), keepdims=True)
    return tf.maximum(norm, _finfo(m.dtype).tiny)


def bilinear_pool(x, eps=DEFAULT_EPS):
    """A = X X^T / N + eps I per sample, x of shape (B, H, W, C) -> (B, C, C)."""
    x = tf.convert_to_tensor(x)
    check_feature_map(x.shape, "channels_last")
    x = _check_finite(x, "feature map")
    compute = tf.cast(x, compute_dtype(x))
    shape = tf.shape(compute)
    features = tf.reshape(compute, (shape[0], shape[1] * shape[2], shape[3]))
    n = tf.cast(shape[1] * shape[2], compute.dtype)
    a = tf.matmul(features, features, transpose_a=True) / n
    return tf.cast(a + eps * _eye_like(a), x.dtype)


def _lyapunov_in_eigenbasis(u, s, g):
    """Symmetric part of X solving Z X + X Z = G, Z = U diag(s) U^T with s >= 0."""
    denominator = s[..., :, None] + s[..., None, :]
    # Two zero eigenvalues (eps = 0 on rank-deficient input) make the true gradient infinite;
    # a floor at round-off of the largest root keeps it finite and large.
    info = _finfo(s.dtype)
    floor = tf.maximum(info.eps * tf.reduce_max(s, axis=-1)[..., None, None], info.tiny)
    denominator = tf.maximum(denominator, floor)
    return u @ ((_transpose(u) @ _symmetric_part(g) @ u) / denominator) @ _transpose(u)


@tf.custom_gradient
def _eigh_sqrtm(a):
    """Exact root by eigendecomposition; backward by the closed-form Lyapunov solution."""
    eigenvalues, u = tf.linalg.eigh(a)
    s = tf.sqrt(tf.maximum(eigenvalues, 0))

    def grad(g):
        return _lyapunov_in_eigenbasis(u, s, g)

    return (u * s[..., None, :]) @ _transpose(u), grad


def _newton_schulz_root(a, num_iters):
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F."""
    norm = _frobenius_norm(a)
    eye = _eye_like(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def _newton_schulz_lyapunov(z, g, num_iters):
    """Coupled Newton-Schulz sign iteration on [[Z, G], [0, -Z]] / ||Z||_F; its corner is 2X."""
    norm = _frobenius_norm(z)
    eye = _eye_like(z)
    p, q = z / norm, g / norm
    for _ in range(num_iters):
        p_squared = p @ p
        q = (q @ (3 * eye - p_squared) - p @ (p @ q - q @ p)) / 2
        p = p @ (3 * eye - p_squared) / 2
    return _symmetric_part(q / 2)


def _newton_schulz_sqrtm(a, num_iters, backward):
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward."""

    @tf.custom_gradient
    def root(a):
        z = _newton_schulz_root(a, num_iters)

        def grad(g):
            if backward == "newton_schulz":
                return _newton_schulz_lyapunov(z, g, num_iters)
            eigenvalues, u = tf.linalg.eigh(_symmetric_part(z))
            return _lyapunov_in_eigenbasis(u, tf.maximum(eigenvalues, 0), g)

        return z, grad

    return root(a)


def _resolve_auto(method, backward):
    """(method, backward, dtype of the eigendecomposition or None): see DEFAULT_SQRTM_METHOD.
    TensorFlow places work on a GPU whenever it sees one, so that decides the device."""
    if method != "auto":
        return method, backward, None
    if not tf.config.list_logical_devices("GPU"):
        return "eigh", backward, tf.float64
    return "newton_schulz", "newton_schulz", None


def sqrtm(
    a,
    method=DEFAULT_SQRTM_METHOD,
    num_iters=DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    backward=DEFAULT_NEWTON_SCHULZ_BACKWARD,
):
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch.

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact) or "newton_schulz" (`num_iters` coupled iterations, matrix products only).
    backward (Newton-Schulz only): "lyapunov" (exact), "newton_schulz" (iterative, same
    iteration count) or "autograd" (through the iterations).
    """
    a = tf.convert_to_tensor(a)
    check_square_batch(a.shape)
    check_choice(method, SQRTM_METHODS, "sqrtm method")
    check_choice(backward, NEWTON_SCHULZ_BACKWARDS, "Newton-Schulz backward")
    a = _check_finite(a, "matrix")
    method, backward, eigh_dtype = _resolve_auto(method, backward)
    symmetric = _symmetric_part(tf.cast(a, compute_dtype(a)))
    if method == "eigh" and eigh_dtype is not None:
        z = tf.cast(_eigh_sqrtm(tf.cast(symmetric, eigh_dtype)), symmetric.dtype)
    elif method == "eigh":
        z = _eigh_sqrtm(symmetric)
    elif backward == "autograd":
        z = _newton_schulz_root(symmetric, num_iters)
    else:
        z = _newton_schulz_sqrtm(symmetric, num_iters, backward)
    return tf.cast(z, a.dtype)


def signed_sqrt(z, delta=SIGNED_SQRT_DELTA):
    """y = sign(z) (sqrt(|z| + delta) - sqrt(delta)), elementwise."""
    z = tf.convert_to_tensor(z)

    @tf.custom_gradient
    def signed_root(z):
        def grad(g):
            return g / (2 * tf.sqrt(tf.abs(z) + delta))

        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) spelled without cancellation for |z| << delta
        # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
        denominator = tf.sqrt(tf.abs(z) + delta) + delta**0.5
        return z / tf.maximum(denominator, _finfo(z.dtype).tiny), grad

    return tf.cast(signed_root(tf.cast(z, compute_dtype(z))), z.dtype)


def l2_normalize(y):
    """v = y / max(||y||, floor), the norm over all non-batch entries of each sample."""
    y = tf.convert_to_tensor(y)
    wide = tf.cast(y, compute_dtype(y))
    flat = tf.reshape(wide, (tf.shape(wide)[0], -1))
    norms = tf.maximum(tf.norm(flat, axis=1), L2_NORM_FLOOR)
    v = wide / tf.reshape(norms, tf.concat([[-1], tf.ones([tf.rank(wide) - 1], tf.int32)], 0))
    return tf.cast(v, y.dtype)
