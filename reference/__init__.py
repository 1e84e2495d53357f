"""Float64 NumPy/SciPy reference of the Improved Bilinear Pooling head, stage by stage."""

from reference.contracts import IBPInputError
from reference.stages import (
    bilinear_pool,
    bilinear_pool_vjp,
    ibp_head,
    ibp_head_vjp,
    l2_normalize,
    l2_normalize_vjp,
    linear,
    linear_vjp,
    signed_sqrt,
    signed_sqrt_vjp,
    sqrtm,
    sqrtm_vjp,
)

__all__ = [
    "IBPInputError",
    "bilinear_pool",
    "bilinear_pool_vjp",
    "ibp_head",
    "ibp_head_vjp",
    "l2_normalize",
    "l2_normalize_vjp",
    "linear",
    "linear_vjp",
    "signed_sqrt",
    "signed_sqrt_vjp",
    "sqrtm",
    "sqrtm_vjp",
]
