"""What MPN-COV and iSQRT-COV share: the centred covariance pooling and the upper-triangular
vectorisation of the normalised matrix."""

import numpy as np

from reference.contracts import check_choice, check_feature_map, check_square_batch
from reference.stages import Array, ArrayLike, _float64

#: Orders of the upper triangle (diagonal included), both read off the authors' released code:
#: - "row": row by row, (0,0), (0,1), ..., (0,C-1), (1,1), ...: numpy.triu_indices, and the
#:   fast-MPN-COV PyTorch release (src/representation/MPNCOV.py, Triuvec: the nonzeros of
#:   ones(C, C).triu() flattened row by row).
#: - "column": column by column, (0,0), (0,1), (1,1), (0,2), ...: the MATLAB releases (MPN-COV's
#:   mpn_cov_cpu.cpp copies i+1 entries of each column i) and fast-MPN-COV's first PyTorch
#:   release (ones(C, C).triu().t(), the lower triangle row by row, of a symmetric matrix).
#: Neither scales the off-diagonal entries (no sqrt(2)): each appears once, with its own value.
TRIU_ORDERS = ("row", "column")
DEFAULT_TRIU_ORDER = "row"


def centred_pool(x: ArrayLike, eps: float = 0.0) -> Array:
    """S = X Ibar X^T + eps I per sample, Ibar = (1/N)(I - (1/N) 1 1^T), X the (C, N) matrix of
    one feature map: the covariance of the N locations, divided by N (not N - 1).

    Computed as (X - mean)(X - mean)^T / N, the same matrix without the N x N product
    (I - (1/N) 1 1^T is idempotent), and without the cancellation of X X^T / N - m m^T."""
    x = _float64(x, "feature map")
    check_feature_map(x.shape, "channels_first")
    b, c, h, w = x.shape
    centred = x.reshape(b, c, h * w)
    centred = centred - centred.mean(axis=2, keepdims=True)
    return centred @ centred.transpose(0, 2, 1) / (h * w) + eps * np.eye(c)


def centred_pool_vjp(x: ArrayLike, g: ArrayLike, eps: float = 0.0) -> Array:
    """dX = (G + G^T) X Ibar (eps does not move the gradient)."""
    x = _float64(x, "feature map")
    b, c, h, w = x.shape
    centred = x.reshape(b, c, h * w)
    centred = centred - centred.mean(axis=2, keepdims=True)
    g = np.asarray(g, dtype=np.float64)
    return ((g + g.transpose(0, 2, 1)) @ centred / (h * w)).reshape(x.shape)


def triu_indices(channels: int, order: str = DEFAULT_TRIU_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the C(C+1)/2 upper-triangular entries, in `order`."""
    check_choice(order, TRIU_ORDERS, "upper-triangle order")
    if order == "row":
        return np.triu_indices(channels)
    below_rows, below_columns = np.tril_indices(channels)
    return below_columns, below_rows


def triu_vec(m: ArrayLike, order: str = DEFAULT_TRIU_ORDER) -> Array:
    """(B, C, C) -> (B, C(C+1)/2): the upper triangle, diagonal included, unscaled."""
    m = _float64(m, "matrix")
    check_square_batch(m.shape)
    rows, columns = triu_indices(m.shape[-1], order)
    return m[:, rows, columns]


def triu_vec_vjp(m: ArrayLike, g: ArrayLike, order: str = DEFAULT_TRIU_ORDER) -> Array:
    """The cotangent scattered into the upper triangle; the lower triangle gets 0 (the map reads
    only the upper one), as autodiff of a gather gives."""
    shape = np.shape(m)
    rows, columns = triu_indices(shape[-1], order)
    grad = np.zeros(shape)
    grad[:, rows, columns] = np.asarray(g, dtype=np.float64)
    return grad
