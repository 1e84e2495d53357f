"""Parallel PyTorch (`impls.torch`) and TensorFlow/Keras (`impls.tf`) implementations of IBP."""
