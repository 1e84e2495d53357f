"""Options, parametrisation and shared fixtures of the benchmark suites (run them through
`python -m bench.run`, which sets the options and writes the results JSON and report)."""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from bench import cases
from bench.adapters import adapter_for, benchmarked_backends
from bench.inputs import Inputs
from impls.backends import get_backend
from impls.testing import metadata

#: A case whose single call takes longer than this gets 2 timed rounds, not the profile's minimum:
#: the spread of a multi-second call on an idle machine is small, and the CPU budget is not.
SLOW_CALL_SECONDS = 2.0
MAX_ROUNDS = 500


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ibp benchmarks")
    group.addoption("--bench-profile", default="default", choices=cases.PROFILES)
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"))
    group.addoption(
        "--bench-memory-limit-gib",
        type=float,
        default=2.0,
        help="largest estimated allocation an anchor may attempt (tf.linalg.sqrtm's gradient)",
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class Suite:
    """What this session benchmarks: the profile, and the device asked for and the one used."""

    def __init__(self, config: pytest.Config) -> None:
        self.device = config.getoption("--bench-device")
        self.profile = cases.get_profile(config.getoption("--bench-profile"), self.device)
        self.memory_limit_bytes = config.getoption("--bench-memory-limit-gib") * 2**30
        self.simulated = self.device == "cuda" and not _cuda_available()
        if self.simulated and self.profile.name != "dry-run":
            raise pytest.UsageError("--bench-device cuda needs CUDA (only a dry run goes without)")
        # A simulated GPU suite runs the same code with torch on the CPU.
        self.framework_device = "cpu" if self.simulated else self.device
        self.backends = benchmarked_backends(self.device)
        self.not_run: list[cases.NotRun] = []
        self.load_average_at_start = metadata.load_average()

    def adapter(self, backend_name: str) -> Any:
        return adapter_for(get_backend(backend_name), self.framework_device)


#: Where the session's Suite lives on pytest's config.
SUITE = pytest.StashKey["Suite"]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SUITE] = Suite(config)


def _ids(values: list[Any]) -> list[str]:
    return [value.test_id for value in values]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    suite = metafunc.config.stash[SUITE]
    profile = suite.profile
    names = metafunc.fixturenames
    if "backend_name" in names:
        backend_names = [backend.name for backend in suite.backends]
        metafunc.parametrize("backend_name", backend_names, ids=str)
    if "forward_case" in names:
        pairs = [(c, v) for c in profile.sqrtm_cells() for v in profile.forward_variants(c)]
        metafunc.parametrize(
            "forward_case", pairs, ids=[f"{c.test_id}-{v.test_id}" for c, v in pairs]
        )
    if "forward_backward_case" in names:
        pairs = [
            (c, v) for c in profile.sqrtm_cells() for v in profile.forward_backward_variants(c)
        ]
        metafunc.parametrize(
            "forward_backward_case", pairs, ids=[f"{c.test_id}-{v.test_id}" for c, v in pairs]
        )
    if "anchor_cell" in names:
        anchor_cells = profile.anchor_cells()
        metafunc.parametrize("anchor_cell", anchor_cells, ids=_ids(anchor_cells))
    if "head_variant" in names:
        variants = profile.head_variants()
        metafunc.parametrize("head_variant", variants, ids=_ids(variants))


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Suite:
    return request.config.stash[SUITE]


@pytest.fixture
def adapter(suite: Suite, backend_name: str) -> Any:
    return suite.adapter(backend_name)


@pytest.fixture(scope="session")
def inputs() -> Inputs:
    return Inputs()


@pytest.fixture
def measure(benchmark: Any, suite: Suite) -> Callable[..., Any]:
    """Time `run` with pytest-benchmark and return the result of an untimed call.

    The first call warms up (TensorFlow traces its graph, allocators and caches fill) and sizes
    the number of rounds; when it is shorter than the profile's time per case it may be mostly
    tracing, so a second call is timed for that. Rounds: enough to fill the time per case, at
    least the profile's minimum (2 for calls slower than SLOW_CALL_SECONDS), at most MAX_ROUNDS.
    `first_call`, if given, makes that first call and returns (result, more extra_info): a
    measurement that needs one instrumented call (memory) costs no extra call.
    """
    profile = suite.profile

    def timed(call: Callable[[], Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        result = call()
        return result, time.perf_counter() - start

    def run_measurement(
        run: Callable[[], Any],
        group: str,
        extra_info: dict[str, Any],
        first_call: Callable[[], tuple[Any, dict[str, Any]]] | None = None,
    ) -> Any:
        (result, first_info), seconds = timed(first_call or (lambda: (run(), {})))
        if seconds < profile.time_per_case:
            result, seconds = timed(run)
        min_rounds = profile.min_rounds
        if seconds > SLOW_CALL_SECONDS:
            min_rounds = min(min_rounds, 2)
        rounds = math.ceil(profile.time_per_case / max(seconds, 1e-9))
        rounds = min(max(rounds, min_rounds), MAX_ROUNDS)
        benchmark.group = group
        benchmark.extra_info.update(extra_info, **first_info)
        benchmark.extra_info.update(device=suite.device, profile=profile.name)
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
        return result

    return run_measurement


@pytest.fixture
def not_run(request: pytest.FixtureRequest, suite: Suite) -> Callable[..., NoReturn]:
    """Record why a benchmark did not run (it goes into the results JSON), then skip it."""

    def record(reason: str, group: str, extra_info: dict[str, Any]) -> NoReturn:
        info = {**extra_info, "device": suite.device}
        suite.not_run.append(cases.NotRun(request.node.nodeid, group, info, reason))
        pytest.skip(reason)

    return record


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    suite = config.stash[SUITE]
    output_json["ibp_metadata"] = metadata.collect(
        suite.device, suite.profile.name, simulated_device=suite.simulated
    )
    output_json["ibp_metadata"]["load_average_at_start"] = suite.load_average_at_start
    output_json["ibp_metadata"]["time_per_case_s"] = suite.profile.time_per_case
    output_json["ibp_metadata"]["min_rounds"] = suite.profile.min_rounds
    output_json["ibp_metadata"]["memory_limit_bytes"] = suite.memory_limit_bytes
    output_json["not_run"] = [dataclasses.asdict(item) for item in suite.not_run]
