"""The founding question's layer bugs (numbered in impls.testing.founding_question), as the small
buggy layers a user would write (kept once, in ibp-check's bug catalogue), must each fail the
property suite that our own layers pass."""

import importlib

import numpy as np
import pytest

from impls.testing import bug_catalogue as catalogue
from impls.testing import founding_question, properties
from impls.testing.matrices import relu_feature_maps, spd_with_spectrum
from impls.testing.stage_specs import STAGES
from impls.testing.strategies import spectrum

#: The question's layers hard-code its batch size (bug 3): the checks run at that size.
SEED_BATCH_SIZE = founding_question.BATCH_SIZE


def buggy_layer(backend, key):
    """The layer of the question's bug `key`, from ibp-check's catalogue (one copy of each bug)."""
    module = importlib.import_module(f"{catalogue.__name__}.{backend.name}_bugs")
    return getattr(module, founding_question.BY_KEY[key].function)


@pytest.fixture
def feature_map():
    return relu_feature_maps(np.random.default_rng(0), SEED_BATCH_SIZE, 6, 4, 4)


@pytest.fixture
def covariance_batch():
    rng = np.random.default_rng(1)
    return spd_with_spectrum(rng, [spectrum(rng, "log_uniform", 6, 100.0, 1e-3) for _ in range(3)])


def test_batch_summed_pool_fails_independence(backend, feature_map):
    buggy = buggy_layer(backend, "batch_sum")
    with pytest.raises(properties.PropertyViolation, match="mixes samples across the batch"):
        properties.check_per_sample_independence(
            backend, STAGES["pool"], buggy, feature_map, "float64"
        )
    with pytest.raises(properties.PropertyViolation, match="differs from the reference"):
        properties.check_reference_agreement(backend, STAGES["pool"], buggy, feature_map, "float64")


def test_fourth_root_fails_square_root_property(backend, covariance_batch):
    buggy = buggy_layer(backend, "fourth_root")
    with pytest.raises(properties.PropertyViolation, match="square root is applied twice"):
        properties.check_square_root(backend, buggy, covariance_batch, "float64", STAGES["sqrtm"])
    with pytest.raises(properties.PropertyViolation, match="differs from the reference"):
        properties.check_reference_agreement(
            backend, STAGES["sqrtm"], buggy, covariance_batch, "float64", gradient=False
        )


def test_fixed_batch_size_fails_other_batch_sizes(backend, feature_map):
    buggy = buggy_layer(backend, "fixed_batch_size")
    # At the batch size it was written for, the layer is right: only other sizes expose it.
    properties.check_reference_agreement(backend, STAGES["pool"], buggy, feature_map, "float64")
    with pytest.raises(properties.PropertyViolation, match="fails on batch size 1"):
        properties.check_batch_consistency(backend, STAGES["pool"], buggy, feature_map, "float64")


@pytest.mark.parametrize("name", ["pool", "sqrtm"])
def test_our_layers_pass_the_same_checks(backend, name, feature_map, covariance_batch):
    spec = STAGES[name]
    x = feature_map if name == "pool" else covariance_batch
    fn = spec.implementation(backend)
    properties.check_reference_agreement(backend, spec, fn, x, "float64")
    properties.check_per_sample_independence(backend, spec, fn, x, "float64")
    properties.check_batch_consistency(backend, spec, fn, x, "float64")
    if name == "sqrtm":
        properties.check_square_root(backend, fn, x, "float64", spec)


def test_the_readme_explains_every_bug_of_the_question():
    """The README's table of the question's bugs carries the one numbering of founding_question."""
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    for bug in founding_question.BUGS:
        assert f"| {bug.number} | `{bug.key}` |" in readme, bug.key
