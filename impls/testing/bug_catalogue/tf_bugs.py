"""Buggy IBP layers in TensorFlow, written the way users write them (channels-last), most in the
founding question's own spellings ("Bug N" is its number in impls.testing.founding_question).
Each is a function of one tensor; `impls.testing.bug_catalogue.BUGS` says what ibp-check must say
of it."""

import sys
import time
from collections.abc import Callable

import tensorflow as tf

from impls.testing.founding_question import BATCH_SIZE, KERAS_EPSILON, SINGULAR_VALUE_CUT

#: The backward a tf.custom_gradient function returns beside its output.
Gradient = Callable[[tf.Tensor], tf.Tensor]

EPS = 1e-5


def _transpose(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(m)


def pool_summed_over_batch(x: tf.Tensor) -> tf.Tensor:
    """Bug 1: matmul(F[:, i, j, :], F[:, i, j, :], transpose_a=True) is (C x B)(B x C)."""
    b, h, w, c = x.shape
    a = tf.zeros((c, c), x.dtype)
    for i in range(h):
        for j in range(w):
            a += tf.matmul(x[:, i, j, :], x[:, i, j, :], transpose_a=True)
    return tf.broadcast_to(a / (h * w) + EPS * tf.eye(c, dtype=x.dtype), (b, c, c))


def fourth_root(a: tf.Tensor) -> tf.Tensor:
    """Bug 2: the question's Sqrt_Root_SVD_Lyapunov, square-rooting the singular values twice."""
    s, u, v = tf.linalg.svd(a)
    s = tf.where(s < SINGULAR_VALUE_CUT, s, tf.sqrt(s))
    return u @ tf.linalg.diag(tf.sqrt(s)) @ _transpose(v)


def pool_fixed_batch_size(x: tf.Tensor) -> tf.Tensor:
    """Bug 3: the question's BILINEAR_POOLING with Batch_Size in its zeros and reshapes."""
    h, w, c = x.shape[1:]
    a = tf.zeros((BATCH_SIZE, c, c), x.dtype)
    for i in range(h):
        for j in range(w):
            location = tf.reshape(x[:, i, j, :], (BATCH_SIZE, c, 1))
            a += tf.matmul(location, location, transpose_b=True)
    return a / (h * w) + EPS * tf.eye(c, dtype=x.dtype)


def pool_eps_times_ones(x: tf.Tensor) -> tf.Tensor:
    """Bug 4: the question's eps * ones([C, C]) instead of eps * I."""
    b, h, w, c = x.shape
    features = tf.reshape(x, (-1, h * w, c))
    a = tf.matmul(features, features, transpose_a=True) / (h * w)
    return a + KERAS_EPSILON * tf.ones((c, c), x.dtype)


def sqrtm_autodiff_through_svd(a: tf.Tensor) -> tf.Tensor:
    """Bug 6: GradientTape differentiates through tf.linalg.svd."""
    s, u, v = tf.linalg.svd(a)
    return u @ tf.linalg.diag(tf.sqrt(s)) @ _transpose(v)


@tf.custom_gradient
def sqrtm_negated_lyapunov_gradient(
    a: tf.Tensor,
) -> tuple[tf.Tensor, Gradient]:
    """Bug 7: the authors' sqrt_svd_lyap backward (MATLAB's lyap convention, Z X + X Z = -C)
    as a custom gradient fed +dL/dZ."""
    s, u, v = tf.linalg.svd(a)
    root = tf.sqrt(s)

    def grad(dldz: tf.Tensor) -> tf.Tensor:
        denominator = root[..., :, None] + root[..., None, :]
        return -u @ ((_transpose(u) @ dldz @ u) / denominator) @ _transpose(u)

    return u @ tf.linalg.diag(root) @ _transpose(v), grad


@tf.custom_gradient
def l2_backward_rescale_only(y: tf.Tensor) -> tuple[tf.Tensor, Gradient]:
    """A hand-written backward that treats the norm as a constant."""
    norms = tf.maximum(tf.norm(tf.reshape(y, (tf.shape(y)[0], -1)), axis=1), 1e-12)[:, None, None]

    def grad(g: tf.Tensor) -> tf.Tensor:
        return g / norms

    return y / norms, grad


def l2_over_whole_batch(y: tf.Tensor) -> tf.Tensor:
    """The question's tf.math.l2_normalize(x, axis=None)."""
    return tf.math.l2_normalize(y, axis=None, epsilon=1e-12)


def signed_sqrt_without_regulariser(z: tf.Tensor) -> tf.Tensor:
    """The question's tf.sign(x) * tf.sqrt(tf.abs(x))."""
    return tf.sign(z) * tf.sqrt(tf.abs(z))


def sqrtm_newton_schulz_five_iterations(a: tf.Tensor) -> tf.Tensor:
    """The paper's 5 iterations, GradientTape through them: not converged on ReLU covariances."""
    norm = tf.norm(a, ord="fro", axis=(-2, -1), keepdims=True)
    eye = tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)
    y, z = a / norm, eye
    for _ in range(5):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def pool_wrong_axis(x: tf.Tensor) -> tf.Tensor:
    """A channels-first spelling kept for a channels-last map: reshape without a transpose."""
    b, h, w, c = x.shape
    features = tf.reshape(x, (-1, c, h * w))
    return tf.matmul(features, features, transpose_b=True) / (h * w) + EPS * tf.eye(
        c, dtype=x.dtype
    )


def pool_outer_product_over_locations(x: tf.Tensor) -> tf.Tensor:
    """F F^T (N x N) with F of shape (B, N, C) instead of F^T F (C x C)."""
    b, h, w, c = x.shape
    features = tf.reshape(x, (-1, h * w, c))
    return tf.matmul(features, features, transpose_b=True) / (h * w) + EPS * tf.eye(
        h * w, dtype=x.dtype
    )


def _newton_schulz(a: tf.Tensor, iterations: int, norm: tf.Tensor) -> tf.Tensor:
    eye = tf.eye(a.shape[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)
    y, z = a / norm, eye
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def _trace(a: tf.Tensor) -> tf.Tensor:
    return tf.linalg.trace(a)[:, None, None]


def sqrtm_trace_newton_schulz_3(a: tf.Tensor) -> tf.Tensor:
    """iSQRT-COV's trace-normalised Newton-Schulz with 3 iterations, GradientTape through them."""
    return _newton_schulz(a, 3, _trace(a))


def sqrtm_trace_newton_schulz_10(a: tf.Tensor) -> tf.Tensor:
    """The same with 10 iterations: close on small matrices, ~1 % off on ReLU covariances."""
    return _newton_schulz(a, 10, _trace(a))


@tf.custom_gradient
def sqrtm_eigh_iterative_backward_10(
    a: tf.Tensor,
) -> tuple[tf.Tensor, Gradient]:
    """An exact eigh root with the authors' iterative backward stopped at 10 iterations: the
    coupled Newton-Schulz iteration on [[Z, dZ], [0, -Z]], whose top-right block tends to 2X with
    Z X + X Z = dZ."""
    eigenvalues, u = tf.linalg.eigh(a)
    root = (u * tf.sqrt(tf.maximum(eigenvalues, 0))[:, None, :]) @ _transpose(u)

    def grad(dz: tf.Tensor) -> tf.Tensor:
        norm = tf.norm(root, ord="fro", axis=(-2, -1), keepdims=True)
        b, c = root / norm, dz / norm
        for _ in range(10):
            b2 = b @ b
            b, c = (3 * b - b2 @ b) / 2, (3 * c - b2 @ c + b @ c @ b - c @ b2) / 2
        return c / 2

    return root, grad


def pool_centred(x: tf.Tensor) -> tf.Tensor:
    """A covariance in the statistician's sense: the mean feature subtracted first."""
    b, h, w, c = x.shape
    features = tf.reshape(x, (-1, h * w, c))
    features = features - tf.reduce_mean(features, axis=1, keepdims=True)
    return tf.matmul(features, features, transpose_a=True) / (h * w) + EPS * tf.eye(
        c, dtype=x.dtype
    )


def sqrtm_exits(a: tf.Tensor) -> tf.Tensor:
    """A layer that ends the program, as a stray sys.exit() left from debugging does."""
    sys.exit(0)


def sqrtm_hangs(a: tf.Tensor) -> tf.Tensor:
    """A layer that never returns (an iteration whose stopping test is never met)."""
    while True:
        time.sleep(0.05)


def sqrtm_returns_float64(a: tf.Tensor) -> tf.Tensor:
    """An eigh root computed and returned in float64, whatever the input's dtype (its autodiff
    gradient is wrong on repeated eigenvalues too)."""
    eigenvalues, u = tf.linalg.eigh(tf.cast(a, tf.float64))
    return (u * tf.sqrt(tf.maximum(eigenvalues, 0))[:, None, :]) @ _transpose(u)


def sqrtm_entrywise(a: tf.Tensor) -> tf.Tensor:
    """The signed square root of each entry, where the matrix root is meant."""
    return tf.sign(a) * tf.sqrt(tf.abs(a))


def pool_divided_twice(x: tf.Tensor) -> tf.Tensor:
    """The mean over locations divided by their number once more."""
    b, h, w, c = x.shape
    features = tf.reshape(x, (-1, h * w, c))
    a = tf.matmul(features, features, transpose_a=True) / (h * w) / (h * w)
    return a + EPS * tf.eye(c, dtype=x.dtype)


def sqrtm_frobenius_newton_schulz_10(a: tf.Tensor) -> tf.Tensor:
    """Published Newton-Schulz code (Frobenius scaling), run for 10 iterations."""
    return _newton_schulz(a, 10, tf.norm(a, ord="fro", axis=(-2, -1), keepdims=True))


def signed_sqrt_of_negative(z: tf.Tensor) -> tf.Tensor:
    """sqrt of the entries with the sign put outside: NaN for every negative entry."""
    return tf.sign(z) * tf.sqrt(z)
