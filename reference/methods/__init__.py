"""Float64 references of the second-order pooling family, one typed record per method.

    from reference.methods import METHODS
    stage = METHODS["isqrt-cov"].reference("sqrtm", iterations=3)
    stage.forward(a), stage.vjp(a, g)

Each method's stages carry the checker's stage names (pool, sqrtm, signed-sqrt, l2, head): "sqrtm"
is the method's matrix normalisation (IBP's exact root, MPN-COV's power, iSQRT-COV's N
iterations); B-CNN has none.
"""

from reference import stages as ibp_stages
from reference.conventions import DEFAULT_EPS as IBP_EPS
from reference.conventions import SIGNED_SQRT_DELTA
from reference.methods import bcnn, ibp, isqrt_cov, mpn_cov
from reference.methods.pooling import (
    DEFAULT_TRIU_ORDER,
    TRIU_ORDERS,
    centred_pool,
    centred_pool_vjp,
    triu_indices,
    triu_vec,
    triu_vec_vjp,
)
from reference.methods.records import (
    CHOICE,
    COUNT,
    FEATURE_MAP,
    FLAT_OUTPUT,
    MATRIX,
    MATRIX_OUTPUT,
    NON_NEGATIVE,
    POSITIVE,
    TRIU_OUTPUT,
    BoundStage,
    Method,
    MethodStage,
    NotApplicable,
    Parameter,
    ParameterValue,
)

__all__ = [
    "BoundStage",
    "DEFAULT_TRIU_ORDER",
    "FEATURE_MAP",
    "FLAT_OUTPUT",
    "MATRIX",
    "MATRIX_OUTPUT",
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "MethodStage",
    "NotApplicable",
    "Parameter",
    "ParameterValue",
    "TRIU_ORDERS",
    "TRIU_OUTPUT",
    "centred_pool",
    "centred_pool_vjp",
    "get_method",
    "triu_indices",
    "triu_vec",
    "triu_vec_vjp",
]

_EPS = "eps * I added to the covariance"
_DELTA = "regulariser of the signed square root sign(z) (sqrt(|z| + delta) - sqrt(delta))"
_ORDER = Parameter(
    "order",
    DEFAULT_TRIU_ORDER,
    CHOICE,
    "order of the upper-triangle entries: row by row (PyTorch release) or column by column "
    "(MATLAB releases)",
    TRIU_ORDERS,
)

_SIGNED_SQRT = MethodStage(
    "signed-sqrt",
    MATRIX,
    MATRIX_OUTPUT,
    ibp_stages.signed_sqrt,
    ibp_stages.signed_sqrt_vjp,
    ("delta",),
    "sign(z) (sqrt(|z| + delta) - sqrt(delta)), entrywise",
)
_L2 = MethodStage(
    "l2",
    MATRIX,
    MATRIX_OUTPUT,
    ibp_stages.l2_normalize,
    ibp_stages.l2_normalize_vjp,
    (),
    "y / max(||y||, 1e-12) over all entries of one sample",
)

IBP = Method(
    "ibp",
    "Improved Bilinear Pooling (Lin, Maji, BMVC 2017)",
    (
        MethodStage(
            "pool",
            FEATURE_MAP,
            MATRIX_OUTPUT,
            ibp_stages.bilinear_pool,
            ibp.pool_vjp,
            ("eps",),
            "X X^T / N + eps I, uncentred",
        ),
        MethodStage(
            "sqrtm",
            MATRIX,
            MATRIX_OUTPUT,
            ibp_stages.sqrtm,
            ibp.root_vjp,
            (),
            "the exact square root of the symmetric part (scipy.linalg.sqrtm)",
        ),
        _SIGNED_SQRT,
        _L2,
        MethodStage(
            "head",
            FEATURE_MAP,
            FLAT_OUTPUT,
            ibp_stages.ibp_head,
            ibp_stages.ibp_head_vjp,
            ("eps", "delta"),
            "pool, exact root, signed sqrt, L2; (B, C*C)",
        ),
    ),
    (
        Parameter("eps", IBP_EPS, NON_NEGATIVE, _EPS),
        Parameter("delta", SIGNED_SQRT_DELTA, NON_NEGATIVE, _DELTA),
    ),
    short="IBP",
)

BCNN = Method(
    "bcnn",
    "B-CNN (Lin, RoyChowdhury, Maji, ICCV 2015)",
    (
        MethodStage(
            "pool",
            FEATURE_MAP,
            MATRIX_OUTPUT,
            bcnn.bcnn_pool,
            bcnn.bcnn_pool_vjp,
            (),
            "X X^T / N, uncentred, no eps",
        ),
        _SIGNED_SQRT,
        _L2,
        MethodStage(
            "head",
            FEATURE_MAP,
            FLAT_OUTPUT,
            bcnn.bcnn_head,
            bcnn.bcnn_head_vjp,
            ("delta",),
            "pool, signed sqrt, L2 (no matrix root); (B, C*C)",
        ),
    ),
    (Parameter("delta", bcnn.DEFAULT_DELTA, NON_NEGATIVE, _DELTA),),
    (
        NotApplicable("square-root", "head", "B-CNN has no matrix root: y is X X^T / N itself"),
        NotApplicable("convergence", "head", "B-CNN has no iteration"),
    ),
    short="B-CNN",
)

MPN_COV = Method(
    "mpn-cov",
    "MPN-COV (Li, Xie, Wang, Zuo, ICCV 2017)",
    (
        MethodStage(
            "pool",
            FEATURE_MAP,
            MATRIX_OUTPUT,
            centred_pool,
            centred_pool_vjp,
            ("eps",),
            "X Ibar X^T + eps I, centred",
        ),
        MethodStage(
            "sqrtm",
            MATRIX,
            MATRIX_OUTPUT,
            mpn_cov.matrix_power,
            mpn_cov.matrix_power_vjp,
            ("alpha",),
            "S^alpha by the eigendecomposition of the symmetric part, eigenvalues clamped at 0",
        ),
        MethodStage(
            "head",
            FEATURE_MAP,
            TRIU_OUTPUT,
            mpn_cov.mpn_cov_head,
            mpn_cov.mpn_cov_head_vjp,
            ("eps", "alpha", "order"),
            "centred pool, power, upper triangle; (B, C(C+1)/2)",
        ),
    ),
    (
        Parameter("eps", mpn_cov.DEFAULT_EPS, NON_NEGATIVE, _EPS),
        Parameter("alpha", mpn_cov.DEFAULT_ALPHA, POSITIVE, "the matrix power"),
        _ORDER,
    ),
    (
        NotApplicable(
            "square-root",
            "sqrtm",
            "the stage is the power S^alpha, which the forward property compares with the "
            "reference power itself (the exact root at alpha = 1/2); Z Z = A is the test of IBP's "
            "root",
        ),
        NotApplicable("convergence", "sqrtm", "an eigendecomposition, not an iteration"),
        NotApplicable("convergence", "head", "an eigendecomposition, not an iteration"),
    ),
    min_locations=2,
    short="MPN-COV",
)

ISQRT_COV = Method(
    "isqrt-cov",
    "iSQRT-COV (Li, Xie, Wang, Gao, CVPR 2018)",
    (
        MethodStage(
            "pool",
            FEATURE_MAP,
            MATRIX_OUTPUT,
            centred_pool,
            centred_pool_vjp,
            (),
            "X Ibar X^T, centred, no eps",
        ),
        MethodStage(
            "sqrtm",
            MATRIX,
            MATRIX_OUTPUT,
            isqrt_cov.isqrt_cov_root,
            isqrt_cov.isqrt_cov_root_vjp,
            ("iterations",),
            "A = S / tr S, N coupled Newton-Schulz iterations, times sqrt(tr S)",
        ),
        MethodStage(
            "head",
            FEATURE_MAP,
            TRIU_OUTPUT,
            isqrt_cov.isqrt_cov_head,
            isqrt_cov.isqrt_cov_head_vjp,
            ("iterations", "order"),
            "centred pool, N iterations, upper triangle; (B, C(C+1)/2)",
        ),
    ),
    (
        Parameter(
            "iterations", isqrt_cov.DEFAULT_ITERATIONS, COUNT, "Newton-Schulz iterations (iterN)"
        ),
        _ORDER,
    ),
    (
        NotApplicable(
            "square-root",
            "sqrtm",
            "N iterations are not the root by design (5 are 20-40 % off on ReLU covariances); "
            "the forward is compared with the same N iterations instead",
        ),
        NotApplicable("convergence", "sqrtm", "the N iterations are the method"),
        NotApplicable("convergence", "head", "the N iterations are the method"),
    ),
    min_locations=2,
    short="iSQRT-COV",
)

#: Every method by its --method keyword; IBP first (the default).
METHODS = {method.name: method for method in (IBP, BCNN, MPN_COV, ISQRT_COV)}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    """The method called `name`, or IBPInputError naming the choices."""
    from reference.contracts import check_choice

    check_choice(name, METHOD_NAMES, "method")
    return METHODS[name]
