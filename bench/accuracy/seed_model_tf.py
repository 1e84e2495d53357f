"""The founding question's head (examples/seed_question_tf.py) in TensorFlow/Keras, as it wrote
it. DELIBERATELY WRONG.

This reproduces the question's Lambda layers so that the suite can show what each of their bugs
costs; do not use it as an IBP layer (that is `impls.tf.IBPHead`). Each bug can be switched off
alone (`bugs` holds the names of configurations.SEED_BUGS that stay); with all of them off the
head computes what IBPHead computes with eps = Keras' epsilon and no signed-sqrt regulariser.
Channels-last: (B, H, W, C).
"""

from typing import Any

import keras
import tensorflow as tf

from bench.accuracy.configurations import SEED_BUGS
from impls.testing import founding_question as question


def seed_bilinear_pool(x: tf.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)) -> tf.Tensor:
    """The question's BILINEAR_POOLING: (B, H, W, C) -> (16, C, C), batch size hard-coded (bug 3).

    Wrong on purpose: with "batch_sum", matmul(F[:, i, j, :], F[:, i, j, :], transpose_a=True) is
    (C x B)(B x C), a sum over the batch, broadcast to all 16 samples (bug 1); with "eps_ones",
    eps * ones(C, C) is added instead of eps * I (bug 4).
    """
    channels = x.shape[-1]
    locations = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
    if "batch_sum" in bugs:
        outer = tf.einsum("bhwc,bhwd->cd", x, x)  # the question's loop over (i, j), summed
    else:
        outer = tf.einsum("bhwc,bhwd->bcd", x, x)
    ones_or_eye = tf.ones([channels, channels]) if "eps_ones" in bugs else tf.eye(channels)
    epsilon = tf.scalar_mul(question.KERAS_EPSILON, ones_or_eye)
    a = tf.zeros([question.BATCH_SIZE, channels, channels], tf.float32) + outer
    return a / locations + epsilon


def seed_sqrtm(a: tf.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)) -> tf.Tensor:
    """The question's Sqrt_Root_SVD_Lyapunov: an SVD per sample of a hard-coded 16 (bug 3).

    Wrong on purpose: with "fourth_root", tf.where(S < 1e-10, S, sqrt(S)) roots the singular
    values once and U diag(sqrt(S)) V^T roots them again: A^(1/4) (bug 2). Its gradient is
    TensorFlow's through the SVD, which divides by differences of singular values (bug 6).
    """
    roots = []
    for i in range(question.BATCH_SIZE):
        s, u, v = tf.linalg.svd(a[i, :, :], compute_uv=True)
        if "fourth_root" in bugs:
            s = tf.where(tf.less(s, question.SINGULAR_VALUE_CUT), s, tf.sqrt(s))
        roots.append(tf.matmul(u, tf.matmul(tf.linalg.diag(tf.sqrt(s)), v, transpose_b=True)))
    return tf.stack(roots)


def seed_l2_normalize(y: tf.Tensor, bugs: frozenset[str] = frozenset(SEED_BUGS)) -> tf.Tensor:
    """tf.math.l2_normalize(y, axis=None): with "batch_l2", one norm for the whole batch (wrong on
    purpose: a sample's features then depend on the rest of its batch)."""
    axis = None if "batch_l2" in bugs else [1, 2]
    return tf.math.l2_normalize(y, axis=axis, epsilon=question.L2_EPSILON)


class SeedHead(keras.layers.Layer):
    """pool -> SVD root -> sign(z) sqrt(|z|) -> L2 -> Flatten -> Dense, as the question stacks its
    Lambda layers; `bugs` selects which of its bugs stay (all by default)."""

    def __init__(
        self, num_classes: int, bugs: frozenset[str] = frozenset(SEED_BUGS), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.bugs = frozenset(bugs)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.classifier.build((None, input_shape[-1] ** 2))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        z = seed_sqrtm(seed_bilinear_pool(x, self.bugs), self.bugs)
        y = tf.sign(z) * tf.sqrt(tf.abs(z))
        flat = tf.reshape(seed_l2_normalize(y, self.bugs), (tf.shape(y)[0], -1))
        return self.classifier(flat)
