"""Everything about a run that can be checked before training is checked here, before training:
the data, the weights file, the batch size against the question's full batches and the number of
processes, that each framework builds the model, that every checkpoint to resume belongs to this
run and loads, that the checkpoint folder and the output folder take files. Each problem is one
IBPInputError (one line, exit status 2 on the command line).
"""

from pathlib import Path

from bench.accuracy.configurations import CONFIGURATIONS, Configuration
from bench.accuracy.data import Dataset
from bench.accuracy.interface import TrainingRunner
from bench.accuracy.plan import Plan, configurations_for, jobs
from bench.accuracy.resume import checkpoint_directory, saved_state
from bench.accuracy.training import trains_a_backbone_for_others
from reference.contracts import IBPInputError


def check_weights(plan: Plan) -> None:
    weights = plan.model.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise IBPInputError(f"--weights {weights}: no such file (or use imagenet)")


def check_full_batches(plan: Plan, dataset: Dataset) -> None:
    """The question's layers run on full batches of 16 only: a split with fewer samples would
    give it nothing to train or evaluate on."""
    for configuration in configurations_for(plan, dataset):
        if not configuration.needs_full_batches:
            continue
        needed = configuration.batch_size(plan.batch_size)
        for split_name in ("train", "test"):
            count = len(getattr(dataset, split_name))
            if count < needed:
                raise IBPInputError(
                    f"--config {configuration.name} runs on full batches of {needed} only (the "
                    f"question's layers hard-code it), but {dataset.name} has {count} {split_name} "
                    "images"
                )


def check_batch_size(plan: Plan, runners: list[TrainingRunner], dataset: Dataset) -> None:
    """Every process (and every model replica) needs a sample of each batch to step on."""
    for runner in runners:
        replicas = runner.world.replicas
        for configuration in configurations_for(plan, dataset):
            if configuration.needs_full_batches or plan.batch_size >= replicas:
                continue
            raise IBPInputError(
                f"--batch-size {plan.batch_size} is smaller than the {replicas} "
                f"{'processes' if runner.world.processes == replicas else 'model replicas'} that "
                f"share each batch in {runner.name} (--config {configuration.name}); each needs "
                f"a sample: use --batch-size {replicas} or more"
            )


def check_models(plan: Plan, runners: list[TrainingRunner], datasets: list[Dataset]) -> None:
    """Build each framework's first model once, so that bad --weights (a missing file, ImageNet
    weights that a framework does not offer) fail now, not after the other framework trained."""
    for runner in runners:
        for dataset in datasets:
            configuration = configurations_for(plan, dataset)[0]
            try:
                runner.build_model(configuration, dataset, plan.model)
            except (ValueError, OSError) as error:
                raise IBPInputError(
                    f"cannot build the {plan.model.backbone} model in {runner.name}: {error}"
                ) from None


def _probe(folder: Path) -> None:
    """Create `folder` (and its parents) and a file in it. Raises OSError."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".probe"
    probe.write_bytes(b"")
    probe.unlink()


def _with_sources(configurations: list[Configuration]) -> list[Configuration]:
    """The configurations and those whose trained backbone they start from."""
    sources = [CONFIGURATIONS[c.pretrained_by] for c in configurations if c.pretrained_by]
    return list({c.name: c for c in [*sources, *configurations]}.values())


def check_checkpoints(
    plan: Plan, seed: int, runners: list[TrainingRunner], datasets: list[Dataset]
) -> None:
    """Every checkpoint this seed would write can be written, and every one it would resume
    belongs to this run (its identity) and loads (loop.json and the framework's files)."""
    if plan.checkpoint_dir is None:
        return
    options = plan.options(seed)
    pairs = {(d.name, r.name): (d, r) for d, r, _ in jobs(plan, runners, datasets)}
    for dataset, runner in pairs.values():
        for configuration in _with_sources(configurations_for(plan, dataset)):
            directory = checkpoint_directory(options, runner, dataset, configuration)
            assert directory is not None  # plan.checkpoint_dir is set
            if runner.world.is_chief:
                _check_writable(directory)
            state = saved_state(runner, configuration, dataset, options, plan.model)
            needs_weights = state is not None and (
                state.record is None or trains_a_backbone_for_others(configuration)
            )
            if state is not None and needs_weights:
                model = runner.build_model(configuration, dataset, plan.model)
                stage = configuration.stages(plan.epochs)[state.stage]
                optimizer = runner.optimizer(model, stage)
                runner.load_state(directory, model, optimizer)


def _check_writable(directory: Path) -> None:
    """The folder a checkpoint is swapped into takes files, and so does an existing checkpoint
    (the swap moves it aside and removes it)."""
    try:
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is not a folder")
        _probe(directory.parent)
        if directory.exists():
            _probe(directory)
    except OSError as error:
        raise IBPInputError(
            f"--checkpoint-dir: cannot write checkpoints to {directory} ({error.strerror or error})"
        ) from None


def check_checkpoint_dir(plan: Plan, is_chief: bool) -> None:
    """The checkpoint folder itself: a file, a folder under /proc or an immutable one are found
    here, not after the first epoch."""
    if plan.checkpoint_dir is None or not is_chief:
        return
    try:
        if plan.checkpoint_dir.exists() and not plan.checkpoint_dir.is_dir():
            raise NotADirectoryError(f"{plan.checkpoint_dir} is not a folder")
        _probe(plan.checkpoint_dir)
    except OSError as error:
        raise IBPInputError(
            f"--checkpoint-dir {plan.checkpoint_dir}: cannot write there "
            f"({error.strerror or error})"
        ) from None
