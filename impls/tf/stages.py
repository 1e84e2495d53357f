"""The IBP stages in TensorFlow, channels-last; each function mirrors `reference.stages`."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from impls import auto_table
from impls.tf.minimax_newton_schulz import minimax_sqrtm
from reference.contracts import (
    NON_FINITE_MESSAGE,
    OVERFLOW_MESSAGE,
    IBPInputError,
    check_dtype,
    check_feature_map,
    check_non_negative,
    check_sample_batch,
    check_sqrtm_options,
    check_square_batch,
    with_method_defaults,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_SQRTM_METHOD,
    L2_NORM_FLOOR,
    SIGNED_SQRT_DELTA,
)

_HALF_DTYPES = (tf.float16, tf.bfloat16)

# (tensor, message) pairs, first cause first: the message names what the tensor holds.
Checks = Sequence[tuple[tf.Tensor, str]]


def as_tensor(x: Any, name: str) -> tf.Tensor:
    """x as a tensor, its dtype checked (IBPInputError for integer, bool, complex and strings)."""
    x = tf.convert_to_tensor(x)
    check_dtype(x.dtype.name, name)
    return x


def static_shape(x: tf.Tensor) -> tuple[int | None, ...] | None:
    """x's static shape as a tuple (None for unknown sizes), or None when its rank is unknown."""
    return None if x.shape.rank is None else tuple(x.shape)


def with_rank(x: tf.Tensor, rank: int, message: str) -> tf.Tensor:
    """Give a tensor of unknown rank (a tf.function traced without a shape) its rank, checked when
    the graph runs with `message`."""
    if x.shape.rank is not None:
        return x
    with tf.control_dependencies([tf.debugging.assert_rank(x, rank, message=message)]):
        return tf.ensure_shape(tf.identity(x), [None] * rank)


def assert_finite(x: tf.Tensor, message: str) -> tf.Tensor:
    """In a graph, an assertion op in the data path with the eager message (InvalidArgumentError
    carrying the same words); eager code checks once at the end instead (`check_all_finite`)."""
    return x if tf.executing_eagerly() else tf.debugging.assert_all_finite(x, message)


def check_all_finite(checks: Checks) -> None:
    """Eager: raise the message of the first (tensor, message) pair whose tensor holds NaN or
    inf, with one host read in the common case (the last tensor derives from the others). In a
    graph `assert_finite` has checked each of them in line."""
    if not tf.executing_eagerly() or bool(tf.reduce_all(tf.math.is_finite(checks[-1][0]))):
        return
    for tensor, message in checks:
        if not bool(tf.reduce_all(tf.math.is_finite(tensor))):
            raise IBPInputError(message)


def compute_dtype(x: tf.Tensor) -> tf.DType:
    """Half precision is too coarse for a covariance or an eigendecomposition: work in float32."""
    return tf.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _finfo(dtype: tf.DType) -> np.finfo[Any]:
    return np.finfo(dtype.as_numpy_dtype)


def _transpose(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(m)


def _symmetric_part(m: tf.Tensor) -> tf.Tensor:
    return (m + _transpose(m)) / 2


def _eye_like(m: tf.Tensor) -> tf.Tensor:
    return tf.eye(tf.shape(m)[-1], batch_shape=tf.shape(m)[:-2], dtype=m.dtype)


def _frobenius_norm(m: tf.Tensor) -> tf.Tensor:
    norm = tf.norm(m, ord="fro", axis=(-2, -1), keepdims=True)
    return tf.maximum(norm, _finfo(m.dtype).tiny)


MAP_RANK_MESSAGE = "expected a batch of feature maps (B, H, W, C) (channels_last) of rank 4"


def _pool(x: tf.Tensor, eps: float) -> tf.Tensor:
    compute = tf.cast(with_rank(x, 4, MAP_RANK_MESSAGE), compute_dtype(x))
    shape = tf.shape(compute)
    features = tf.reshape(compute, (shape[0], shape[1] * shape[2], shape[3]))
    n = tf.cast(shape[1] * shape[2], compute.dtype)
    a = tf.matmul(features, features, transpose_a=True) / n
    return tf.cast(a + eps * _eye_like(a), x.dtype)


def bilinear_pool(x: Any, eps: float = DEFAULT_EPS) -> tf.Tensor:
    """A = X X^T / N + eps I per sample, x of shape (B, H, W, C) -> (B, C, C)."""
    x = as_tensor(x, "feature map")
    check_feature_map(static_shape(x), "channels_last")
    check_non_negative(eps, "eps")
    x = assert_finite(x, NON_FINITE_MESSAGE.format(name="feature map"))
    a = assert_finite(_pool(x, eps), OVERFLOW_MESSAGE)
    check_all_finite([(x, NON_FINITE_MESSAGE.format(name="feature map")), (a, OVERFLOW_MESSAGE)])
    return a


def _root_floor(s: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Smallest root the Lyapunov denominators s_i + s_j are allowed to see, per matrix; `dtype`
    is the one the gradient is returned in. See reference.conventions: u s_max relative,
    sqrt(tiny) absolute."""
    info = _finfo(dtype)
    largest = tf.reduce_max(s, axis=-1)[..., None, None]
    return tf.maximum(info.eps * largest, tf.cast(info.tiny**0.5, s.dtype))


def _lyapunov_in_eigenbasis(
    u: tf.Tensor, s: tf.Tensor, g: tf.Tensor, result_dtype: tf.DType | None = None
) -> tf.Tensor:
    """Symmetric part of X solving Z X + X Z = G, Z = U diag(s) U^T with s >= 0."""
    denominator = s[..., :, None] + s[..., None, :]
    # Two zero eigenvalues (eps = 0 on rank-deficient input) make the true gradient infinite.
    denominator = tf.maximum(denominator, 2 * _root_floor(s, result_dtype or s.dtype))
    return u @ ((_transpose(u) @ _symmetric_part(g) @ u) / denominator) @ _transpose(u)


def _eigh(a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.linalg.eigh that survives convergence failures on finite input in eager mode (clusters
    of repeated eigenvalues): retry in float64, then with a jitter of a few units of round-off
    that splits the clusters. A graph cannot catch the error; non-finite input is the caller's."""
    if not tf.executing_eagerly():
        return tf.linalg.eigh(a)
    try:
        return tf.linalg.eigh(a)
    except tf.errors.InvalidArgumentError:
        if not bool(tf.reduce_all(tf.math.is_finite(a))):
            raise
    wide = tf.cast(a, tf.float64)
    try:
        eigenvalues, u = tf.linalg.eigh(wide)
    except tf.errors.InvalidArgumentError:
        scale = _frobenius_norm(wide)
        c = tf.shape(a)[-1]
        steps = tf.cast(tf.range(c), tf.float64) / tf.cast(c, tf.float64)
        jitter = _finfo(a.dtype).eps * scale * tf.linalg.diag(steps)
        eigenvalues, u = tf.linalg.eigh(wide + jitter)
    return tf.cast(eigenvalues, a.dtype), tf.cast(u, a.dtype)


def _eigh_root(a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """U sqrt(max(lambda, 0)) U^T: negative eigenvalues are clamped at 0 (reference.conventions)."""
    eigenvalues, u = _eigh(a)
    s = tf.sqrt(tf.maximum(eigenvalues, 0))
    return (u * s[..., None, :]) @ _transpose(u), u, s


def _eigh_sqrtm(a: tf.Tensor, result_dtype: tf.DType | None = None) -> tf.Tensor:
    """Exact root by eigendecomposition; backward by the closed-form Lyapunov solution."""

    @tf.custom_gradient
    def root(a: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        z, u, s = _eigh_root(a)

        def grad(g: tf.Tensor) -> tf.Tensor:
            return _lyapunov_in_eigenbasis(u, s, g, result_dtype)

        return z, grad

    return root(a)


def _newton_schulz_root(a: tf.Tensor, num_iters: int) -> tf.Tensor:
    """Coupled iteration Y <- Y T, Z <- T Z, T = (3I - Z Y) / 2 on A / ||A||_F."""
    norm = _frobenius_norm(a)
    eye = _eye_like(a)
    y, z = a / norm, eye
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return y * tf.sqrt(norm)


def _newton_schulz_lyapunov(z: tf.Tensor, g: tf.Tensor, num_iters: int) -> tf.Tensor:
    """Coupled Newton-Schulz sign iteration on [[Z, G], [0, -Z]] / ||Z||_F; its corner is 2X.

    Z is shifted by the same floor as the eigenbasis solver's roots: Z = 0 (eps = 0 on a dead map)
    would leave the sign iteration nothing to converge to and grow G by 3/2 per step."""
    eye = _eye_like(z)
    info = _finfo(z.dtype)
    norm = tf.norm(z, ord="fro", axis=(-2, -1), keepdims=True)
    shifted = z + tf.maximum(info.eps * norm, info.tiny**0.5) * eye
    norm = tf.norm(shifted, ord="fro", axis=(-2, -1), keepdims=True)
    p, q = shifted / norm, g / norm
    for _ in range(num_iters):
        p_squared = p @ p
        q = (q @ (3 * eye - p_squared) - p @ (p @ q - q @ p)) / 2
        p = p @ (3 * eye - p_squared) / 2
    return _symmetric_part(q / 2)


def _diverged(z: tf.Tensor) -> tf.Tensor:
    """Samples whose Newton-Schulz iterates blew up: the iteration diverges on negative
    eigenvalues (reference.conventions)."""
    return tf.logical_not(tf.reduce_all(tf.math.is_finite(z), axis=(-2, -1), keepdims=True))


def _clamp_diverged(a: tf.Tensor, z: tf.Tensor, num_iters: int, differentiable: bool) -> tf.Tensor:
    """Recompute the diverged samples by eigh (which clamps), and, for a root differentiated
    through its iterations, the others by a fresh iteration, so that no NaN of a diverged sample
    sits in the graph that the gradient walks back. A graph decides with tf.cond, which runs the
    recomputation only when some sample diverged."""

    def recompute() -> tf.Tensor:
        bad = _diverged(tf.stop_gradient(z))
        eye = _eye_like(a)
        if not differentiable:
            return tf.where(bad, _eigh_root(a)[0], z)
        converging = _newton_schulz_root(tf.where(bad, eye, a), num_iters)
        return tf.where(bad, _eigh_sqrtm(tf.where(bad, a, eye)), converging)

    any_diverged = tf.reduce_any(_diverged(z))
    if tf.executing_eagerly():
        return recompute() if bool(any_diverged) else z
    return tf.cond(any_diverged, recompute, lambda: z)


def _eigh_if_diverged(a: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """A minimax root that diverged on negative eigenvalues is recomputed by eigh (which clamps),
    the whole batch, as torch does: a graph decides with tf.cond."""
    any_diverged = tf.reduce_any(_diverged(tf.stop_gradient(z)))
    if tf.executing_eagerly():
        return _eigh_sqrtm(a) if bool(any_diverged) else z
    return tf.cond(any_diverged, lambda: _eigh_sqrtm(a), lambda: z)


def _newton_schulz_sqrtm(a: tf.Tensor, num_iters: int, backward: str) -> tf.Tensor:
    """Newton-Schulz root with an exact (eigenbasis) or iterative (sign iteration) backward."""

    @tf.custom_gradient
    def root(a: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        z = _clamp_diverged(a, _newton_schulz_root(a, num_iters), num_iters, differentiable=False)

        def grad(g: tf.Tensor) -> tf.Tensor:
            if backward == "newton_schulz":
                return _newton_schulz_lyapunov(z, g, num_iters)
            eigenvalues, u = _eigh(_symmetric_part(z))
            return _lyapunov_in_eigenbasis(u, tf.maximum(eigenvalues, 0), g)

        return z, grad

    return root(a)


def _resolve_auto(
    method: str, backward: str | None, channels: int | None = None
) -> tuple[str, str | None, tf.DType | None]:
    """(method, backward, dtype of the eigendecomposition or None): "auto" is the measured choice
    for this device and C (impls.auto_table); a C unknown while tracing takes its rule.
    TensorFlow places work on a GPU whenever it sees one, so that decides the device."""
    if method != "auto":
        return method, backward, None
    device = "cuda" if tf.config.list_logical_devices("GPU") else "cpu"
    choice = auto_table.choose("tf", device, channels)
    eigh_dtype = None if choice.eigh_dtype is None else tf.as_dtype(choice.eigh_dtype)
    return choice.method, backward, eigh_dtype


_MATRIX_RANK_MESSAGE = "expected a batch of square matrices (B, C, C) of rank 3"


def _root(
    a: tf.Tensor, method: str, num_iters: int | None, backward: str | None, checks: Checks
) -> tf.Tensor:
    """The root of the symmetric part of `a`, then one finiteness check of it: NaN or inf in
    anything it came from (`checks`, (tensor, message) pairs, first cause first) shows there."""
    channels = a.shape[-1] if a.shape.rank is not None else None
    method, backward, eigh_dtype = _resolve_auto(method, backward, channels)
    num_iters, backward = with_method_defaults(method, num_iters, backward)
    symmetric = _symmetric_part(tf.cast(with_rank(a, 3, _MATRIX_RANK_MESSAGE), compute_dtype(a)))
    try:
        if method == "eigh" and eigh_dtype is not None:
            wide = tf.cast(symmetric, eigh_dtype)
            z = tf.cast(_eigh_sqrtm(wide, symmetric.dtype), symmetric.dtype)
        elif method == "eigh":
            z = _eigh_sqrtm(symmetric)
        else:
            # Every iterative method has both defaults (reference.conventions.ITERATIVE_DEFAULTS).
            assert num_iters is not None and backward is not None
            if method == "minimax_newton_schulz":
                z = _eigh_if_diverged(symmetric, minimax_sqrtm(symmetric, num_iters, backward))
            elif backward == "autograd":
                z = _clamp_diverged(
                    symmetric, _newton_schulz_root(symmetric, num_iters), num_iters, True
                )
            else:
                z = _newton_schulz_sqrtm(symmetric, num_iters, backward)
    except tf.errors.InvalidArgumentError:
        check_all_finite(checks)  # the eigensolver refused NaN or inf: name it
        raise
    check_all_finite([*checks, (z, NON_FINITE_MESSAGE.format(name="square root"))])
    return tf.cast(z, a.dtype)


def sqrtm(
    a: Any,
    method: str = DEFAULT_SQRTM_METHOD,
    num_iters: int | None = None,
    backward: str | None = None,
) -> tf.Tensor:
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch;
    negative eigenvalues count as 0, for every method (reference.conventions).

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact), "newton_schulz" (`num_iters` coupled iterations, default 20, matrix products only)
    or "minimax_newton_schulz" (the same iteration with minimax quintic steps, default 7).
    backward (iterative methods only): "lyapunov" (exact, eigenbasis), "newton_schulz"
    (iterative, same steps; minimax's default) or "autograd" (through the iterations).
    None means the method's default (reference.conventions.ITERATIVE_DEFAULTS).
    """
    a = as_tensor(a, "matrix")
    check_square_batch(static_shape(a))
    check_sqrtm_options(method, num_iters, backward)
    message = NON_FINITE_MESSAGE.format(name="matrix")
    return _root(assert_finite(_square(a), message), method, num_iters, backward, [(a, message)])


def _square(a: tf.Tensor) -> tf.Tensor:
    """A traced matrix of unknown size gets its squareness checked when the graph runs."""
    if tf.executing_eagerly() or (a.shape.rank is not None and a.shape[-1] == a.shape[-2]):
        return a
    a = with_rank(a, 3, _MATRIX_RANK_MESSAGE)
    shape = tf.shape(a)
    square = tf.debugging.assert_equal(shape[-1], shape[-2], message="matrix must be square")
    with tf.control_dependencies([square]):
        return tf.identity(a)


def _signed_sqrt(z: tf.Tensor, delta: float) -> tf.Tensor:
    @tf.custom_gradient
    def signed_root(z: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def grad(g: tf.Tensor) -> tf.Tensor:
            # delta = 0 makes the slope at z = 0 infinite: held at 1 / (2 sqrt(u)) below
            # |z| + delta = u (reference.conventions).
            shifted = tf.maximum(tf.abs(z) + delta, _finfo(z.dtype).eps)
            return g / (2 * tf.sqrt(shifted))

        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) spelled without cancellation for |z| << delta
        # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
        denominator = tf.sqrt(tf.abs(z) + delta) + delta**0.5
        return z / tf.maximum(denominator, _finfo(z.dtype).tiny), grad

    return tf.cast(signed_root(tf.cast(z, compute_dtype(z))), z.dtype)


def signed_sqrt(z: Any, delta: float = SIGNED_SQRT_DELTA) -> tf.Tensor:
    """y = sign(z) (sqrt(|z| + delta) - sqrt(delta)), elementwise."""
    z = as_tensor(z, "signed sqrt input")
    check_non_negative(delta, "delta")
    message = NON_FINITE_MESSAGE.format(name="signed sqrt input")
    z = assert_finite(z, message)
    check_all_finite([(z, message)])
    return _signed_sqrt(z, delta)


def _l2_normalize(y: tf.Tensor) -> tf.Tensor:
    wide = tf.cast(y, compute_dtype(y))
    flat = tf.reshape(wide, (tf.shape(wide)[0], -1))
    # The floor sits under the square root: tf.norm's gradient at 0 is 0 / 0 = NaN, and a
    # maximum after it multiplies that NaN by 0, which stays NaN (an all-zero sample).
    squares = tf.reduce_sum(tf.square(flat), axis=1)
    norms = tf.sqrt(tf.maximum(squares, tf.cast(L2_NORM_FLOOR**2, wide.dtype)))
    v = wide / tf.reshape(norms, tf.concat([[-1], tf.ones([tf.rank(wide) - 1], tf.int32)], 0))
    return tf.cast(v, y.dtype)


def l2_normalize(y: Any) -> tf.Tensor:
    """v = y / max(||y||, floor), the norm over all non-batch entries of each sample."""
    y = as_tensor(y, "L2 input")
    check_sample_batch(static_shape(y), "L2 input")
    message = NON_FINITE_MESSAGE.format(name="L2 input")
    y = assert_finite(y, message)
    check_all_finite([(y, message)])
    return _l2_normalize(y)
