"""The founding question's model with every bug fixed, trained with the authors' recipe, in
Keras 3: the question's layout (frozen backbone, one Lambda layer per stage, a 7-way softmax)
with this project's stages, which pool each sample alone with eps * I, take the true square root,
and normalise each sample; the classifier trains with SGD at lr 1.0, momentum 0.9 (the recipe's
first stage). `low_learning_rate_model` keeps one bug only: SGD at lr 0.001.

    ibp-check model examples/fixed_model_keras.py:fixed_model
    ibp-check model examples/fixed_model_keras.py:low_learning_rate_model
"""

import keras

from impls.architectures import recipe_stage
from impls.testing import founding_question as question
from impls.tf import stages
from impls.tf.models import build_backbone

IMAGE_SIZE = 32


def _model(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    backbone = build_backbone("small", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    backbone.trainable = False
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x = backbone(images)
    x = keras.layers.Lambda(stages.bilinear_pool, name="bilinear_pool")(x)
    x = keras.layers.Lambda(stages.sqrtm, name="matrix_square_root")(x)
    x = keras.layers.Lambda(stages.signed_sqrt, name="signed_sqrt")(x)
    x = keras.layers.Lambda(stages.l2_normalize, name="l2_normalise")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    probabilities = keras.layers.Dense(
        question.NUM_CLASSES, activation="softmax", name="classifier"
    )(x)
    model = keras.Model(images, probabilities, name="fixed_model")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def fixed_model() -> keras.Model:
    recipe = recipe_stage(1)
    return _model(
        keras.optimizers.SGD(learning_rate=recipe["head_lr"], momentum=recipe["momentum"])
    )


def low_learning_rate_model() -> keras.Model:
    return _model(keras.optimizers.SGD(learning_rate=question.LEARNING_RATE))
