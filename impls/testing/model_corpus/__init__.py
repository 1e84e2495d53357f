"""A corpus of whole models for `ibp-check model`: correct models written the ways people write them
(IBP heads, and heads of B-CNN and iSQRT-COV, which it must recognise), which it must pass at any
seed, and the founding question's bugs, each alone in an otherwise correct model, which it must
fail with that bug's cause and no other's. Both in PyTorch and Keras. `python -m
impls.testing.check_catalogue` scores it (results/ibp_check.md); the tests run it."""

from dataclasses import dataclass, field
from typing import Any

from impls.testing import founding_question
from impls.testing.bug_catalogue import ALSO
from impls.testing.check_options import MAX_SECONDS

FRAMEWORKS = ("torch", "tf")
#: One torch sample, channels-first; Keras models that do not fix their input get it channels-last.
TORCH_SHAPE = (3, 32, 32)
KERAS_SHAPE = (32, 32, 3)
#: What the low-learning-rate model must be told.
LOW_LEARNING_RATE = "the learning rate is far too small"
#: The corpus is scored without a run time limit and with an hour per call: a verdict must not
#: depend on the load of the machine it runs on. A check past `--time-limit` is reported as not
#: checked (a FAIL), and one call past `--call-timeout` as a hang: under the defaults (600 s,
#: 60 s) a VGG-16 model checked on loaded cores (45-95 s idle, most of it the 512-channel head,
#: which comes last) can reach either, which made a correct model fail once. Neither limit is the
#: model's property; the hanging and exiting bugs are the stage catalogue's, scored there.
CORPUS_TIME_LIMIT = MAX_SECONDS
CORPUS_CALL_TIMEOUT = 3600.0


@dataclass(frozen=True)
class CorpusModel:
    """One model: its function's name in `<framework>_correct` or `<framework>_buggy`, and the
    options `ibp-check model` needs for it. A buggy model has the phrase its failures must hold
    (`expected`), the question's number of its bug, and the causes it also has (`also`)."""

    name: str
    framework: str
    description: str
    input_shape: tuple[int, int, int] | None = None
    logits: int | str | None = None
    expected: str = ""
    question_bug: int | None = None
    also: tuple[str, ...] = field(default_factory=tuple)

    @property
    def correct(self) -> bool:
        return not self.expected

    @property
    def target(self) -> str:
        kind = "correct" if self.correct else "buggy"
        return f"{__name__}.{self.framework}_{kind}:{self.name}"

    def options(self, seed: int = 0) -> dict[str, Any]:
        """The keywords of `check_model` (the options of `ibp-check model`) for this model."""
        return {
            "framework": self.framework,
            "input_shape": self.input_shape,
            "logits": self.logits,
            "seed": seed,
            "time_limit": CORPUS_TIME_LIMIT,
            "call_timeout": CORPUS_CALL_TIMEOUT,
        }


_TORCH_CORRECT = (
    ("sequential_ibp_head", "nn.Sequential with this library's IBPHead, Adam", None),
    ("hand_written_forward", "the whole head inline in forward, frozen backbone", None),
    ("head_modules_by_hand", "a module per stage by hand, eps * torch.eye(c), Flatten first", None),
    ("dropout_and_batchnorm", "Dropout and BatchNorm, IBPHead", None),
    ("logits_and_features", "returns (logits, features)", 0),
    ("compiled", "torch.compile'd", None),
    ("vgg16_small_input", "VGG-16 to relu5_3 at 32 x 32: 2 x 2 x 512, frozen", None),
    ("branches_and_skips", "branches concatenated and a residual skip", None),
    ("channels_last_pooling", "(B, H*W, C) pooling, this library's sqrtm, F.normalize", None),
    ("isqrt_cov_head", "iSQRT-COV head: centred covariance, 5 iterations, upper triangle", None),
    ("bcnn_head", "B-CNN head: X X^T / N, signed sqrt, L2, frozen backbone", None),
)
_KERAS_CORRECT = (
    (
        "sequential_unit_normalization",
        "Sequential, Lambda stages, Flatten, UnitNormalization",
        None,
    ),
    ("functional_branches", "functional with branches and a skip, IBPHead", None),
    ("subclassed", "a subclassed keras.Model", KERAS_SHAPE),
    ("augmentation_dropout_batchnorm", "augmentation, noise, Dropout, BatchNorm", None),
    ("inline_head_by_hand", "Lambda stages by hand, l2_normalize(axis=-1) after Flatten", None),
    ("mixed_precision", "mixed_float16 policy, head and classifier in float32", None),
    ("vgg16_small_input", "keras.applications.VGG16 to block5_conv3 at 32 x 32, frozen", None),
    ("suite_model", "this library's build_model: input None x None", KERAS_SHAPE),
    ("logits_and_features", "outputs as a dict, logits and features", None),
    ("isqrt_cov_head", "iSQRT-COV head in Lambda layers: centred covariance, 5 iterations", None),
    ("bcnn_head", "B-CNN head in Lambda layers, frozen backbone", None),
)

CORRECT = tuple(
    CorpusModel(name, "torch", description, TORCH_SHAPE, logits)
    for name, description, logits in _TORCH_CORRECT
) + tuple(
    CorpusModel(name, "tf", description, shape) for name, description, shape in _KERAS_CORRECT
)

#: The question's bugs that a model can hold alone (bug 9, a frozen backbone, is no defect
#: alone; the correct corpus has frozen backbones).
_BUGGY_KEYS = (
    "batch_sum",
    "fourth_root",
    "fixed_batch_size",
    "eps_ones",
    "low_lr",
    "svd_autodiff",
    "negated_lyapunov",
    "batch_l2",
)


def _buggy(key: str, framework: str) -> CorpusModel:
    bug = founding_question.BY_KEY[key]
    return CorpusModel(
        key,
        framework,
        bug.description,
        TORCH_SHAPE if framework == "torch" else None,
        expected=bug.expected_diagnosis or LOW_LEARNING_RATE,
        question_bug=bug.number,
        also=ALSO.get(key, ()),
    )


BUGGY = tuple(_buggy(key, framework) for framework in FRAMEWORKS for key in _BUGGY_KEYS)
#: Every buggy model's phrase: a failure naming another's is a wrong cause.
CAUSES = tuple(sorted({model.expected for model in BUGGY}))
