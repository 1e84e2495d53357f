"""Every bad or degenerate input we know of, in both frameworks: a finite answer or a named error.

One row per case: what is called, and what must come out: `FINITE` (finite outputs, and finite
gradients where the row differentiates) or the words of the error. In eager mode the error is an
IBPInputError; inside a graph (tf.function, Keras fit, torch.compile) a data-dependent check is
the framework's assertion op, which raises its own error type with the same words.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from reference import IBPInputError
from reference.conventions import AUTO_STATED_ACCURACY

from .conftest import import_framework

FINITE = "finite"
ROOTS = {
    "auto": {"method": "auto"},
    "eigh": {"method": "eigh"},
    "ns-lyapunov": {"method": "newton_schulz", "backward": "lyapunov"},
    "ns-iterative": {"method": "newton_schulz", "backward": "newton_schulz"},
    "ns-autograd": {"method": "newton_schulz", "backward": "autograd"},
    "minimax-iterative": {"method": "minimax_newton_schulz"},
    "minimax-lyapunov": {"method": "minimax_newton_schulz", "backward": "lyapunov"},
    "minimax-autograd": {"method": "minimax_newton_schulz", "backward": "autograd"},
}


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Any], Any]  # backend -> (output, gradients or None) as NumPy, or raises
    expect: str  # FINITE or a regular expression the error's message must match


def feature_map(backend, array, dtype="float32"):
    return backend.feature_map(np.asarray(array, dtype=np.float64), dtype)


def rng(seed=0):
    return np.random.default_rng(seed)


def head_gradient(x, dtype="float32", **head_kwargs):
    """The head's output and its gradient with respect to the (channels-first) map `x`."""

    def run(backend):
        head = backend.impl.IBPHead(x.shape[1], **head_kwargs)
        tensor = feature_map(backend, x, dtype)
        cotangent = rng(1).standard_normal((len(x), x.shape[1] ** 2))
        out, (grad,) = backend.value_and_vjp(head, [tensor], cotangent)
        return out, [grad]

    return run


def sqrtm_gradient(a, dtype="float32", **root_kwargs):
    def run(backend):
        cotangent = rng(1).standard_normal(a.shape)
        out, (grad,) = backend.value_and_vjp(
            lambda m: backend.impl.sqrtm(m, **root_kwargs), [backend.tensor(a, dtype)], cotangent
        )
        return out, [grad]

    return run


def call(fn):
    """A row that only calls: `fn(backend, impl)` returns the output or raises."""
    return lambda backend: (backend.numpy(fn(backend, backend.impl)), None)


def typed(backend, array, dtype):
    """A tensor of a non-floating dtype in `backend`'s framework."""
    if backend.name == "torch":
        return backend.fw.as_tensor(np.asarray(array).astype(dtype))
    return backend.fw.constant(np.asarray(array).astype(dtype))


def graph(backend, fn):
    """`fn` as a graph: tf.function without an input shape, or torch.compile (dynamo's capture
    without a compiler backend: what decides how our checks behave, without the minutes of
    inductor on a CPU)."""
    if backend.name == "tf":
        return backend.fw.function(
            fn, input_signature=[backend.fw.TensorSpec(None, backend.fw.float32)]
        )
    return backend.fw.compile(fn, backend="eager", fullgraph=False)


def keras_fit_or_compiled_step(x):
    """One training step of a model ending in the head: Keras fit, or a compiled torch step."""

    def run(backend):
        if backend.name == "tf":
            import keras

            model = keras.Sequential([keras.Input((None, None, 3)), backend.impl.IBPHead(3, 2)])
            model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            images = backend.numpy(feature_map(backend, x))
            history = model.fit(images, np.zeros(len(x)), epochs=1, verbose=0)
            return np.asarray(history.history["loss"]), None
        head = backend.impl.IBPHead(3, 2)
        step = backend.fw.compile(lambda m: head(m).square().sum(), backend="eager")
        loss = step(feature_map(backend, x))
        loss.backward()
        return backend.numpy(loss)[None], None

    return run


ZEROS = np.zeros((2, 4, 3, 3))
TINY = 1e-20 * np.abs(rng().standard_normal((2, 4, 3, 3)))
#: Rank 2 covariance of 6 channels: with eps = 0, round-off leaves eigenvalues of either sign.
RANK_DEFICIENT = np.abs(rng().standard_normal((2, 6, 1, 2)))
NON_PSD = np.diag([1.0, -1.0, 0.25])[None]
HUGE = np.full((1, 2, 2, 2), 1e20)
NAN_MAP = np.ones((1, 2, 2, 2))
NAN_MAP[0, 1, 0, 0] = np.nan
IMAGES = rng().uniform(size=(1, 3, 16, 16))

CASES = [
    *[
        Case(f"zero map, eps=0, head {name}", head_gradient(ZEROS, eps=0.0, **kw), FINITE)
        for name, kw in ROOTS.items()
    ],
    *[
        Case(f"1e-20 map, eps=0, head {name}", head_gradient(TINY, eps=0.0, **kw), FINITE)
        for name, kw in ROOTS.items()
    ],
    *[
        Case(
            f"zero map, eps=0, delta=0, head {name}",
            head_gradient(ZEROS, eps=0.0, delta=0.0, **kw),
            FINITE,
        )
        for name, kw in ROOTS.items()
    ],
    *[
        Case(f"sqrtm of zeros {name}", sqrtm_gradient(np.zeros((1, 3, 3)), **kw), FINITE)
        for name, kw in ROOTS.items()
    ],
    *[
        Case(f"non-PSD sqrtm {name}", sqrtm_gradient(NON_PSD, **kw), FINITE)
        for name, kw in ROOTS.items()
    ],
    *[
        Case(
            f"rank-deficient, eps=0, 40 iterations {name}",
            head_gradient(RANK_DEFICIENT, eps=0.0, num_iters=40, **kw),
            FINITE,
        )
        for name, kw in ROOTS.items()
        if name.startswith("ns")
    ],
    Case(
        "integer map pooled",
        call(lambda b, impl: impl.bilinear_pool(typed(b, np.ones((1, 2, 2, 2)), "int64"))),
        "floating-point.*int64",
    ),
    Case(
        "bool map pooled",
        call(lambda b, impl: impl.bilinear_pool(typed(b, np.ones((1, 2, 2, 2)), bool))),
        "floating-point.*bool",
    ),
    Case(
        "complex matrix rooted",
        call(lambda b, impl: impl.sqrtm(typed(b, np.eye(2)[None], np.complex64))),
        "floating-point.*complex64",
    ),
    Case(
        "integer map into the head",
        call(lambda b, impl: impl.IBPHead(2)(typed(b, np.ones((1, 2, 2, 2)), "int32"))),
        "floating-point.*int32",
    ),
    Case(
        "NaN through signed_sqrt",
        call(lambda b, impl: impl.signed_sqrt(b.tensor(np.array([[np.nan, 1.0]])))),
        "signed sqrt input holds non-finite",
    ),
    Case(
        "inf through l2_normalize",
        call(lambda b, impl: impl.l2_normalize(b.tensor(np.array([[np.inf, 1.0]])))),
        "L2 input holds non-finite",
    ),
    Case(
        "NaN map into the head",
        call(lambda b, impl: impl.IBPHead(2)(feature_map(b, NAN_MAP))),
        "feature map holds non-finite",
    ),
    Case(
        "finite 1e20 map pooled (X X^T overflows)",
        call(lambda b, impl: impl.bilinear_pool(feature_map(b, HUGE))),
        "overflow",
    ),
    Case(
        "finite 1e20 map into the head",
        call(lambda b, impl: impl.IBPHead(2)(feature_map(b, HUGE))),
        "overflow",
    ),
    Case(
        "sqrtm of shape (2, 0, 0)",
        call(lambda b, impl: impl.sqrtm(b.tensor(np.zeros((2, 0, 0))))),
        "empty axis",
    ),
    Case(
        "l2_normalize of rank 0",
        call(lambda b, impl: impl.l2_normalize(b.tensor(np.array(1.0)))),
        "rank 2 or more",
    ),
    Case(
        "l2_normalize of rank 1",
        call(lambda b, impl: impl.l2_normalize(b.tensor(np.ones(3)))),
        "rank 2 or more",
    ),
    Case(
        "eps < 0 pooled",
        call(lambda b, impl: impl.bilinear_pool(feature_map(b, np.ones((1, 2, 2, 2))), eps=-1e-3)),
        "eps must be a finite number >= 0",
    ),
    Case("eps < 0 head", call(lambda b, impl: impl.IBPHead(2, eps=-1e-3)), "eps must be"),
    Case(
        "delta < 0 signed sqrt",
        call(lambda b, impl: impl.signed_sqrt(b.tensor(np.ones((1, 2))), delta=-1.0)),
        "delta must be a finite number >= 0",
    ),
    Case("delta < 0 head", call(lambda b, impl: impl.IBPHead(2, delta=-1.0)), "delta must be"),
    Case(
        "num_iters = 0 sqrtm",
        call(lambda b, impl: impl.sqrtm(b.tensor(np.eye(2)[None]), num_iters=0)),
        "num_iters must be an int >= 1",
    ),
    Case(
        "num_iters = 2.5 head",
        call(lambda b, impl: impl.IBPHead(2, num_iters=2.5)),
        "num_iters must be an int",
    ),
    Case(
        "num_classes = 0",
        call(lambda b, impl: impl.IBPHead(2, num_classes=0)),
        "num_classes must be an int >= 1 or None",
    ),
    Case("in_channels = '4'", call(lambda b, impl: impl.IBPHead("4")), "in_channels must be"),
    Case("in_channels = 0", call(lambda b, impl: impl.IBPHead(0)), "in_channels must be"),
    Case("in_channels = -3", call(lambda b, impl: impl.IBPHead(-3)), "in_channels must be"),
    Case(
        "non-square matrix in a graph",
        call(lambda b, impl: graph(b, impl.sqrtm)(b.tensor(np.ones((1, 3, 4)), "float32"))),
        "must be square",
    ),
    Case(
        "rank-2 matrix in a graph",
        call(lambda b, impl: graph(b, impl.sqrtm)(b.tensor(np.ones((3, 3)), "float32"))),
        "square matrices \\(B, C, C\\), got rank",
    ),
    Case(
        "matrix of shape (2, 0, 0) in a graph",
        call(lambda b, impl: graph(b, impl.sqrtm)(b.tensor(np.zeros((2, 0, 0)), "float32"))),
        "matrix has an empty axis",
    ),
    Case(
        "rank-3 map pooled in a graph",
        call(lambda b, impl: graph(b, impl.bilinear_pool)(b.tensor(np.ones((2, 3, 4)), "float32"))),
        "batch of feature maps .* got a tensor of rank",
    ),
    Case(
        "empty map pooled in a graph",
        call(
            lambda b, impl: graph(b, impl.bilinear_pool)(b.tensor(np.ones((2, 0, 3, 4)), "float32"))
        ),
        "feature map has an empty axis",
    ),
    Case(
        "6-channel map into a 4-channel head in a graph",
        call(lambda b, impl: graph(b, impl.IBPHead(4))(feature_map(b, np.ones((2, 6, 3, 3))))),
        "expected 4 channels on axis",
    ),
    Case(
        "6-channel map into a 4-channel head with a classifier in a graph",
        call(lambda b, impl: graph(b, impl.IBPHead(4, 3))(feature_map(b, np.ones((2, 6, 3, 3))))),
        "expected 4 channels on axis",
    ),
    Case(
        "rank-1 L2 input in a graph",
        call(lambda b, impl: graph(b, impl.l2_normalize)(b.tensor(np.ones(3), "float32"))),
        "rank 2 or more",
    ),
    Case(
        "NaN matrix in a graph",
        call(lambda b, impl: graph(b, impl.sqrtm)(b.tensor(np.full((1, 2, 2), np.nan), "float32"))),
        "matrix holds non-finite",
    ),
    Case(
        "NaN map into the head in a graph",
        call(lambda b, impl: graph(b, impl.IBPHead(2))(feature_map(b, NAN_MAP))),
        "feature map holds non-finite",
    ),
    Case(
        "a graph without an input shape",
        call(lambda b, impl: graph(b, impl.IBPHead(2))(feature_map(b, np.ones((1, 2, 2, 2))))),
        FINITE,
    ),
    Case(
        "NaN map in Keras fit / a compiled torch step",
        keras_fit_or_compiled_step(np.full((2, 3, 4, 4), np.nan)),
        "feature map holds non-finite",
    ),
    Case(
        "1-channel image into a model",
        call(lambda b, impl: impl.build_model("small", 3)(feature_map(b, IMAGES[:, :1]))),
        "3 \\(RGB\\) channels",
    ),
    Case(
        "uint8 images into a model",
        call(
            lambda b, impl: impl.build_model("small", 3)(
                typed(b, b.numpy(b.feature_map(255 * IMAGES)), "uint8")
            )
        ),
        "scale to \\[0, 1\\] floats",
    ),
    Case(
        "1x1 image into a model",
        call(lambda b, impl: impl.build_model("small", 3)(feature_map(b, IMAGES[:, :, :1, :1]))),
        "too small for this backbone",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(backend, case):
    if case.expect == FINITE:
        out, gradients = case.run(backend)
        assert np.all(np.isfinite(out)), "non-finite output"
        for gradient in gradients or []:
            assert gradient is not None and np.all(np.isfinite(gradient)), "non-finite gradient"
        return
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the type is checked below
        case.run(backend)
    in_graph = "graph" in case.id or "fit" in case.id
    assert in_graph or raised.type is IBPInputError, f"{raised.type.__name__}: {raised.value}"
    assert raised.match(case.expect)


@pytest.mark.parametrize("negative", [-1.0, -1e-5, -3e-6, -1e-6, -1e-8], ids=str)
@pytest.mark.parametrize("root", list(ROOTS))
def test_negative_eigenvalues_are_clamped(backend, root, negative):
    """sqrtm(A) = U sqrt(max(lambda, 0)) U^T for every method, rotated so that nothing is diagonal.
    Newton-Schulz alone diverges at -1 (NaN) and, from -1e-6 to -1e-5, returned a finite wrong root
    (-1.23, -3.3e6, -8.1e23 where 0 belongs); every method promises AUTO_STATED_ACCURACY."""
    rotation, _ = np.linalg.qr(rng(2).standard_normal((3, 3)))
    a = rotation @ np.diag([1.0, negative, 0.25]) @ rotation.T
    expected = rotation @ np.diag([1.0, 0.0, 0.5]) @ rotation.T
    z = backend.numpy(backend.impl.sqrtm(backend.tensor(a[None]), **ROOTS[root]))
    assert np.linalg.norm(z[0] - expected) / np.linalg.norm(expected) < AUTO_STATED_ACCURACY


def test_eigensolver_failure_falls_back(backend, monkeypatch):
    """LAPACK can fail to converge on finite input with many repeated eigenvalues (a training run
    met it at step 343). Simulated by an eigensolver that fails once: the root must equal the
    undisturbed one (the float64 retry) instead of raising."""
    x = np.abs(rng(3).standard_normal((2, 6, 2, 2)))
    x[:, 3:] = 0  # dead channels: repeated zero eigenvalues
    a = backend.tensor(np.einsum("bchw,bdhw->bcd", x, x) / 4, "float32")
    expected = backend.numpy(backend.impl.sqrtm(a, method="eigh"))
    if backend.name == "torch":
        module, error = backend.fw.linalg, backend.fw.linalg.LinAlgError("failed to converge")
    else:
        module = backend.fw.linalg
        error = backend.fw.errors.InvalidArgumentError(None, None, "not successful")
    original, calls = module.eigh, []

    def failing_once(m):
        calls.append(m.dtype)
        if len(calls) == 1:
            raise error
        return original(m)

    monkeypatch.setattr(module, "eigh", failing_once)
    z = backend.numpy(backend.impl.sqrtm(a, method="eigh"))
    assert len(calls) == 2, "the solver was not retried"
    np.testing.assert_allclose(z, expected, atol=1e-6 * np.abs(expected).max())


def test_torch_head_reads_the_device_once(monkeypatch):
    """A CUDA-free proxy for the cost of the finiteness check on a GPU: every host read of a
    tensor (bool, item, ...) waits for the device. The head checks once per call, after the root,
    where NaN or inf in the map or an overflow of its covariance shows up, whatever the method."""
    from impls.backends import BACKENDS

    backend = BACKENDS["torch"]
    torch = import_framework("torch")
    reads = []
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    x = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for kwargs in ROOTS.values():
        reads.clear()
        backend.impl.IBPHead(4, **kwargs)(x)
        assert reads == ["__bool__"], kwargs
