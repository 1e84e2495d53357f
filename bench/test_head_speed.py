"""The whole IBP head (pool, sqrtm, signed sqrt, L2, classifier) forward+backward, and training
steps: a small model on any device, VGG-16 + IBP at 448 x 448 on the GPU only.

The models come from `impls.<framework>.models.build_model`. Where a framework does not offer it
yet, the step trains IBPHead + classifier on fixed random ReLU features of the backbone's output
shape instead, and the results say so ("model" in extra_info).
"""

import pytest

from bench.adapters import NUM_CLASSES

#: Output channels and downsampling of the small backbone (impls.<framework>.models): the shape
#: of the stand-in features when build_model is missing.
SMALL_CHANNELS, SMALL_STRIDE = 64, 4
VGG_CHANNELS, VGG_STRIDE = 512, 16


def test_head_forward_backward(backend_name, adapter, head_variant, inputs, measure, suite):
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


def _train_step(adapter, inputs, name, batch, image_side, channels, stride):
    """The step of build_model(name) on images, else of the head on stand-in features."""
    labels = adapter.labels(inputs.labels(batch, NUM_CLASSES))
    images = adapter.feature_maps(inputs.images(batch, image_side), "float32")
    run = adapter.model_train_step(name, images, labels)
    if run is not None:
        return run, f"build_model({name!r})"
    side = image_side // stride
    features = adapter.feature_maps(inputs.feature_maps(batch, channels, side), "float32")
    description = f"IBPHead on random {channels}x{side}x{side} features (no build_model yet)"
    return adapter.head_train_step(features, labels), description


def test_small_model_train_step(backend_name, adapter, inputs, measure, suite):
    batch, side = suite.profile.headline.batch, suite.profile.small_image_side
    run, model = _train_step(adapter, inputs, "small", batch, side, SMALL_CHANNELS, SMALL_STRIDE)
    info = {
        "kind": "train_step",
        "backend": backend_name,
        "model": model,
        "batch": batch,
        "image_side": side,
        "num_classes": NUM_CLASSES,
    }
    measure(run, group=f"training step, small model, B={batch}, {side}x{side}", extra_info=info)


@pytest.mark.parametrize("precision", ["float32", "bfloat16-autocast"])
def test_vgg16_train_step(backend_name, adapter, precision, inputs, measure, not_run, suite):
    batch, side = suite.profile.headline.batch, suite.profile.vgg_image_side
    group = f"training step, VGG-16 + IBP, B={batch}, {side}x{side}"
    info = {
        "kind": "train_step",
        "backend": backend_name,
        "batch": batch,
        "image_side": side,
        "num_classes": NUM_CLASSES,
        "precision": precision,
    }
    if suite.device != "cuda":
        not_run("GPU only: a VGG-16 step at 448 x 448 takes minutes on a CPU", group, info)
    step, info["model"] = _train_step(
        adapter, inputs, "vgg16", batch, side, VGG_CHANNELS, VGG_STRIDE
    )

    def run():
        # The IBP stages opt out of autocast themselves: only the backbone runs in bfloat16.
        with adapter.autocast(enabled=precision == "bfloat16-autocast"):
            return step()

    measure(run, group=group, extra_info=info)
