"""Accuracy of a sqrtm method against the float64 reference, and the fewest Newton-Schulz
iterations that reach a target."""

import numpy as np

import reference


def worst_relative_error(actual, expected):
    """max over samples of ||actual - expected||_F / ||expected||_F."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    difference = np.linalg.norm(actual - expected, axis=(-2, -1))
    return float(np.max(difference / np.linalg.norm(expected, axis=(-2, -1))))


def reference_root_and_gradient(matrices, cotangent):
    """SciPy's root (float64) and the gradient of <cotangent, root> by the Lyapunov solve."""
    root = reference.sqrtm(matrices)
    return root, reference.sqrtm_vjp(root, cotangent)


def fewest_iterations(errors_at, target, first, last):
    """The smallest k in [first, last] with every error errors_at(k) returns <= target, else None.

    A linear scan rather than bisection: the errors need not fall monotonically in k, and the
    smallest qualifying k is the answer the speed comparison needs.
    """
    for k in range(first, last + 1):
        if max(errors_at(k)) <= target:
            return k
    return None
