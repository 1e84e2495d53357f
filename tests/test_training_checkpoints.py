"""Checkpoints under hostile use, each refused on one line with exit status 2 before any training:
a checkpoint of another run (every option that changes the numbers, named with both values),
damaged files (named), a checkpoint folder that cannot take files, a batch smaller than the
processes that share it; and Ctrl-C, which ends with one line and exit status 130, checkpoints
whole."""

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import reproduce_accuracy
from bench.accuracy import checkpoints, preflight
from bench.accuracy.configurations import CONFIGURATIONS
from bench.accuracy.distributed import World
from bench.accuracy.identity import SET_BY, Identity
from bench.accuracy.plan import Plan
from bench.accuracy.records import Answers, Epoch, LoopState, Run
from bench.accuracy.resume import inconsistency
from reference.contracts import IBPInputError

from .conftest import import_framework

ROOT = Path(__file__).parents[1]
#: The run whose checkpoint the cases start from: one epoch of ibp on the quick data.
BASE = [
    "--quick", "--dataset", "synthetic", "--config", "ibp", "--epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """reproduce-accuracy pins torch's threads and deterministic algorithms process-wide."""
    torch = import_framework("torch")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module", params=["torch", "tf"])
def written(request, tmp_path_factory):
    """(framework, checkpoint folder) of a finished one-epoch run."""
    framework = request.param
    import_framework("torch" if framework == "torch" else "tensorflow")
    folder = tmp_path_factory.mktemp(f"checkpoints-{framework}")
    arguments = [*BASE, "--framework", framework, "--checkpoint-dir", str(folder / "ckpt")]
    assert reproduce_accuracy.main([*arguments, "--output-dir", str(folder / "out")]) == 0
    return framework, folder / "ckpt"


def _copy(written, tmp_path):
    framework, source = written
    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    return framework, target


def _run(capsys, framework, checkpoint_dir, tmp_path, *arguments):
    """reproduce-accuracy on the base run's options and `arguments`; (exit status, stderr)."""
    command = [*BASE, "--framework", framework, "--checkpoint-dir", str(checkpoint_dir)]
    command += ["--output-dir", str(tmp_path / "out"), *arguments]
    try:
        status = reproduce_accuracy.main(command)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def _refused(capsys, framework, checkpoint_dir, tmp_path, *arguments):
    """The one line of a run refused before training."""
    status, error = _run(capsys, framework, checkpoint_dir, tmp_path, *arguments)
    assert status == 2, error
    assert error.count("\n") == 1 and error.startswith("reproduce-accuracy: error: "), error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    return error


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*arguments, **keywords):
        raise AssertionError("training started")

    monkeypatch.setattr(reproduce_accuracy, "run", refuse)


def test_every_part_of_the_identity_is_named_for_the_user():
    assert set(SET_BY) == set(Identity.__dataclass_fields__)


def test_the_same_options_resume_the_checkpoint(capsys, written, tmp_path):
    framework, folder = _copy(written, tmp_path)
    status, error = _run(capsys, framework, folder, tmp_path)
    assert status == 0, error
    assert (tmp_path / "out" / "accuracy.json").is_file()


def _move(folder, part, new):
    """Rename one level of the checkpoint tree (seed-0/synthetic/<framework>/ibp)."""
    for path in sorted(folder.rglob(part)):
        path.rename(path.with_name(new))
        return
    raise AssertionError(f"no {part} under {folder}")


#: (what the user changed, the checkpoint folder moved (level, new name), the options of the
#: run that finds it, what the refusal must say).
MISMATCHES = [
    ("config", ("ibp", "bilinear_no_sqrtm"), ["--config", "bilinear_no_sqrtm"],
     "--config ibp (this run: bilinear_no_sqrtm)"),
    ("image size", None, ["--image-size", "16"], "--image-size 32 (this run: 16)"),
    ("epochs", None, ["--epochs", "2"], "--epochs 1 (this run: 2)"),
    ("batch size", None, ["--batch-size", "8"], "--batch-size 16 (this run: 8)"),
    ("seed", ("seed-0", "seed-1"), ["--seed", "1"], "--seed 0 (this run: 1)"),
    ("recipe", None, ["--recipe", "paper"], "--recipe default (this run: paper)"),
    ("reduce dim", None, ["--reduce-dim", "8"], "--reduce-dim none (this run: 8)"),
    ("data set", ("synthetic", "skimage-textures"), ["--dataset", "skimage-textures"],
     "--dataset synthetic (this run: skimage-textures)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("moved", "arguments", "message"),
    [case[1:] for case in MISMATCHES],
    ids=[case[0] for case in MISMATCHES],
)
def test_a_checkpoint_of_another_run_is_refused_naming_the_option(
    capsys, written, tmp_path, no_training, moved, arguments, message
):
    framework, folder = _copy(written, tmp_path)
    if moved:
        _move(folder, *moved)
    error = _refused(capsys, framework, folder, tmp_path, *arguments)
    assert "holds a checkpoint of another run: " in error and message in error, error


def test_the_threads_in_force_are_part_of_the_identity(capsys, written, tmp_path, no_training):
    """torch takes --threads in this process: refused. TensorFlow sized its thread pools when
    this process first ran it, and keeps them: its runs would compute what the checkpoint's did,
    and the run is accepted (its training starts)."""
    framework, folder = _copy(written, tmp_path)
    if framework == "torch":
        error = _refused(capsys, framework, folder, tmp_path, "--threads", "2")
        assert "--threads 1 (this run: 2)" in error
        return
    with pytest.raises(AssertionError, match="training started"):
        _run(capsys, framework, folder, tmp_path, "--threads", "2")


def test_a_checkpoint_of_the_other_framework_is_refused(capsys, written, tmp_path, no_training):
    framework, folder = _copy(written, tmp_path)
    other = "tf" if framework == "torch" else "torch"
    import_framework("torch" if other == "torch" else "tensorflow")
    _move(folder, framework, other)
    error = _refused(capsys, other, folder, tmp_path)
    assert f"--framework {framework} (this run: {other})" in error


def test_a_checkpoint_of_other_data_sizes_is_refused(capsys, written, tmp_path, no_training):
    framework, folder = _copy(written, tmp_path)
    command = [a for a in BASE if a != "--quick"] + ["--framework", framework]
    command += ["--checkpoint-dir", str(folder), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        reproduce_accuracy.main(command)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "the training set's size (--quick) 224 (this run: 1120)" in error


def _files(folder, framework):
    """(file, what the refusal names) of the checkpoint's files: loop.json and the framework's."""
    (ibp,) = folder.rglob("ibp")
    if framework == "torch":
        return [(ibp / checkpoints.LOOP_FILE,) * 2, (ibp / "torch-state.pt",) * 2]
    prefix = ibp / "tf-state"
    return [(ibp / checkpoints.LOOP_FILE,) * 2] + [
        (path, prefix) for path in ibp.glob("tf-state.*")
    ]


DAMAGES = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "not ours": lambda data: b'{"runs": []}',
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_file_is_named(capsys, written, tmp_path, no_training, damage):
    framework = written[0]
    for index, (path, named) in enumerate(_files(written[1], framework)):
        folder = tmp_path / str(index)
        _, copy = _copy(written, folder)
        damaged = copy / path.relative_to(written[1])
        damaged.write_bytes(DAMAGES[damage](damaged.read_bytes()))
        shown = copy / named.relative_to(written[1])
        error = _refused(capsys, framework, copy, folder)
        assert f"checkpoint file {shown}: " in error, error
        assert f"remove {shown.parent} to train that configuration afresh" in error


def _unwritable(path):
    """Make a folder refuse new files: immutable for root (who ignores permissions), read-only
    for anyone else. Returns the undo."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o555)
    return lambda: path.chmod(0o755)


@pytest.mark.parametrize("where", ["a file", "under /proc", "unwritable", "unwritable run"])
def test_a_checkpoint_folder_that_takes_no_files_is_refused_before_training(
    capsys, written, tmp_path, no_training, where
):
    framework, folder = _copy(written, tmp_path)
    undo = None
    if where == "a file":
        folder = tmp_path / "a_file"
        folder.write_text("not a folder")
        expected = f"--checkpoint-dir {folder}: cannot write there"
    elif where == "under /proc":
        folder = Path("/proc/ibp-checkpoints")
        expected = f"--checkpoint-dir {folder}: cannot write there"
    elif where == "unwritable":
        folder = tmp_path / "locked"
        folder.mkdir()
        undo = _unwritable(folder)
        expected = f"--checkpoint-dir {folder}: cannot write there"
    else:
        (ibp,) = folder.rglob("ibp")
        undo = _unwritable(ibp)
        expected = f"--checkpoint-dir: cannot write checkpoints to {ibp}"
    try:
        error = _refused(capsys, framework, folder, tmp_path)
    finally:
        if undo:
            undo()
    assert expected in error, error


class _Spread:
    """The part of a runner that the batch check reads."""

    def __init__(self, name, world):
        self.name, self.world = name, world


@pytest.mark.parametrize(
    ("world", "words"),
    [
        (World(0, 3, 3, "ddp-gloo"), "3 processes"),
        (World(0, 1, 3, "mirrored"), "3 model replicas"),
    ],
)
def test_a_batch_smaller_than_the_processes_that_share_it_is_refused(world, words):
    from bench.accuracy.data import synthetic

    dataset = synthetic(0, 2, 1)
    plan = Plan(("torch",), ("synthetic",), ("ibp", "seed"), (0,), 1, 2)
    runner = _Spread("torch", world)
    with pytest.raises(IBPInputError, match=f"--batch-size 2 is smaller than the {words}"):
        preflight.check_batch_size(plan, [runner], dataset)
    # The question's set-up takes 16 per replica whatever --batch-size says; 3 samples suffice.
    for configurations, batch_size in ((("seed",), 2), (("ibp",), 3)):
        enough = Plan(("torch",), ("synthetic",), configurations, (0,), 1, batch_size)
        preflight.check_batch_size(enough, [runner], dataset)


def _environment():
    """The subprocesses' environment: without a log level of the user's, whose TensorFlow lines
    the run would show (tests/test_training_logs.py)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return environment


@pytest.mark.slow
def test_torchrun_with_more_processes_than_samples_per_batch_is_refused_up_front(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    command = [*torchrun, "3", "-m", "bench.reproduce_accuracy", *BASE, "--framework", "torch"]
    command += ["--batch-size", "2", "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(
        command, cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0
    refusal = "--batch-size 2 is smaller than the 3 processes that share each batch in torch"
    assert done.stderr.count(refusal) == 3, done.stderr  # every rank, before training
    assert "empty axis" not in done.stderr
    assert not (tmp_path / "out").exists()


def _interrupt_when(command, marker, timeout=600.0):
    """Start `command` in a process group of its own and send the group SIGINT (what Ctrl-C at a
    terminal does) once `marker` exists; (exit status, stderr)."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=_environment(), stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{marker} did not appear in {timeout} s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, error = process.communicate(timeout=120)
    return process.returncode, error


@pytest.mark.slow
@pytest.mark.parametrize("frameworks", [["torch"], ["torch", "tf"]], ids=" and ".join)
def test_ctrl_c_ends_with_one_line_and_keeps_checkpoints_whole(tmp_path, frameworks):
    """With two frameworks on two cores they train side by side in child processes: Ctrl-C
    reaches all of them, and still only the parent speaks."""
    if len(frameworks) > 1 and (os.cpu_count() or 1) < 2:
        frameworks = frameworks[:1]  # one core: one process; the case above covers it
    saved, output = tmp_path / "ckpt", tmp_path / "out"
    command = [sys.executable, "-m", "bench.reproduce_accuracy", *BASE, "--epochs", "4"]
    command += ["--framework", *frameworks, "--checkpoint-dir", str(saved)]
    command += ["--output-dir", str(output)]
    marker = saved / "seed-0" / "synthetic" / "torch" / "ibp" / checkpoints.LOOP_FILE
    status, error = _interrupt_when(command, marker)
    assert status == 130, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"reproduce-accuracy: interrupted; {output} unchanged; ")
    assert not output.exists()
    for framework in frameworks:
        run = saved / "seed-0" / "synthetic" / framework / "ibp"
        found = checkpoints.recover(run)
        if found is not None:  # a framework may not have reached its first epoch
            assert checkpoints.read_loop(found).history


# A checkpoint folder that stops taking files during the run -------------------------------------

#: Two epochs of ibp: a checkpoint after each (the recipe's two stages, one epoch each).
TWO_EPOCHS = [*BASE[:-3], "--epochs", "2", "--no-progress"]


def _refuse_second_save(monkeypatch, framework, target):
    """The runner's second save_state (after epoch 2) first makes `target(fresh folder)` refuse
    new files, then saves: the file system fails as a full or read-only one would. Returns the
    undo."""
    module = importlib.import_module(f"bench.accuracy.runner_{framework}")
    real, calls, undo = module.Runner.save_state, [], []

    def save_state(self, directory, model, optimizer):
        calls.append(directory)
        if len(calls) == 2:
            undo.append(_unwritable(target(Path(directory))))
        return real(self, directory, model, optimizer)

    monkeypatch.setattr(module.Runner, "save_state", save_state)
    return lambda: [step() for step in undo]


@pytest.mark.parametrize(
    "what",
    ["the checkpoint being filled", "the folder it is swapped into"],
)
def test_a_checkpoint_folder_that_stops_taking_files_ends_the_run_in_one_line(
    capsys, monkeypatch, tmp_path, framework_name, what
):
    """Exit status 1, one line naming the folder, no results written, the checkpoint of epoch 1
    whole; the same command then resumes from it."""
    saved, output = tmp_path / "ckpt", tmp_path / "out"
    target = (lambda fresh: fresh) if what.endswith("filled") else (lambda fresh: fresh.parent)
    undo = _refuse_second_save(monkeypatch, framework_name, target)
    command = [*TWO_EPOCHS, "--framework", framework_name, "--checkpoint-dir", str(saved)]
    command += ["--output-dir", str(output)]
    try:
        status = reproduce_accuracy.main(command)
    finally:
        undo()
    error = capsys.readouterr().err
    run = saved / "seed-0" / "synthetic" / framework_name / "ibp"
    assert status == 1, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"reproduce-accuracy: cannot write a checkpoint to {run} (")
    assert error.endswith(
        "the last checkpoint written there is whole, and the same command resumes from it; "
        f"{output} unchanged\n"
    )
    assert not output.exists()
    assert len(checkpoints.read_loop(checkpoints.recover(run)).history) == 1
    monkeypatch.undo()
    assert reproduce_accuracy.main(command) == 0
    assert checkpoints.read_loop(run).record.epochs == 2


@pytest.fixture(params=["torch", "tf"])
def framework_name(request):
    import_framework("torch" if request.param == "torch" else "tensorflow")
    return request.param


def test_a_full_disk_while_saving_is_an_os_error(tmp_path, framework_name):
    """What checkpoints.write turns into one line: torch's writer reports a full disk as a
    RuntimeError about stream positions, TensorFlow's as its own error types."""
    from bench.accuracy.data import synthetic
    from bench.accuracy.plan import make_runners, model_options

    plan = Plan((framework_name,), ("synthetic",), ("ibp",), (0,), 1, 16, device="cpu")
    (runner,) = make_runners(plan)
    configuration = CONFIGURATIONS["ibp"]
    model = runner.build_model(configuration, synthetic(0, 2, 1), model_options())
    optimizer = runner.optimizer(model, configuration.stages(2)[0])
    if framework_name == "torch":
        (tmp_path / "torch-state.pt").symlink_to("/dev/full")  # every write: ENOSPC
        with pytest.raises(OSError) as raised:
            runner.save_state(tmp_path, model, optimizer)
        assert raised.value.errno == errno.ENOSPC
        return
    undo = _unwritable(tmp_path)
    try:
        with pytest.raises(OSError, match="TensorFlow's PermissionDeniedError"):
            runner.save_state(tmp_path, model, optimizer)
    finally:
        undo()


# A loop.json whose place in the loop does not add up --------------------------------------------


def _identity():
    return Identity(
        framework="torch", dataset="synthetic", config="ibp", seed=0, epochs=4, batch_size=16,
        image_size=32, train_samples=224, test_samples=112, data="0" * 16, backbone="small",
        weights=None, reduce_dim=None, recipe="default", head="{}", device="cpu", threads="1",
        processes=1, replicas=1,
    )  # fmt: skip


def _record(config="ibp", seed=0, epochs=4):
    answers = Answers(0.0, 0.5, 0.1, 0.3)
    return Run(
        framework="torch", dataset="synthetic", config=config, seed=seed, test_accuracy=0.9,
        chance_rate=1 / 7, test_samples=112, batch_size=16, epochs=epochs,
        diverged_at_epoch=None, seconds=1.0, answers=answers, initial_answers=None,
        history=_history(epochs),
    )  # fmt: skip


def _history(epochs):
    return tuple(Epoch(e + 1, "recipe_1", 1.0, 0.5, 0.5) for e in range(epochs))


def _state(stage, stage_epochs, epochs_done, **changes):
    shuffle = dict(np.random.default_rng(0).bit_generator.state)
    state = LoopState(_identity().to_json(), stage, stage_epochs, list(_history(epochs_done)))
    return replace(state, **{"shuffle_rng": shuffle, **changes})


#: ibp over 4 epochs: two stages of 2. (state, what the refusal says; None: consistent)
LOOP_STATES = {
    "after epoch 1": (_state(0, 1, 1), None),
    "after stage 1": (_state(0, 2, 2), None),
    "finished": (_state(1, 2, 4, record=_record()), None),
    "diverged in epoch 3": (_state(1, 1, 3, diverged_at=3, record=_record(epochs=3)), None),
    "stage 3 of 2": (_state(2, 1, 5), "stage 3 of a run with 2"),
    "stage -1": (_state(-1, 1, 1), "stage 0 of a run with 2"),
    "epoch 3 of a stage of 2": (_state(0, 3, 3), "epoch 3 of a stage of 2"),
    "no epoch in its stage": (_state(1, 0, 2), "epoch 0 of a stage of 2"),
    "history short": (_state(1, 1, 2), "2 epochs of history after epoch 3"),
    "history long": (_state(0, 1, 2), "2 epochs of history after epoch 1"),
    "no shuffle state": (_state(0, 1, 1, shuffle_rng=None), "shuffle generator state"),
    "another generator": (
        _state(0, 1, 1, shuffle_rng={"bit_generator": "MT19937", "state": {}}),
        "shuffle generator state",
    ),
    "diverged elsewhere": (
        _state(0, 1, 1, diverged_at=3, record=_record(epochs=1)),
        "diverged in epoch 3 but trained to epoch 1",
    ),
    "finished without record": (_state(1, 2, 4), "a finished run without its record"),
    "record unfinished": (_state(0, 1, 1, record=_record()), "a record of an unfinished run"),
    "record of another configuration": (
        _state(1, 2, 4, record=_record("first_order")),
        "the record of torch first_order seed 0",
    ),
    "record of another seed": (
        _state(1, 2, 4, record=_record(seed=1)),
        "the record of torch ibp seed 1",
    ),
}


@pytest.mark.parametrize(("state", "problem"), LOOP_STATES.values(), ids=LOOP_STATES)
def test_a_loop_state_that_does_not_add_up_is_named(state, problem):
    stages = CONFIGURATIONS["ibp"].stages(4)
    assert [stage.epochs for stage in stages] == [2, 2]
    found = inconsistency(state, stages, _identity())
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_an_inconsistent_loop_json_is_refused_before_training(
    capsys, written, tmp_path, no_training
):
    """A finished one-epoch checkpoint whose record was removed: resumed, it would train no epoch
    and have no record to return."""
    framework, folder = _copy(written, tmp_path)
    (ibp,) = folder.rglob("ibp")
    loop = json.loads((ibp / checkpoints.LOOP_FILE).read_text())
    loop["record"] = None
    (ibp / checkpoints.LOOP_FILE).write_text(json.dumps(loop))
    error = _refused(capsys, framework, folder, tmp_path)
    assert f"checkpoint file {ibp / checkpoints.LOOP_FILE}: inconsistent: a finished run" in error


def _command_with(tmp_path, sitecustomize):
    """`python -m bench.reproduce_accuracy` on the base run, with `sitecustomize` (Python code) run
    at start-up; (exit status, stderr)."""
    (tmp_path / "sitecustomize.py").write_text(sitecustomize)
    environment = {**_environment(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "bench.reproduce_accuracy", *BASE, "--framework", "torch"]
    command += ["--output-dir", str(tmp_path / "out")]
    done = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stderr


def test_ctrl_c_inside_code_made_by_exec_still_exits_130_under_python_m(tmp_path):
    """CPython (3.11) ends `python -m` by SIGINT, whatever main returns, once a KeyboardInterrupt
    has passed through exec of a string, as when Ctrl-C lands while a framework's import makes
    dataclasses. Here the first check before training raises it from such code."""
    status, error = _command_with(
        tmp_path,
        "from bench.accuracy import preflight\n"
        "def interrupted(plan):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "preflight.check_weights = interrupted\n",
    )
    assert status == 130, (status, error)
    assert error == f"reproduce-accuracy: interrupted; {tmp_path / 'out'} unchanged\n"


def test_ctrl_c_after_the_results_are_reported_changes_nothing(tmp_path):
    """The frameworks' teardown after main returns takes a while; a Ctrl-C then (sent here by
    the last exit handler to run) neither prints a traceback nor changes the exit status."""
    status, error = _command_with(
        tmp_path,
        "import atexit, os, signal, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n",
    )
    assert status == 0, error
    assert "KeyboardInterrupt" not in error and "Traceback" not in error, error
    assert (tmp_path / "out" / "accuracy.json").is_file()
