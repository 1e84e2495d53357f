"""torch = TensorFlow: every stage, forward and backward, on the same inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from impls.backends import BACKENDS
from impls.testing.properties import run, stage_tolerance
from impls.testing.stage_specs import FEATURE_MAP, STAGES
from impls.testing.strategies import feature_maps, spd_batches
from impls.testing.tolerances import jacobian_scale, relative_error

from .conftest import import_framework

FRAMEWORKS = [BACKENDS["torch"], BACKENDS["tf"]]
for _framework in FRAMEWORKS:
    import_framework(_framework.package)

CASES = {
    "pool": {},
    "sqrtm-eigh": {"method": "eigh"},
    "sqrtm-ns": {"method": "newton_schulz", "backward": "newton_schulz"},
    "signed-sqrt": {},
    "l2": {},
    "head": {},
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
@given(data=st.data())
def test_torch_equals_tensorflow(case: str, dtype: str, data: st.DataObject) -> None:
    spec = STAGES[case.split("-")[0] if case.startswith("sqrtm") else case]
    options = CASES[case]
    x = data.draw(
        feature_maps() if spec.input_kind == FEATURE_MAP else spd_batches(max_condition=1e3)
    )
    g = np.random.default_rng(0).standard_normal(spec.forward(x).shape)
    (torch_out, torch_grad), (tf_out, tf_grad) = (
        run(b, spec, spec.implementation(b, **options), x, dtype, g) for b in FRAMEWORKS
    )
    # Each side may sit a full tolerance from the reference, so from each other up to twice that.
    assert relative_error(torch_out, tf_out) <= 2 * stage_tolerance(spec, "forward", dtype, x)
    assert torch_grad is not None and tf_grad is not None, "every stage is differentiable"
    floor = jacobian_scale(x, g, spec.forward(x))
    assert relative_error(torch_grad, tf_grad, floor) <= 2 * stage_tolerance(
        spec, "backward", dtype, x
    )
