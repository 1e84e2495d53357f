"""One `backend` fixture for every framework in the registry, hypothesis profiles, and a summary
of how many tests ran on each framework."""

import collections
import importlib
import os
from types import ModuleType

import pytest

from impls.backends import BACKENDS
from impls.testing.sandbox import Sandbox
from impls.testing.strategies import PROFILE_VARIABLE, load_profile

load_profile()

#: Comma-separated frameworks that must be installed (CI sets "torch,tf"): a missing one is an
#: error instead of a skip, so a broken install cannot pass as a green run.
REQUIRED = {name for name in os.environ.get("IBP_REQUIRE_BACKENDS", "").split(",") if name}

_outcomes: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)


_BACKEND_OF_PACKAGE = {"tensorflow": "tf", "keras": "tf", "torch": "torch"}


def import_framework(package: str) -> ModuleType:
    """The framework module `package` ("torch", "tensorflow" or "keras"), or a skip when it is
    missing, or a failure when IBP_REQUIRE_BACKENDS names it: the one way tests ask for a framework,
    so that a broken install can never pass as a run of skips. Usable at module level."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        if _BACKEND_OF_PACKAGE.get(package) in REQUIRED:
            pytest.fail(
                f"{package} is required (IBP_REQUIRE_BACKENDS) but cannot be imported: {error}",
                pytrace=False,
            )
        pytest.skip(f"{package} is not installed", allow_module_level=True)


@pytest.fixture(params=sorted(BACKENDS), ids=str, scope="session")
def backend(request):
    chosen = BACKENDS[request.param]
    import_framework(chosen.package)
    return chosen


def pytest_collection_modifyitems(items):
    # user_properties travel with reports, also from pytest-xdist workers to the summary.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "backend" in callspec.params:
            item.user_properties.append(("framework", callspec.params["backend"]))


def pytest_runtest_logreport(report):
    framework = dict(report.user_properties).get("framework")
    if framework and (report.when == "call" or report.outcome != "passed"):
        _outcomes[framework][report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    profile = os.environ.get(PROFILE_VARIABLE, "dev")
    terminalreporter.section(f"tests per framework (hypothesis profile: {profile})")
    for framework, counts in sorted(_outcomes.items()):
        line = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        terminalreporter.line(f"{framework}: {line}")


@pytest.fixture(scope="module")
def sandboxes():
    """One child process per framework for the module: TensorFlow's import is paid once."""
    opened = {}
    yield lambda name: opened.setdefault(name, Sandbox())
    for sandbox in opened.values():
        sandbox.close()
