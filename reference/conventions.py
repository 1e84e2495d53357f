"""Conventions that every implementation of the IBP head shares with the reference.

They are not physics: each is a choice that changes numbers, so it is made once, here.
"""

#: eps * I added to the covariance: keeps the square root's gradient finite on rank-deficient
#: input.
DEFAULT_EPS = 1e-5

#: delta in y = sign(z) * (sqrt(|z| + delta) - sqrt(delta)): the slope at z = 0 is
#: 1 / (2 sqrt(delta)) instead of infinity, and y stays continuous and odd (the authors' value).
SIGNED_SQRT_DELTA = 1e-5

#: Floor of the L2 norm: an all-zero vector maps to zero instead of NaN.
L2_NORM_FLOOR = 1e-12

#: Coupled Newton-Schulz iterations when none are asked for. On covariances of ReLU feature maps the
#: forward error is ~4e-2 at 10 iterations and ~4e-6 at 20 (docs/roots.md); the paper's 5 is
#: enough for accuracy of a classifier, not for the matrix.
DEFAULT_NEWTON_SCHULZ_ITERATIONS = 20
#: What docs/roots.md promises for the default count: forward and backward relative error in float32
#: on covariances of 28x28 ReLU feature maps plus DEFAULT_EPS, C = 64 and 512 (a test holds it).
NEWTON_SCHULZ_STATED_ACCURACY = 1e-4

#: sqrtm is defined on the symmetric part (A + A^T) / 2 of its input, and its gradient is the
#: symmetric part of the Lyapunov solution. Covariances are symmetric, so nothing changes for them,
#: but every entry of the input then has a derivative that finite differences confirm.
#: Negative eigenvalues of that symmetric part count as 0: sqrtm(A) = U sqrt(max(lambda, 0)) U^T,
#: the root of A's projection onto the positive semi-definite cone, for every method. Covariances
#: are PSD; a negative eigenvalue is round-off (eps = 0 on rank-deficient input, or a covariance
#: pooled in half precision: down to -1e-4 of its norm in bfloat16) or a matrix that is no
#: covariance, and clamping is the nearest PSD answer. eigh clamps directly. A Newton-Schulz
#: iteration goes astray on a negative eigenvalue (its iterate grows in every step, to a finite
#: wrong root or to inf), so each iteration checks its last iterates for that
#: (impls.minimax_polynomials.wrong_iterate_slack) and the samples that fail are recomputed by
#: eigh: a wrong root is never returned.
#: Backward: the gradient of the clamped root, U [(U^T G U)_ij d_ij] U^T with the divided
#: differences d_ij of sqrt(max(., 0)) at lambda_i, lambda_j: 1 / (s_i + s_j) (the Lyapunov
#: solution) where both eigenvalues are positive, s / |lambda_i - lambda_j| where one is not, and 0
#: where neither is (the clamped root is flat there: round-off below zero adds no gradient). The
#: denominators s_i + s_j are floored at 2 max(u s_max, sqrt(tiny)) (u the unit round-off, tiny the
#: smallest normal number of the dtype): relative, since roots below round-off of the largest are
#: noise, and absolute, since the all-zero matrix has s_max = 0 and eigenvalues below tiny have no
#: digits left. Gradients are then finite for every finite input and every eps >= 0, and huge (not
#: infinite) where the true one is infinite. The iterative backwards solve the Lyapunov equation
#: for the computed root, which is this gradient wherever the iteration has converged.
#: The signed sqrt's slope 1 / (2 sqrt(|z| + delta)) is infinite at z = 0 when delta = 0; it is
#: held at 1 / (2 sqrt(u)) below |z| + delta = u (never reached with the default delta). With the
#: L2 floor's 1 / L2_NORM_FLOOR and the root floor's 1 / (2 sqrt(tiny)), the head's backward on an
#: all-zero map with eps = delta = 0 is then at most ~1e34 times the cotangent in float32, finite.
SQRTM_METHODS = ("auto", "eigh", "newton_schulz", "minimax_newton_schulz")
#: "auto" runs what was measured fastest among the candidates that meet AUTO_STATED_ACCURACY
#: (forward and backward) on realistic covariances, for the framework, device and C band at hand:
#: the table impls/auto_table.json, written by `python -m bench.measure_auto` (results/auto.md).
#: Accuracy decides first: torch's float32 divide-and-conquer eigensolver (LAPACK syevd) leaves
#: ~3e-3 backward error at C = 512, so large C there takes the eigendecomposition in float64.
#: Where nothing was measured (a C above the largest band, a C unknown while a graph is traced, a
#: device without rows) it follows impls.auto_table.FALLBACK_RULE: on a CPU eigh in float64
#: (accurate at every C we measured), elsewhere the minimax root with its iterative backward
#: (matrix products only, no eigensolver, no host read).
DEFAULT_SQRTM_METHOD = "auto"
AUTO_STATED_ACCURACY = 1e-3
#: Backward passes of the Newton-Schulz forward: exact Lyapunov solve in the eigenbasis, the coupled
#: Newton-Schulz sign iteration on [[Z, dZ], [0, -Z]] (the authors' GPU backward), or autograd
#: through the forward iterations (iSQRT-COV style; memory grows with the iteration count).
NEWTON_SCHULZ_BACKWARDS = ("lyapunov", "newton_schulz", "autograd")
DEFAULT_NEWTON_SCHULZ_BACKWARD = "lyapunov"

#: Steps of the minimax Newton-Schulz root (impls/minimax_polynomials.py derives the count: the
#: seventh step leaves every eigenvalue of its design interval within 1e-8 of the root), and its
#: default backward: the same steps on [[Z, dZ], [0, -Z]], reusing the forward's iterates, so that
#: forward and backward together are 61 matrix products (two of them the check for negative
#: eigenvalues) and nothing else (results/products.md).
DEFAULT_MINIMAX_ITERATIONS = 7
DEFAULT_MINIMAX_BACKWARD = "newton_schulz"

#: What `num_iters=None` and `backward=None` mean for each iterative method.
ITERATIVE_DEFAULTS = {
    "newton_schulz": (DEFAULT_NEWTON_SCHULZ_ITERATIONS, DEFAULT_NEWTON_SCHULZ_BACKWARD),
    "minimax_newton_schulz": (DEFAULT_MINIMAX_ITERATIONS, DEFAULT_MINIMAX_BACKWARD),
}
