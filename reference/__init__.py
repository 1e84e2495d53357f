"""Float64 NumPy/SciPy reference of the Improved Bilinear Pooling head, stage by stage.

The stages load on first use: the layers import `reference.contracts` and
`reference.conventions`, which need neither SciPy nor the stages, and importing a layer must not
pull in the oracle that tests it.
"""

from typing import TYPE_CHECKING, Any

from reference.contracts import IBPInputError

if TYPE_CHECKING:  # what the lazy attributes are, for type checkers
    from reference.stages import (  # noqa: F401
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

_STAGES = (
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
)

__all__ = ["IBPInputError", *_STAGES]


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        from reference import stages

        return getattr(stages, name)
    raise AttributeError(f"module 'reference' has no attribute {name!r}")
