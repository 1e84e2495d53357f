"""Correct models in Keras 3 (IBP heads, and B-CNN and iSQRT-COV heads), written the ways people
write them: `ibp-check model` must pass every one (exit 0, no FAIL) at any seed. Each function
builds one and returns it (compiled, or with the optimizer it trains with); images are (32, 32,
3), channels-last."""

import keras
import tensorflow as tf

from impls.tf import IBPHead, build_model, sqrtm

IMAGE_SIZE = 32
CHANNELS = 32
CLASSES = 7
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def _backbone(x: keras.KerasTensor, dropout: float = 0.0) -> keras.KerasTensor:
    """Two conv blocks: (32, 32, 3) -> (8, 8, CHANNELS)."""
    for width in (16, CHANNELS):
        x = keras.layers.Conv2D(width, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
        if dropout:
            x = keras.layers.SpatialDropout2D(dropout)(x)
    return x


def _compiled(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def bilinear_pool(x: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> (B, C, C): the mean outer product of each sample's locations, plus eps I."""
    shape = tf.shape(x)
    features = tf.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
    pooled = tf.matmul(features, features, transpose_a=True)
    n = tf.cast(shape[1] * shape[2], x.dtype)
    return pooled / n + 1e-5 * tf.eye(shape[3], dtype=x.dtype)


def eigh_sqrt(a: tf.Tensor) -> tf.Tensor:
    s, u = tf.linalg.eigh(a)
    return u @ tf.linalg.diag(tf.sqrt(tf.maximum(s, 0.0))) @ tf.transpose(u, (0, 2, 1))


def signed_sqrt(x: tf.Tensor) -> tf.Tensor:
    return tf.sign(x) * tf.sqrt(tf.abs(x) + 1e-10)


def sequential_unit_normalization() -> keras.Model:
    """A Sequential model: Lambda pooling, this library's sqrtm, Flatten, signed sqrt on the
    flattened matrix, then keras.layers.UnitNormalization."""
    model = keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Lambda(bilinear_pool),
            keras.layers.Lambda(sqrtm),
            keras.layers.Flatten(),
            keras.layers.Lambda(signed_sqrt),
            keras.layers.UnitNormalization(),
            keras.layers.Dense(CLASSES),
        ]
    )
    return _compiled(model)


def functional_branches() -> keras.Model:
    """A functional model with two branches concatenated and a residual skip, then this
    library's IBPHead."""
    images = keras.Input(INPUT_SHAPE)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(images)
    x = keras.layers.MaxPooling2D()(x)
    left = keras.layers.Conv2D(CHANNELS // 2, 3, padding="same")(x)
    right = keras.layers.Conv2D(CHANNELS // 2, 5, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.Concatenate()([left, right]))
    skip = keras.layers.Conv2D(CHANNELS, 3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, skip]))
    x = keras.layers.MaxPooling2D()(x)
    features = IBPHead(CHANNELS)(x)
    return _compiled(keras.Model(images, keras.layers.Dense(CLASSES)(features)))


class SubclassedNet(keras.Model):
    """A subclassed model: no keras.Input, so `ibp-check model` needs --input-shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        self.conv2 = keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu")
        self.pool = keras.layers.MaxPooling2D()
        self.head = IBPHead(CHANNELS)
        self.classifier = keras.layers.Dense(CLASSES)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.classifier(self.head(x))


def subclassed() -> keras.Model:
    return _compiled(SubclassedNet())


def augmentation_dropout_batchnorm() -> keras.Model:
    """Augmentation layers, SpatialDropout, BatchNorm and Dropout: random and batch-dependent in
    training mode by design."""
    images = keras.Input(INPUT_SHAPE)
    x = keras.layers.RandomFlip("horizontal")(images)
    x = keras.layers.RandomTranslation(0.1, 0.1)(x)
    x = keras.layers.GaussianNoise(0.01)(x)
    x = _backbone(x, dropout=0.1)
    x = IBPHead(CHANNELS)(x)
    x = keras.layers.Dropout(0.5)(x)
    return _compiled(keras.Model(images, keras.layers.Dense(CLASSES)(x)))


def inline_head_by_hand() -> keras.Model:
    """The head written by hand in Lambda layers (eigh root, signed sqrt after Flatten,
    tf.math.l2_normalize over the last axis), on a frozen backbone with a softmax classifier."""
    images = keras.Input(INPUT_SHAPE)
    backbone = keras.Model(images, _backbone(images), name="backbone")
    backbone.trainable = False
    x = backbone(images)
    x = keras.layers.Lambda(bilinear_pool, name="pool")(x)
    x = keras.layers.Lambda(eigh_sqrt, name="sqrt")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Lambda(signed_sqrt, name="signed_sqrt")(x)
    x = keras.layers.Lambda(lambda y: tf.math.l2_normalize(y, axis=-1), name="l2")(x)
    probabilities = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(images, probabilities)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    return model


def mixed_precision() -> keras.Model:
    """A mixed_float16 policy, as the Keras guide has it: the head and the classifier in
    float32."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    images = keras.Input(INPUT_SHAPE)
    x = _backbone(images)
    x = IBPHead(CHANNELS, dtype="float32")(x)
    logits = keras.layers.Dense(CLASSES, dtype="float32")(x)
    model = keras.Model(images, logits)
    keras.mixed_precision.set_global_policy("float32")
    return _compiled(model)


def vgg16_small_input() -> keras.Model:
    """keras.applications.VGG16 without its top, cut at block5_conv3 (relu5_3, the IBP authors'
    layer) and frozen, at 32 x 32: a 2 x 2 map of 512 channels, N < C."""
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=INPUT_SHAPE)
    backbone = keras.Model(vgg.input, vgg.get_layer("block5_conv3").output)
    backbone.trainable = False
    images = keras.Input(INPUT_SHAPE)
    features = IBPHead(512)(backbone(images))
    model = keras.Model(images, keras.layers.Dense(CLASSES)(features))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def suite_model() -> keras.Model:
    """This library's own model builder: inputs of any size (None x None), so `ibp-check model`
    needs --input-shape."""
    return _compiled(build_model("small", CLASSES))


def logits_and_features() -> keras.Model:
    """Outputs as a dict, the logits beside the normalised features."""
    images = keras.Input(INPUT_SHAPE)
    features = IBPHead(CHANNELS)(_backbone(images))
    logits = keras.layers.Dense(CLASSES)(features)
    model = keras.Model(images, {"logits": logits, "features": features})
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    return model


def centred_covariance(x: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> (B, C, C): the covariance of each sample's locations, mean subtracted."""
    shape = tf.shape(x)
    features = tf.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
    centred = features - tf.reduce_mean(features, axis=1, keepdims=True)
    n = tf.cast(shape[1] * shape[2], x.dtype)
    return tf.matmul(centred, centred, transpose_a=True) / n


def iterative_sqrt(a: tf.Tensor, iterations: int = 5) -> tf.Tensor:
    """iSQRT-COV's root: trace pre-normalisation, coupled Newton-Schulz, post-compensation."""
    trace = tf.linalg.trace(a)[:, None, None]
    eye = tf.eye(tf.shape(a)[-1], batch_shape=[tf.shape(a)[0]], dtype=a.dtype)
    y, z = a / trace, eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * tf.sqrt(trace)


def upper_triangle(m: tf.Tensor) -> tf.Tensor:
    """The upper triangle, row by row, as (B, C(C+1)/2)."""
    c = m.shape[-1]
    index = [i * c + j for i in range(c) for j in range(i, c)]
    return tf.gather(tf.reshape(m, (-1, c * c)), index, axis=1)


def isqrt_cov_head() -> keras.Model:
    """An iSQRT-COV head in Lambda layers: centred covariance, 5 iterations, the upper
    triangle."""
    images = keras.Input(INPUT_SHAPE)
    x = _backbone(images)
    x = keras.layers.Lambda(centred_covariance, name="covariance")(x)
    x = keras.layers.Lambda(iterative_sqrt, name="isqrt")(x)
    x = keras.layers.Lambda(upper_triangle, name="triu")(x)
    model = keras.Model(images, keras.layers.Dense(CLASSES)(x))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def second_moment(x: tf.Tensor) -> tf.Tensor:
    """B-CNN's pooling, X X^T / N, no eps."""
    shape = tf.shape(x)
    features = tf.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
    n = tf.cast(shape[1] * shape[2], x.dtype)
    return tf.matmul(features, features, transpose_a=True) / n


def bcnn_head() -> keras.Model:
    """A B-CNN head in Lambda layers on a frozen backbone: second moment, signed sqrt,
    tf.math.l2_normalize, the classifier alone trained with SGD at lr 1.0."""
    images = keras.Input(INPUT_SHAPE)
    backbone = keras.Model(images, _backbone(images), name="backbone")
    backbone.trainable = False
    x = keras.layers.Lambda(second_moment, name="bilinear")(backbone(images))
    x = keras.layers.Flatten()(x)
    x = keras.layers.Lambda(signed_sqrt, name="signed_sqrt")(x)
    x = keras.layers.Lambda(lambda y: tf.math.l2_normalize(y, axis=-1), name="l2")(x)
    model = keras.Model(images, keras.layers.Dense(CLASSES)(x))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model
