"""The typed records of the accuracy reproduction: what a model's answers show, one epoch of a run,
a finished run, a results file (its envelope, the settings that make two files comparable, its
runs and data sets), and a run's place in the training loop (what a checkpoint's loop.json
holds).

Each record reads and writes the JSON of the results files and checkpoints (`to_json`,
`from_json`); a file that does not hold what a record needs raises RecordError, which names the
key.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Any


class RecordError(ValueError):
    """A results file or checkpoint that does not hold the record it should (a missing key, a
    value of the wrong type)."""


def _field(data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise RecordError(f"expected an object, found {type(data).__name__}")
    if key not in data:
        raise RecordError(f"no {key!r}")
    return data[key]


@dataclass(frozen=True)
class Answers:
    """What a model's answers on the test set show about how it decides, in batches of the
    question's 16 (`training.answer_statistics`):
    - unanimous_batches: share of batches in which every sample gets the same answer (a model
      that sees one feature vector per batch can do nothing else);
    - batch_majority_answers: share of samples answered with their batch's most frequent class;
    - majority_class_answers: share of samples answered with the training set's most frequent
      class (what a model that learned only the class prior answers);
    - batch_majority_ceiling: the best accuracy of one answer per batch."""

    unanimous_batches: float
    batch_majority_answers: float
    majority_class_answers: float
    batch_majority_ceiling: float

    @classmethod
    def from_json(cls, data: Any) -> "Answers":
        return cls(**{name: float(_field(data, name)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Epoch:
    epoch: int
    #: the stage's optimizer (configurations.Stage.optimizer)
    stage: str
    #: None where the epoch diverged
    train_loss: float | None
    train_accuracy: float
    test_accuracy: float

    @classmethod
    def from_json(cls, data: Any) -> "Epoch":
        loss = _field(data, "train_loss")
        return cls(
            int(_field(data, "epoch")),
            str(_field(data, "stage")),
            None if loss is None else float(loss),
            float(_field(data, "train_accuracy")),
            float(_field(data, "test_accuracy")),
        )


@dataclass(frozen=True)
class Run:
    """One trained configuration: its test accuracy after the last epoch and how it got there."""

    framework: str
    dataset: str
    config: str
    seed: int
    test_accuracy: float
    #: the share of the test set's most frequent class
    chance_rate: float
    test_samples: int
    batch_size: int
    epochs: int
    #: the epoch whose loss or gradient was not finite (the run stopped there), or None
    diverged_at_epoch: int | None
    seconds: float
    answers: Answers
    #: the answers before training (the question's set-up only), or None
    initial_answers: Answers | None
    history: tuple[Epoch, ...] = field(default_factory=tuple)

    @property
    def diverged(self) -> bool:
        return self.diverged_at_epoch is not None

    @property
    def key(self) -> tuple[str, str, str]:
        """What a run is a seed of: (data set, framework, configuration)."""
        return self.dataset, self.framework, self.config

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, default_seed: int | None = None) -> "Run":
        """`default_seed`: the seed of results written before runs recorded their own."""
        seed = data.get("seed", default_seed) if isinstance(data, dict) else None
        if seed is None:
            raise RecordError("no 'seed'")
        initial = _field(data, "initial_answers")
        diverged = _field(data, "diverged_at_epoch")
        try:
            return cls(
                framework=str(_field(data, "framework")),
                dataset=str(_field(data, "dataset")),
                config=str(_field(data, "config")),
                seed=int(seed),
                test_accuracy=float(_field(data, "test_accuracy")),
                chance_rate=float(_field(data, "chance_rate")),
                test_samples=int(_field(data, "test_samples")),
                batch_size=int(_field(data, "batch_size")),
                epochs=int(_field(data, "epochs")),
                diverged_at_epoch=None if diverged is None else int(diverged),
                seconds=float(_field(data, "seconds")),
                answers=Answers.from_json(_field(data, "answers")),
                initial_answers=None if initial is None else Answers.from_json(initial),
                history=tuple(Epoch.from_json(entry) for entry in _field(data, "history")),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, RecordError):
                raise
            raise RecordError(f"a value of the wrong type ({error})") from None


@dataclass
class LoopState:
    """Where a run stands in the training loop, as its checkpoint keeps it: the stage and the
    epochs done in it, the history so far, the shuffle generator's state, the answers before
    training, the epoch it diverged in, the seconds spent, and its record once it is finished."""

    #: what the checkpoint belongs to (`identity.Identity.to_json`)
    identity: dict[str, Any]
    stage: int = 0
    stage_epochs: int = 0
    history: list[Epoch] = field(default_factory=list)
    #: numpy's bit generator state (a JSON object), None before the first epoch
    shuffle_rng: dict[str, Any] | None = None
    initial_answers: Answers | None = None
    diverged_at: int | None = None
    seconds: float = 0.0
    record: Run | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "LoopState":
        initial, record = _field(data, "initial_answers"), _field(data, "record")
        diverged = _field(data, "diverged_at")
        try:
            return cls(
                identity=dict(_field(data, "identity")),
                stage=int(_field(data, "stage")),
                stage_epochs=int(_field(data, "stage_epochs")),
                history=[Epoch.from_json(entry) for entry in _field(data, "history")],
                shuffle_rng=_field(data, "shuffle_rng"),
                initial_answers=None if initial is None else Answers.from_json(initial),
                diverged_at=None if diverged is None else int(diverged),
                seconds=float(_field(data, "seconds")),
                record=None if record is None else Run.from_json(record),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, RecordError):
                raise
            raise RecordError(f"a value of the wrong type ({error})") from None


@dataclass(frozen=True)
class DatasetInfo:
    """What the results say of a data set beside its runs' numbers."""

    description: str
    num_classes: int

    @classmethod
    def from_json(cls, data: Any) -> "DatasetInfo":
        return cls(str(_field(data, "description")), int(_field(data, "num_classes")))


def head_text(head_kwargs: dict[str, Any]) -> str:
    """The IBP head's keyword arguments as one comparable text (JSON, sorted keys)."""
    return json.dumps(head_kwargs, sort_keys=True)


@dataclass(frozen=True)
class Settings:
    """The settings of a results file that change what its runs compute, and so whether two
    files' verdicts are comparable (the seed is not among them: a verdict must not depend on it).
    The names are those of `identity.Identity`, and of the options that set them."""

    epochs: int
    batch_size: int
    quick: bool
    #: None: the data set's default
    image_size: int | None
    backbone: str
    weights: str | None
    reduce_dim: int | None
    recipe: str
    #: the IBP head's keyword arguments (`head_text`)
    head: str

    @classmethod
    def from_envelope(cls, metadata: dict[str, Any]) -> "Settings":
        """Out of a results file's envelope (reproduce_accuracy.settings wrote it); files written
        before the image size was recorded used the default."""
        model = _field(metadata, "model")
        image_size, reduce_dim = metadata.get("image_size"), _field(model, "reduce_dim")
        weights, head = _field(model, "weights"), _field(model, "head_kwargs")
        try:
            return cls(
                epochs=int(_field(metadata, "epochs")),
                batch_size=int(_field(metadata, "batch_size")),
                quick=bool(_field(metadata, "quick")),
                image_size=None if image_size is None else int(image_size),
                backbone=str(_field(model, "backbone")),
                weights=None if weights is None else str(weights),
                reduce_dim=None if reduce_dim is None else int(reduce_dim),
                recipe=str(_field(model, "recipe")),
                head=head_text(dict(head)),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, RecordError):
                raise
            raise RecordError(f"a setting of the wrong type ({error})") from None


@dataclass(frozen=True)
class Results:
    """A results file of reproduce-accuracy: its envelope (impls.testing.metadata.collect), the
    runs, and the data sets they trained on, by name."""

    metadata: dict[str, Any]
    runs: tuple[Run, ...]
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings.from_envelope(self.metadata)

    def payload(self) -> dict[str, Any]:
        """What the file holds beside its envelope."""
        return {
            "runs": [run.to_json() for run in self.runs],
            "datasets": {name: asdict(info) for name, info in self.datasets.items()},
        }

    @classmethod
    def from_json(cls, metadata: dict[str, Any], data: Any) -> "Results":
        """`data`: the whole document. Files written before runs recorded their seed take it
        from the envelope; files written before data sets were recorded have none."""
        Settings.from_envelope(metadata)
        default_seed = metadata.get("seed")
        runs = _field(data, "runs")
        if not isinstance(runs, list):
            raise RecordError(f"'runs' is a {type(runs).__name__}, not a list")
        datasets = {
            str(name): DatasetInfo.from_json(info)
            for name, info in (data.get("datasets") or {}).items()
        }
        return cls(dict(metadata), tuple(Run.from_json(r, default_seed) for r in runs), datasets)
