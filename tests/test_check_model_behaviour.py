"""The whole-model checks on small torch models: randomness is not mixing, NaN is named as NaN,
models returning tuples or dicts are checked on their logits, a located layer is called in the
form it has in the model, and learnability fails only on evidence of its defect."""

import textwrap

import numpy as np
import pytest

from impls.testing import check
from impls.testing.check_options import ModelSettings
from impls.testing.command_line import UsageError

from .conftest import import_framework

torch = import_framework("torch")

from impls.testing.model_check import checks  # noqa: E402
from impls.testing.model_check.located import LayerForm, _adapted  # noqa: E402

MODELS = """\
import torch
from torch import nn


class Halves(nn.Module):
    def forward(self, x):
        return torch.log(x - 10.0)  # NaN everywhere on non-negative input


class Pair(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.out = out

    def forward(self, x):
        features = self.body(x)
        logits = self.fc(features)
        if self.out == "tuple":
            return logits, features
        if self.out == "dict":
            return {"logits": logits, "embedding": features}
        return features, logits


def dropout():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def nan():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Halves(), nn.Flatten(), nn.Linear(144, 3))


def pair_tuple():
    return Pair("tuple")


def pair_dict():
    return Pair("dict")


def pair_two_matrices():
    return Pair("reversed")


def exploding():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    return network, torch.optim.SGD(network.parameters(), lr=1e38)
"""


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "small_models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def _session(models, name, **options):
    settings = ModelSettings.from_options(
        {"framework": "torch", "input_shape": (3, 8, 8), **options}
    )
    session = checks.Session(f"{models}:{name}", settings)
    session.probe()
    return session


def test_dropout_in_training_mode_is_not_mixing(models):
    session = _session(models, "dropout")
    assert checks.independence(session, training=True).status == "PASS"


def test_a_layer_returning_nan_is_named_as_nan_never_as_mixing(models):
    session = _session(models, "nan")
    assert session.finite_finding.status == "FAIL"
    assert "layer 2 (Halves) returns" in session.finite_finding.causes[0]
    assert "NaN" in session.finite_finding.causes[0]
    for training in (False, True):
        finding = checks.independence(session, training)
        assert "mixes samples" not in " ".join(finding.causes)
    assert checks.learnability(session).status == "SKIP"


@pytest.mark.parametrize("name", ["pair_tuple", "pair_dict"])
def test_a_model_returning_several_outputs_is_checked_on_its_logits(models, name):
    session = _session(models, name, logits=0 if name == "pair_tuple" else None)
    assert session.batch_finding.status == "PASS" and session.classes == 3
    assert checks.independence(session, training=False).status == "PASS"
    flow = checks.gradient_flow(session)
    assert flow.status == "PASS", flow.causes


def test_which_output_holds_the_logits_is_asked_when_it_cannot_be_told(models, capsys):
    with pytest.raises(UsageError, match="--logits"):
        _session(models, "pair_two_matrices")
    status = check.main(["model", f"{models}:pair_two_matrices", "--input-shape", "3,8,8"])
    assert status == 2 and "--logits" in capsys.readouterr().err


def test_logits_that_one_step_makes_infinite_are_named_so(models):
    finding = checks.learning_rate(_session(models, "exploding"))
    assert finding.status == "FAIL"
    assert "after one optimizer step (learning rate 1e+38) the logits hold" in finding.causes[0]


@pytest.mark.parametrize(
    "form, layer_input",
    [
        # (B, C, H, W) -> (B, H*W, C): a pooling of locations written for channels-last maps
        (LayerForm((6, 3), (3, 3), 3, 1, (6, 1), "float32"), lambda x: x.flatten(2).mT),
        # channels-last (B, H, W, C) in a torch model
        (LayerForm((2, 3, 3), (3, 3), 3, 2, (2, 3), "float32"), lambda x: x.permute(0, 2, 3, 1)),
    ],
)
def test_a_located_pooling_gets_its_input_in_the_models_form(form, layer_input):
    seen = []

    def layer(x):
        seen.append(x)
        return torch.zeros(x.shape[0], 9)

    x = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, *form.map_shape)
    out = _adapted(layer, "pool", form, "torch")(x)
    assert torch.equal(seen[0], layer_input(x))
    assert out.shape == (2, 3, 3)  # a flattened (B, C*C) output comes back as (B, C, C)


def test_a_located_l2_gets_the_flattened_matrices_it_gets_in_the_model():
    form = LayerForm((16,), (16,), 4, None, None, "float32")
    y = torch.rand(2, 4, 4)
    out = _adapted(lambda v: v / v.norm(dim=1, keepdim=True), "l2", form, "torch")(y)
    flat = y.reshape(2, 16)
    assert np.allclose(out.reshape(2, 16), flat / flat.norm(dim=1, keepdim=True))


@pytest.mark.slow
def test_weak_frozen_features_are_a_note_at_every_seed():
    """A frozen random backbone's features learn slowly on the probe: a note with the numbers,
    never a failure, whatever the seed."""
    target = "impls.testing.model_corpus.torch_correct:hand_written_forward"
    for seed in range(5):
        settings = ModelSettings.from_options(
            {"framework": "torch", "input_shape": (3, 32, 32), "seed": seed}
        )
        session = checks.Session(target, settings)
        session.probe()
        finding = checks.learnability(session)
        assert finding.status in ("PASS", "NOTE"), (seed, finding.causes)
        assert finding.measurements["within_batch_spread"] > finding.measurements["rounding"]
