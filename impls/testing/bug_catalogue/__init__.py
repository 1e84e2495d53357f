"""A catalogue of known bugs in IBP layers, each written in PyTorch and in TensorFlow, and of
correct layers written independently of `impls`: ibp-check must fail every bug with the diagnosis
named here and pass every correct layer.

Targets use ibp-check's own syntax, `package.module:function`.
"""

from dataclasses import dataclass

FRAMEWORKS = ("torch", "tf")


@dataclass(frozen=True)
class Bug:
    name: str
    stage: str
    function: str  # the same name in torch_bugs and tf_bugs
    expected: str  # a phrase ibp-check's diagnosis must contain
    description: str
    design_bug: int = None  # the number in DESIGN.md's catalogue of the seed question's bugs

    def target(self, framework):
        return f"{__name__}.{framework}_bugs:{self.function}"


@dataclass(frozen=True)
class CorrectLayer:
    stage: str
    function: str  # the same name in torch_correct and tf_correct
    description: str
    note: str = ""  # a phrase of the note ibp-check must print for a harmless convention

    @property
    def name(self):
        return self.function.replace("_", "-")

    def target(self, framework):
        return f"{__name__}.{framework}_correct:{self.function}"


BUGS = (
    Bug(
        "pool-summed-over-batch",
        "pool",
        "pool_summed_over_batch",
        "mixes samples across the batch",
        "outer product (C x B)(B x C) at each location: one matrix for the whole batch",
        design_bug=1,
    ),
    Bug(
        "fourth-root",
        "sqrtm",
        "fourth_root",
        "square root is applied twice",
        "sqrt of the singular values taken twice: A^(1/4)",
        design_bug=2,
    ),
    Bug(
        "fixed-batch-size",
        "pool",
        "pool_fixed_batch_size",
        "is hard-coded",
        "batch size 16 written into zeros/reshape",
        design_bug=3,
    ),
    Bug(
        "eps-times-ones",
        "pool",
        "pool_eps_times_ones",
        "eps * ones",
        "eps (1e-7) added to every entry instead of the diagonal",
        design_bug=4,
    ),
    Bug(
        "autodiff-through-svd",
        "sqrtm",
        "sqrtm_autodiff_through_svd",
        "autodiff through eigh/svd",
        "SVD root differentiated by autograd / GradientTape",
        design_bug=6,
    ),
    Bug(
        "negated-lyapunov-gradient",
        "sqrtm",
        "sqrtm_negated_lyapunov_gradient",
        "opposite sign convention",
        "the authors' sqrt_svd_lyap backward (Z X + X Z = -C) fed +dL/dZ",
        design_bug=7,
    ),
    Bug(
        "l2-backward-rescale-only",
        "l2",
        "l2_backward_rescale_only",
        "only rescales",
        "hand-written L2 backward g / ||y|| without the projection",
    ),
    Bug(
        "l2-over-whole-batch",
        "l2",
        "l2_over_whole_batch",
        "whole batch",
        "the seed's tf.math.l2_normalize(x, axis=None): one norm for the batch",
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
    CorrectLayer("sqrtm", "sqrtm_newton_schulz_autograd", "15 Newton-Schulz iterations, autodiff"),
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
)
