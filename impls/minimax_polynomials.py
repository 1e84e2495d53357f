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
computed on the device: the iteration has no host synchronisation. It is computed once, when this
module is imported, so that a traced graph (torch.compile, tf.function) only reads constants.

The classic coupled Newton-Schulz iteration is the same scheme with the cubic step h(M) = (3 I - M)
/ 2; `Steps` describes either, with what the check for negative eigenvalues needs.

A negative eigenvalue -mu ||A||_F of A (round-off, or a matrix pooled in half precision) has an
imaginary sign iterate: m_0 = -mu, and every step multiplies m by h_k(m)^2 >= c1_k^2 (c3 < 0 <= c5),
so m_K = -mu P^2 with P = Prod h_k(m_k) >= G = Prod c1_k, and the root gets the eigenvalue -mu P
where the clamped root has 0: -1.2 for mu = 1e-6 after 7 minimax steps, inf for 1e-5. On a
positive semidefinite input, instead, every eigenvalue m_i of M_K = Z_K Y_K lies in [0, b]
(b = `Steps.square_bound`), so Sum_i m_i (m_i - b) = ||M_K||_F^2 - b tr M_K <= 0, while a negative
m_K adds |m_K| (|m_K| + b) to it: two reductions tell them apart (`wrong_iterate_slack`).
"""

from dataclasses import dataclass

import numpy as np

#: Lower end of the interval the schedule is designed for, in units of the sign iterate's
#: eigenvalues x = sqrt(lambda / ||A||_F): eigenvalues down to 1e-6 ||A||_F, a condition number of
#: 1e6 for a matrix with one dominant eigenvalue, ten times beyond the ReLU covariances' 1e5 (their
#: eps of 1e-5 bounds lambda_min from below). Smaller eigenvalues still grow monotonically, only
#: more slowly: p_k is increasing on [0, l_k].
DESIGN_LOWER_BOUND = 1e-3

#: Steps when none are asked for: at DESIGN_LOWER_BOUND the seventh step leaves an interval within
#: 1e-8 of 1 (the sixth, 1e-3), so the error is float32 round-off (docs/roots.md).
DEFAULT_MINIMAX_ITERATIONS = 7

#: Minimax error below which the fixed order-3 quintic takes over.
HANDOFF_ERROR = 1e-3

_NEWTON_SCHULZ_QUINTIC = (15 / 8, -10 / 8, 3 / 8)
#: The classic step T = (3 I - M) / 2 in the same form: p(x) = (3 x - x^3) / 2.
_NEWTON_SCHULZ_CUBIC = (1.5, -0.5, 0.0)

#: The (c1, c3, c5) of each step: h_k(M) = c1 I + c3 M + c5 M^2, the sign iterate's step
#: p_k(x) = x h_k(x^2).
Schedule = tuple[tuple[float, float, float], ...]


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


def _greedy_prefix() -> tuple[Schedule, tuple[float, ...]]:
    """The Remez steps until the handoff, and the largest sign iterate after each step.

    On [l_k, u_k] a Remez step stays within 1 +- E_k and reaches 1 + E_k; on [0, l_k] it rises to
    1 - E_k. Eigenvalues below the design interval sit in [0, l_k], so every eigenvalue of S_k lies
    in [0, 1 + E_k] after the step. (Before any step, in [0, 1].)"""
    steps: list[tuple[float, float, float]] = []
    peaks = [1.0]
    lower, upper = DESIGN_LOWER_BOUND, 1.0
    while upper - lower >= 2 * HANDOFF_ERROR:
        coefficients, error = _remez_quintic(lower, upper)
        steps.append(coefficients)
        lower, upper = 1 - error, 1 + error
        peaks.append(upper)
    return tuple(steps), tuple(peaks)


_REMEZ_STEPS, _REMEZ_PEAKS = _greedy_prefix()


def _step(x: float, coefficients: tuple[float, float, float]) -> float:
    c1, c3, c5 = coefficients
    return x * (c1 + x * x * (c3 + c5 * x * x))


@dataclass(frozen=True)
class Steps:
    """The K steps of one coupled iteration, and what the check for negative eigenvalues needs.

    `coefficients`: (c1, c3, c5) of each step. `square_bound`: the largest eigenvalue that
    M_K = Z_K Y_K = S_K^2, the squared sign iterate after the last step, has on a positive
    semidefinite input in exact arithmetic (every eigenvalue x of S_0 = (A / ||A||_F)^(1/2) lies in
    [0, 1]). `growth`: Prod c1_k, how much the steps multiply a sign iterate near 0 at least.
    """

    coefficients: Schedule
    square_bound: float
    growth: float


def quintic_schedule(num_iters: int) -> Steps:
    """The minimax steps designed for DESIGN_LOWER_BOUND: Remez steps, then the fixed quintic.
    The fixed quintic is increasing (p'(x) = 15 (1 - x^2)^2 / 8 >= 0), so it moves the largest
    sign iterate u to p(u)."""
    remez = min(num_iters, len(_REMEZ_STEPS))
    peak = _REMEZ_PEAKS[remez]
    for _ in range(num_iters - remez):
        peak = _step(peak, _NEWTON_SCHULZ_QUINTIC)
    coefficients = _REMEZ_STEPS[:remez] + (_NEWTON_SCHULZ_QUINTIC,) * (num_iters - remez)
    growth = 1.0
    for c1, _, _ in coefficients:  # a plain loop: torch.compile traces this function
        growth *= c1
    return Steps(coefficients, peak**2, growth)


def cubic_schedule(num_iters: int) -> Steps:
    """The classic Newton-Schulz steps. (3 x - x^3) / 2 is increasing on [0, 1] and fixes 1, so
    every sign iterate stays in [0, 1]."""
    return Steps((_NEWTON_SCHULZ_CUBIC,) * num_iters, 1.0, _NEWTON_SCHULZ_CUBIC[0] ** num_iters)


def wrong_iterate_slack(steps: Steps, channels: int, unit_roundoff: float) -> float:
    """kappa such that Sum_i m_i (m_i - square_bound) rises above 0 by no more than
    kappa ||Z_K||_F ||Y_K||_F through round-off alone, m_i the eigenvalues of the computed M_K.

    The last product moves M_K by E = fl(Z_K Y_K) - Z_K Y_K with ||E||_F <= C u ||Z||_F ||Y||_F
    (sqrt(C) u in the probabilistic model of Higham and Mary), and the sum by Sum_i (2 m_i - b) e_i
    <= (2 + 1) b sqrt(C) ||E||_F (b = square_bound): kappa = 4 b C u, a little over the
    probabilistic bound. Measured on matrices with condition numbers up to 1e7, in float32 and
    float64, C = 2 to 512, the sum rose to at most 0.35 kappa ||Z||_F ||Y||_F.

    What it lets through: a negative eigenvalue leaves the error y = -mu P in the root (scaled by
    sqrt(||A||_F); see `Steps`) and the term |m_K| (|m_K| + b) with m_K = -mu P^2 in the sum.
    While its own Z eigenvalue P dominates ||Z||_F, the term exceeds kappa P ||Y||_F, so it is
    caught once |y| > kappa ||Y||_F: 1.2e-4 ||Y||_F in float32 at C = 512. Converged positive
    eigenvalues below b can hide up to C (b - 1) more (~4e-6 at the default 7 minimax steps,
    0 for Newton-Schulz), which caps an undetected |m_K| and so |y| < |m_K| / G.
    """
    return 4 * steps.square_bound * channels * unit_roundoff
