"""TensorFlow/Keras side of the accuracy reproduction: models, optimizers and steps for `training`.

Steps are custom tf.functions rather than `Model.fit`, so that both frameworks run the same
loop (`training`) on the same batches.
"""

import keras
import numpy as np
import tensorflow as tf

from bench.accuracy.seed_model_tf import SeedHead
from impls.backends import get_backend
from impls.testing import founding_question as question
from impls.tf.models import BACKBONE_LAYER, HEAD_LAYER
from reference.contracts import IBPInputError

IMPL = get_backend("tf").impl


class GlobalAveragePoolingHead(keras.layers.Layer):
    """First-order pooling: the mean of each channel, then a linear classifier."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape):
        self.classifier.build((None, input_shape[-1]))

    def call(self, x):
        return self.classifier(tf.reduce_mean(x, axis=(1, 2)))


class BilinearHead(keras.layers.Layer):
    """B-CNN: bilinear pooling, signed sqrt, L2 and a classifier, without the matrix root."""

    def __init__(self, num_classes, eps, delta, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.delta = eps, delta
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape):
        self.classifier.build((None, input_shape[-1] ** 2))

    def call(self, x):
        y = IMPL.l2_normalize(IMPL.signed_sqrt(IMPL.bilinear_pool(x, self.eps), self.delta))
        return self.classifier(tf.reshape(y, (tf.shape(y)[0], -1)))


def _head(configuration, in_channels, num_classes, head_kwargs):
    if configuration.head == "ibp":
        return IMPL.IBPHead(in_channels, num_classes, name=HEAD_LAYER, **head_kwargs)
    if configuration.head == "first_order":
        return GlobalAveragePoolingHead(num_classes, name=HEAD_LAYER)
    if configuration.head == "bilinear_no_sqrtm":
        eps, delta = head_kwargs["eps"], head_kwargs["delta"]
        return BilinearHead(num_classes, eps, delta, name=HEAD_LAYER)
    return SeedHead(num_classes, configuration.seed_bugs, name=HEAD_LAYER)


def _configure_threads(threads):
    """The intra-op thread count in force; pools can be sized only before TensorFlow first runs
    an op, so a process that already ran TensorFlow keeps its own ("default": all cores)."""
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
    return tf.config.threading.get_intra_op_parallelism_threads() or "default"


class Runner:
    name = "tf"

    def __init__(self, device="cpu", threads=None):
        gpus = tf.config.list_physical_devices("GPU")
        if device == "gpu" and not gpus:
            raise IBPInputError("--device gpu: TensorFlow sees no GPU")
        self.device = "/GPU:0" if gpus and device in ("gpu", "auto") else "/CPU:0"
        self.threads = _configure_threads(threads)
        self._predictors = {}  # (model name, from features) -> (model, compiled prediction)

    def describe_device(self):
        if self.device == "/CPU:0":
            return "cpu"
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]
        )
        return details.get("device_name", "gpu")

    def versions(self):
        return {"tensorflow": tf.__version__, "keras": keras.__version__}

    def seed(self, seed):
        keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
        tf.config.experimental.enable_op_determinism()

    def build_model(self, configuration, dataset, model_options):
        with tf.device(self.device):
            backbone = IMPL.build_backbone(
                model_options["backbone"],
                model_options["weights"],
                model_options["reduce_dim"],
                input_shape=dataset.image_shape,
            )
            in_channels = backbone.output.shape[-1]
            head = _head(
                configuration, in_channels, dataset.num_classes, model_options["head_kwargs"]
            )
            images = keras.Input(shape=dataset.image_shape, name="images")
            return keras.Model(images, head(backbone(images)), name=configuration.name)

    def optimizer(self, model, stage):
        if stage.optimizer == "question":
            IMPL.freeze_backbone(model, stage.frozen)
            optimizer = keras.optimizers.SGD(learning_rate=question.LEARNING_RATE)
        else:
            optimizer = IMPL.recipe_optimizer(model, int(stage.optimizer[-1]))
        optimizer.build(model.trainable_variables)
        return optimizer

    def images(self, images):
        with tf.device(self.device):
            return tf.constant(images)

    def backbone_features(self, model, images):
        with tf.device(self.device):
            return model.get_layer(BACKBONE_LAYER)(self.images(images), training=False)

    def concatenate(self, tensors):
        return tf.concat(tensors, axis=0)

    def take(self, tensor, indices):
        return tf.gather(tensor, np.asarray(indices))

    def numpy(self, tensor):
        return tensor.numpy()

    def train_step(self, model, optimizer, from_features):
        forward = model.get_layer(HEAD_LAYER) if from_features else model
        variables = model.trainable_variables

        @tf.function
        def step(inputs, labels):
            with tf.GradientTape() as tape:
                logits = forward(inputs, training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss, _count_correct(logits, labels)

        def run(inputs, labels):
            with tf.device(self.device):
                loss, correct = step(inputs, tf.constant(labels, tf.int64))
            return float(loss), int(correct)

        return run

    def predict(self, model, inputs, from_features: bool) -> np.ndarray:
        key = (model.name, from_features)
        if key not in self._predictors or self._predictors[key][0] is not model:
            forward = model.get_layer(HEAD_LAYER) if from_features else model
            predictor = tf.function(lambda x: _answers(forward(x, training=False)))
            self._predictors[key] = (model, predictor)
        with tf.device(self.device):
            return self._predictors[key][1](inputs).numpy()

    def copy_backbone(self, source, model) -> None:
        model.get_layer(BACKBONE_LAYER).set_weights(source.get_layer(BACKBONE_LAYER).get_weights())


def _answers(logits):
    """The predicted class of each sample; -1 where the logits are not finite (diverged)."""
    finite = tf.reduce_all(tf.math.is_finite(logits), axis=1)
    return tf.where(finite, tf.argmax(logits, axis=1), tf.constant(-1, tf.int64))


def _count_correct(logits, labels):
    """Right answers; a sample whose logits are not finite (a diverged model) has none."""
    return tf.reduce_sum(tf.cast(tf.equal(_answers(logits), labels), tf.int32))
