"""Accuracy of a sqrtm method against the float64 reference, and the fewest Newton-Schulz
iterations that reach a target."""

import reference


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
