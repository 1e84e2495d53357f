"""The GPU's matrix-product rate, float32 and TF32, measured in the same run as the Newton-Schulz
timings: the report divides each Newton-Schulz time by its FLOP count (bench.flops) over this
rate, so "time vs the matmul floor" uses this card's numbers, not a datasheet's.

Two shapes: one large square product (the card's peak) and the batched C x C product that
Newton-Schulz actually issues at the headline size (small products reach less of the peak).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from bench.flops import matmul_flops

if TYPE_CHECKING:
    from bench.conftest import Suite

#: torch.set_float32_matmul_precision values: "highest" is IEEE float32, "high" allows TF32.
_MATMUL_PRECISION = {"float32": "highest", "tf32": "high"}


@pytest.mark.parametrize("shape", ["square", "newton_schulz"])
@pytest.mark.parametrize("precision", sorted(_MATMUL_PRECISION))
def test_matmul_rate(
    precision: str,
    shape: str,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    profile = suite.profile
    if shape == "square":
        batch, size = 1, profile.matmul_size
    else:
        batch, size = profile.headline.batch, profile.headline.channels
    group = "matmul rate"
    info = {
        "kind": "matmul",
        "backend": "torch",
        "precision": precision,
        "shape": shape,
        "batch": batch,
        "channels": size,
        "matmul_flops": matmul_flops(size, batch),
    }
    if suite.device != "cuda" or not any(b.name == "torch" for b in suite.backends):
        not_run("GPU only: the matmul floor of the Newton-Schulz timings", group, info)
    adapter = suite.adapter("torch")
    torch = adapter.torch
    generator = torch.Generator(device=adapter.device).manual_seed(0)
    left, right = (
        torch.randn(batch, size, size, device=adapter.device, generator=generator) for _ in range(2)
    )

    def run():
        product = left @ right
        adapter.synchronize()
        return product

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(_MATMUL_PRECISION[precision])
    try:
        measure(run, group=group, extra_info=info)
    finally:
        torch.set_float32_matmul_precision(previous)
