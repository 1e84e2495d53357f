"""The IBP stages of `reference.stages` with the family's uniform signatures: forward(x, **p) and
vjp(x, g, **p) of the stage's input (the IBP root's VJP takes the root's output)."""

from reference.stages import (
    Array,
    ArrayLike,
    bilinear_pool_vjp,
    sqrtm,
    sqrtm_vjp,
)


def pool_vjp(x: ArrayLike, g: ArrayLike, eps: float) -> Array:
    """eps does not move the pooling's gradient."""
    return bilinear_pool_vjp(x, g)


def root_vjp(a: ArrayLike, g: ArrayLike) -> Array:
    return sqrtm_vjp(sqrtm(a), g)
