"""The TensorFlow input pipeline: tf.data reads (and, for training, augments) the batches that the
training loop drew, several at a time, and prefetches them while the model trains.

`split.load` stays the one place that decodes and augments images; tf.data calls it on several
batches in parallel. The augmentation of a batch draws from a generator of its own
(`data.batch_rng`), so the parallelism never changes which crops and flips a batch gets.
"""

import numpy as np
import tensorflow as tf

from bench.accuracy.data import Batches, batch_rng


def make_dataset(
    split: Batches, batches: list[np.ndarray], seed: int, epoch: int = 0
) -> tf.data.Dataset:
    """(images float32 (B, H, W, 3), labels int64 (B,)) for each of `batches` (index lists into
    `split`), in their order; augmented when `split` augments (its `load` decides)."""
    image_shape = split.load(np.asarray(batches[0][:1])).shape[1:] if batches else (None,) * 3
    labels = np.asarray(split.labels, np.int64)

    def load(position: np.int64) -> tuple[np.ndarray, np.ndarray]:
        indices = batches[int(position)]
        images = split.load(indices, batch_rng(seed, epoch, int(position)))
        return np.asarray(images, np.float32), labels[indices]

    def load_in_tf(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, batch_labels = tf.numpy_function(load, [position], (tf.float32, tf.int64))
        images.set_shape((None, *image_shape))
        batch_labels.set_shape((None,))
        return images, batch_labels

    options = tf.data.Options()
    # The order of the batches is the training loop's: never let tf.data reorder them.
    options.deterministic = True
    return (
        tf.data.Dataset.range(len(batches))
        .map(load_in_tf, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
