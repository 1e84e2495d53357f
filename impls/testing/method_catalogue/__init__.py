"""Correct and buggy layers of the second-order pooling family (B-CNN, MPN-COV, iSQRT-COV), each
written in PyTorch (channels-first) and in TensorFlow (channels-last), the way their users write
them: ibp-check --method <method> must pass every correct layer and fail every bug with the
diagnosis named here.

The records have the shape of `impls.testing.bug_catalogue` (name, stage, function, expected,
description, frameworks, also, target), plus the method, the method parameters the layer is
written for, and for a bug its cause as a float64 NumPy function of the stage's input (reference
layout), which reproduces the buggy layer's output (tests/test_method_catalogue.py).

Targets use ibp-check's own syntax, `package.module:function`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from impls.testing.method_catalogue import causes
from reference.methods import ParameterValue

FRAMEWORKS = ("torch", "tf")

#: The phrase a diagnosis gives for a layer that mixes samples (as in impls.testing.bug_catalogue).
MIXES_SAMPLES = "mixes samples across the batch"


@dataclass(frozen=True)
class MethodBug:
    name: str
    method: str  # the --method it is checked under
    stage: str
    function: str  # the same name in torch_bugs and tf_bugs
    expected: str  # a phrase ibp-check's diagnosis must contain
    description: str
    #: the bug in float64 NumPy: input (reference layout) -> the buggy layer's output
    cause: Callable[..., object]
    #: method parameters the layer is judged with (the ones its code declares)
    parameters: tuple[tuple[str, ParameterValue], ...] = ()
    frameworks: tuple[str, ...] = FRAMEWORKS
    #: causes the layer also has, which a diagnosis may rightly name beside `expected`
    also: tuple[str, ...] = ()

    def target(self, framework: str) -> str:
        return f"{__name__}.{framework}_bugs:{self.function}"


@dataclass(frozen=True)
class MethodCorrectLayer:
    method: str
    stage: str
    function: str  # the same name in torch_correct and tf_correct
    description: str
    #: method parameters the layer is written for (e.g. iterations=3)
    parameters: tuple[tuple[str, ParameterValue], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}-{self.function.replace('_', '-')}"

    def target(self, framework: str) -> str:
        return f"{__name__}.{framework}_correct:{self.function}"


CORRECT = (
    MethodCorrectLayer("bcnn", "pool", "bcnn_pool", "bmm of the (C, N) map with itself, / N"),
    MethodCorrectLayer(
        "bcnn", "head", "bcnn_head", "bmm pool, rationalised signed sqrt, library L2"
    ),
    MethodCorrectLayer(
        "bcnn", "head", "bcnn_head_einsum", "einsum pool, hand-written signed sqrt backward, L2"
    ),
    MethodCorrectLayer("mpn-cov", "pool", "centred_pool_i_hat", "X I_hat X^T, the released form"),
    MethodCorrectLayer("mpn-cov", "pool", "centred_pool_mean", "mean subtracted, then X X^T / N"),
    MethodCorrectLayer(
        "mpn-cov", "sqrtm", "mpn_cov_power", "eigh power 1/2, hand-written backward"
    ),
    MethodCorrectLayer(
        "mpn-cov",
        "sqrtm",
        "mpn_cov_power_quarter",
        "eigh power 1/4, hand-written backward",
        parameters=(("alpha", 0.25),),
    ),
    MethodCorrectLayer("mpn-cov", "head", "mpn_cov_head", "centred pool, eigh power, triu"),
    MethodCorrectLayer("isqrt-cov", "pool", "centred_pool_i_hat", "X I_hat X^T, the released form"),
    MethodCorrectLayer("isqrt-cov", "pool", "centred_pool_mean", "mean subtracted, X X^T / N"),
    MethodCorrectLayer(
        "isqrt-cov", "sqrtm", "isqrt_cov_root", "5 iterations in one loop, autodiff"
    ),
    MethodCorrectLayer(
        "isqrt-cov",
        "sqrtm",
        "isqrt_cov_root_unrolled",
        "5 iterations as the released code: first and last steps outside the loop",
    ),
    MethodCorrectLayer(
        "isqrt-cov",
        "sqrtm",
        "isqrt_cov_root_3",
        "3 iterations (the released module's default)",
        parameters=(("iterations", 3),),
    ),
    MethodCorrectLayer(
        "isqrt-cov", "head", "isqrt_cov_head", "centred pool, 5 iterations, triu_indices gather"
    ),
    MethodCorrectLayer(
        "isqrt-cov",
        "head",
        "isqrt_cov_head_mask",
        "centred pool, 5 iterations, the released Triuvec (nonzeros of a triu mask)",
    ),
    MethodCorrectLayer(
        "isqrt-cov",
        "head",
        "isqrt_cov_head_column_order",
        "the first release's Triuvec (triu().t() mask): column by column",
        parameters=(("order", "column"),),
    ),
)

BUGS = (
    MethodBug(
        "isqrt-cov-no-post-compensation",
        "isqrt-cov",
        "sqrtm",
        "isqrt_cov_root_no_post_compensation",
        "post-compensation",
        "Y_N returned without the post-compensation sqrt(tr S): the output scales with 1 / tr S",
        causes.no_post_compensation,
    ),
    MethodBug(
        "isqrt-cov-batch-trace",
        "isqrt-cov",
        "sqrtm",
        "isqrt_cov_root_batch_trace",
        MIXES_SAMPLES,
        "the trace summed over the whole batch instead of taken per sample",
        causes.batch_trace,
    ),
    MethodBug(
        "isqrt-cov-uncentred-pool",
        "isqrt-cov",
        "pool",
        "isqrt_cov_pool_uncentred",
        "is not centred",
        "X X^T / N without subtracting the mean: B-CNN's pooling in an iSQRT-COV layer",
        causes.uncentred_pool,
    ),
    MethodBug(
        "isqrt-cov-off-by-two",
        "isqrt-cov",
        "sqrtm",
        "isqrt_cov_root_off_by_two",
        "the layer runs 3 iterations",
        "declares iterN = 5 but runs 3: the released code's loop (iterN - 2 steps) without its "
        "first and last steps",
        causes.three_iterations,
    ),
    MethodBug(
        "mpn-cov-power-svd",
        "mpn-cov",
        "sqrtm",
        "mpn_cov_power_svd",
        "applied to the singular values",
        "U S^(1/2) V^T of the SVD: on a non-symmetric matrix the power of its singular values, "
        "not the power of the matrix",
        causes.svd_power,
        also=("autodiff through eigh/svd",),
    ),
    MethodBug(
        "bcnn-signed-sqrt-after-l2",
        "bcnn",
        "head",
        "bcnn_head_signed_sqrt_after_l2",
        "signed sqrt after the L2",
        "L2 normalisation first, then the signed square root: the output is not unit-norm",
        causes.signed_sqrt_after_l2,
    ),
    MethodBug(
        "bcnn-sqrt-plus-eps",
        "bcnn",
        "signed-sqrt",
        "bcnn_sqrt_plus_eps",
        "the square root of negative entries",
        "sqrt(y + 1e-5) for the signed sqrt: NaN wherever y < -1e-5 (maps that take both signs)",
        causes.sqrt_plus_eps,
    ),
)

BY_NAME = {bug.name: bug for bug in BUGS}
