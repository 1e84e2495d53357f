"""The whole IBP head (pool, sqrtm, signed sqrt, L2, classifier) forward+backward, and one SGD
step of `impls.<framework>.models.build_model`: the small model on any device, VGG-16 + IBP at
448 x 448 on the GPU only (He-initialised weights: speed does not depend on them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from bench.adapters import NUM_CLASSES
from bench.cases import SqrtmVariant
from bench.inputs import Inputs

if TYPE_CHECKING:
    from bench.conftest import Suite


def test_head_forward_backward(
    backend_name: str,
    adapter: Any,
    head_variant: SqrtmVariant,
    inputs: Inputs,
    measure: Callable[..., Any],
    suite: Suite,
) -> None:
    cell, side = suite.profile.headline, suite.profile.feature_side
    features = adapter.feature_maps(
        inputs.feature_maps(cell.batch, cell.channels, side), cell.dtype
    )
    run = adapter.head_forward_backward(features, head_variant.options)
    info = {
        "kind": "head",
        "mode": "forward_backward",
        "backend": backend_name,
        "height": side,
        "width": side,
        "num_classes": NUM_CLASSES,
        **cell.info(),
        **head_variant.info(),
    }
    measure(run, group=f"IBP head forward+backward, {cell.label}, {side}x{side}", extra_info=info)


def _train_step(adapter, inputs, name, batch, image_side):
    labels = adapter.labels(inputs.labels(batch, NUM_CLASSES))
    images = adapter.feature_maps(inputs.images(batch, image_side), "float32")
    return adapter.model_train_step(name, images, labels)


def test_small_model_train_step(
    backend_name: str, adapter: Any, inputs: Inputs, measure: Callable[..., Any], suite: Suite
) -> None:
    batch, side = suite.profile.headline.batch, suite.profile.small_image_side
    run = _train_step(adapter, inputs, "small", batch, side)
    info = {
        "kind": "train_step",
        "backend": backend_name,
        "model": "small",
        "batch": batch,
        "image_side": side,
        "num_classes": NUM_CLASSES,
    }
    measure(run, group=f"training step, small model, B={batch}, {side}x{side}", extra_info=info)


@pytest.mark.parametrize("precision", ["float32", "bfloat16-autocast"])
def test_vgg16_train_step(
    backend_name: str,
    adapter: Any,
    precision: str,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    batch, side = suite.profile.headline.batch, suite.profile.vgg_image_side
    group = f"training step, VGG-16 + IBP, B={batch}, {side}x{side}"
    info = {
        "kind": "train_step",
        "backend": backend_name,
        "model": "vgg16",
        "batch": batch,
        "image_side": side,
        "num_classes": NUM_CLASSES,
        "precision": precision,
    }
    if suite.device != "cuda":
        not_run("GPU only: a VGG-16 step at 448 x 448 takes minutes on a CPU", group, info)
    step = _train_step(adapter, inputs, "vgg16", batch, side)

    def run():
        # The IBP stages opt out of autocast themselves: only the backbone runs in bfloat16.
        with adapter.autocast(enabled=precision == "bfloat16-autocast"):
            return step()

    measure(run, group=group, extra_info=info)
