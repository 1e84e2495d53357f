"""The one tolerance table: how far a correct implementation may sit from the float64 reference.

Errors are relative Frobenius norms per sample, ||actual - reference|| / ||reference||. A correct
implementation's error is round-off u (the unit round-off of its dtype) amplified by the stage's
conditioning:
- pool, signed sqrt, L2: well conditioned; error grows with the number of summed terms only.
- sqrtm forward: a perturbation u * lambda_max of A moves the root of its smallest eigenvalue by
  about u * lambda_max / sqrt(lambda_min), relative to ||Z|| ~ sqrt(lambda_max): u * kappa^(1/2).
- sqrtm backward (Lyapunov): divides by s_i + s_j >= 2 sqrt(lambda_min): u * kappa.
- head: the sqrtm stage's error, amplified by the signed sqrt, whose slope f'(z) reaches
  1 / (2 sqrt(delta)) at z = 0. An error r ||Z|| spread over the entries of Z becomes
  r * rms(f'(Z)) ||Z|| / ||y|| relative in y (forward `amplification`); the backward multiplies
  by f'(Z), whose relative change per unit change of z is |f''/f'| = 1 / (2 (|z| + delta)), so its
  amplification is rms(1 / (2 (|z| + delta))) ||Z|| (`impls.testing.stage_specs`).
kappa is the condition number of the stage's matrix input (lambda_max / lambda_min of A).
`FACTOR` holds the slack over that first-order estimate; sqrt(C) covers the growth of summed
round-off in matrix products and eigensolvers with the dimension. Each factor was set from the
largest error measured over the hypothesis profiles times ~10, never to make a failing test pass.
"""

import math

import numpy as np
import numpy.typing as npt

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}

# stage -> direction -> (factor, power of kappa)
TABLE = {
    "pool": {"forward": (16.0, 0.0), "backward": (16.0, 0.0)},
    "sqrtm": {"forward": (32.0, 0.5), "backward": (32.0, 1.0)},
    "signed-sqrt": {"forward": (8.0, 0.0), "backward": (8.0, 0.0)},
    "l2": {"forward": (8.0, 0.0), "backward": (16.0, 0.0)},
    "head": {"forward": (32.0, 0.5), "backward": (32.0, 1.0)},
}

#: stage -> direction -> the relative error an approximate method (an iterative square root such as
#: Newton-Schulz) may keep on realistic covariances (`strategies.realistic_covariances`).
#: `ibp-check` judges a user's root and head by max(round-off bound, budget), so it cannot tell an
#: exact method from an iteration that has converged to 1e-3, and need not. Reason for 1e-3: a
#: converged iteration sits at round-off (Newton-Schulz, C = 8: 2e-7 forward, 1e-6 backward in
#: float32 from 10 iterations on), an unconverged one at the percent level (5 iterations: 4e-2
#: forward, 0.25 backward at C = 8; 39 % forward on ReLU covariances at C = 512), so 1e-3 sits
#: more than a decade from both.
APPROXIMATION_BUDGET = {
    "sqrtm": {"forward": 1e-3, "backward": 1e-3},
    "head": {"forward": 1e-3, "backward": 1e-3},
}


def tolerance(
    stage: str,
    direction: str,
    dtype: str,
    channels: int,
    condition: float = 1.0,
    amplification: float = 1.0,
) -> float:
    """The largest relative error a correct `stage` may show in `direction` for `dtype`."""
    factor, kappa_power = TABLE[stage][direction]
    return (
        factor
        * UNIT_ROUNDOFF[dtype]
        * math.sqrt(max(channels, 1))
        * max(condition, 1.0) ** kappa_power
        * max(amplification, 1.0)
    )


def condition_number(a: npt.ArrayLike) -> float:
    """Largest kappa over a batch of symmetric PSD matrices (inf where singular)."""
    eigenvalues = np.linalg.eigvalsh(np.asarray(a, dtype=np.float64))
    smallest = eigenvalues[:, 0]
    with np.errstate(divide="ignore"):
        return float(np.max(np.where(smallest > 0, eigenvalues[:, -1] / smallest, np.inf)))


def per_sample_norms(x: npt.ArrayLike) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.norm(x.reshape(len(x), -1), axis=1)


def relative_error(
    actual: npt.ArrayLike, expected: npt.ArrayLike, floor: float | np.ndarray = 0.0
) -> float:
    """Largest per-sample relative Frobenius error, relative to max(||expected||, floor) per
    sample; absolute where both are zero."""
    expected = np.asarray(expected, dtype=np.float64)
    expected = expected.reshape(len(expected), -1)
    actual = np.asarray(actual, dtype=np.float64).reshape(len(expected), -1)
    scale = np.maximum(np.linalg.norm(expected, axis=1), floor)
    scale = np.where(scale > 0, scale, 1.0)
    return float(np.max(np.linalg.norm(actual - expected, axis=1) / scale))


def jacobian_scale(x: npt.ArrayLike, g: npt.ArrayLike, out: npt.ArrayLike) -> np.ndarray:
    """||g|| ||f(x)|| / ||x|| per sample: the size of a VJP for the homogeneous maps the stages
    are, used as the floor of a gradient's relative error where the gradient itself can vanish
    while the Jacobian does not (the L2 normalisation of a single entry)."""
    input_norms = per_sample_norms(x)
    return np.divide(
        per_sample_norms(g) * per_sample_norms(out),
        input_norms,
        out=np.zeros_like(input_norms),
        where=input_norms > 0,
    )
