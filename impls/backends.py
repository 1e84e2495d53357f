"""The registry of framework backends that tests, `ibp-check` and benchmarks all iterate.

A backend adapts NumPy data (matrices (B, C, C); feature maps channels-first (B, C, H, W), the
reference's layout) to a framework's tensors and layout, and computes vector-Jacobian products
through that framework's autodiff. The stage functions themselves live in `impls.<name>`.
"""

import importlib
import importlib.util
import os

import numpy as np

if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    # Hides TensorFlow's C++ notices (CPU instruction sets, ...); its oneDNN line comes regardless.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"


class _Backend:
    name: str
    package: str
    layout: str
    impl_module: str

    def is_available(self):
        try:
            return importlib.util.find_spec(self.package) is not None
        except ValueError:  # sys.modules holds None for it: imports of it are blocked
            return False

    @property
    def impl(self):
        """The implementation subpackage (`impls.torch` or `impls.tf`)."""
        return importlib.import_module(self.impl_module)

    @property
    def fw(self):
        """The framework module itself."""
        return importlib.import_module(self.package)

    def feature_map(self, x_channels_first, dtype="float64"):
        """A channels-first NumPy feature map as a tensor in this framework's layout."""
        x = np.asarray(x_channels_first)
        if self.layout == "channels_last":
            x = x.transpose(0, 2, 3, 1)
        return self.tensor(x, dtype)

    def feature_map_numpy(self, tensor):
        """A feature map (or its gradient) in this framework's layout as channels-first NumPy."""
        x = self.numpy(tensor)
        return x.transpose(0, 3, 1, 2) if self.layout == "channels_last" else x

    def dtype_name(self, tensor):
        """'float32', 'bfloat16', ... in both frameworks."""
        return str(tensor.dtype).removeprefix("torch.").removeprefix("<dtype: '").rstrip("'>")

    def __repr__(self):
        return f"<backend {self.name}>"


class TorchBackend(_Backend):
    name, package, layout, impl_module = "torch", "torch", "channels_first", "impls.torch"

    def tensor(self, array, dtype="float64"):
        torch = self.fw
        return torch.as_tensor(np.ascontiguousarray(array)).to(getattr(torch, dtype))

    def numpy(self, tensor):
        tensor = tensor.detach().cpu()
        # NumPy has no bfloat16: half precision comes back widened to float32, as in TensorFlow.
        return (tensor.float() if tensor.dtype.itemsize < 4 else tensor).numpy()

    def value_and_vjp(self, fn, inputs, cotangent):
        """fn(*inputs) and the gradient of <cotangent, fn(*inputs)> with respect to each input."""
        torch = self.fw
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        if not out.requires_grad:  # detached, or computed outside autograd
            return self.numpy(out), [None] * len(leaves)
        g = torch.as_tensor(np.asarray(cotangent), dtype=out.dtype)
        grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
        return self.numpy(out), [None if d is None else self.numpy(d) for d in grads]

    def check_gradient(self, fn, x):
        """torch.autograd.gradcheck of fn at the float64 tensor x (raises on a mismatch)."""
        self.fw.autograd.gradcheck(
            fn, (x.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4
        )


class TensorFlowBackend(_Backend):
    name, package, layout, impl_module = "tf", "tensorflow", "channels_last", "impls.tf"

    def tensor(self, array, dtype="float64"):
        tf = self.fw
        return tf.cast(tf.constant(np.asarray(array)), getattr(tf, dtype))

    def numpy(self, tensor):
        tf = self.fw
        if tensor.dtype in (tf.float16, tf.bfloat16):
            tensor = tf.cast(tensor, tf.float32)
        return tensor.numpy()

    def value_and_vjp(self, fn, inputs, cotangent):
        """fn(*inputs) and the gradient of <cotangent, fn(*inputs)> with respect to each input."""
        tf = self.fw
        with tf.GradientTape() as tape:
            for t in inputs:
                tape.watch(t)
            out = fn(*inputs)
        g = tf.cast(tf.constant(np.asarray(cotangent)), out.dtype)
        grads = tape.gradient(out, list(inputs), output_gradients=g)
        return self.numpy(out), [None if d is None else self.numpy(d) for d in grads]

    def check_gradient(self, fn, x):
        """tf.test.compute_gradient of fn at the float64 tensor x (raises on a mismatch)."""
        (analytic,), (numeric,) = self.fw.test.compute_gradient(fn, [x], delta=1e-6)
        np.testing.assert_allclose(analytic, numeric, atol=1e-6, rtol=1e-4)


BACKENDS = {backend.name: backend for backend in (TorchBackend(), TensorFlowBackend())}


def get_backend(name):
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; choose one of {sorted(BACKENDS)}") from None


def available_backends():
    return [b for b in BACKENDS.values() if b.is_available()]
