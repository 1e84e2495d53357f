"""The polynomial steps of the minimax Newton-Schulz square root, shared by both frameworks.

The coupled iteration Y_0 = A / s, Z_0 = I, T_k = h_k(Z_k Y_k), Y_{k+1} = Y_k T_k,
Z_{k+1} = T_k Z_k (s = ||A||_F) keeps Y_k = (A / s)^(1/2) S_k and Z_k = (A / s)^(-1/2) S_k, where
S_k is the sign iteration S_{k+1} = p_k(S_k) = S_k h_k(S_k^2) started from S_0 = (A / s)^(1/2).
Every eigenvalue x of S_0 lies in (0, 1], so the root is found when the odd polynomials p_k have
driven every x to 1. ReLU covariances have condition numbers of 1e3-1e5, so the smallest x sits
near 3e-3; the classic cubic step p(x) = (3x - x^3) / 2 multiplies it by 1.5 per step, 3 matrix
products, and needs ~17 steps. Here each step is the odd quintic p(x) = c1 x + c3 x^3 + c5 x^5
closest to 1 in the maximum norm on the interval [l_k, u_k] the eigenvalues occupy before the step
(the greedy minimax composition of Chen & Chow and of "Polar Express", Amsel et al. 2025): it
multiplies small x by 4-8.5 at 4 products, and the interval after it is [1 - E_k, 1 + E_k], E_k its
minimax error. Once E_k is below HANDOFF_ERROR the interval is so close to 1 that the fixed quintic
(15 x - 10 x^3 + 3 x^5) / 8, whose error goes as E^3, finishes (and the Remez system would be
ill-conditioned there).

The schedule is fixed in advance from DESIGN_LOWER_BOUND, so no step waits for a spectrum estimate
computed on the device: the iteration has no host synchronisation.
"""

import functools

import numpy as np

#: Lower end of the interval the schedule is designed for, in units of the sign iterate's
#: eigenvalues x = sqrt(lambda / ||A||_F): eigenvalues down to 1e-6 ||A||_F, a condition number of
#: 1e6 for a matrix with one dominant eigenvalue, ten times beyond the ReLU covariances' 1e5 (their
#: eps of 1e-5 bounds lambda_min from below). Smaller eigenvalues still grow monotonically, only
#: more slowly: p_k is increasing on [0, l_k].
DESIGN_LOWER_BOUND = 1e-3

#: Steps when none are asked for: at DESIGN_LOWER_BOUND the seventh step leaves an interval within
#: 1e-8 of 1 (the sixth, 1e-3), so the error is float32 round-off (README, "Matrix products").
DEFAULT_MINIMAX_ITERATIONS = 7

#: Minimax error below which the fixed order-3 quintic takes over.
HANDOFF_ERROR = 1e-3

_NEWTON_SCHULZ_QUINTIC = (15 / 8, -10 / 8, 3 / 8)


def _remez_quintic(lower: float, upper: float) -> tuple[tuple[float, float, float], float]:
    """(c1, c3, c5) of the odd quintic closest to 1 on [lower, upper], and its maximum error.

    The optimum equioscillates at lower, q, r, upper (error -E, +E, -E, +E), q and r being the
    roots of p'; Remez alternates solving for the coefficients and moving q, r to those roots.
    """
    q, r = lower + (upper - lower) / 3, lower + 2 * (upper - lower) / 3
    signs = np.array([-1.0, 1.0, -1.0, 1.0])
    for _ in range(100):
        points = np.array([lower, q, r, upper])
        system = np.stack([points, points**3, points**5, -signs], axis=1)
        c1, c3, c5, error = np.linalg.solve(system, np.ones(4))
        # p'(x) = c1 + 3 c3 x^2 + 5 c5 x^4 = 0, a quadratic in x^2
        discriminant = np.sqrt(9 * c3**2 - 20 * c1 * c5)
        new_q, new_r = sorted(
            np.sqrt((-3 * c3 + sign * discriminant) / (10 * c5)) for sign in (1, -1)
        )
        converged = max(abs(new_q - q), abs(new_r - r)) <= 1e-15 * upper
        q, r = new_q, new_r
        if converged:
            break
    return (float(c1), float(c3), float(c5)), float(error)


@functools.cache
def quintic_schedule(num_iters: int) -> tuple[tuple[float, float, float], ...]:
    """The (c1, c3, c5) of each of `num_iters` steps, designed for DESIGN_LOWER_BOUND."""
    steps: list[tuple[float, float, float]] = []
    lower, upper = DESIGN_LOWER_BOUND, 1.0
    for _ in range(num_iters):
        if upper - lower < 2 * HANDOFF_ERROR:
            steps.append(_NEWTON_SCHULZ_QUINTIC)
            continue
        coefficients, error = _remez_quintic(lower, upper)
        steps.append(coefficients)
        lower, upper = 1 - error, 1 + error
    return tuple(steps)
