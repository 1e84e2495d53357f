"""A catalogue of known bugs in IBP layers, each written in PyTorch and in TensorFlow, and of
correct layers written independently of `impls`: ibp-check must fail every bug with the diagnosis
named here and pass every correct layer.

Targets use ibp-check's own syntax, `package.module:function`.
"""

from dataclasses import dataclass

from impls.testing import founding_question

FRAMEWORKS = ("torch", "tf")


@dataclass(frozen=True)
class Bug:
    name: str
    stage: str
    function: str  # the same name in torch_bugs and tf_bugs
    expected: str  # a phrase ibp-check's diagnosis must contain
    description: str
    #: the bug's number in the founding question's table (`impls.testing.founding_question`)
    question_bug: int | None = None
    #: the frameworks that can express the bug (TensorFlow tensors cannot be changed in place)
    frameworks: tuple = FRAMEWORKS
    #: causes the layer also has, which a diagnosis may rightly name beside `expected`
    also: tuple = ()

    def target(self, framework: str) -> str:
        return f"{__name__}.{framework}_bugs:{self.function}"


@dataclass(frozen=True)
class CorrectLayer:
    stage: str
    function: str  # the same name in torch_correct and tf_correct
    description: str
    note: str = ""  # a phrase of the note ibp-check must print for a harmless convention

    @property
    def name(self) -> str:
        return self.function.replace("_", "-")

    def target(self, framework: str) -> str:
        return f"{__name__}.{framework}_correct:{self.function}"


#: The question's layers that have a second bug: its fourth root differentiates through the SVD
#: with autodiff (bug 6), and a norm over the whole batch mixes samples.
ALSO = {
    "fourth_root": ("autodiff through eigh/svd",),
    "batch_l2": ("mixes samples across the batch",),
}

BUGS = (
    *(
        Bug(
            bug.key.replace("_", "-"),
            bug.stage,
            bug.function,
            bug.expected_diagnosis,
            bug.description,
            question_bug=bug.number,
            also=ALSO.get(bug.key, ()),
        )
        for bug in founding_question.BUGS
        if bug.function is not None and bug.stage is not None and bug.expected_diagnosis is not None
    ),
    Bug(
        "l2-backward-rescale-only",
        "l2",
        "l2_backward_rescale_only",
        "only rescales",
        "hand-written L2 backward g / ||y|| without the projection",
    ),
    Bug(
        "signed-sqrt-without-regulariser",
        "signed-sqrt",
        "signed_sqrt_without_regulariser",
        "no regulariser",
        "sign(z) sqrt(|z|): infinite slope at z = 0",
    ),
    Bug(
        "newton-schulz-five-iterations",
        "sqrtm",
        "sqrtm_newton_schulz_five_iterations",
        "has not converged",
        "the paper's 5 Newton-Schulz iterations, judged as a matrix root",
    ),
    Bug(
        "trace-newton-schulz-3",
        "sqrtm",
        "sqrtm_trace_newton_schulz_3",
        "has not converged",
        "trace-normalised Newton-Schulz (iSQRT-COV), 3 iterations, autodiff",
    ),
    Bug(
        "trace-newton-schulz-10",
        "sqrtm",
        "sqrtm_trace_newton_schulz_10",
        "has not converged",
        "trace-normalised Newton-Schulz, 10 iterations: ~1e-3 on small matrices, ~1 % at C = 64",
    ),
    Bug(
        "eigh-iterative-backward-10",
        "sqrtm",
        "sqrtm_eigh_iterative_backward_10",
        "the backward has not converged",
        "exact eigh forward, the authors' iterative Lyapunov backward stopped at 10 iterations",
    ),
    Bug(
        "pool-centred",
        "pool",
        "pool_centred",
        "is centred",
        "the mean feature subtracted before the outer product",
    ),
    Bug(
        "exits",
        "sqrtm",
        "sqrtm_exits",
        "ended the process with exit code 0",
        "sys.exit(0) inside the layer",
    ),
    Bug(
        "hangs",
        "sqrtm",
        "sqrtm_hangs",
        "a call took longer than",
        "never returns",
    ),
    Bug(
        "returns-float64",
        "sqrtm",
        "sqrtm_returns_float64",
        "returns float64 for float32 input",
        "an eigh root computed and returned in float64, differentiated by autodiff",
        also=("autodiff through eigh/svd",),
    ),
    Bug(
        "overwrites-saved-tensor",
        "sqrtm",
        "sqrtm_overwrites_saved_tensor",
        "changed in place",
        "eigenvectors saved for the backward scaled in place after use",
        frameworks=("torch",),
    ),
    Bug(
        "pool-wrong-axis",
        "pool",
        "pool_wrong_axis",
        "wrong axis",
        "map reshaped as if in the other layout, without moving the channel axis",
    ),
    Bug(
        "outer-product-over-locations",
        "pool",
        "pool_outer_product_over_locations",
        "N x N",
        "X^T X (N x N) instead of X X^T (C x C)",
    ),
    Bug(
        "sqrtm-entrywise",
        "sqrtm",
        "sqrtm_entrywise",
        "an entrywise square root",
        "sign(a) sqrt(|a|) of each entry where the matrix root is meant",
    ),
    Bug(
        "pool-divided-twice",
        "pool",
        "pool_divided_twice",
        "1/(H*W) = 1/",
        "the mean over locations divided by H*W once more",
    ),
    Bug(
        "frobenius-newton-schulz-10",
        "sqrtm",
        "sqrtm_frobenius_newton_schulz_10",
        "(Frobenius-norm scaling) gives after 10 iterations",
        "published Newton-Schulz code (Frobenius scaling) run for 10 iterations",
        also=("has not converged",),
    ),
    Bug(
        "signed-sqrt-of-negative",
        "signed-sqrt",
        "signed_sqrt_of_negative",
        "the square root of negative entries",
        "sign(z) sqrt(z): NaN for every negative entry",
        also=("no regulariser",),
    ),
)

CORRECT = (
    CorrectLayer("pool", "ours_pool", "impls bilinear_pool"),
    CorrectLayer(
        "pool", "pool_loop_over_locations", "loop over locations, per-sample outer products"
    ),
    CorrectLayer("pool", "pool_einsum", "one einsum"),
    CorrectLayer("sqrtm", "ours_sqrtm", "impls sqrtm (eigh, Lyapunov backward)"),
    CorrectLayer(
        "sqrtm",
        "ours_sqrtm_newton_schulz",
        "impls sqrtm, 20 Newton-Schulz iterations, iterative backward",
    ),
    CorrectLayer("sqrtm", "sqrtm_eigh_lyapunov", "eigh root, hand-written Lyapunov backward"),
    CorrectLayer("sqrtm", "sqrtm_svd_lyapunov", "SVD root, Lyapunov backward with the right sign"),
    CorrectLayer("sqrtm", "sqrtm_newton_schulz_autograd", "20 Newton-Schulz iterations, autodiff"),
    CorrectLayer(
        "sqrtm",
        "sqrtm_eigh_nonsymmetric_lyapunov",
        "eigh root, backward returns the non-symmetric Lyapunov solution",
    ),
    CorrectLayer(
        "sqrtm", "sqrtm_trace_newton_schulz_30", "trace-normalised Newton-Schulz, 30 iterations"
    ),
    CorrectLayer("signed-sqrt", "ours_signed_sqrt", "impls signed_sqrt"),
    CorrectLayer("signed-sqrt", "signed_sqrt_rationalised", "z / (sqrt(|z| + d) + sqrt(d))"),
    CorrectLayer("signed-sqrt", "signed_sqrt_custom_backward", "hand-written backward"),
    CorrectLayer("l2", "ours_l2", "impls l2_normalize"),
    CorrectLayer("l2", "l2_by_hand", "y / max(||y||, 1e-12)"),
    CorrectLayer("l2", "l2_library", "F.normalize / tf.math.l2_normalize over each sample"),
    CorrectLayer("head", "ours_head", "impls IBPHead"),
    CorrectLayer("head", "head_composed", "einsum, eigh + Lyapunov, rationalised sqrt, library L2"),
    CorrectLayer("head", "head_newton_schulz", "loop pool, 20 Newton-Schulz iterations, (B, C, C)"),
    CorrectLayer("pool", "pool_sum_keras_epsilon", "no 1/N, eps 1e-7", note="none (sum, no 1/N)"),
    CorrectLayer("signed-sqrt", "signed_sqrt_bcnn", "sign(z) sqrt(|z| + 1e-10)", note="B-CNN"),
    CorrectLayer("head", "head_bcnn", "no 1/N, eps 1e-7, B-CNN signed sqrt", note="B-CNN"),
    CorrectLayer(
        "pool",
        "pool_float32_eye",
        "eps * eye(C) or the whole pooling in float32: half precision comes back as float32",
        note="half precision comes back as float32",
    ),
)
