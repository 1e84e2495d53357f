"""Matrix-product FLOP counts of the matmul-only square roots (classic and minimax Newton-Schulz),
for the GPU's matmul floor.

A (C x C) @ (C x C) product is 2 C^3 FLOPs. Additions, scalings and norms are O(C^2) and left out:
the count is the work a perfect matmul engine could not avoid, so time / (count / measured matmul
rate) says how far a method is from that engine's floor. The number of products a call makes does
not depend on C, so it is counted once per setting at torch's dispatcher
(`bench.products.counting`) on a small matrix: no formula to fall behind the code.
"""

import functools

#: The matrix the products are counted on: C = 8, a realistic covariance.
_COUNTED_CHANNELS = 8


def matmul_flops(channels: int, batch: int = 1) -> int:
    return 2 * batch * channels**3


@functools.cache
def _products(method: str, num_iters: int, backward: str | None) -> int:
    import torch

    from bench.products.counting import count_products
    from impls.testing.numerical_error import realistic_case
    from impls.torch import sqrtm

    a, g, _, _ = realistic_case(_COUNTED_CHANNELS)

    def root(m: torch.Tensor) -> torch.Tensor:
        return sqrtm(m, method=method, num_iters=num_iters, backward=backward or "newton_schulz")

    counted = count_products(root, a, g)
    return counted.products if backward is not None else counted.forward_products


def sqrtm_flops(
    method: str, channels: int, batch: int, num_iters: int, backward: str | None = None
) -> int | None:
    """Matrix-product FLOPs of `num_iters` steps of the iterative `method`, with the backward if
    given (None: the forward alone); None for the eigenbasis ("lyapunov") backward, which is not
    made of matrix products alone."""
    if backward == "lyapunov":
        return None
    return _products(method, num_iters, backward) * matmul_flops(channels, batch)
