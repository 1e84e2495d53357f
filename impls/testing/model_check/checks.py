"""The whole-model checks of `ibp-check model`, run in the supervised child
(`impls.testing.model_check.supervisor`) on a model built afresh for each check."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bench.accuracy.data import synthetic_images
from impls.backends import get_backend
from impls.testing.diagnosis.explain import hard_coded_batch, numbers_in
from impls.testing.founding_question import BATCH_SIZE as PROBE_BATCH
from impls.testing.founding_question import NUM_CLASSES as TEXTURE_CLASSES
from impls.testing.model_check.frameworks import LayerCall, build, is_probabilities
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
#: The learnability probe: images per class in its training and test sets, and its steps.
PROBE_TRAIN_PER_CLASS = 48
PROBE_TEST_PER_CLASS = 32
PROBE_STEPS = 300
PROBE_MOMENTUM = 0.9
#: Standard errors above the batch-majority ceiling that a learnable model must reach.
PROBE_MARGIN_SE = 3.0


@dataclasses.dataclass
class Finding:
    name: str
    status: str  # PASS, FAIL, NOTE or SKIP
    summary: str
    causes: list[str] = dataclasses.field(default_factory=list)
    measurements: dict[str, Any] = dataclasses.field(default_factory=dict)


def probe_images(model: Any, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Textures (classes differ in second-order statistics only) shaped to the model's input."""
    shape = model.input_shape
    channels_first = model.framework == "torch"
    channels = shape[0] if channels_first else shape[-1]
    height, width = shape[1:] if channels_first else shape[:2]
    side = max(height, width)
    images = synthetic_images(labels % TEXTURE_CLASSES, side, rng)[:, :height, :width]
    images = images[..., np.arange(channels) % 3]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) if channels_first else images)


class Session:
    """The target, the batch size it works at, and its layers as traced once (`probe`)."""

    def __init__(self, target: str, framework: str | None, input_shape: Any, seed: int) -> None:
        self.target, self.input_shape, self.seed = target, input_shape, seed
        self.model = build(target, framework, input_shape, seed)
        self.framework = self.model.framework
        self.rng = np.random.default_rng(seed)

    def probe(self) -> None:
        """The first calls: the batch size the model works at, and its layers' calls. Raises
        RuntimeError when it works at no batch size tried."""
        self.batch, self.batch_finding = self._working_batch()
        self.x = probe_images(self.model, np.arange(self.batch), self.rng)
        self.calls = self.model.trace(self.x)
        self.classes = self.calls[-1].output.shape[-1]

    def fresh(self) -> Any:
        return build(self.target, self.framework, self.input_shape, self.seed)

    def _try(self, batch: int) -> str | None:
        x = probe_images(self.model, np.arange(batch), np.random.default_rng(self.seed))
        try:
            out = self.model.forward(x)
        except Exception as error:  # the user's model may raise anything
            return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        if len(out) != batch:
            return f"it returns {len(out)} rows for a batch of {batch}"
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


def _relative_changes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    b = before.reshape(len(before), -1).astype(np.float64)
    a = after.reshape(len(after), -1).astype(np.float64)
    scale = np.maximum(np.linalg.norm(b, axis=1), np.finfo(np.float32).tiny)
    return np.linalg.norm(a - b, axis=1) / scale


def independence(session: Session, training: bool) -> Finding:
    """Each layer on its own traced input, with the last sample changed: the other samples'
    outputs stay as they were, up to the reassociation of float32 sums in batched kernels
    (n u for a sum of n terms, n at most the layer's per-sample input size)."""
    mode = "training" if training else "inference"
    name = f"per-sample independence ({mode} mode)"
    model = session.fresh()
    calls = model.trace(session.x, training=training)
    mixing: list[tuple[str, str]] = []
    notes: list[str] = []
    largest = allowed_first = 0.0
    for call in calls:
        if any(other.startswith(call.name + ".") for other, _ in mixing):
            continue  # a module holding a layer already named mixes through it
        changed = call.input.copy()
        changed[-1] = 2.0 * call.input[-1] + call.input[0]
        try:
            after = model.call_layer(call.name, changed, training)
            before = model.call_layer(call.name, call.input, training)
        except Exception as error:  # a layer that refuses another input is not judged here
            notes.append(f"{call.name} could not be called alone ({type(error).__name__})")
            continue
        if after.shape != before.shape:
            continue
        change = float(_relative_changes(before[:-1], after[:-1]).max())
        allowed = call.input[0].size * UNIT_ROUNDOFF["float32"]
        if change <= allowed:
            largest = max(largest, change)
            continue
        if call.batch_dependent and training:
            notes.append(
                f"{call.name} ({call.kind}) mixes samples in training mode through its batch "
                "statistics, as a BatchNorm does by design"
            )
            continue
        mixing.append((call.name, f"{call.name} ({call.kind}): relative change {change:.2g}"))
        allowed_first = allowed if len(mixing) == 1 else allowed_first
    checks = "changing one sample leaves every other sample's output unchanged, layer by layer"
    if not mixing:
        return Finding(name, "PASS", checks, notes, {"largest_change": largest})
    first, *others = mixing
    cause = (
        f"layer {first[1]} mixes samples: the output of every other sample changes when one "
        f"sample changes (allowed: rounding, {allowed_first:.1g} "
        "at most); each sample's features then depend on the rest of its batch, so a model can "
        "give at most one answer per batch"
    )
    causes = [cause] + [f"also mixes samples: {text}" for _, text in others] + notes
    return Finding(name, "FAIL", checks, causes, {"mixing_layers": [n for n, _ in mixing]})


def _scaled_copy(call: LayerCall) -> bool:
    """The output is the input times one positive number per sample or per batch (an L2)."""
    x = call.input.reshape(len(call.input), -1).astype(np.float64)
    y = call.output.reshape(len(call.output), -1).astype(np.float64)
    if x.shape != y.shape or not np.any(x):
        return False
    ratio = np.einsum("bi,bi->b", x, y) / np.maximum(np.einsum("bi,bi->b", x, x), 1e-300)
    return bool(np.all(ratio > 0) and np.allclose(y, ratio[:, None] * x, rtol=1e-3, atol=1e-7))


def _signed_square_root(call: LayerCall) -> bool:
    x, y = call.input.astype(np.float64), call.output.astype(np.float64)
    if x.shape != y.shape:
        return False
    large = np.abs(x) > 1e-2 * np.abs(x).max()
    ratio = np.abs(y[large]) / np.sqrt(np.abs(x[large]))
    same_sign = np.all(np.sign(y[large]) == np.sign(x[large]))
    return bool(large.any() and same_sign and np.allclose(ratio, 1.0, rtol=0.1))


def _reshaped(call: LayerCall) -> bool:
    return call.input.size == call.output.size and np.array_equal(
        call.input.ravel(), call.output.ravel()
    )


def locate_head(session: Session) -> list[tuple[str, str]]:
    """(layer, stage) of the IBP head's layers, from their inputs and outputs: a feature map to
    (B, C, C) or (B, C*C) is the pooling (or, unit-norm, the whole head); after it, a reshape is
    skipped, sign(x) sqrt|x| is the signed square root, a rescaling the L2 normalisation, and
    another (B, C, C) -> (B, C, C) map the matrix square root."""
    channel_axis = 1 if session.framework == "torch" else -1
    located: list[tuple[str, str]] = []
    for call in session.calls:
        if call.input.ndim == 4 and not located:
            c, b = call.input.shape[channel_axis], len(call.input)
            if call.output.shape in {(b, c, c), (b, c * c)}:
                norms = np.linalg.norm(call.output.reshape(b, -1), axis=1)
                located.append((call.name, "head" if np.allclose(norms, 1, 1e-3) else "pool"))
                if located[0][1] == "head":
                    break
            continue
        if not located or call.parametrised:
            if located:
                break
            continue
        stages = {stage for _, stage in located}
        if _reshaped(call):
            continue
        if "signed-sqrt" not in stages and _signed_square_root(call):
            located.append((call.name, "signed-sqrt"))
        elif "l2" not in stages and _scaled_copy(call):
            located.append((call.name, "l2"))
        elif (
            "sqrtm" not in stages and call.input.ndim == 3 and call.output.shape == call.input.shape
        ):
            located.append((call.name, "sqrtm"))
    return located


def gradient_flow(session: Session) -> Finding:
    model = session.fresh()
    labels = np.arange(session.batch) % session.classes
    grads = model.gradients(session.x, labels)
    frozen = model.frozen()
    problems, dead = [], []
    for name, grad in grads.items():
        if grad is None:
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
    checks = "every trainable parameter gets a finite, non-zero gradient on realistic input"
    measurements = {"frozen": frozen, "trainable": sorted(grads)}
    return Finding(
        "gradient flow", "FAIL" if problems else "PASS", checks, causes + notes, measurements
    )


def _non_finite(grad: np.ndarray) -> str:
    return f"{int(np.isnan(grad).sum())} NaN, {int(np.isinf(grad).sum())} inf"


def _svd_causes(session: Session) -> list[str]:
    """The located square-root layer's own gradient on its traced input, where it is not finite:
    autodiff through an SVD or eigh divides by differences of eigenvalues."""
    backend = get_backend(session.framework)
    causes = []
    for name, stage in locate_head(session):
        if stage not in ("sqrtm", "head"):
            continue
        call = next(c for c in session.calls if c.name == name)
        fn = session.model.layer_function(name)
        native = (
            backend.fw.convert_to_tensor(call.input)
            if session.framework == "tf"
            else (backend.fw.from_numpy(np.ascontiguousarray(call.input)))
        )
        _, (grad,) = backend.value_and_vjp(fn, [native], np.ones_like(call.output))
        if not np.all(np.isfinite(grad)):
            causes.append(
                f"the gradient of {name} (the matrix square root) is not finite on its own input: "
                "autodiff through eigh/svd divides by differences of eigenvalues, infinite where "
                "two are equal; use the Lyapunov backward (impls' sqrtm)"
            )
    return causes


def _logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits up to a constant per sample (log-probabilities where the model ends in a softmax):
    the softmax sees nothing else."""
    out = model.forward(x).astype(np.float64)
    return np.log(np.maximum(out, np.finfo(np.float64).tiny)) if is_probabilities(out) else out


def learning_rate(session: Session) -> Finding:
    name = "learning-rate scale"
    checks = "one optimizer step moves the logits far enough to learn in an ordinary run"
    model = session.fresh()
    if model.optimizer is None:
        return Finding(
            name, "SKIP", "the model has no optimizer (compile it, or return (module, optimizer))"
        )
    labels = np.arange(session.batch) % session.classes
    before = _logits(model, session.x)
    model.step(session.x, labels)
    moved = _logits(model, session.x) - before
    step = float(np.median(moved.max(axis=1) - moved.min(axis=1)))
    features = _classifier_input(session.calls)
    norm = float(np.median(np.linalg.norm(features.reshape(len(features), -1), axis=1)))
    target = math.log(session.classes)
    steps = target / step if step > 0 else math.inf
    rates = ", ".join(f"{lr:g}" for lr in model.learning_rates())
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


def _classifier_input(calls: list[LayerCall]) -> np.ndarray:
    """The input of the last layer with parameters (the classifier), or the model's output."""
    last = next((c for c in reversed(calls) if c.parametrised), None)
    return last.input if last is not None else calls[-1].output


def _features(model: Any, images: np.ndarray, batch: int) -> np.ndarray:
    chunks = [
        _classifier_input(model.trace(images[i : i + batch])) for i in range(0, len(images), batch)
    ]
    features = np.concatenate(chunks).astype(np.float64)
    return features.reshape(len(features), -1)


def learnability(session: Session) -> Finding:
    """A linear classifier trained on the model's classifier input, batch by batch as the model
    computes it, at a step normalised by the features' norm (so that the learning rate, which the
    learning-rate check judges, plays no part): how well can this model's features be learned,
    against chance and against one answer per batch?"""
    name, checks = "learnability", "a classifier on the model's features beats one answer per batch"
    classes = min(session.classes, TEXTURE_CLASSES)
    # The question's batch, unless the model only works at its own.
    batch = session.batch if session.batch_finding.status == "FAIL" else PROBE_BATCH
    rng = np.random.default_rng(session.seed + 1)
    splits, model = [], session.fresh()
    for per_class in (PROBE_TRAIN_PER_CLASS, PROBE_TEST_PER_CLASS):
        count = (classes * per_class) // batch * batch
        labels = rng.permutation(np.repeat(np.arange(classes), per_class))[:count]
        splits.append((_features(model, probe_images(model, labels, rng), batch), labels))
    (train, train_labels), (test, test_labels) = splits
    weights = _train_linear(train, train_labels, classes, batch)
    scores = np.hstack([test, np.ones((len(test), 1))]) @ weights
    accuracy = float(np.mean(scores.argmax(axis=1) == test_labels))
    counts = [
        np.bincount(test_labels[i : i + batch], minlength=classes).max()
        for i in range(0, len(test_labels), batch)
    ]
    ceiling = float(np.sum(counts) / len(test_labels))
    chance = float(np.bincount(test_labels).max() / len(test_labels))
    bar = ceiling + PROBE_MARGIN_SE * math.sqrt(ceiling * (1 - ceiling) / len(test_labels))
    said = (
        f"test accuracy {accuracy:.0%} after {PROBE_STEPS} steps on {classes} texture classes; "
        f"chance {chance:.0%}, batch-majority ceiling {ceiling:.0%} (the best a model giving one "
        f"answer per batch of {batch} can do); a PASS needs {bar:.0%}"
    )
    measurements = {
        "accuracy": accuracy,
        "chance": chance,
        "batch_majority_ceiling": ceiling,
        "steps": PROBE_STEPS,
        "test_images": len(test_labels),
    }
    if accuracy >= bar:
        return Finding(name, "PASS", checks, [said], measurements)
    plateau = (
        "no better than the batch-majority ceiling: the plateau of a model that answers each "
        "batch with one class (its features cannot tell a batch's samples apart, or carry too "
        "little of the classes)"
        if accuracy <= ceiling
        else "above the batch-majority ceiling, but not by the margin: the features carry little "
        "of the classes"
    )
    return Finding(name, "FAIL", checks, [f"{said}: {plateau}"], measurements)


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
