"""Parallel PyTorch (`impls.torch`) and TensorFlow/Keras (`impls.tf`) implementations of IBP."""

# impls.transfer imports torch and Keras only when called, so `import impls` stays light.
from impls.transfer import WeightTransferError, transfer_weights

__all__ = ["WeightTransferError", "transfer_weights"]
