"""PyTorch implementation of Improved Bilinear Pooling (channels-first)."""

from impls.torch.layers import IBPHead
from impls.torch.stages import bilinear_pool, l2_normalize, signed_sqrt, sqrtm

__all__ = ["IBPHead", "bilinear_pool", "l2_normalize", "signed_sqrt", "sqrtm"]
