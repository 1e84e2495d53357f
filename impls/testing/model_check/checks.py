"""The whole-model checks of `ibp-check model`, run in the supervised child
(`impls.testing.model_check.supervisor`) on a model built afresh for each check.

A FAIL needs evidence of the defect it names: a layer whose other samples' outputs change when one
sample changes (randomness repeated, so Dropout is not mixing), a parameter without a finite
gradient, logits that one step barely moves or blows up, a classifier input that is the same for
every sample of a batch or changes with the batch. What depends on the probe's luck (how well a
linear classifier learns the textures from the model's features) is a note with its numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.sparse

from impls.backends import get_backend
from impls.testing.check_options import ModelSettings
from impls.testing.command_line import UsageError
from impls.testing.diagnosis.explain import first_line, hard_coded_batch, numbers_in
from impls.testing.founding_question import BATCH_SIZE as PROBE_BATCH
from impls.testing.model_check import recognised
from impls.testing.model_check.located import locate_head
from impls.testing.model_check.traced_models import (
    LayerCall,
    Outputs,
    TracedModel,
    build,
    changed_last_sample,
    is_probabilities,
)
from impls.testing.textures import SYNTHETIC_NUM_CLASSES as TEXTURE_CLASSES
from impls.testing.textures import synthetic_images
from impls.testing.tolerances import UNIT_ROUNDOFF

#: The batch the first call uses; a model that fails on it is tried on the batch sizes its error
#: names, then on common ones (as the stage checks do).
FIRST_BATCH = 2
COMMON_BATCH_SIZES = (1, 3, 4, 8, 16, 32, 64)
#: Steps one may wait for the logits to move from a uniform answer to a confident one (by log K):
#: ten epochs of the question's 784 training images at batch 16. The authors' recipe needs about
#: two; a learning rate that needs more than this cannot get anywhere in a run of ordinary length.
MAX_STEPS_TO_CONFIDENT = 500
#: A step that moves the logits by more than this saturates the softmax at once and diverges.
MAX_LOGIT_STEP = 100.0
#: The learnability probe: images per class, the folds it is trained and tested on (each image is
#: tested once, by a classifier that did not see it), its steps per fold; and the batches whose
#: images are grouped anew to see whether a sample's features depend on its batch.
PROBE_PER_CLASS = 48
PROBE_FOLDS = 4
PROBE_STEPS = 300
PROBE_MOMENTUM = 0.9
REGROUPED_BATCHES = 4
#: Standard errors above the batch-majority ceiling that a learnable model's accuracy reaches
#: before the probe calls the features learnable; below it, a note, never a failure.
PROBE_MARGIN_SE = 3.0
#: Features wider than this are hashed to this many dimensions before the probe trains on them
#: (a count sketch: inner products kept within ~1/sqrt(this) relative).
PROBE_DIMENSIONS = 4096
#: The seed the random layers are set to before each of two passes compared.
RESEED = 12345


@dataclasses.dataclass
class Finding:
    """One check's verdict: `status` PASS, FAIL, NOTE or SKIP; `summary` what holds for a correct
    model; `causes` the evidence and likely causes (or, for a PASS, what was measured);
    `measurements` the numbers."""

    name: str
    status: str
    summary: str
    causes: list[str] = dataclasses.field(default_factory=list)
    measurements: dict[str, Any] = dataclasses.field(default_factory=dict)


def probe_images(model: TracedModel, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Textures (classes differ in second-order statistics only) shaped to the model's input."""
    shape = model.input_shape
    channels_first = model.framework == "torch"
    channels = shape[0] if channels_first else shape[-1]
    height, width = shape[1:] if channels_first else shape[:2]
    side = max(height, width)
    images = synthetic_images(labels % TEXTURE_CLASSES, side, rng)[:, :height, :width]
    images = images[..., np.arange(channels) % 3]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) if channels_first else images)


def _rows(outputs: Outputs) -> dict[str, np.ndarray]:
    return {"logits": outputs.logits, **outputs.extras}


class Session:
    """The target, the batch size it works at, and its layers as traced once (`probe`)."""

    def __init__(self, target: str, settings: ModelSettings) -> None:
        self.target, self.settings = target, settings
        self.model = build(target, settings)
        self.framework = self.model.framework
        self.rng = np.random.default_rng(settings.seed)

    def probe(self) -> None:
        """The first calls: the batch size the model works at, its layers' calls, the head's
        layers and the method they implement. Raises RuntimeError when it works at no batch size
        tried."""
        self.batch, self.batch_finding = self._working_batch()
        self.x = probe_images(self.model, np.arange(self.batch), self.rng)
        self.calls, self.outputs = self.model.trace(self.x)
        self.classes = self.outputs.logits.shape[-1]
        self.finite_finding = finite_outputs(self.calls, self.outputs)
        located = locate_head(self.calls, self.framework)
        if located:
            method = recognised.given(self.settings) or recognised.recognise(self.calls, located)
            located = recognised.with_method(located, method)
        self.located = located

    @property
    def finite(self) -> bool:
        return self.finite_finding.status == "PASS"

    def fresh(self) -> TracedModel:
        return build(self.target, self.settings)

    def _try(self, batch: int) -> str | None:
        x = probe_images(self.model, np.arange(batch), np.random.default_rng(self.settings.seed))
        try:
            outputs = self.model.forward(x)
        except UsageError:  # which output holds the logits: the user's to say
            raise
        except Exception as error:  # the user's model may raise anything
            return f"{type(error).__name__}: {first_line(error)}"
        for key, rows in _rows(outputs).items():
            if len(rows) != batch:
                return f"its output {key} has {len(rows)} rows for a batch of {batch}"
        return None

    def _working_batch(self) -> tuple[int, Finding]:
        name, checks = "batch sizes", "the model runs on any batch size"
        failure = self._try(FIRST_BATCH)
        if failure is None:
            return FIRST_BATCH, Finding(name, "PASS", f"{checks} (tried {FIRST_BATCH})")
        named = [n for n in numbers_in(failure) if 1 <= n <= 256 and n != FIRST_BATCH]
        for batch in dict.fromkeys([*named, *COMMON_BATCH_SIZES]):
            if batch != FIRST_BATCH and self._try(batch) is None:
                cause = f"fails on a batch of {FIRST_BATCH} ({failure}); " + hard_coded_batch(
                    batch, FIRST_BATCH
                ).replace("the layer", "the model")
                return batch, Finding(name, "FAIL", checks, [cause], {"works_at": batch})
        raise RuntimeError(f"the model fails on every batch size tried: {failure}")


def _non_finite(values: np.ndarray) -> str:
    return f"{int(np.isnan(values).sum())} NaN and {int(np.isinf(values).sum())} inf"


def finite_outputs(calls: list[LayerCall], outputs: Outputs) -> Finding:
    """Every layer's output is finite on the (finite) probe images; else the first layer that
    turns finite input into NaN or inf is named."""
    name, checks = "finite outputs", "every layer's output is finite on the probe images"
    for call in calls:
        inputs_finite = all(
            np.all(np.isfinite(a))
            for argument in call.arguments
            for a in (argument if isinstance(argument, list) else [argument])
        )
        if inputs_finite and not np.all(np.isfinite(call.output)):
            cause = (
                f"layer {call.name} ({call.kind}) returns {_non_finite(call.output)} values of "
                f"{call.output.size} on finite input of shape {call.input.shape}"
            )
            return Finding(name, "FAIL", checks, [cause], {"layer": call.path})
    for key, rows in _rows(outputs).items():
        if not np.all(np.isfinite(rows)):
            cause = (
                f"the model's output {key} holds {_non_finite(rows)} values, though every layer's "
                "output is finite: the computation in the model's own forward produces them"
            )
            return Finding(name, "FAIL", checks, [cause])
    return Finding(name, "PASS", checks)


def _relative_changes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    b = before.reshape(len(before), -1).astype(np.float64)
    a = after.reshape(len(after), -1).astype(np.float64)
    scale = np.maximum(np.linalg.norm(b, axis=1), np.finfo(np.float32).tiny)
    return np.linalg.norm(a - b, axis=1) / scale


def _rounding(call: LayerCall) -> float:
    """What reassociating a layer's sums in batched kernels may change: n u for a sum of n terms,
    n at most the layer's per-sample input size."""
    return call.input[0].size * UNIT_ROUNDOFF.get(call.dtype, UNIT_ROUNDOFF["float32"])


def _layer_change(
    model: TracedModel, call: LayerCall, training: bool
) -> tuple[float | None, str | None]:
    """(largest relative change of the other samples' outputs when the last sample changes, or
    None where the layer cannot be judged; a note why)."""
    changed = changed_last_sample(call.arguments)
    try:
        model.reseed(RESEED)
        before = model.call_layer(call.path, call.arguments, training)
        model.reseed(RESEED)
        after = model.call_layer(call.path, changed, training)
    except Exception as error:  # a layer that refuses another input is not judged here
        return None, f"{call.name} could not be called alone ({type(error).__name__})"
    if after.shape != before.shape or len(before) < 2:
        return None, None
    if not (np.all(np.isfinite(before)) and np.all(np.isfinite(after))):
        return None, None  # named by "finite outputs", never as mixing
    change = float(_relative_changes(before[:-1], after[:-1]).max())
    if change > _rounding(call) and training:
        model.reseed(RESEED)
        again = model.call_layer(call.path, call.arguments, training)
        if float(_relative_changes(before, again).max()) > _rounding(call):
            return None, (
                f"{call.name} ({call.kind}) draws random numbers that reseeding does not repeat: "
                "not judged in training mode (it was in inference mode)"
            )
    return change, None


def _model_change(model: TracedModel, x: np.ndarray, training: bool) -> float | None:
    """The largest relative change of the other samples' outputs of the whole model."""
    model.reseed(RESEED)
    before = _rows(model.forward(x, training))
    model.reseed(RESEED)
    after = _rows(model.forward(changed_last_sample((x,))[0], training))
    if not all(np.all(np.isfinite(v)) for v in (*before.values(), *after.values())):
        return None
    return max(float(_relative_changes(before[k][:-1], after[k][:-1]).max()) for k in before)


def independence(session: Session, training: bool) -> Finding:
    """Each layer on its own traced input, with the last sample changed and the random numbers
    repeated: the other samples' outputs stay as they were, up to rounding. Then the whole model,
    which also covers what its forward computes outside layers."""
    mode = "training" if training else "inference"
    name = f"per-sample independence ({mode} mode)"
    model = session.fresh()
    model.reseed(RESEED)
    calls, _ = model.trace(session.x, training=training)
    mixing: list[tuple[str, str, float]] = []
    notes: list[str] = []
    largest = 0.0
    for call in calls:
        if any(
            call.path.startswith(path + ".") or call.path.startswith(path + "/")
            for path, _, _ in mixing
        ):
            continue  # a module holding a layer already named mixes through it
        change, note = _layer_change(model, call, training)
        notes += [note] if note else []
        if change is None:
            continue
        if change <= _rounding(call):
            largest = max(largest, change)
            continue
        if call.batch_dependent and training:
            notes.append(
                f"{call.name} ({call.kind}) mixes samples in training mode through its batch "
                "statistics, as a BatchNorm does by design"
            )
            continue
        mixing.append(
            (call.path, f"{call.name} ({call.kind}): relative change {change:.2g}", _rounding(call))
        )
    batch_statistics = training and any(call.batch_dependent for call in calls)
    whole = None if batch_statistics else _model_change(model, session.x, training)
    allowed = session.x[0].size * UNIT_ROUNDOFF["float32"] * 10
    checks = "changing one sample leaves every other sample's output unchanged, layer by layer"
    measurements: dict[str, Any] = {"largest_change": largest, "model_change": whole}
    if not mixing and (whole is None or whole <= allowed):
        return Finding(name, "PASS", checks, notes, measurements)
    if not mixing:
        cause = (
            f"the model's outputs mix samples (relative change {whole:.2g} of the other samples' "
            "outputs when one sample changes), though no layer alone does: a computation in the "
            "model's forward, outside its layers, runs over the batch"
        )
        return Finding(name, "FAIL", checks, [cause, *notes], measurements)
    (_, first, allowed_first), *others = mixing
    cause = (
        f"layer {first} mixes samples: the output of every other sample changes when one "
        f"sample changes (allowed: rounding, {allowed_first:.1g} at most); each sample's features "
        "then depend on the rest of its batch, so a model can give at most one answer per batch"
    )
    causes = [cause] + [f"also mixes samples: {text}" for _, text, _ in others] + notes
    measurements["mixing_layers"] = [
        next(c.name for c in calls if c.path == path) for path, _, _ in mixing
    ]
    return Finding(name, "FAIL", checks, causes, measurements)


def gradient_flow(session: Session) -> Finding:
    model = session.fresh()
    labels = np.arange(session.batch) % session.classes
    grads, of_extras = model.gradients(session.x, labels)
    frozen = model.frozen()
    problems, dead, extra_only = [], [], []
    for name, grad in grads.items():
        reaches_extras = of_extras.get(name) is not None and np.any(of_extras[name])
        if grad is None or (not np.any(grad) and reaches_extras):
            if reaches_extras:
                extra_only.append(name)
            else:
                problems.append(f"{name} gets no gradient (it does not reach the loss)")
        elif not np.all(np.isfinite(grad)):
            problems.append(f"{name} gets a non-finite gradient ({_non_finite(grad)})")
        elif not np.any(grad):
            problems.append(f"{name} gets a zero gradient")
        elif grad.ndim >= 2:
            axis = 0 if session.framework == "torch" else grad.ndim - 1
            rows = np.moveaxis(grad, axis, 0).reshape(grad.shape[axis], -1)
            zero = int(np.sum(~np.any(rows, axis=1)))
            if zero:
                dead.append(f"{name}: {zero} of {len(rows)} output channels get zero gradient")
    causes = problems[:]
    if any("non-finite" in p for p in problems):
        causes += _svd_causes(session)
    notes = [f"frozen (not trained): {', '.join(frozen) if frozen else 'nothing'}"]
    notes += [f"dead channels, {text}" for text in dead]
    if extra_only:
        notes.append(
            f"reach only the model's other outputs, not the logits: {', '.join(extra_only)}"
        )
    checks = "every trainable parameter gets a finite, non-zero gradient on realistic input"
    measurements = {"frozen": frozen, "trainable": sorted(grads)}
    return Finding(
        "gradient flow", "FAIL" if problems else "PASS", checks, causes + notes, measurements
    )


def _svd_causes(session: Session) -> list[str]:
    """The located square-root layer's own gradient on its traced input, where it is not finite:
    autodiff through an SVD or eigh divides by differences of eigenvalues."""
    backend = get_backend(session.framework)
    causes = []
    for located in session.located:
        if located.stage not in ("sqrtm", "head", "pool+sqrtm"):
            continue
        call = next(c for c in session.calls if c.path == located.path)
        fn = session.model.layer_function(located.path)
        native = (
            backend.fw.convert_to_tensor(call.input)
            if session.framework == "tf"
            else backend.fw.from_numpy(np.ascontiguousarray(call.input))
        )
        _, (grad,) = backend.value_and_vjp(fn, [native], np.ones_like(call.output))
        if not np.all(np.isfinite(grad)):
            causes.append(
                f"the gradient of {located.name} (the matrix square root) is not finite on its own "
                "input: autodiff through eigh/svd divides by differences of eigenvalues, infinite "
                "where two are equal; use the Lyapunov backward (impls' sqrtm)"
            )
    return causes


def _logits(model: TracedModel, x: np.ndarray) -> np.ndarray:
    """Logits up to a constant per sample (log-probabilities where the model ends in a softmax:
    the softmax sees nothing else), in training mode with the random numbers repeated: so that
    only the optimizer's step moves them, not the running statistics a BatchNorm gathered in it."""
    model.reseed(RESEED)
    out = model.forward(x, training=True).logits.astype(np.float64)
    return np.log(np.maximum(out, np.finfo(np.float64).tiny)) if is_probabilities(out) else out


def learning_rate(session: Session) -> Finding:
    name = "learning-rate scale"
    checks = "one optimizer step moves the logits far enough to learn in an ordinary run"
    model = session.fresh()
    if model.optimizer is None:
        return Finding(
            name, "SKIP", "the model has no optimizer (compile it, or return (module, optimizer))"
        )
    if not session.finite:
        return Finding(name, "SKIP", "the model's outputs are not finite (see finite outputs)")
    labels = np.arange(session.batch) % session.classes
    before = _logits(model, session.x)
    model.step(session.x, labels)
    rates = ", ".join(f"{lr:g}" for lr in model.learning_rates())
    try:
        after = _logits(model, session.x)
    except Exception as error:  # the user's model may raise anything
        cause = (
            f"after one optimizer step (learning rate {rates}) the model raises "
            f"{type(error).__name__}: {first_line(error)}; the step broke the parameters"
        )
        return Finding(name, "FAIL", checks, [cause])
    if not np.all(np.isfinite(after)):
        cause = (
            f"after one optimizer step (learning rate {rates}) the logits hold {_non_finite(after)}"
            " values: the step is far too large, or the gradient is not finite (see gradient flow)"
        )
        return Finding(name, "FAIL", checks, [cause])
    moved = after - before
    step = float(np.median(moved.max(axis=1) - moved.min(axis=1)))
    features = classifier_input(session.calls, session.outputs.logits)
    norm = float(np.median(np.linalg.norm(features.reshape(len(features), -1), axis=1)))
    target = math.log(session.classes)
    steps = target / step if step > 0 else math.inf
    said = (
        f"the classifier's logits move by {step:.2g} per step (learning rate {rates}, classifier "
        f"input norm {norm:.3g}); moving them by log({session.classes}) = {target:.2g}, from a "
        f"uniform answer to a confident one, takes about {steps:.3g} steps"
    )
    measurements = {
        "logit_step": step,
        "learning_rates": model.learning_rates(),
        "feature_norm": norm,
        "steps_to_confident": steps,
    }
    if steps > MAX_STEPS_TO_CONFIDENT:
        advice = (
            f"more than {MAX_STEPS_TO_CONFIDENT}: the learning rate is far too small for "
            f"features of this norm (an SGD step moves a linear classifier's logits by about "
            f"lr x |f|^2). The authors' recipe trains the classifier on unit-norm features with "
            f"SGD at lr 1.0, momentum 0.9, then everything with Adam (lr 1e-4, classifier 1e-2)"
        )
        return Finding(name, "FAIL", checks, [f"{said}, {advice}"], measurements)
    if step > MAX_LOGIT_STEP:
        cause = f"{said}: one step saturates the softmax; the learning rate is far too large"
        return Finding(name, "FAIL", checks, [cause], measurements)
    return Finding(name, "PASS", checks, [said], measurements)


def classifier_input(calls: list[LayerCall], logits: np.ndarray) -> np.ndarray:
    """The input of the classifier: the first layer with parameters whose output is the logits
    (a container that holds it ends later), else the last layer with parameters, else the
    logits themselves."""
    parametrised = [c for c in calls if c.parametrised]
    for call in parametrised:
        if call.output.shape == logits.shape and np.allclose(call.output, logits, rtol=1e-5):
            return call.input
    return parametrised[-1].input if parametrised else logits


class _Sketch:
    """A count sketch of wide features to PROBE_DIMENSIONS: each coordinate added, with a random
    sign, to one random bucket; norms and inner products are kept in expectation, within about
    1/sqrt(PROBE_DIMENSIONS) relative. Features no wider are kept as they are."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.matrix: scipy.sparse.csr_matrix | None = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        width = features.shape[1]
        if width <= PROBE_DIMENSIONS:
            return features
        if self.matrix is None:
            rng = np.random.default_rng(self.seed)
            buckets = rng.integers(0, PROBE_DIMENSIONS, width)
            signs = rng.choice([-1.0, 1.0], width)
            self.matrix = scipy.sparse.csr_matrix(
                (signs, (np.arange(width), buckets)), shape=(width, PROBE_DIMENSIONS)
            )
        return np.asarray(self.matrix.T @ features.T).T


def _features(model: TracedModel, images: np.ndarray, batch: int, sketch: _Sketch) -> np.ndarray:
    """The classifier's input, batch by batch as given, flattened per sample (and sketched)."""
    chunks = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        calls, outputs = model.trace(x)
        features = classifier_input(calls, outputs.logits).reshape(len(x), -1)
        chunks.append(sketch(features.astype(np.float64)))
    return np.concatenate(chunks)


def learnability(session: Session) -> Finding:
    """The classifier's input on probe textures, batch by batch as the model computes it: the
    same images grouped into other batches must give the same features, and the samples of a
    batch must differ (else the model gives one answer per batch). Then a linear classifier
    trained on those features, at a step normalised by their norm (the learning rate plays no
    part): how well does it tell the textures apart, against one answer per batch?"""
    name, checks = "learnability", "a classifier on the model's features beats one answer per batch"
    if not session.finite:
        return Finding(name, "SKIP", "the model's outputs are not finite (see finite outputs)")
    classes = min(session.classes, TEXTURE_CLASSES)
    # The question's batch, unless the model only works at its own.
    batch = session.batch if session.batch_finding.status == "FAIL" else PROBE_BATCH
    rng = np.random.default_rng([session.settings.seed, 1])
    count = classes * PROBE_PER_CLASS // batch * batch
    labels = rng.permutation(np.repeat(np.arange(classes), PROBE_PER_CLASS))[:count]
    model = session.fresh()
    images = probe_images(model, labels, rng)
    sketch = _Sketch(session.settings.seed)
    features = _features(model, images, batch, sketch)
    regrouping = rng.permutation(min(count, REGROUPED_BATCHES * batch))
    regrouped = _features(model, images[regrouping], batch, sketch)[np.argsort(regrouping)]
    rounding = images[0].size * UNIT_ROUNDOFF["float32"]
    batch_change = float(_relative_changes(features[: len(regrouped)], regrouped).max())
    within = max(
        float(_relative_changes(np.broadcast_to(part[:1], part.shape), part).max())
        for part in np.split(features, count // batch)
    )
    probe = _probe_accuracy(features, labels, classes, batch)
    measurements = {
        **probe,
        "batch_change": batch_change,
        "within_batch_spread": within,
        "rounding": rounding,
    }
    said = (
        f"test accuracy {probe['accuracy']:.0%} ({PROBE_FOLDS} folds of {count} images, "
        f"{PROBE_STEPS} steps each) on {classes} texture classes; chance {probe['chance']:.0%}, "
        f"batch-majority ceiling {probe['batch_majority_ceiling']:.0%} (the best a model giving "
        f"one answer per batch of {batch} can do)"
    )
    causes = []
    if within <= rounding:
        across = float(
            _relative_changes(np.broadcast_to(features[:1], features.shape), features).max()
        )
        causes.append(
            f"the classifier's input is the same for every sample of a batch (largest difference "
            f"within a batch {within:.1g}, rounding {rounding:.1g}): the model gives one answer "
            f"per batch, and its accuracy cannot pass the batch-majority ceiling; {said}"
            if across > rounding
            else "the classifier's input is the same for every image: the features do not depend "
            f"on the image; {said}"
        )
    if batch_change > rounding:
        causes.append(
            f"a sample's features change when it is grouped into another batch (relative change "
            f"{batch_change:.2g}, rounding {rounding:.1g}): the model's answer for an image "
            "depends on the rest of its batch"
        )
    if causes:
        return Finding(name, "FAIL", checks, causes, measurements)
    if probe["accuracy"] >= probe["bar"]:
        return Finding(
            name, "PASS", checks, [f"{said}; a PASS needs {probe['bar']:.0%}"], measurements
        )
    note = (
        f"{said}: below the {probe['bar']:.0%} that would show the classes learnable in "
        f"{PROBE_STEPS} steps ({PROBE_MARGIN_SE:g} standard errors above the ceiling), though each "
        "sample gets its own features and the batch does not change them. Features that carry "
        "little of the textures (a frozen random backbone, a small input) learn slowly here; this "
        "is not a defect the checker can name"
    )
    return Finding(name, "NOTE", checks, [note], measurements)


def _probe_accuracy(
    features: np.ndarray, labels: np.ndarray, classes: int, batch: int
) -> dict[str, float]:
    """Accuracy of the linear probe over PROBE_FOLDS folds (each image tested once), with the
    chance rate, the batch-majority ceiling and the bar a learnable model clears."""
    folds = np.arange(len(labels)) * PROBE_FOLDS // len(labels)
    correct = 0
    for fold in range(PROBE_FOLDS):
        train, test = folds != fold, folds == fold
        weights = _train_linear(features[train], labels[train], classes, batch)
        scores = np.hstack([features[test], np.ones((int(test.sum()), 1))]) @ weights
        correct += int(np.sum(scores.argmax(axis=1) == labels[test]))
    accuracy = correct / len(labels)
    counts = [
        np.bincount(labels[i : i + batch], minlength=classes).max()
        for i in range(0, len(labels), batch)
    ]
    ceiling = float(np.sum(counts) / len(labels))
    chance = float(np.bincount(labels).max() / len(labels))
    bar = ceiling + PROBE_MARGIN_SE * math.sqrt(ceiling * (1 - ceiling) / len(labels))
    return {
        "accuracy": accuracy,
        "chance": chance,
        "batch_majority_ceiling": ceiling,
        "bar": bar,
        "steps": PROBE_STEPS,
        "test_images": len(labels),
    }


def _train_linear(features: np.ndarray, labels: np.ndarray, classes: int, batch: int) -> np.ndarray:
    """Softmax regression by SGD with momentum over the batches as given, step 1 / |f|^2."""
    x = np.hstack([features, np.ones((len(features), 1))])
    step = 1.0 / max(float(np.mean(np.sum(x * x, axis=1))), np.finfo(np.float64).tiny)
    weights, velocity = np.zeros((x.shape[1], classes)), np.zeros((x.shape[1], classes))
    starts = range(0, len(x), batch)
    for i in range(PROBE_STEPS):
        start = starts[i % len(starts)]
        xb, yb = x[start : start + batch], labels[start : start + batch]
        scores = xb @ weights
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1.0
        velocity = PROBE_MOMENTUM * velocity - step * xb.T @ p / len(yb)
        weights += velocity
    return weights
