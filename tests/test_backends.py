"""The backend registry's devices and conversions: what every benchmark and training run relies on
to put NumPy data on a device in its framework's layout and read it back."""

import numpy as np
import pytest

from impls.backends import CHANNELS_FIRST, CHANNELS_LAST, Backend
from reference.contracts import IBPInputError

X = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)  # channels-first


def test_auto_is_the_gpu_exactly_when_the_framework_sees_one(backend: Backend) -> None:
    device = backend.resolve_device("auto")
    if backend.name == "torch":
        sees_gpu = backend.fw.cuda.is_available()
    else:
        sees_gpu = bool(backend.fw.config.list_physical_devices("GPU"))
    assert backend.is_gpu(device) == sees_gpu
    assert (backend.describe_device(device) == "cpu") != sees_gpu
    # Data goes there and comes back unchanged, whichever device it is.
    np.testing.assert_array_equal(backend.numpy(backend.tensor(X, "float64", device)), X)
    backend.synchronize(device)


def test_cpu_is_the_cpu(backend: Backend) -> None:
    device = backend.resolve_device("cpu")
    assert not backend.is_gpu(device)
    assert backend.describe_device(device) == "cpu"
    assert backend.resolve_device() == device


def test_gpu_request_without_a_gpu_is_named(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(backend), "_has_gpu", lambda self: False)
    with pytest.raises(IBPInputError, match=f"device 'gpu': {backend.package} sees no GPU"):
        backend.resolve_device("gpu")
    assert not backend.is_gpu(backend.resolve_device("auto"))


def test_gpu_and_auto_pick_a_visible_gpu(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(backend), "_has_gpu", lambda self: True)
    assert backend.is_gpu(backend.resolve_device("gpu"))
    assert backend.is_gpu(backend.resolve_device("auto"))
    assert not backend.is_gpu(backend.resolve_device("cpu"))


@pytest.mark.parametrize("request_", ["cuda", "GPU", ""])
def test_unknown_device_request_is_named(backend: Backend, request_: str) -> None:
    with pytest.raises(IBPInputError, match="choose one of cpu, gpu, auto"):
        backend.resolve_device(request_)


def test_feature_maps_from_either_layout(backend: Backend) -> None:
    device = backend.resolve_device("cpu")
    from_first = backend.feature_map(X, "float32", device)
    from_last = backend.feature_map(X.transpose(0, 2, 3, 1), "float32", device, CHANNELS_LAST)
    expected_shape = (2, 3, 4, 5) if backend.layout == CHANNELS_FIRST else (2, 4, 5, 3)
    assert tuple(from_first.shape) == expected_shape
    assert backend.dtype_name(from_first) == "float32"
    np.testing.assert_array_equal(backend.numpy(from_first), backend.numpy(from_last))
    np.testing.assert_array_equal(backend.feature_map_numpy(from_first), X)


def test_unknown_layout_is_named(backend: Backend) -> None:
    with pytest.raises(IBPInputError, match="layout 'NCHW'"):
        backend.feature_map(X, layout="NCHW")


def test_labels_are_int64(backend: Backend) -> None:
    labels = backend.labels(np.array([3, 0, 199]), backend.resolve_device("cpu"))
    assert backend.dtype_name(labels) == "int64"
    np.testing.assert_array_equal(backend.numpy(labels), [3, 0, 199])


def test_half_precision_reads_back_as_float32(backend: Backend) -> None:
    values = backend.numpy(backend.tensor(np.array([1.5, -2.0]), "bfloat16"))
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, [1.5, -2.0])


def test_placement_places_what_is_created_inside(backend: Backend) -> None:
    device = backend.resolve_device("auto")
    with backend.placement(device):
        created = backend.fw.zeros((2,))
    where = created.device
    on_gpu = (where.type == "cuda") if backend.name == "torch" else "GPU" in where
    assert on_gpu == backend.is_gpu(device)
