"""The founding question's set-up, defined once: its constants and one numbered table of its bugs.

The project started from a user's question about a Keras model that would not learn. The user
took VGG-16 without its classifier, froze it, and added Lambda layers for bilinear pooling, an
SVD matrix square root, a signed square root, L2 normalisation and a 7-way softmax; trained with
SGD at lr 0.001, the model stayed at about 30 % accuracy. Their layers, in today's TensorFlow
spellings, are in examples/seed_question_tf.py. The bugs below are those of that code, plus one
of the published PyTorch backward the user would have copied (bug 7).

Where each bug is shown:
- ibp-check's bug catalogue (`impls.testing.bug_catalogue`) holds the layer-level bugs as small
  torch and TF layers; `stage` and `expected_diagnosis` say what ibp-check must print of each.
- the accuracy reproduction (`bench/accuracy/`) trains the question's set-up with every bug that
  changes what it learns (`ablation`), and with each one fixed alone.
- tests/test_seed_bugs.py checks that the layer-level bugs fail the properties our layers pass.
"""

from dataclasses import dataclass

#: The batch size the question writes into its layers (bug 3).
BATCH_SIZE = 16
#: tf.keras.backend.epsilon(): the question's regulariser, added to every entry (bug 4).
KERAS_EPSILON = 1e-7
#: The question's square root keeps singular values below this cut un-rooted.
SINGULAR_VALUE_CUT = 1e-10
#: The epsilon of the question's tf.math.l2_normalize.
L2_EPSILON = 1e-12
#: The question's classifier: a 7-way softmax.
NUM_CLASSES = 7
#: The question's optimizer: Keras SGD, no momentum, on the classifier alone.
LEARNING_RATE = 1e-3
#: The accuracy the question reports its model stuck at.
REPORTED_ACCURACY = 0.30


@dataclass(frozen=True)
class QuestionBug:
    number: int
    #: one short name, used as the training ablation's name and in the catalogue
    key: str
    description: str
    #: the ibp-check stage that shows the bug, or None for a bug of the training set-up
    stage: str | None = None
    #: the bug catalogue's layer (same name in torch_bugs and tf_bugs), if it has one
    function: str | None = None
    #: a phrase ibp-check's diagnosis must contain for that layer
    expected_diagnosis: str | None = None
    #: whether the question's training set-up keeps this bug, so that one ablation fixes it alone
    ablation: bool = False


BUGS = (
    QuestionBug(
        1,
        "batch_sum",
        "the outer product multiplies (C x B) by (B x C) at each location, so it sums over the "
        "batch and every sample of a batch gets the same matrix",
        "pool",
        "pool_summed_over_batch",
        "mixes samples across the batch",
        ablation=True,
    ),
    QuestionBug(
        2,
        "fourth_root",
        "the singular values are square-rooted twice, giving A^(1/4) instead of A^(1/2)",
        "sqrtm",
        "fourth_root",
        "square root is applied twice",
        ablation=True,
    ),
    QuestionBug(
        3,
        "fixed_batch_size",
        f"the batch size {BATCH_SIZE} is written into the layers, so a last partial batch or "
        "another batch size breaks them",
        "pool",
        "pool_fixed_batch_size",
        "is hard-coded",
    ),
    QuestionBug(
        4,
        "eps_ones",
        f"the regulariser eps = {KERAS_EPSILON:g} is added to every entry (eps * ones) instead "
        "of the diagonal (eps * I)",
        "pool",
        "pool_eps_times_ones",
        "eps * ones",
        ablation=True,
    ),
    QuestionBug(
        5,
        "low_lr",
        f"SGD at lr {LEARNING_RATE:g} on unit-norm vectors of C^2 entries: the logits barely "
        "move (the published recipe trains the classifier at lr 1.0)",
        ablation=True,
    ),
    QuestionBug(
        6,
        "svd_autodiff",
        "the gradient of the SVD root is left to autodiff, which divides by differences of "
        "singular values and is unstable on repeated ones",
        "sqrtm",
        "sqrtm_autodiff_through_svd",
        "autodiff through eigh/svd",
    ),
    QuestionBug(
        7,
        "negated_lyapunov",
        "the published PyTorch backward solves Z X + X Z = -C (MATLAB's lyap sign) and returns "
        "the negated gradient when given +dL/dZ",
        "sqrtm",
        "sqrtm_negated_lyapunov_gradient",
        "opposite sign convention",
    ),
    QuestionBug(
        8,
        "batch_l2",
        "tf.math.l2_normalize(x, axis=None) normalises the whole batch as one vector, not each "
        "sample",
        "l2",
        "l2_over_whole_batch",
        "whole batch",
        ablation=True,
    ),
    QuestionBug(
        9,
        "frozen_backbone",
        "only the classifier trains; fixing this alone trains everything, still at the low "
        "learning rate and through the SVD's autodiff gradient (bug 6)",
        ablation=True,
    ),
)

BY_KEY = {bug.key: bug for bug in BUGS}
#: The bugs the training reproduction keeps and fixes one at a time, in the table's order.
ABLATIONS = tuple(bug.key for bug in BUGS if bug.ablation)
