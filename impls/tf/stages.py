"""The IBP stages in TensorFlow, channels-last; each function mirrors `reference.stages`."""

import string
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from impls import auto_table
from impls.tf.linalg import (
    autograd_root,
    condition_numbers,
    eigh,
    eigh_if_wrong,
    eigh_sqrtm,
    eigh_sqrtm_and_spectrum,
    eye_like,
    finfo,
    newton_schulz_root,
    newton_schulz_sqrtm,
    symmetric_part,
)
from impls.tf.minimax_newton_schulz import minimax_root, minimax_sqrtm
from reference.contracts import (
    CHANNELS,
    EMPTY_AXIS,
    FEATURE_MAP_RANK,
    LAYOUT_AXES,
    MATRIX_RANK,
    NON_FINITE_MESSAGE,
    NOT_SQUARE,
    OVERFLOW_MESSAGE,
    SAMPLE_RANK,
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


def _assertion(condition: tf.Tensor, template: str, **fields: Any) -> tf.Operation:
    """tf.debugging.Assert of `condition` whose message is a contract's template
    (reference.contracts) with its fields filled in: static values as text, run-time ones as the
    tensors the assertion prints, so that it says the eager check's words."""
    data: list[Any] = []
    text = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is None:
            continue
        value = fields[field]
        if isinstance(value, tf.Tensor):
            data += [text, value]
            text = ""
        else:
            text += str(value)
    return tf.debugging.Assert(condition, [*data, text] if text else data, summarize=8)


def in_contract(x: tf.Tensor, kind: str, name: str, channels: int | None = None) -> tf.Tensor:
    """x, with what its traced static shape leaves unknown of the input contract checked by
    assertion ops when the graph runs, with the eager words (reference.contracts): a batch of
    feature maps ("feature map", channels-last, `channels` of them if given), of square matrices
    ("matrices") or of samples ("samples"), without empty axes. Eager code and fully known shapes
    were checked already.

    Each assertion holds for any rank (Grappler may run them in any order, and a shape read past
    the rank would fail in words of its own): a check that needs rank r passes at another rank,
    where the rank check fails."""
    shape = static_shape(x)
    if tf.executing_eagerly() or (shape is not None and None not in shape):
        return x
    rank, dims = tf.rank(x), tf.shape(x)
    padded = tf.concat([dims, tf.ones([4], tf.int32)], 0)  # indexable whatever the rank
    assertions = [_assertion(tf.reduce_all(dims > 0), EMPTY_AXIS, name=name, shape=dims)]
    if kind == "feature map":
        axes, layout = LAYOUT_AXES["channels_last"], "channels_last"
        assertions.append(
            _assertion(
                tf.equal(rank, 4), FEATURE_MAP_RANK, axes=axes, layout=layout, rank=rank, shape=dims
            )
        )
        if channels is not None:
            fields = dict(channels=channels, axis=3, axes=axes, layout=layout, shape=dims)
            holds = tf.not_equal(rank, 4) | tf.equal(padded[3], channels)
            assertions.append(_assertion(holds, CHANNELS, **fields))
        static_rank = 4
    elif kind == "matrices":
        assertions.append(_assertion(tf.equal(rank, 3), MATRIX_RANK, rank=rank, shape=dims))
        holds = tf.not_equal(rank, 3) | tf.equal(padded[1], padded[2])
        fields = dict(name=name, shape=dims, rows=padded[1], columns=padded[2])
        assertions.append(_assertion(holds, NOT_SQUARE, **fields))
        static_rank = 3
    else:  # samples
        assertions.append(
            _assertion(tf.greater_equal(rank, 2), SAMPLE_RANK, name=name, rank=rank, shape=dims)
        )
        static_rank = None
    with tf.control_dependencies(assertions):
        x = tf.identity(x)
    if shape is None and static_rank is not None:
        # The rank the stages need, for the tracer: a reshape to the padded shape is the same
        # tensor at the right rank, after the assertions. (set_shape would let Grappler take the
        # rank as known and fold the rank check away; ensure_shape fails before it, in its words.)
        x = tf.reshape(x, tf.stack([padded[axis] for axis in range(static_rank)]))
    return x


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


def _pool(x: tf.Tensor, eps: float) -> tf.Tensor:
    compute = tf.cast(x, compute_dtype(x))
    shape = tf.shape(compute)
    features = tf.reshape(compute, (shape[0], shape[1] * shape[2], shape[3]))
    n = tf.cast(shape[1] * shape[2], compute.dtype)
    a = tf.matmul(features, features, transpose_a=True) / n
    return tf.cast(a + eps * eye_like(a), x.dtype)


def bilinear_pool(x: Any, eps: float = DEFAULT_EPS) -> tf.Tensor:
    """A = X X^T / N + eps I per sample, x of shape (B, H, W, C) -> (B, C, C)."""
    x = as_tensor(x, "feature map")
    check_feature_map(static_shape(x), "channels_last")
    check_non_negative(eps, "eps")
    x = in_contract(x, "feature map", "feature map")
    x = assert_finite(x, NON_FINITE_MESSAGE.format(name="feature map"))
    a = assert_finite(_pool(x, eps), OVERFLOW_MESSAGE)
    check_all_finite([(x, NON_FINITE_MESSAGE.format(name="feature map")), (a, OVERFLOW_MESSAGE)])
    return a


def _resolve_auto(
    method: str, backward: str | None, channels: int | None = None
) -> tuple[str, str | None, tf.DType | None, auto_table.Choice | None]:
    """(method, backward, dtype of the eigendecomposition or None, auto's choice or None): "auto"
    is the measured choice for this device and C (impls.auto_table); a C unknown while tracing
    takes its rule. TensorFlow places work on a GPU whenever it sees one, so that decides the
    device."""
    if method != "auto":
        return method, backward, None, None
    device = "cuda" if tf.config.list_logical_devices("GPU") else "cpu"
    choice = auto_table.choose("tf", device, channels)
    eigh_dtype = None if choice.eigh_dtype is None else tf.as_dtype(choice.eigh_dtype)
    return choice.method, backward, eigh_dtype, choice


def _root(
    a: tf.Tensor,
    method: str,
    num_iters: int | None,
    backward: str | None,
    checks: Checks,
    check_range: bool | None = None,
) -> tf.Tensor:
    """The root of the symmetric part of `a`, then one finiteness check of it: NaN or inf in
    anything it came from (`checks`, (tensor, message) pairs, first cause first) shows there.
    `check_range`: as in `impls.torch.stages._root`, samples beyond the measured accuracy range of
    auto's choice computed again by the eigendecomposition in float64 (tf.cond in a graph)."""
    channels = a.shape[-1] if a.shape.rank is not None else None
    method, backward, eigh_dtype, choice = _resolve_auto(method, backward, channels)
    num_iters, backward = with_method_defaults(method, num_iters, backward)
    bound = None if choice is None else choice.max_condition
    if check_range is False or (check_range is None and method != "eigh"):
        bound = None
    if choice is not None and choice.candidate == auto_table.BEYOND_RANGE:
        bound = None  # already the accurate choice
    symmetric = symmetric_part(tf.cast(a, compute_dtype(a)))
    spectrum = None
    try:
        if method == "eigh":
            wide = symmetric if eigh_dtype is None else tf.cast(symmetric, eigh_dtype)
            z, spectrum = eigh_sqrtm_and_spectrum(wide, symmetric.dtype)
            z = tf.cast(z, symmetric.dtype)
        else:
            # Every iterative method has both defaults (reference.conventions.ITERATIVE_DEFAULTS).
            assert num_iters is not None and backward is not None
            if backward == "autograd":
                iterate = minimax_root if method == "minimax_newton_schulz" else newton_schulz_root
                z = autograd_root(lambda m: iterate(m, num_iters), symmetric)
            elif method == "minimax_newton_schulz":
                z = eigh_if_wrong(symmetric, minimax_sqrtm(symmetric, num_iters, backward))
            else:
                z = newton_schulz_sqrtm(symmetric, num_iters, backward)
        if bound is not None:
            if spectrum is None:
                spectrum = eigh(tf.stop_gradient(symmetric))[0]
            z = _accurate_beyond(z, symmetric, condition_numbers(spectrum) > bound)
    except tf.errors.InvalidArgumentError:
        check_all_finite(checks)  # the eigensolver refused NaN or inf: name it
        raise
    check_all_finite([*checks, (z, NON_FINITE_MESSAGE.format(name="square root"))])
    return tf.cast(z, a.dtype)


def _accurate_beyond(z: tf.Tensor, symmetric: tf.Tensor, beyond: tf.Tensor) -> tf.Tensor:
    """`z` with the samples flagged in `beyond` (B,) computed again by the eigendecomposition in
    float64, accurate to condition numbers of 1e8 and beyond (impls.auto_table.BEYOND_RANGE)."""

    def accurate() -> tf.Tensor:
        wide = eigh_sqrtm(tf.cast(symmetric, tf.float64), symmetric.dtype)
        return tf.where(beyond[:, None, None], tf.cast(wide, symmetric.dtype), z)

    if tf.executing_eagerly():
        return accurate() if bool(tf.reduce_any(beyond)) else z
    return tf.cond(tf.reduce_any(beyond), accurate, lambda: z)


def sqrtm(
    a: Any,
    method: str = DEFAULT_SQRTM_METHOD,
    num_iters: int | None = None,
    backward: str | None = None,
    check_range: bool | None = None,
) -> tf.Tensor:
    """Principal square root of the symmetric part of each (C, C) matrix of a (B, C, C) batch;
    negative eigenvalues count as 0, for every method (reference.conventions).

    method: "auto" (the device's fastest accurate method, see reference.conventions), "eigh"
    (exact), "newton_schulz" (`num_iters` coupled iterations, default 20, matrix products only)
    or "minimax_newton_schulz" (the same iteration with minimax quintic steps, default 7).
    backward (iterative methods only): "lyapunov" (exact, eigenbasis), "newton_schulz"
    (iterative, same steps; minimax's default) or "autograd" (through the iterations).
    None means the method's default (reference.conventions.ITERATIVE_DEFAULTS).
    check_range (method "auto" only): recompute the samples whose condition number lies beyond
    the measured accuracy range of auto's choice by the eigendecomposition in float64. None: where
    the eigenvalues come free (auto runs an eigendecomposition, as on a CPU); True: always (one
    more eigenvalue decomposition after an iterative root, as on a GPU); False: never.
    """
    a = as_tensor(a, "matrix")
    check_square_batch(static_shape(a))
    check_sqrtm_options(method, num_iters, backward, check_range)
    message = NON_FINITE_MESSAGE.format(name="matrix")
    a = assert_finite(in_contract(a, "matrices", "matrix"), message)
    return _root(a, method, num_iters, backward, [(a, message)], check_range)


def _signed_sqrt(z: tf.Tensor, delta: float) -> tf.Tensor:
    @tf.custom_gradient
    def signed_root(z: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def grad(g: tf.Tensor) -> tf.Tensor:
            # delta = 0 makes the slope at z = 0 infinite: held at 1 / (2 sqrt(u)) below
            # |z| + delta = u (reference.conventions).
            shifted = tf.maximum(tf.abs(z) + delta, finfo(z.dtype).eps)
            return g / (2 * tf.sqrt(shifted))

        # sign(z) (sqrt(|z| + delta) - sqrt(delta)) spelled without cancellation for |z| << delta
        # (delta = 0 is allowed: the floor keeps 0 / 0 at z = 0 from turning into NaN.)
        denominator = tf.sqrt(tf.abs(z) + delta) + delta**0.5
        return z / tf.maximum(denominator, finfo(z.dtype).tiny), grad

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
    y = assert_finite(in_contract(y, "samples", "L2 input"), message)
    check_all_finite([(y, message)])
    return _l2_normalize(y)
