"""Accuracy of a sqrtm method against the float64 reference, and the fewest Newton-Schulz
iterations that reach a target."""

import reference
from impls.testing.tolerances import relative_error


def record_errors(extra_info, root, gradient, reference_root, reference_gradient):
    """Store forward and backward relative errors (NumPy inputs) beside a benchmark's timing."""
    extra_info["forward_error"] = relative_error(root, reference_root)
    extra_info["backward_error"] = relative_error(gradient, reference_gradient)


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
