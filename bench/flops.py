"""Matrix-product FLOP counts of the Newton-Schulz square roots (classic and minimax), for the
GPU's matmul floor.

A (C x C) @ (C x C) product is 2 C^3 FLOPs. Additions, scalings and norms are O(C^2) and left out:
the count is the work a perfect matmul engine could not avoid, so time / (count / measured matmul
rate) says how far a method is from that engine's floor.
"""

#: Products per iteration. Forward: Z Y, Y T, T Z. Sign-iteration backward: P P, Q (3I - P^2),
#: P Q, Q P, P (P Q - Q P), P (3I - P^2). Autograd through the forward: two products (one per
#: operand) for each of the forward's three.
_FORWARD_PRODUCTS = 3
_BACKWARD_PRODUCTS = {"newton_schulz": 6, "autograd": 6}


def matmul_flops(channels: int, batch: int = 1) -> int:
    return 2 * batch * channels**3


def newton_schulz_flops(
    channels: int, batch: int, num_iters: int, backward: str | None = None
) -> int | None:
    """Matrix-product FLOPs of `num_iters` Newton-Schulz iterations, with the backward if given.

    None for a backward that is not made of matrix products alone (the eigenbasis Lyapunov solve).
    """
    products = _FORWARD_PRODUCTS
    if backward is not None:
        if backward not in _BACKWARD_PRODUCTS:
            return None
        products += _BACKWARD_PRODUCTS[backward]
    return products * num_iters * matmul_flops(channels, batch)


#: Products of the minimax root at K steps (impls/torch/minimax_newton_schulz.py; its tests count
#: them at the dispatcher): forward 4K - 3, backward by the sign iteration reusing the forward's
#: iterates 5K - 1, autograd through the steps 8K - 6.
_MINIMAX_FORWARD = (4, -3)
_MINIMAX_BACKWARD = {"newton_schulz": (5, -1), "autograd": (8, -6)}


def minimax_flops(
    channels: int, batch: int, num_iters: int, backward: str | None = None
) -> int | None:
    """Matrix-product FLOPs of the minimax root at `num_iters` steps, with the backward if given;
    None for the eigenbasis backward, which is not made of matrix products alone."""
    per_step, offset = _MINIMAX_FORWARD
    products = per_step * num_iters + offset
    if backward is not None:
        if backward not in _MINIMAX_BACKWARD:
            return None
        per_step, offset = _MINIMAX_BACKWARD[backward]
        products += per_step * num_iters + offset
    return products * matmul_flops(channels, batch)
