"""The founding question's whole model in Keras 3, rebuilt in our own words. DELIBERATELY WRONG.

A frozen backbone, then Lambda layers for bilinear pooling, an SVD square root, a signed square
root and L2 normalisation, then a 7-way softmax trained with SGD at lr 0.001: every bug of the
question is kept (impls.testing.founding_question numbers them). The backbone is this project's
"small" one (4 convs, 64 channels) at 32 x 32 pixels, so that the check runs in seconds on a CPU;
the question used VGG-16.

    ibp-check model examples/question_model_keras.py:question_model
"""

import keras
import tensorflow as tf

from impls.testing import founding_question as question
from impls.tf.models import build_backbone

IMAGE_SIZE = 32


def bilinear_pool(x: tf.Tensor) -> tf.Tensor:
    """Bugs 1, 3, 4: the question multiplies (C x B) by (B x C) at every location, which sums
    over the batch; it writes the batch size into the layer; it adds eps to every entry."""
    channels = x.shape[-1]
    locations = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
    summed_over_batch = tf.einsum("bhwc,bhwd->cd", x, x)
    regulariser = question.KERAS_EPSILON * tf.ones([question.BATCH_SIZE, channels, channels])
    return summed_over_batch / locations + regulariser


def svd_square_root(a: tf.Tensor) -> tf.Tensor:
    """Bug 2: the singular values are rooted here and again in U diag(sqrt(S)) V^T. Bug 6: the
    gradient is left to autodiff through the SVD."""
    roots = []
    for i in range(question.BATCH_SIZE):
        s, u, v = tf.linalg.svd(a[i], compute_uv=True)
        s = tf.where(s < question.SINGULAR_VALUE_CUT, s, tf.sqrt(s))
        roots.append(u @ tf.linalg.diag(tf.sqrt(s)) @ tf.transpose(v))
    return tf.stack(roots)


def signed_sqrt(z: tf.Tensor) -> tf.Tensor:
    return tf.sign(z) * tf.sqrt(tf.abs(z))


def l2_normalise(y: tf.Tensor) -> tf.Tensor:
    """Bug 8: axis=None divides by one norm for the whole batch."""
    return tf.math.l2_normalize(y, axis=None, epsilon=question.L2_EPSILON)


def question_model() -> keras.Model:
    backbone = build_backbone("small", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    backbone.trainable = False  # bug 9: only the classifier trains
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x = backbone(images)
    x = keras.layers.Lambda(bilinear_pool, name="bilinear_pool")(x)
    x = keras.layers.Lambda(svd_square_root, name="svd_square_root")(x)
    x = keras.layers.Lambda(signed_sqrt, name="signed_sqrt")(x)
    x = keras.layers.Lambda(l2_normalise, name="l2_normalise")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    probabilities = keras.layers.Dense(
        question.NUM_CLASSES, activation="softmax", name="classifier"
    )(x)
    model = keras.Model(images, probabilities, name="question_model")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=question.LEARNING_RATE),  # bug 5
        loss="sparse_categorical_crossentropy",
    )
    return model
