"""Conv backbones and the full IBP model in Keras.

Models take channels-last RGB images (B, H, W, 3) scaled to [0, 1], of any size; the
normalisation their weights expect is the backbone's first layer ("preprocess"). Layers carry
torchvision's module names ("features.0", "layer1.0.conv1") so that `impls.transfer_weights`
pairs them with the PyTorch model built from the same arguments. In a full model the backbone
is the nested model named "backbone" and the head the layer named "head".
"""

import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from impls.architectures import (
    BN_EPS,
    BOTTLENECK_EXPANSION,
    CAFFE_MEAN_RGB_UNIT,
    CAFFE_STD_RGB_UNIT,
    RESNET50_STAGES,
    RESNET_VARIANTS,
    SEQUENTIAL_PLANS,
    TORCH_BN_MOMENTUM,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    check_backbone_name,
    out_channels,
    recipe_stage,
    sequential_layers,
    total_stride,
)
from impls.tf.layers import IBPHead
from reference.contracts import check_images

BACKBONE_LAYER, HEAD_LAYER = "backbone", "head"

#: (height, width, 3) of the images a model is built for; None sides take any size.
InputShape = tuple[int | None, int | None, int]


@keras.saving.register_keras_serializable(package="ibp")
class ImageNormalization(keras.layers.Layer):
    """(x - mean) / std per channel, the constants kept as non-trainable weights so that
    weight files record the preprocessing. It is the model's first layer, so it checks the
    images: RGB floats of at least `min_side` pixels per side (the backbone's total stride)."""

    def __init__(
        self,
        mean: Sequence[float] = TORCHVISION_MEAN,
        std: Sequence[float] = TORCHVISION_STD,
        min_side: int = 1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # a uint8 image must reach the check uncast
        super().__init__(**kwargs)
        self.initial_mean, self.initial_std = tuple(mean), tuple(std)
        self.min_side = min_side

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.mean = self._constant("mean", self.initial_mean)
        self.std = self._constant("std", self.initial_std)

    def _constant(self, name: str, values: Sequence[float]) -> Any:
        initializer = keras.initializers.Constant(values)
        return self.add_weight(
            shape=(len(values),), initializer=initializer, trainable=False, name=name
        )

    def call(self, images: Any) -> Any:
        # Called on Keras' symbolic tensors (tuple shapes, dtype names) and on tf.Tensors alike.
        shape = None if getattr(images.shape, "rank", 0) is None else tuple(images.shape)
        dtype = keras.backend.standardize_dtype(images.dtype)
        check_images(shape, dtype, "channels_last", self.min_side)
        images = keras.ops.cast(images, self.compute_dtype)
        return (images - self.mean) / self.std

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mean": self.initial_mean,
            "std": self.initial_std,
            "min_side": self.min_side,
        }


@keras.saving.register_keras_serializable(package="ibp")
class ImageModel(keras.Model):
    """A functional model of images that refuses integer images before Keras converts them to its
    input's float dtype, which would pass 0..255 pixels on unscaled."""

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = getattr(images, "dtype", None) or np.asarray(images).dtype
        check_images(None, keras.backend.standardize_dtype(dtype), "channels_last", 1)
        return super().__call__(images, *args, **kwargs)


def _conv(x: Any, filters: int, kernel: int, stride: int, name: str, use_bias: bool = True) -> Any:
    if stride > 1 and kernel > 1:
        # Keras' "same" pads strided convs on the bottom/right only; torch pads every side.
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    else:
        padding = "same"
    conv = keras.layers.Conv2D(
        filters,
        kernel,
        stride,
        padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )
    return conv(x)


def _batch_norm(x: Any, name: str, eps: float = BN_EPS) -> Any:
    return keras.layers.BatchNormalization(momentum=1 - TORCH_BN_MOMENTUM, epsilon=eps, name=name)(
        x
    )


def _sequential_trunk(x: Any, name: str) -> Any:
    for index, kind, width in sequential_layers(SEQUENTIAL_PLANS[name]):
        if width is not None:  # a conv
            x = _conv(x, width, 3, 1, f"features.{index}")
        elif kind == "relu":
            x = keras.layers.ReLU(name=f"features.{index}")(x)
        else:
            x = keras.layers.MaxPooling2D(2, name=f"features.{index}")(x)
    return x


def _bottleneck(
    x: Any,
    width: int,
    stride: int,
    name: str,
    stride_in_1x1: bool,
    conv_bias: bool,
    bn_eps: float,
) -> Any:
    out = width * BOTTLENECK_EXPANSION
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    shortcut = x
    if stride != 1 or x.shape[-1] != out:
        shortcut = _conv(x, out, 1, stride, f"{name}.downsample.0", conv_bias)
        shortcut = _batch_norm(shortcut, f"{name}.downsample.1", bn_eps)
    y = _conv(x, width, 1, stride_1x1, f"{name}.conv1", conv_bias)
    y = keras.layers.ReLU(name=f"{name}.relu1")(_batch_norm(y, f"{name}.bn1", bn_eps))
    y = _conv(y, width, 3, stride_3x3, f"{name}.conv2", conv_bias)
    y = keras.layers.ReLU(name=f"{name}.relu2")(_batch_norm(y, f"{name}.bn2", bn_eps))
    y = _batch_norm(_conv(y, out, 1, 1, f"{name}.conv3", conv_bias), f"{name}.bn3", bn_eps)
    return keras.layers.ReLU(name=f"{name}.relu3")(
        keras.layers.Add(name=f"{name}.add")([y, shortcut])
    )


def _resnet_trunk(x: Any, name: str) -> Any:
    variant = RESNET_VARIANTS[name]
    x = _conv(x, 64, 7, 2, "conv1", variant["conv_bias"])
    x = keras.layers.ReLU(name="relu")(_batch_norm(x, "bn1", variant["bn_eps"]))
    # Zero padding acts as torch's -inf padding here: the inputs are ReLU outputs, >= 0.
    x = keras.layers.ZeroPadding2D(1, name="maxpool.pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    for stage, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
        for block in range(blocks):
            block_stride = stride if block == 0 else 1
            x = _bottleneck(x, width, block_stride, f"layer{stage}.{block}", **variant)
    return x


def _backbone_network(
    name: str,
    reduce_dim: int | None,
    input_shape: InputShape,
    preprocessing: tuple[Sequence[float], Sequence[float]],
) -> ImageModel:
    images = keras.Input(shape=input_shape, name="images")
    x = ImageNormalization(*preprocessing, total_stride(name), name="preprocess")(images)
    x = (_sequential_trunk if name in SEQUENTIAL_PLANS else _resnet_trunk)(x, name)
    if reduce_dim:
        # iSQRT-COV's 1x1 conv + BN + ReLU that shrinks the channels before pooling.
        x = _batch_norm(_conv(x, reduce_dim, 1, 1, "reduce.0", use_bias=False), "reduce.1")
        x = keras.layers.ReLU(name="reduce.2")(x)
    return ImageModel(images, x, name=BACKBONE_LAYER)


def build_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    reduce_dim: int | None = None,
    input_shape: InputShape = (None, None, 3),
) -> ImageModel:
    """A backbone without its classifier: (B, H, W, 3) RGB in [0, 1] -> (B, H', W', C).

    name: "small" (4 convs, 64 channels, stride 4: trains in seconds on a CPU), "vgg16"
    (relu5_3, 512 channels, stride 16), "resnet50" (torchvision's v1.5 layout, 2048 channels,
    stride 32) or "resnet50_v1" (keras.applications' ResNet50 layout).
    weights: None (He-initialised), "imagenet" (keras.applications' VGG16 or, for
    "resnet50_v1", ResNet50 weights, with their caffe-style normalisation; for "resnet50" load
    torchvision's weights in PyTorch and use `impls.transfer_weights`), or the path of a
    .weights.h5 or .keras file of this backbone (a .keras file may also hold a full IBP model).
    reduce_dim: channels of an optional 1x1 conv + BN + ReLU at the end.
    """
    check_backbone_name(name)
    if weights == "imagenet":
        return _imagenet_backbone(name, reduce_dim, input_shape)
    backbone = _backbone_network(name, reduce_dim, input_shape, (TORCHVISION_MEAN, TORCHVISION_STD))
    if weights is not None:
        _load_weights(backbone, weights, part=BACKBONE_LAYER)
    return backbone


def build_model(
    backbone: str,
    num_classes: int | None,
    weights: str | os.PathLike[str] | None = None,
    reduce_dim: int | None = None,
    input_shape: InputShape = (None, None, 3),
    **head_kwargs: Any,
) -> ImageModel:
    """The backbone called `backbone` (see `build_backbone`) followed by
    `IBPHead(out_channels, num_classes, **head_kwargs)`: (B, H, W, 3) in [0, 1] -> logits.

    weights: as for `build_backbone`, but a file holds a full IBP model.
    """
    local_file = weights if weights is not None and weights != "imagenet" else None
    features = build_backbone(
        backbone, None if local_file is not None else weights, reduce_dim, input_shape
    )
    channels = out_channels(backbone, reduce_dim)
    head = IBPHead(channels, num_classes, name=HEAD_LAYER, **head_kwargs)
    images = keras.Input(shape=input_shape, name="images")
    model = ImageModel(images, head(features(images)), name=f"ibp_{backbone}")
    if local_file is not None:
        _load_weights(model, local_file, part=None)
    return model


def freeze_backbone(model: Any, frozen: bool = True) -> Any:
    """Stop (or restart) training the backbone. A non-trainable Keras BatchNorm runs in
    inference mode, so its statistics stay put too. Compile again before `fit`."""
    model.get_layer(BACKBONE_LAYER).trainable = not frozen
    return model


@keras.saving.register_keras_serializable(package="ibp")
class RecipeAdam(keras.optimizers.Adam):
    """Adam whose learning rate is `head_lr_multiplier` times larger for the variables whose
    path is one of `head_paths` (Keras optimizers have no parameter groups)."""

    def __init__(
        self, head_paths: Sequence[str] = (), head_lr_multiplier: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.head_paths, self.head_lr_multiplier = tuple(head_paths), head_lr_multiplier

    def build(self, variables: Sequence[Any]) -> None:
        super().build(variables)
        self._head_keys = {self._var_key(v) for v in variables if v.path in self.head_paths}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self._var_key(variable) in self._head_keys:
            learning_rate = learning_rate * self.head_lr_multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        return {
            **config,
            "head_paths": self.head_paths,
            "head_lr_multiplier": self.head_lr_multiplier,
        }


def recipe_optimizer(model: Any, stage: int) -> Any:
    """The authors' optimizer for `stage` (1: classifier only, SGD; 2: everything, Adam with
    a larger classifier rate). Stage 1 freezes the backbone and stage 2 unfreezes it.

    Keras' SGD decays weights decoupled from the gradient, torch's adds them to it: the same
    step without momentum, and a negligible difference at weight decay 1e-8."""
    recipe = recipe_stage(stage)
    freeze_backbone(model, frozen=stage == 1)
    if stage == 1:
        return keras.optimizers.SGD(
            learning_rate=recipe["head_lr"],
            momentum=recipe["momentum"],
            weight_decay=recipe["weight_decay"],
        )
    head_paths = [v.path for v in model.get_layer(HEAD_LAYER).trainable_variables]
    return RecipeAdam(
        head_paths=head_paths,
        head_lr_multiplier=recipe["head_lr"] / recipe["backbone_lr"],
        learning_rate=recipe["backbone_lr"],
    )


def _load_weights(model: Any, path: str | os.PathLike[str], part: str | None) -> None:
    """Load a .weights.h5 or .keras file into `model`; `part` names the nested model to take
    from a .keras file that holds more (a full IBP model when a backbone is wanted)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"weights must be None, 'imagenet' or the path of a weights file, got {path!r}"
        )
    if path.endswith(".weights.h5"):
        _check_fits(_saved_shapes(path), model)
        model.load_weights(path)
    elif path.endswith(".keras"):
        saved = keras.saving.load_model(path, compile=False)
        if part is not None and saved.name != part:
            saved = saved.get_layer(part)
        _copy_weights(saved, model)
    else:
        raise ValueError(f"Keras weights are .weights.h5 or .keras files, got {path!r}")


def _saved_shapes(path: str) -> list[tuple[int, ...]]:
    import h5py

    shapes: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda _, item: shapes.append(item.shape) if hasattr(item, "shape") else None
        )
    return shapes


def _check_fits(saved_shapes: Sequence[Sequence[int]], model: Any) -> None:
    # Keras matches saved weights to layers by position and skips leftovers without a word.
    expected = sorted(tuple(w.shape) for w in model.weights)
    if sorted(tuple(shape) for shape in saved_shapes) != expected:
        raise ValueError(f"the saved weights do not fit {model.name!r} (another architecture?)")


def _copy_weights(source: Any, target: Any) -> None:
    _check_fits([w.shape for w in source.weights], target)
    for saved, weight in zip(source.weights, target.weights, strict=True):
        weight.assign(saved)


def backbone_from_applications(
    name: str,
    source: Any,
    reduce_dim: int | None = None,
    input_shape: InputShape = (None, None, 3),
) -> ImageModel:
    """Backbone `name` carrying the weights of `source`, a keras.applications VGG16 ("vgg16")
    or ResNet50 ("resnet50_v1") model without top, and its caffe-style preprocessing: the
    result takes RGB in [0, 1] where `source` takes `preprocess_input` of 0..255 RGB."""
    layer_names = _applications_layer_names(name)
    preprocessing = (CAFFE_MEAN_RGB_UNIT, CAFFE_STD_RGB_UNIT)
    backbone = _backbone_network(name, reduce_dim, input_shape, preprocessing)
    first_conv = next(iter(layer_names))
    for ours, theirs in layer_names.items():
        values = source.get_layer(theirs).get_weights()
        if ours == first_conv:
            values[0] = values[0][:, :, ::-1, :]  # BGR input channels -> RGB
        backbone.get_layer(ours).set_weights(values)
    return backbone


def _imagenet_backbone(name: str, reduce_dim: int | None, input_shape: InputShape) -> ImageModel:
    _applications_layer_names(name)  # fails before the download for layouts it does not fit
    application = {"vgg16": keras.applications.VGG16, "resnet50_v1": keras.applications.ResNet50}
    source = application[name](include_top=False, weights="imagenet", input_shape=input_shape)
    return backbone_from_applications(name, source, reduce_dim, input_shape)


def _vgg16_applications_names() -> dict[str, str]:
    names: dict[str, str] = {}
    block, conv = 1, 0
    for index, kind, _ in sequential_layers(SEQUENTIAL_PLANS["vgg16"]):
        if kind == "pool":
            block, conv = block + 1, 0
        elif kind == "conv":
            conv += 1
            names[f"features.{index}"] = f"block{block}_conv{conv}"
    return names


def _resnet50_applications_names() -> dict[str, str]:
    names = {"conv1": "conv1_conv", "bn1": "conv1_bn"}
    for stage, (_, blocks, _) in enumerate(RESNET50_STAGES, start=1):
        for block in range(blocks):
            ours, theirs = f"layer{stage}.{block}", f"conv{stage + 1}_block{block + 1}"
            if block == 0:
                names[f"{ours}.downsample.0"] = f"{theirs}_0_conv"
                names[f"{ours}.downsample.1"] = f"{theirs}_0_bn"
            for k in (1, 2, 3):
                names[f"{ours}.conv{k}"] = f"{theirs}_{k}_conv"
                names[f"{ours}.bn{k}"] = f"{theirs}_{k}_bn"
    return names


def _applications_layer_names(name: str) -> dict[str, str]:
    """{our layer name: keras.applications' layer name}, the first conv first."""
    if name == "vgg16":
        return _vgg16_applications_names()
    if name == "resnet50_v1":
        return _resnet50_applications_names()
    hint = ""
    if name == "resnet50":
        hint = (
            ": keras.applications' ResNet50 is v1; build 'resnet50_v1', or load torchvision's "
            "weights in PyTorch and copy them with impls.transfer_weights"
        )
    raise ValueError(f"keras.applications has no ImageNet weights for {name!r}{hint}")
