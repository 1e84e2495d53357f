"""Each of the founding question's bugs alone in an otherwise correct Keras model: `ibp-check
model` must fail every one with that bug's cause and no other's. The buggy layers are the bug
catalogue's (`impls.testing.bug_catalogue.tf_bugs`, the question's own spellings) as Lambda
layers, as the question wrote them; the rest is this library's stages. Each function returns a
compiled model; images are (32, 32, 3). Bug 9 (a frozen backbone) is no defect on its own: the
correct corpus has frozen backbones."""

from collections.abc import Callable

import keras
import tensorflow as tf

from impls.testing.bug_catalogue import tf_bugs
from impls.testing.founding_question import LEARNING_RATE
from impls.testing.model_corpus.tf_correct import CLASSES, INPUT_SHAPE, _backbone
from impls.tf import bilinear_pool, l2_normalize, signed_sqrt, sqrtm

Stage = Callable[[tf.Tensor], tf.Tensor]


def pool_summed_over_batch(x: tf.Tensor) -> tf.Tensor:
    """Bug 1 as the question's Keras model has it: the outer products summed over the batch."""
    locations = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
    summed = tf.einsum("bhwc,bhwd->cd", x, x) / locations
    shared = summed + 1e-5 * tf.eye(tf.shape(x)[3], dtype=x.dtype)
    return tf.broadcast_to(shared, (tf.shape(x)[0], tf.shape(x)[3], tf.shape(x)[3]))


def _model(
    pool: Stage = bilinear_pool,
    root: Stage = sqrtm,
    l2: Stage = l2_normalize,
    trained_backbone: bool = False,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> keras.Model:
    """A backbone (frozen, unless something below the head must train), the head's stages as
    Lambda layers, and a softmax classifier trained with the authors' first stage (SGD, lr 1.0,
    momentum 0.9), or everything with Adam where the backbone trains."""
    images = keras.Input(INPUT_SHAPE)
    backbone = keras.Model(images, _backbone(images), name="backbone")
    backbone.trainable = trained_backbone
    x = backbone(images)
    for name, stage in (("pool", pool), ("root", root), ("signed_sqrt", signed_sqrt), ("l2", l2)):
        x = keras.layers.Lambda(stage, name=name)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(images, keras.layers.Dense(CLASSES, activation="softmax")(x))
    if optimizer is None:
        optimizer = (
            keras.optimizers.Adam(1e-3)
            if trained_backbone
            else keras.optimizers.SGD(learning_rate=1.0, momentum=0.9)
        )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def batch_sum() -> keras.Model:
    return _model(pool=pool_summed_over_batch)


def fourth_root() -> keras.Model:
    return _model(root=tf_bugs.fourth_root)


def fixed_batch_size() -> keras.Model:
    return _model(pool=tf_bugs.pool_fixed_batch_size)


def eps_ones() -> keras.Model:
    return _model(pool=tf_bugs.pool_eps_times_ones)


def low_lr() -> keras.Model:
    """The question's SGD at lr 0.001, without momentum."""
    return _model(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE))


def svd_autodiff() -> keras.Model:
    """Autodiff through the SVD, with the backbone training (else no gradient flows there)."""
    return _model(root=tf_bugs.sqrtm_autodiff_through_svd, trained_backbone=True)


def negated_lyapunov() -> keras.Model:
    return _model(root=tf_bugs.sqrtm_negated_lyapunov_gradient, trained_backbone=True)


def batch_l2() -> keras.Model:
    return _model(l2=tf_bugs.l2_over_whole_batch)
