"""Conv backbones and the full IBP model in PyTorch.

Models take channels-first RGB images (B, 3, H, W) scaled to [0, 1], of any size; the
normalisation their weights expect is the backbone's first module (`backbone.preprocess`).
Module names follow torchvision, so its VGG-16/ResNet-50 checkpoints load as they are.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from impls.architectures import (
    BN_EPS,
    BOTTLENECK_EXPANSION,
    RESNET50_STAGES,
    RESNET_VARIANTS,
    SEQUENTIAL_PLANS,
    TORCH_BN_MOMENTUM,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    TORCHVISION_URLS,
    check_backbone_name,
    out_channels,
    recipe_stage,
    sequential_layers,
    total_stride,
)
from impls.torch.layers import IBPHead
from impls.torch.stages import dtype_name
from reference.contracts import check_images

#: Keys of torchvision checkpoints that belong to the ImageNet classifier, not the backbone.
_CLASSIFIER_PREFIXES = ("classifier.", "fc.")


class ImageNormalization(nn.Module):
    """(x - mean) / std per channel. Buffers, so a state dict records the preprocessing."""

    def __init__(
        self, mean: Sequence[float] = TORCHVISION_MEAN, std: Sequence[float] = TORCHVISION_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def _he_init(conv: nn.Conv2d) -> nn.Conv2d:
    # He initialisation keeps random deep features at unit scale; torch's default shrinks them
    # layer after layer until the covariance is only eps * I and the head sees nothing.
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _batch_norm(channels: int, eps: float = BN_EPS) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=TORCH_BN_MOMENTUM)


def _channel_reduction(in_channels: int, reduce_dim: int) -> nn.Sequential:
    """1x1 conv + BN + ReLU before pooling, as iSQRT-COV shrinks 2048 channels to 256."""
    return nn.Sequential(
        _he_init(nn.Conv2d(in_channels, reduce_dim, 1, bias=False)),
        _batch_norm(reduce_dim),
        nn.ReLU(inplace=True),
    )


class _Backbone(nn.Module):
    def __init__(self, name: str, trunk_channels: int, reduce_dim: int | None) -> None:
        super().__init__()
        self.min_side = total_stride(name)
        self.preprocess = ImageNormalization()
        self.reduce = _channel_reduction(trunk_channels, reduce_dim) if reduce_dim else None
        self.out_channels = reduce_dim or trunk_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Before the normalisation, which would broadcast one grey channel to three.
        check_images(images.shape, dtype_name(images), "channels_first", self.min_side)
        x = self.trunk(self.preprocess(images))
        return x if self.reduce is None else self.reduce(x)


class SequentialBackbone(_Backbone):
    """3x3 convs + ReLU and 2x2 max-pools ("small", "vgg16"); VGG-16 ends at relu5_3."""

    def __init__(self, name: str, reduce_dim: int | None = None) -> None:
        plan = SEQUENTIAL_PLANS[name]
        super().__init__(name, out_channels(name), reduce_dim)
        layers: list[nn.Module] = []
        channels = 3
        for _, kind, width in sequential_layers(plan):
            if width is not None:  # a conv
                layers.append(_he_init(nn.Conv2d(channels, width, 3, padding=1)))
                channels = width
            elif kind == "relu":
                layers.append(nn.ReLU(inplace=True))
            else:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Bottleneck(nn.Module):
    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        stride_in_1x1: bool,
        conv_bias: bool,
        bn_eps: float,
    ) -> None:
        super().__init__()
        out = width * BOTTLENECK_EXPANSION
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _he_init(nn.Conv2d(in_channels, width, 1, stride_1x1, bias=conv_bias))
        self.bn1 = _batch_norm(width, bn_eps)
        self.conv2 = _he_init(nn.Conv2d(width, width, 3, stride_3x3, 1, bias=conv_bias))
        self.bn2 = _batch_norm(width, bn_eps)
        self.conv3 = _he_init(nn.Conv2d(width, out, 1, bias=conv_bias))
        self.bn3 = _batch_norm(out, bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                _he_init(nn.Conv2d(in_channels, out, 1, stride, bias=conv_bias)),
                _batch_norm(out, bn_eps),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNetBackbone(_Backbone):
    """ResNet-50 up to the last conv stage (2048 channels, stride 32)."""

    def __init__(self, name: str, reduce_dim: int | None = None) -> None:
        variant = RESNET_VARIANTS[name]
        super().__init__(name, out_channels(name), reduce_dim)
        self.conv1 = _he_init(nn.Conv2d(3, 64, 7, 2, 3, bias=variant["conv_bias"]))
        self.bn1 = _batch_norm(64, variant["bn_eps"])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for stage, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(channels, width, stride if block == 0 else 1, **variant))
                channels = width * BOTTLENECK_EXPANSION
            setattr(self, f"layer{stage}", nn.Sequential(*layers))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class IBPModel(nn.Module):
    """backbone -> IBPHead. While the backbone is frozen, its BatchNorms stay in eval mode even
    under `model.train()`, so frozen really means unchanged (running statistics included)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.backbone_frozen = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True) -> "IBPModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def build_backbone(
    name: str, weights: str | os.PathLike[str] | None = None, reduce_dim: int | None = None
) -> _Backbone:
    """A backbone without its classifier: (B, 3, H, W) RGB in [0, 1] -> (B, C, H', W').

    name: "small" (4 convs, 64 channels, stride 4: trains in seconds on a CPU), "vgg16"
    (relu5_3, 512 channels, stride 16), "resnet50" (torchvision's v1.5, 2048 channels,
    stride 32) or "resnet50_v1" (keras.applications' layout; no torchvision weights).
    weights: None (He-initialised), "imagenet" (torchvision's checkpoint, downloaded once), or
    the path of a state dict (.pt/.pth) of this backbone, of a full IBP model, or of a
    torchvision model; a file without `preprocess.*` keys keeps torchvision's normalisation.
    reduce_dim: channels of an optional 1x1 conv + BN + ReLU at the end (not in checkpoints
    that lack it: those leave it freshly initialised).
    """
    check_backbone_name(name)
    backbone_class = SequentialBackbone if name in SEQUENTIAL_PLANS else ResNetBackbone
    backbone = backbone_class(name, reduce_dim)
    if weights == "imagenet":
        if name not in TORCHVISION_URLS:
            hint = (
                "; build it in Keras, then impls.transfer_weights" if name == "resnet50_v1" else ""
            )
            raise ValueError(f"torchvision has no ImageNet weights for {name!r}{hint}")
        url = TORCHVISION_URLS[name]
        _load_backbone_state(backbone, torch.hub.load_state_dict_from_url(url, check_hash=True))
    elif weights is not None:
        _load_backbone_state(backbone, _read_state_dict(weights))
    return backbone


def build_model(
    backbone: str,
    num_classes: int | None,
    weights: str | os.PathLike[str] | None = None,
    reduce_dim: int | None = None,
    **head_kwargs: Any,
) -> IBPModel:
    """The backbone called `backbone` (see `build_backbone`) followed by
    `IBPHead(out_channels, num_classes, **head_kwargs)`: (B, 3, H, W) in [0, 1] -> logits.

    weights: as for `build_backbone`; a state dict of a full IBP model (keys `backbone.*` and
    `head.*`) loads into the whole model.
    """
    full_state = None
    if weights not in (None, "imagenet"):
        state = _read_state_dict(weights)
        if any(key.startswith("head.") for key in state):
            full_state, weights = state, None
    features = build_backbone(backbone, weights, reduce_dim)
    model = IBPModel(features, IBPHead(features.out_channels, num_classes, **head_kwargs))
    if full_state is not None:
        model.load_state_dict(full_state)
    return model


def freeze_backbone(model: IBPModel, frozen: bool = True) -> IBPModel:
    """Stop (or restart) training the backbone: no gradients, BatchNorm in eval mode."""
    model.backbone_frozen = frozen
    model.backbone.requires_grad_(not frozen)
    model.train(model.training)
    return model


def recipe_optimizer(model: IBPModel, stage: int) -> torch.optim.Optimizer:
    """The authors' optimizer for `stage` (1: classifier only, SGD; 2: everything, Adam with
    a larger classifier rate). Stage 1 freezes the backbone and stage 2 unfreezes it."""
    recipe = recipe_stage(stage)
    freeze_backbone(model, frozen=stage == 1)
    if stage == 1:
        return torch.optim.SGD(
            model.head.parameters(),
            lr=recipe["head_lr"],
            momentum=recipe["momentum"],
            weight_decay=recipe["weight_decay"],
        )
    return torch.optim.Adam(
        [
            {"params": model.backbone.parameters(), "lr": recipe["backbone_lr"]},
            {"params": model.head.parameters(), "lr": recipe["head_lr"]},
        ]
    )


def _read_state_dict(path: object) -> dict[str, torch.Tensor]:
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(
            f"weights must be None, 'imagenet' or the path of a state dict, got {path!r}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_backbone_state(backbone: _Backbone, state: Mapping[str, torch.Tensor]) -> None:
    """Load a backbone, full-model or torchvision state dict into `backbone`. Missing
    preprocessing or channel-reduction entries keep their current values; anything else that
    does not fit is an error."""
    if any(key.startswith("backbone.") for key in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    result = backbone.load_state_dict(state, strict=False)
    optional = ("preprocess.", "reduce.")
    missing = [key for key in result.missing_keys if not key.startswith(optional)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the weights do not fit this backbone: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
