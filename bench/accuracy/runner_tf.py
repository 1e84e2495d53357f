"""TensorFlow/Keras side of the accuracy reproduction: models, optimizers and steps for `training`.

Steps are custom tf.functions rather than `Model.fit`, so that both frameworks run the same
loop (`training`) on the same batches. Under a tf.distribute strategy (`distribution_tf`) the model
and its optimizer live in the strategy's scope and a step runs on every replica: each replica
scales its loss SUM by 1/(global batch size) and the optimizer sums the replicas' gradients, so
the update is the global batch mean's whatever the number of replicas (up to the order of the
float32 sums). The question's batch-summing head sums within a replica's part of the batch only,
so with several replicas it computes something else: that is its bug, not the strategy's.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bench.accuracy import checkpoints, distribution_tf
from bench.accuracy.configurations import Configuration, Stage
from bench.accuracy.data import Batches, Dataset
from bench.accuracy.interface import ModelOptions, Step, StepResult
from bench.accuracy.pipeline_tf import make_dataset
from bench.accuracy.seed_model_tf import SeedHead
from impls.backends import CHANNELS_LAST, get_backend
from impls.testing import founding_question as question
from impls.tf.models import BACKBONE_LAYER, HEAD_LAYER
from reference.contracts import IBPInputError

BACKEND = get_backend("tf")
IMPL = BACKEND.impl


class GlobalAveragePoolingHead(keras.layers.Layer):
    """First-order pooling: the mean of each channel, then a linear classifier."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.classifier.build((None, input_shape[-1]))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.classifier(tf.reduce_mean(x, axis=(1, 2)))


class BilinearHead(keras.layers.Layer):
    """B-CNN: bilinear pooling, signed sqrt, L2 and a classifier, without the matrix root."""

    def __init__(self, num_classes: int, eps: float, delta: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps, self.delta = eps, delta
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.classifier.build((None, input_shape[-1] ** 2))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = IMPL.l2_normalize(IMPL.signed_sqrt(IMPL.bilinear_pool(x, self.eps), self.delta))
        return self.classifier(tf.reshape(y, (tf.shape(y)[0], -1)))


def _head(
    configuration: Configuration,
    in_channels: int,
    num_classes: int,
    head_kwargs: dict[str, Any],
) -> keras.layers.Layer:
    if configuration.head == "ibp":
        return IMPL.IBPHead(in_channels, num_classes, name=HEAD_LAYER, **head_kwargs)
    if configuration.head == "first_order":
        return GlobalAveragePoolingHead(num_classes, name=HEAD_LAYER)
    if configuration.head == "bilinear_no_sqrtm":
        eps, delta = head_kwargs["eps"], head_kwargs["delta"]
        return BilinearHead(num_classes, eps, delta, name=HEAD_LAYER)
    return SeedHead(num_classes, configuration.seed_bugs, name=HEAD_LAYER)


def _configure_threads(threads: int | None) -> int | str:
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

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        strategy: str | None = None,
        logical_cpus: int | None = None,
    ) -> None:
        # Thread pools and logical devices can be set only before TensorFlow runs anything.
        self.threads = _configure_threads(threads)
        self.device = BACKEND.resolve_device(device)
        self.strategy, self.world = distribution_tf.make_strategy(
            strategy, BACKEND.is_gpu(self.device), logical_cpus
        )
        self._predictors: dict = {}  # (model name, from features) -> (model, compiled prediction)

    def _placement(self) -> Any:
        """Where variables are made: the strategy's scope (mirrored on every replica) or the
        one device."""
        if self.world.kind == "single":
            return BACKEND.placement(self.device)
        return self.strategy.scope()

    def describe_device(self) -> str:
        if self.world.kind != "single":
            return f"{self.world.kind}, {self.world.replicas} replicas"
        return BACKEND.describe_device(self.device)

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__}

    def seed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
        tf.config.experimental.enable_op_determinism()

    def local_part(self, indices: np.ndarray) -> np.ndarray:
        return distribution_tf.local_part(self.world, indices)

    def barrier(self) -> None:
        """Wait for every process: an all-reduce of nothing, which no process can finish early."""
        if self.world.processes > 1:
            self.strategy.reduce(
                tf.distribute.ReduceOp.SUM,
                self.strategy.run(lambda: tf.constant(0, tf.int32)),
                axis=None,
            )

    def build_model(
        self, configuration: Configuration, dataset: Dataset, model_options: ModelOptions
    ) -> keras.Model:
        with self._placement():
            backbone = IMPL.build_backbone(
                model_options.backbone,
                model_options.weights,
                model_options.reduce_dim,
                input_shape=dataset.image_shape,
            )
            in_channels = backbone.output.shape[-1]
            head = _head(configuration, in_channels, dataset.num_classes, model_options.head_kwargs)
            images = keras.Input(shape=dataset.image_shape, name="images")
            return keras.Model(images, head(backbone(images)), name=configuration.name)

    def optimizer(self, model: keras.Model, stage: Stage) -> keras.optimizers.Optimizer:
        with self._placement():
            if stage.optimizer == "question":
                IMPL.freeze_backbone(model, stage.frozen)
                optimizer = keras.optimizers.SGD(learning_rate=question.LEARNING_RATE)
            else:
                optimizer = IMPL.recipe_optimizer(model, int(stage.optimizer[-1]))
            optimizer.build(model.trainable_variables)
        return optimizer

    def images(self, images: np.ndarray) -> tf.Tensor:
        return BACKEND.feature_map(images, "float32", self.device, layout=CHANNELS_LAST)

    def backbone_features(self, model: keras.Model, images: np.ndarray) -> tf.Tensor:
        with BACKEND.placement(self.device):
            return model.get_layer(BACKBONE_LAYER)(self.images(images), training=False)

    def concatenate(self, tensors: list[tf.Tensor]) -> tf.Tensor:
        return tf.concat(tensors, axis=0)

    def take(self, tensor: tf.Tensor, indices: np.ndarray) -> tf.Tensor:
        return tf.gather(tensor, np.asarray(indices))

    def numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return BACKEND.numpy(tensor)

    def train_batches(
        self,
        split: Batches,
        batches: list[np.ndarray],
        seed: int,
        epoch: int,
        features: tf.Tensor | None = None,
    ) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
        """(inputs, labels) for each of this process's `batches` (its local parts of the global
        ones), as `train_step`'s step takes them: the cached backbone features, or the images
        through the tf.data pipeline."""
        if features is not None:
            for indices in batches:
                yield self.take(features, indices), BACKEND.labels(split.labels[indices])
            return
        yield from make_dataset(split, batches, seed, epoch)

    def _distribute(self, value: tf.Tensor) -> Any:
        """This process's batch cut into one contiguous piece per local replica."""
        if self.world.kind == "single":
            return value
        local_replicas = self.world.replicas // self.world.processes
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: distribution_tf.piece(
                value, context.replica_id_in_sync_group % local_replicas, local_replicas
            )
        )

    def train_step(
        self, model: keras.Model, optimizer: keras.optimizers.Optimizer, from_features: bool
    ) -> Step:
        """step(inputs, labels, global_batch_size): the loss summed over the global batch, its
        right answers, and whether the loss and every gradient were finite, for the (inputs,
        labels) of `train_batches`: this process's part."""
        forward = model.get_layer(HEAD_LAYER) if from_features else model
        variables = model.trainable_variables
        pieces_of_16 = isinstance(model.get_layer(HEAD_LAYER), SeedHead)

        def replica_step(
            inputs: tf.Tensor, labels: tf.Tensor, global_batch_size: tf.Tensor
        ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                logits = forward(inputs, training=True)
                loss_sum = tf.reduce_sum(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
                loss = loss_sum / global_batch_size
            gradients = tape.gradient(loss, variables)
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None]
            )
            optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return loss_sum, _count_correct(logits, labels), tf.cast(~finite, tf.int32)

        @tf.function
        def step(inputs: Any, labels: Any, global_batch_size: tf.Tensor) -> list[tf.Tensor]:
            per_replica = self.strategy.run(replica_step, args=(inputs, labels, global_batch_size))
            return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, None) for v in per_replica]

        def run(inputs: tf.Tensor, labels: tf.Tensor, global_batch_size: int) -> StepResult:
            if pieces_of_16 and global_batch_size != question.BATCH_SIZE * self.world.replicas:
                raise IBPInputError(
                    f"the question's layers hard-code {question.BATCH_SIZE} samples per replica; "
                    f"{self.world.replicas} replica(s) need global batches of "
                    f"{question.BATCH_SIZE * self.world.replicas}, got {global_batch_size}"
                )
            with BACKEND.placement(self.device):
                inputs, labels = self._distribute(inputs), self._distribute(BACKEND.labels(labels))
                loss_sum, correct, not_finite = step(
                    inputs, labels, tf.constant(global_batch_size, tf.float32)
                )
            return StepResult(float(loss_sum), int(correct), int(not_finite) == 0)

        return run

    def predict(self, model: keras.Model, inputs: tf.Tensor, from_features: bool) -> np.ndarray:
        key = (model.name, from_features)
        if key not in self._predictors or self._predictors[key][0] is not model:
            forward = model.get_layer(HEAD_LAYER) if from_features else model
            predictor = tf.function(lambda x: _answers(forward(x, training=False)))
            self._predictors[key] = (model, predictor)
        with BACKEND.placement(self.device):
            return BACKEND.numpy(self._predictors[key][1](inputs))

    def copy_backbone(self, source: keras.Model, model: keras.Model) -> None:
        model.get_layer(BACKBONE_LAYER).set_weights(source.get_layer(BACKBONE_LAYER).get_weights())

    def save_state(
        self, directory: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer
    ) -> None:
        """Weights, optimizer slots and step counter under `directory`. TensorFlow's random state
        needs no saving: nothing in a training step draws from it (the weights are initialised
        before the first step, and a resumed run loads them)."""
        prefix = Path(directory) / _CHECKPOINT_PREFIX
        try:
            _checkpoint(model, optimizer).write(str(prefix))
        # The model and optimizer are in memory: what fails here is the file system (a full
        # disk is ResourceExhaustedError, a read-only folder PermissionDeniedError).
        except tf.errors.OpError as error:
            message = f"{_system_message(error)}, TensorFlow's {type(error).__name__}"
            raise OSError(message) from None

    def load_state(
        self, directory: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer
    ) -> None:
        """What `save_state` wrote, into a model and an optimizer built like the saved ones; a
        variable of either that the checkpoint lacks (or has in another shape) is an error."""
        prefix = Path(directory) / _CHECKPOINT_PREFIX
        try:
            status = _checkpoint(model, optimizer).read(str(prefix))
        # Missing, truncated or overwritten index or data files raise what TensorFlow's reader
        # happens to meet (NotFoundError, DataLossError, IndexError, ...).
        except Exception as error:  # noqa: BLE001
            raise checkpoints.damaged(
                prefix, f"does not load ({checkpoints.reason(error)})"
            ) from None
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise checkpoints.damaged(
                prefix, f"not one of this model and optimizer ({checkpoints.reason(error)})"
            ) from None


#: The file name prefix of a runner's checkpoint inside its directory.
_CHECKPOINT_PREFIX = "tf-state"


def _system_message(error: tf.errors.OpError) -> str:
    """'No space left on device' out of TensorFlow's '{{function_node ...}} PATH; No space left
    on device [Op:SaveV2]' (its file errors end with the system's message)."""
    return re.sub(r"\s*\[Op:\w+\]$", "", error.message.split("; ")[-1]).strip()


def _checkpoint(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, optimizer=optimizer)


def _answers(logits: tf.Tensor) -> tf.Tensor:
    """The predicted class of each sample; -1 where the logits are not finite (diverged)."""
    finite = tf.reduce_all(tf.math.is_finite(logits), axis=1)
    return tf.where(finite, tf.argmax(logits, axis=1), tf.constant(-1, tf.int64))


def _count_correct(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Right answers; a sample whose logits are not finite (a diverged model) has none."""
    return tf.reduce_sum(tf.cast(tf.equal(_answers(logits), labels), tf.int32))
