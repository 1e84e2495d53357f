"""The frameworks trained side by side on the CPU, each in a spawned process of its own (a fresh
interpreter: no framework state is shared, and each sets its own thread pools). Their runs do not
depend on each other, so the records equal those of each framework alone (tested).

Ctrl-C belongs to the parent: the children start with SIGINT ignored (a disposition that spawn
passes on), so a Ctrl-C at the terminal, which reaches every process of the group, interrupts
the parent alone; it stops the children and reports once. A child that fails sends its exception
back, and the parent raises it.
"""

import multiprocessing
import pickle
import queue
import signal
import traceback
from dataclasses import replace
from typing import Any

from bench.accuracy.interface import TrainingRunner
from bench.accuracy.plan import Plan, load_datasets, make_runners, train_seed
from bench.accuracy.records import Run

#: How long the parent waits for a message before it looks at its children again (seconds).
_POLL = 0.5


def fits(runners: list[TrainingRunner], threads: int, cores: int) -> bool:
    """Several frameworks, each in one process on the CPU, and a core for each of them."""
    alone = all(
        runner.describe_device() == "cpu" and runner.world.processes == runner.world.replicas == 1
        for runner in runners
    )
    return len(runners) > 1 and alone and threads * len(runners) <= cores


def _child(plan: Plan, framework: str, messages: Any) -> None:
    """Every run of one framework, each announced as it ends, then ("done", runs) or ("error",
    exception)."""
    try:
        plan = replace(plan, frameworks=(framework,))
        (runner,) = make_runners(plan)
        runs = []
        for seed in plan.seeds:
            for run in train_seed(plan, seed, [runner], load_datasets(plan, seed), None):
                runs.append(run)
                messages.put(("run", framework, f"{framework} {run.dataset} {run.config}"))
        messages.put(("done", framework, runs))
    except BaseException as error:  # noqa: BLE001 (sent to the parent, which raises it)
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 (an exception that does not pickle is sent as text)
            error = RuntimeError(f"training {framework} failed:\n{traceback.format_exc()}")
        messages.put(("error", framework, error))


def train_side_by_side(plan: Plan, bar: Any) -> dict[str, list[Run]]:
    """The runs of every framework of `plan`, by framework; `bar` counts finished runs."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    children = {
        name: context.Process(target=_child, args=(plan, name, messages), name=name)
        for name in plan.frameworks
    }
    results: dict[str, list[Run]] = {}
    try:
        # Started inside the try: a Ctrl-C that arrived just before (raised on the first line
        # that runs with the handler back) or a failed start still stops the ones started.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for child in children.values():
                child.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        while len(results) < len(children):
            try:
                kind, name, payload = messages.get(timeout=_POLL)
            except queue.Empty:
                lost = [
                    name
                    for name, child in children.items()
                    if name not in results and not child.is_alive()
                ]
                if lost and messages.empty():
                    codes = ", ".join(f"{n} (exit {children[n].exitcode})" for n in lost)
                    message = f"a training process ended without its results: {codes}"
                    raise RuntimeError(message) from None
                continue
            if kind == "run":
                bar.set_postfix_str(payload)
                bar.update()
            elif kind == "done":
                results[name] = payload
            else:
                raise payload
    finally:
        for child in children.values():
            if child.pid is None:
                continue  # never started
            if child.is_alive():
                child.terminate()
            child.join()
    return results
