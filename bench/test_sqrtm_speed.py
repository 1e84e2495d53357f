"""Matrix square root speed: every method, backward and size of the profile, on every backend of
the registry, with accuracy and memory recorded at the headline cell (C = 512, B = 8, float32).

Also the time each method needs to reach forward AND backward error <= ACCURACY_TARGET on those
covariances: Newton-Schulz at the fewest iterations that get there, found by a scan, since a race
at a fixed iteration count compares methods of different accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from bench.cases import ACCURACY_TARGET, EIGH, MAX_SEARCHED_ITERATIONS, Cell, SqrtmVariant
from bench.flops import sqrtm_flops
from bench.inputs import Inputs
from bench.sqrtm_error import SqrtmErrors, fewest_iterations, record_errors
from impls.testing.tolerances import relative_error
from reference.conventions import (
    DEFAULT_MINIMAX_BACKWARD,
    DEFAULT_MINIMAX_ITERATIONS,
    NEWTON_SCHULZ_BACKWARDS,
)

if TYPE_CHECKING:
    from bench.conftest import Suite


#: The iterative methods, whose matrix-product FLOPs the report sets against the matmul floor.
_ITERATIVE_METHODS = ("newton_schulz", "minimax_newton_schulz")


def _flops_info(cell, variant, backward_pass):
    if variant.method not in _ITERATIVE_METHODS or variant.num_iters is None:
        return {}
    backward = variant.backward if backward_pass else None
    flops = sqrtm_flops(variant.method, cell.channels, cell.batch, variant.num_iters, backward)
    return {} if flops is None else {"matmul_flops": flops}


def _sqrtm_info(backend_name, cell, variant, mode):
    return {
        "kind": "sqrtm",
        "mode": mode,
        "backend": backend_name,
        **cell.info(),
        **variant.info(),
        **_flops_info(cell, variant, mode == "forward_backward"),
    }


def test_sqrtm_forward(
    backend_name: str,
    adapter: Any,
    forward_case: tuple[Cell, SqrtmVariant],
    inputs: Inputs,
    measure: Callable[..., Any],
    benchmark: Any,
    suite: Suite,
) -> None:
    cell, variant = forward_case
    a = adapter.matrices(inputs.covariances(cell), cell.dtype)
    run = adapter.forward(adapter.sqrtm_function(variant), a)
    z = measure(
        run,
        group=f"sqrtm forward, {cell.label}",
        extra_info=_sqrtm_info(backend_name, cell, variant, "forward"),
    )
    if cell == suite.profile.headline:
        reference_root, _ = inputs.reference(cell)
        error = relative_error(adapter.to_numpy(z), reference_root)
        benchmark.extra_info["forward_error"] = error


def test_sqrtm_forward_backward(
    backend_name: str,
    adapter: Any,
    forward_backward_case: tuple[Cell, SqrtmVariant],
    inputs: Inputs,
    measure: Callable[..., Any],
    benchmark: Any,
    suite: Suite,
) -> None:
    cell, variant = forward_backward_case
    a = adapter.matrices(inputs.covariances(cell), cell.dtype)
    cotangent = adapter.matrices(inputs.cotangent(cell), cell.dtype)
    run = adapter.forward_backward(adapter.sqrtm_function(variant), a, cotangent)
    z, grad = measure(
        run,
        group=f"sqrtm forward+backward, {cell.label}",
        extra_info=_sqrtm_info(backend_name, cell, variant, "forward_backward"),
        first_call=lambda: adapter.memory(run, [a, cotangent]),
    )
    if cell == suite.profile.headline:
        record_errors(
            benchmark.extra_info,
            adapter.to_numpy(z),
            adapter.to_numpy(grad),
            *inputs.reference(cell),
        )


@pytest.fixture(scope="session")
def fewest_forward_iterations() -> dict[tuple[str, str], int | None]:
    """{(backend name, method): fewest iterations whose forward reaches the target}: the forward
    does not depend on the backward, so the backward scans of one method share one."""
    return {}


#: Exact methods raced against the iterations: eigh as it is, and eigh computed in float64 for
#: float32 input (what exactness costs when float32 round-off misses the target).
_EXACT = {"eigh": EIGH, "eigh_float64": dataclasses.replace(EIGH, compute_dtype="float64")}
#: Iterative methods, each raced at its fewest steps that reach the target: parameter ->
#: (unconverged variant, most steps scanned). The classic iteration with each backward (the
#: parameter names the backward, as in earlier results files), the minimax root with its default.
_ITERATIVE = {
    **{
        backward: (SqrtmVariant("newton_schulz", backward=backward), MAX_SEARCHED_ITERATIONS)
        for backward in NEWTON_SCHULZ_BACKWARDS
    },
    "minimax_newton_schulz": (
        SqrtmVariant("minimax_newton_schulz", backward=DEFAULT_MINIMAX_BACKWARD),
        3 * DEFAULT_MINIMAX_ITERATIONS,
    ),
}


@pytest.mark.parametrize("method", [*_EXACT, *_ITERATIVE])
def test_sqrtm_time_to_accuracy(
    backend_name: str,
    adapter: Any,
    method: str,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
    fewest_forward_iterations: dict[tuple[str, str], int | None],
) -> None:
    """Forward+backward at the cheapest setting with both errors <= ACCURACY_TARGET."""
    cell = suite.profile.headline
    accuracy = SqrtmErrors(adapter, inputs.case(cell), cell.dtype)
    group = f"sqrtm time to error <= {ACCURACY_TARGET:g}, {cell.label}"
    info = {"kind": "sqrtm_time_to_accuracy", "backend": backend_name, "target": ACCURACY_TARGET}
    info.update(cell.info())
    if method in _EXACT:
        variant = _EXACT[method]
    else:
        unconverged, most = _ITERATIVE[method]
        key = (backend_name, unconverged.method)
        if key not in fewest_forward_iterations:
            fewest_forward_iterations[key] = fewest_iterations(
                lambda k: [accuracy.forward_error(unconverged.with_iterations(k))],
                ACCURACY_TARGET,
                1,
                most,
            )
        fewest_forward = fewest_forward_iterations[key]
        fewest = fewest_forward and fewest_iterations(
            lambda k: accuracy.errors(unconverged.with_iterations(k)),
            ACCURACY_TARGET,
            fewest_forward,
            most,
        )
        if fewest is None:
            info.update(unconverged.info())
            not_run(
                f"{unconverged.method}/{unconverged.backward} does not reach error <= "
                f"{ACCURACY_TARGET:g} within {most} iterations",
                group,
                info,
            )
        variant = unconverged.with_iterations(fewest)
    info.update(variant.info())
    info.update(_flops_info(cell, variant, backward_pass=True))
    forward_error, backward_error = accuracy.errors(variant)
    info.update(
        forward_error=forward_error,
        backward_error=backward_error,
        reaches_target=max(forward_error, backward_error) <= ACCURACY_TARGET,
    )
    measure(accuracy.run(variant), group=group, extra_info=info)
