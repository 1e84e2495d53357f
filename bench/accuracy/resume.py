"""Where a run's checkpoint lives, what it belongs to, and the loop state a run resumes from.

The chief writes a checkpoint after every epoch (`training`, `checkpoints.write`) under
DIR/seed-<seed>/<data set>/<framework>/<config>/. A run resumes one only if it belongs to this run
(its identity, `identity.Identity`) and if its place in the loop fits this run's stages: a
loop.json whose epochs do not add up (edited by hand, or written by another version) is refused
as damaged, never resumed into a record with epochs missing or counted twice.
"""

from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy import checkpoints
from bench.accuracy.configurations import Configuration, Stage
from bench.accuracy.data import Dataset
from bench.accuracy.identity import Identity, data_digest, differences
from bench.accuracy.interface import ModelOptions, TrainingOptions, TrainingRunner
from bench.accuracy.records import LoopState, head_text
from reference.contracts import IBPInputError


def checkpoint_directory(
    options: TrainingOptions,
    runner: TrainingRunner,
    dataset: Dataset,
    configuration: Configuration,
) -> Path | None:
    """The folder of this run's checkpoint, or None without --checkpoint-dir."""
    if options.checkpoint_dir is None:
        return None
    return (
        options.checkpoint_dir
        / f"seed-{options.seed}"
        / dataset.name
        / runner.name
        / configuration.name
    )


def run_identity(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: ModelOptions,
) -> Identity:
    """What a checkpoint of this run belongs to."""
    return Identity(
        framework=runner.name,
        dataset=dataset.name,
        config=configuration.name,
        seed=options.seed,
        epochs=options.epochs,
        batch_size=configuration.batch_size(options.batch_size, runner.world.replicas),
        image_size=int(dataset.image_shape[0]),
        train_samples=len(dataset.train),
        test_samples=len(dataset.test),
        data=data_digest(dataset),
        backbone=model_options.backbone,
        weights=model_options.weights,
        reduce_dim=model_options.reduce_dim,
        recipe=model_options.recipe,
        head=head_text(model_options.head_kwargs),
        device=runner.describe_device(),
        threads=str(runner.threads),
        processes=runner.world.processes,
        replicas=runner.world.replicas,
    )


def _valid_shuffle_state(state: Any) -> bool:
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def inconsistency(state: LoopState, stages: list[Stage], identity: Identity) -> str | None:
    """What makes `state` impossible for a run of `stages` with this identity, or None. A
    checkpoint is written after an epoch: epoch `stage_epochs` (from 1) of stage `stage`; its
    record is there once the run finished or diverged, and only then."""
    if not 0 <= state.stage < len(stages):
        return f"stage {state.stage + 1} of a run with {len(stages)} stages"
    in_stage = stages[state.stage].epochs
    if not 1 <= state.stage_epochs <= in_stage:
        return f"epoch {state.stage_epochs} of a stage of {in_stage}"
    done = sum(stage.epochs for stage in stages[: state.stage]) + state.stage_epochs
    if len(state.history) != done:
        return f"{len(state.history)} epochs of history after epoch {done}"
    if not _valid_shuffle_state(state.shuffle_rng):
        return "a shuffle generator state that does not load"
    if state.diverged_at not in (None, done):
        return f"diverged in epoch {state.diverged_at} but trained to epoch {done}"
    ended = state.diverged_at is not None or done == sum(stage.epochs for stage in stages)
    if ended != (state.record is not None):
        return "a finished run without its record" if ended else "a record of an unfinished run"
    record = state.record
    expected = (identity.dataset, identity.framework, identity.config, identity.seed)
    if record is not None and (*record.key, record.seed) != expected:
        return f"the record of {record.framework} {record.config} seed {record.seed}"
    return None


def saved_state(
    runner: TrainingRunner,
    configuration: Configuration,
    dataset: Dataset,
    options: TrainingOptions,
    model_options: ModelOptions,
) -> LoopState | None:
    """The loop state of this run's newest whole checkpoint, or None to start afresh. The chief
    alone tidies what an interrupted write left; the others read after it. A checkpoint of
    another run (another identity), a damaged loop.json or one whose place in the loop does not
    fit this run raises IBPInputError."""
    directory = checkpoint_directory(options, runner, dataset, configuration)
    if directory is None:
        return None
    if runner.world.is_chief:
        checkpoints.recover(directory)
    runner.barrier()
    if not directory.exists():
        return None
    state = checkpoints.read_loop(directory)
    identity = run_identity(runner, configuration, dataset, options, model_options)
    changed = differences(state.identity, identity)
    if changed:
        raise IBPInputError(
            f"--checkpoint-dir: {directory} holds a checkpoint of another run: "
            f"{'; '.join(changed)}; resume with the same options, or use another folder"
        )
    problem = inconsistency(state, configuration.stages(options.epochs), identity)
    if problem:
        raise checkpoints.damaged(directory / checkpoints.LOOP_FILE, f"inconsistent: {problem}")
    return state
