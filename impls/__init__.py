"""Parallel PyTorch (`impls.torch`) and TensorFlow/Keras (`impls.tf`) implementations of IBP."""

from typing import Any

__all__ = ["WeightTransferError", "transfer_weights"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the pytest plugin imports `impls` in every test run of a project that
    # has this package installed, and impls.transfer imports NumPy.
    if name in __all__:
        from impls import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module 'impls' has no attribute {name!r}")
