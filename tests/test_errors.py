"""Bad input gets an IBPInputError that names the problem, in both frameworks."""

import numpy as np
import pytest

from reference import IBPInputError


def feature_map(backend, shape_channels_first):
    return backend.feature_map(np.ones(shape_channels_first))


def test_pool_rejects_wrong_rank(backend):
    with pytest.raises(IBPInputError, match=r"rank 3"):
        backend.impl.bilinear_pool(backend.tensor(np.ones((2, 3, 4))))


def test_pool_rejects_non_finite(backend):
    x = np.ones((1, 2, 2, 2))
    x[0, 1, 0, 0] = np.nan
    with pytest.raises(IBPInputError, match="feature map holds non-finite"):
        backend.impl.bilinear_pool(backend.feature_map(x))


def test_sqrtm_rejects_non_square(backend):
    with pytest.raises(IBPInputError, match=r"must be square.*3 x 4"):
        backend.impl.sqrtm(backend.tensor(np.ones((2, 3, 4))))


def test_sqrtm_rejects_unbatched(backend):
    with pytest.raises(IBPInputError, match=r"batch of square matrices \(B, C, C\)"):
        backend.impl.sqrtm(backend.tensor(np.eye(3)))


def test_sqrtm_rejects_non_finite(backend):
    a = np.eye(3)[None].copy()
    a[0, 0, 0] = np.inf
    with pytest.raises(IBPInputError, match="matrix holds non-finite"):
        backend.impl.sqrtm(backend.tensor(a))


def test_sqrtm_rejects_unknown_method(backend):
    with pytest.raises(IBPInputError, match="unknown sqrtm method 'svd'"):
        backend.impl.sqrtm(backend.tensor(np.eye(3)[None]), method="svd")


def test_head_rejects_wrong_channel_count(backend):
    head = backend.impl.IBPHead(in_channels=8)
    with pytest.raises(IBPInputError, match="expected 8 channels"):
        head(feature_map(backend, (2, 5, 4, 4)))


def test_head_names_the_wrong_layout(backend):
    """A channels-last map given to torch (or channels-first to Keras) is named as such."""
    head = backend.impl.IBPHead(in_channels=8)
    other_layout_shape = (2, 5, 5, 8) if backend.layout == "channels_first" else (2, 8, 5, 5)
    wrong = backend.tensor(np.ones(other_layout_shape))
    other = "channels_last" if backend.layout == "channels_first" else "channels_first"
    with pytest.raises(IBPInputError, match=f"looks {other}"):
        head(wrong)
