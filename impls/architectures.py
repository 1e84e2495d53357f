"""What the PyTorch and Keras models share, so that both are built from one description.

Layer names follow torchvision's state-dict keys ("features.0", "layer1.0.conv1", ...): the
Keras layers carry the same names, which is what lets `impls.transfer_weights` pair them up and
lets torchvision checkpoints load without a key map. No framework is imported here.

Every model takes RGB images scaled to [0, 1]; the normalisation that the weights expect is a
layer at the front of the backbone, with its constants stored as (non-trainable) weights so
that they travel with every checkpoint.
"""

from collections.abc import Sequence
from typing import Any, TypedDict

BACKBONES = ("small", "vgg16", "resnet50", "resnet50_v1")

#: torchvision's normalisation: RGB in [0, 1], per-channel mean and standard deviation.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

#: keras.applications VGG16/ResNet50 ("caffe" mode) subtract this BGR mean from 0..255 pixels.
#: For RGB in [0, 1] that is (x - mean_rgb / 255) / (1 / 255); the BGR order is absorbed by
#: flipping the input channels of the first conv kernel when those weights are loaded.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN_RGB_UNIT = tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR))
CAFFE_STD_RGB_UNIT = (1.0 / 255.0,) * 3

#: Sequential plans: an int is a 3x3 conv (padding 1) + ReLU with that many outputs, "M" a 2x2
#: max-pool. VGG-16 stops at relu5_3: the IBP authors drop the last max-pool.
SEQUENTIAL_PLANS: dict[str, tuple[int | str, ...]] = {
    "small": (32, 32, "M", 64, "M", 64),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}

#: ResNet-50 stages: (bottleneck width, blocks, stride of the first block).
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
BOTTLENECK_EXPANSION = 4


class ResNetVariant(TypedDict):
    """Where a ResNet-50 layout puts the stride, whether its convs have a bias, its BN epsilon."""

    stride_in_1x1: bool
    conv_bias: bool
    bn_eps: float


#: "resnet50" is torchvision's layout (v1.5: the stride sits in the 3x3 conv, convs have no
#: bias); "resnet50_v1" is keras.applications' (the stride sits in the first 1x1 conv, every
#: conv has a bias). They compute different functions, so weights of one do not fit the other.
RESNET_VARIANTS: dict[str, ResNetVariant] = {
    "resnet50": {"stride_in_1x1": False, "conv_bias": False, "bn_eps": 1e-5},
    "resnet50_v1": {"stride_in_1x1": True, "conv_bias": True, "bn_eps": 1.001e-5},
}

#: BatchNorm of the optional 1x1 channel reduction (iSQRT-COV style) and of "resnet50".
BN_EPS = 1e-5
#: torch's momentum m updates running = (1 - m) * running + m * batch; Keras' is 1 - m.
TORCH_BN_MOMENTUM = 0.1

#: The IBP authors' two-stage recipe. Stage 1: the classifier alone on the frozen backbone;
#: stage 2: everything, with a larger rate for the classifier. The paper gives rates and weight
#: decay only; momentum 0.9 is an assumption (the default of MatConvNet's cnn_train, the
#: authors' framework).
TRAINING_RECIPE: dict[int, dict[str, Any]] = {
    1: {"optimizer": "sgd", "head_lr": 1.0, "momentum": 0.9, "weight_decay": 1e-8},
    2: {"optimizer": "adam", "backbone_lr": 1e-4, "head_lr": 1e-2},
}

TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def total_stride(name: str) -> int:
    """Input pixels per feature-map location along each side: also the smallest image side the
    backbone takes (smaller images leave it no location to pool)."""
    if name in SEQUENTIAL_PLANS:
        return 2 ** SEQUENTIAL_PLANS[name].count("M")
    return 2 ** (2 + len(RESNET50_STAGES) - 1)  # conv1 and the max-pool, then three strided stages


def check_backbone_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def sequential_layers(plan: Sequence[int | str]) -> list[tuple[int, str, int | None]]:
    """(index, kind, width) of each layer of a sequential plan, indexed as torch's nn.Sequential
    counts them (a conv and its ReLU take two places), so both frameworks name layers alike."""
    layers: list[tuple[int, str, int | None]] = []
    index = 0
    for entry in plan:
        if isinstance(entry, int):
            layers += [(index, "conv", entry), (index + 1, "relu", None)]
            index += 2
        else:
            layers.append((index, "pool", None))
            index += 1
    return layers


def out_channels(name: str, reduce_dim: int | None = None) -> int:
    if reduce_dim:
        return reduce_dim
    if name in SEQUENTIAL_PLANS:
        return next(e for e in reversed(SEQUENTIAL_PLANS[name]) if isinstance(e, int))
    return RESNET50_STAGES[-1][0] * BOTTLENECK_EXPANSION


def recipe_stage(stage: int) -> dict[str, Any]:
    try:
        return TRAINING_RECIPE[stage]
    except KeyError:
        raise ValueError(f"the recipe has stages 1 and 2, got {stage!r}") from None
