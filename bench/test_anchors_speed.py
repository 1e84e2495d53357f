"""Anchors timed in the same run as the suite, so every speed-up is a ratio from one machine:

- SciPy (`scipy.linalg.sqrtm`, and `solve_continuous_lyapunov` for the backward; float64, looped
  over the batch): the project's reference.
- `tf.linalg.sqrtm`, forward and its registered gradient. That gradient solves a dense
  C^2 x C^2 system per sample, so it is only attempted where the system fits the memory limit;
  elsewhere the results record why it was not run.
- Autograd through the framework's eigh (the naive exact way; its gradient divides by
  s_i - s_j). Autograd through Newton-Schulz (iSQRT-COV) is backward="autograd" in the main grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from bench.adapters import adapter_for
from bench.cases import Cell
from bench.inputs import Inputs
from bench.sqrtm_error import record_errors
from impls.backends import get_backend
from reference import sqrtm as reference_sqrtm
from reference import sqrtm_vjp as reference_sqrtm_vjp

if TYPE_CHECKING:
    from bench.conftest import Suite

#: Copies of the C^2 x C^2 system tf.linalg.sqrtm's gradient holds at once (two Kronecker
#: products and their sum, before the solve's own LU workspace).
_KRONECKER_COPIES = 3


def _anchor_info(backend, method, label, cell, mode):
    return {
        "kind": "sqrtm",
        "mode": mode,
        "backend": backend,
        "method": method,
        "method_label": label,
        "num_iters": None,
        "backward": None,
        "anchor": True,
        **cell.info(),
    }


def _cpu_only(suite, not_run, group, info):
    if suite.device != "cpu":
        not_run("a CPU anchor: the GPU suite compares against the CPU run instead", group, info)


def test_scipy_sqrtm_forward(
    anchor_cell: Cell,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    group = f"sqrtm forward, {anchor_cell.label}"
    info = _anchor_info("scipy", "scipy", "scipy.linalg.sqrtm (float64)", anchor_cell, "forward")
    _cpu_only(suite, not_run, group, info)
    a = inputs.covariances(anchor_cell)
    measure(lambda: reference_sqrtm(a), group=group, extra_info=info)


def test_scipy_sqrtm_forward_backward(
    anchor_cell: Cell,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    group = f"sqrtm forward+backward, {anchor_cell.label}"
    label = "scipy.linalg.sqrtm + solve_continuous_lyapunov (float64)"
    info = _anchor_info("scipy", "scipy", label, anchor_cell, "forward_backward")
    _cpu_only(suite, not_run, group, info)
    a, cotangent = inputs.covariances(anchor_cell), inputs.cotangent(anchor_cell)

    def run():
        return reference_sqrtm_vjp(reference_sqrtm(a), cotangent)

    measure(run, group=group, extra_info=info)


def _tensorflow_adapter(suite, not_run, group, info):
    if not any(backend.name == "tf" for backend in suite.backends):
        not_run(f"TensorFlow is not part of the {suite.device} suite", group, info)
    return adapter_for(get_backend("tf"), suite.framework_device)


def test_tf_linalg_sqrtm_forward(
    anchor_cell: Cell,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    group = f"sqrtm forward, {anchor_cell.label}"
    info = _anchor_info("tf", "tf.linalg.sqrtm", "tf.linalg.sqrtm", anchor_cell, "forward")
    adapter = _tensorflow_adapter(suite, not_run, group, info)
    a = adapter.matrices(inputs.covariances(anchor_cell), anchor_cell.dtype)
    measure(adapter.forward(adapter.tf.linalg.sqrtm, a), group=group, extra_info=info)


def test_tf_linalg_sqrtm_gradient(
    anchor_cell: Cell,
    inputs: Inputs,
    measure: Callable[..., Any],
    not_run: Callable[..., NoReturn],
    suite: Suite,
) -> None:
    group = f"sqrtm forward+backward, {anchor_cell.label}"
    label = "tf.linalg.sqrtm + registered gradient"
    info = _anchor_info("tf", "tf.linalg.sqrtm", label, anchor_cell, "forward_backward")
    adapter = _tensorflow_adapter(suite, not_run, group, info)
    c, b = anchor_cell.channels, anchor_cell.batch
    system_bytes = _KRONECKER_COPIES * b * c**4 * np.dtype(anchor_cell.dtype).itemsize
    info["estimated_bytes"] = system_bytes
    if system_bytes > suite.memory_limit_bytes:
        not_run(
            f"skipped: C^2 x C^2 system ({c**2} x {c**2} per sample, about "
            f"{system_bytes / 2**30:.3g} GiB for B={b}) exceeds the "
            f"{suite.memory_limit_bytes / 2**30:.3g} GiB limit (--bench-memory-limit-gib)",
            group,
            info,
        )
    tf = adapter.tf
    a = adapter.matrices(inputs.covariances(anchor_cell), anchor_cell.dtype)
    cotangent = adapter.matrices(inputs.cotangent(anchor_cell), anchor_cell.dtype)
    run = adapter.forward_backward(tf.linalg.sqrtm, a, cotangent)
    try:
        measure(run, group=group, extra_info=info)
    except (tf.errors.ResourceExhaustedError, tf.errors.InternalError, MemoryError) as error:
        not_run(f"failed: {type(error).__name__}: {str(error).splitlines()[0]}", group, info)


def test_naive_eigh_autograd(
    backend_name: str,
    adapter: Any,
    anchor_cell: Cell,
    inputs: Inputs,
    measure: Callable[..., Any],
    benchmark: Any,
    suite: Suite,
) -> None:
    a = adapter.matrices(inputs.covariances(anchor_cell), anchor_cell.dtype)
    cotangent = adapter.matrices(inputs.cotangent(anchor_cell), anchor_cell.dtype)
    label = "eigh, autograd through the eigendecomposition"
    info = _anchor_info(backend_name, "eigh_autograd", label, anchor_cell, "forward_backward")
    run = adapter.forward_backward(adapter.naive_eigh_sqrtm, a, cotangent)
    z, grad = measure(
        run,
        group=f"sqrtm forward+backward, {anchor_cell.label}",
        extra_info=info,
        first_call=lambda: adapter.memory(run, [a, cotangent]),
    )
    if anchor_cell == suite.profile.headline:
        record_errors(
            benchmark.extra_info,
            adapter.to_numpy(z),
            adapter.to_numpy(grad),
            *inputs.reference(anchor_cell),
        )
