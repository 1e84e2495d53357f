"""What the benchmark suites measure: sqrtm method variants, sizes per profile, the headline cell.

Profiles trade coverage for time (the default CPU run must fit in about 15 minutes on 2 cores;
each run records how long it took in its results file, and BENCHMARKS.md prints it):

- ``dry-run``: tiny sizes, one round each; exercises every code path in seconds (harness test,
  ``bench/gpu.sh --dry-run``).
- ``quick``: only the headline cell (C = 512, B = 8; float32 and float64) and the anchors there.
- ``default``: on the CPU every (C, B) whose work B * C^3 is at most the headline cell's, so all of
  C in {64, 128, 256, 512} x B in {1, 8, 32} except C = 512, B = 32; on a GPU all of them.
  float64 only at the headline cell, and there only eigh and 10 Newton-Schulz iterations.
- ``full``: every (C, B), float64 everywhere with every count, longer timing.
"""

import dataclasses
import shlex
from typing import Any

from impls.auto_table import CANDIDATES
from reference.conventions import (
    DEFAULT_MINIMAX_BACKWARD,
    DEFAULT_MINIMAX_ITERATIONS,
    DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    DEFAULT_SQRTM_METHOD,
    NEWTON_SCHULZ_BACKWARDS,
)

PROFILES = ("dry-run", "quick", "default", "full")

#: Both errors (forward and backward, relative Frobenius, worst sample) a method must reach to be
#: a candidate for method="auto".
ACCURACY_TARGET = 1e-3

#: Newton-Schulz iteration counts tried when searching the fewest that reach ACCURACY_TARGET.
MAX_SEARCHED_ITERATIONS = 40


#: Short test-id prefixes of the iterative methods.
_ITERATIVE_IDS = {"newton_schulz": "ns", "minimax_newton_schulz": "minimax"}


@dataclasses.dataclass(frozen=True)
class SqrtmVariant:
    """One way to take the matrix square root: a method plus, for Newton-Schulz, its settings.

    `compute_dtype` (e.g. "float64") casts the input up and the root back down around the call:
    what an exact method costs when float32 round-off is not accurate enough.
    """

    method: str
    num_iters: int | None = None
    backward: str | None = None
    compute_dtype: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of `impls.<framework>.sqrtm`; unset ones keep the library default."""
        options: dict[str, Any] = {"method": self.method}
        if self.num_iters is not None:
            options["num_iters"] = self.num_iters
        if self.backward is not None:
            options["backward"] = self.backward
        return options

    @property
    def label(self) -> str:
        if self.method in _ITERATIVE_IDS and self.num_iters is not None:
            name = f"{self.method}({self.num_iters})"
            name += "" if self.backward is None else f"/{self.backward}"
        elif self.method == "eigh":
            name = "eigh"
        else:
            name = f"{self.method} (library defaults)"
        return name if self.compute_dtype is None else f"{name} in {self.compute_dtype}"

    @property
    def test_id(self) -> str:
        if self.method in _ITERATIVE_IDS and self.num_iters is not None:
            name = f"{_ITERATIVE_IDS[self.method]}{self.num_iters}"
            name += "" if self.backward is None else f"-{self.backward}"
        else:
            name = self.method
        return name if self.compute_dtype is None else f"{name}-{self.compute_dtype}"

    def with_iterations(self, num_iters: int) -> "SqrtmVariant":
        return dataclasses.replace(self, num_iters=num_iters)

    def info(self) -> dict[str, Any]:
        """The benchmark's extra_info entries that describe the method."""
        return {
            "method": self.method,
            "method_label": self.label,
            "num_iters": self.num_iters,
            "backward": self.backward,
            "compute_dtype": self.compute_dtype,
        }


@dataclasses.dataclass(frozen=True)
class NotRun:
    """A benchmark that did not run, and why (a results file's "not_run" entries)."""

    #: pytest's node id.
    test: str
    group: str
    #: What the benchmark would have recorded (pytest-benchmark's extra_info).
    extra_info: dict[str, Any]
    reason: str


EIGH = SqrtmVariant("eigh")
#: Lin & Maji's setting: 5 coupled iterations, backward by the sign iteration.
AUTHORS_VARIANT = SqrtmVariant("newton_schulz", 5, "newton_schulz")
#: The minimax root at its defaults, timed in every cell beside the classic iteration.
MINIMAX = SqrtmVariant(
    "minimax_newton_schulz", DEFAULT_MINIMAX_ITERATIONS, DEFAULT_MINIMAX_BACKWARD
)
#: sqrtm as users call it, without options; timed at the headline cell when it is not eigh.
DEFAULT_VARIANT = EIGH if DEFAULT_SQRTM_METHOD == "eigh" else SqrtmVariant(DEFAULT_SQRTM_METHOD)


def candidate_variant(candidate: str) -> SqrtmVariant:
    """The variant that runs auto's `candidate` (impls.auto_table.CANDIDATES) as auto runs it:
    float64 eigh casts the input up and the root (and, through autodiff of the cast, the
    gradient) back down."""
    method, eigh_dtype = CANDIDATES[candidate]
    return SqrtmVariant(method, compute_dtype=eigh_dtype)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One input size and precision: a batch of `batch` (C x C) covariances, C = `channels`."""

    channels: int
    batch: int
    dtype: str = "float32"

    @property
    def test_id(self) -> str:
        return f"C{self.channels}-B{self.batch}-{self.dtype}"

    @property
    def label(self) -> str:
        return f"C={self.channels}, B={self.batch}, {self.dtype}"

    def info(self) -> dict[str, Any]:
        """The benchmark's extra_info entries that describe the size."""
        return {"channels": self.channels, "batch": self.batch, "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    channels: tuple[int, ...]
    batches: tuple[int, ...]
    headline: Cell
    #: Which (C, B) run: "headline" (that cell only), "affordable" (B * C^3 at most the
    #: headline's) or "all".
    sizes: str
    #: Where float64 runs as well: "headline" or "all".
    float64_sizes: str
    #: Newton-Schulz iteration counts timed in every cell.
    iterations: tuple[int, ...]
    #: Extra counts timed at the headline cell only, for the speed/accuracy curve.
    headline_iterations: tuple[int, ...]
    #: Counts timed in float64 cells (float64 costs twice float32 on a CPU: fewer there).
    float64_iterations: tuple[int, ...]
    #: Seconds of timed rounds per benchmark; a slow case still gets `min_rounds` rounds.
    time_per_case: float
    min_rounds: int
    #: Feature-map side (H = W) of the head benchmarks; 28 is VGG-16 relu5_3 at 448 x 448.
    feature_side: int
    #: Image sides of the VGG-16 and small-model training steps.
    vgg_image_side: int
    small_image_side: int
    #: Square size of the matmul-rate measurement (the GPU floor).
    matmul_size: int

    def _runs(self, cell: Cell) -> bool:
        if cell.dtype == "float64" and self.float64_sizes == "headline":
            return cell == dataclasses.replace(self.headline, dtype="float64")
        if self.sizes == "headline":
            return cell.channels == self.headline.channels and cell.batch == self.headline.batch
        if self.sizes == "affordable":
            return cell.batch * cell.channels**3 <= self.headline.batch * self.headline.channels**3
        return True

    def sqrtm_cells(self) -> list[Cell]:
        """The (C, B, dtype) cells of the sqrtm grid."""
        candidates = [
            Cell(channels, batch, dtype)
            for dtype in ("float32", "float64")
            for channels in self.channels
            for batch in self.batches
        ]
        return [cell for cell in candidates if self._runs(cell)]

    def anchor_cells(self) -> list[Cell]:
        """Cells of the SciPy, tf.linalg.sqrtm and naive-eigh anchors: the C sweep at the headline
        batch, float32 (SciPy works in float64 whatever it is given)."""
        return [
            cell
            for cell in self.sqrtm_cells()
            if cell.dtype == "float32" and cell.batch == self.headline.batch
        ]

    def iterations_for(self, cell: Cell) -> tuple[int, ...]:
        if cell.dtype == "float64":
            return self.float64_iterations
        extra = self.headline_iterations if cell == self.headline else ()
        return tuple(sorted(set(self.iterations) | set(extra)))

    def _default_variant(self, cell: Cell) -> list[SqrtmVariant]:
        return [DEFAULT_VARIANT] if DEFAULT_VARIANT != EIGH and cell == self.headline else []

    def forward_variants(self, cell: Cell) -> list[SqrtmVariant]:
        """Forward passes do not depend on the backward choice: one per method and count."""
        newton_schulz = [SqrtmVariant("newton_schulz", k) for k in self.iterations_for(cell)]
        minimax = dataclasses.replace(MINIMAX, backward=None)
        return [EIGH, *newton_schulz, minimax, *self._default_variant(cell)]

    def forward_backward_variants(self, cell: Cell) -> list[SqrtmVariant]:
        newton_schulz = [
            SqrtmVariant("newton_schulz", k, backward)
            for k in self.iterations_for(cell)
            for backward in NEWTON_SCHULZ_BACKWARDS
        ]
        return [EIGH, *newton_schulz, MINIMAX, *self._default_variant(cell)]

    def head_variants(self) -> list[SqrtmVariant]:
        """eigh, the authors' setting, and each backward at the largest count of the grid."""
        newton_schulz = [
            SqrtmVariant("newton_schulz", max(self.iterations), backward)
            for backward in NEWTON_SCHULZ_BACKWARDS
        ]
        return [EIGH, AUTHORS_VARIANT, *newton_schulz]


_FULL_SIZE: dict[str, Any] = dict(
    channels=(64, 128, 256, 512),
    batches=(1, 8, 32),
    headline=Cell(512, 8),
    iterations=(5, 10),
    # The project's default count, for the speed/accuracy curve.
    headline_iterations=(DEFAULT_NEWTON_SCHULZ_ITERATIONS,),
    float64_iterations=(10,),
    feature_side=28,
    vgg_image_side=448,
    small_image_side=64,
    matmul_size=8192,
)

_DRY_RUN = Profile(
    name="dry-run",
    channels=(8, 16),
    batches=(2,),
    headline=Cell(16, 2),
    sizes="all",
    float64_sizes="headline",
    iterations=(2,),
    headline_iterations=(3,),
    float64_iterations=(2,),
    time_per_case=0.0,
    min_rounds=1,
    feature_side=4,
    vgg_image_side=32,
    small_image_side=16,
    matmul_size=64,
)


def get_profile(name: str, device: str) -> Profile:
    """The profile `name` for `device`: on a GPU every size is cheap, so "default" runs them all."""
    if name == "dry-run":
        return _DRY_RUN
    if name == "quick":
        settings: dict[str, Any] = dict(sizes="headline", time_per_case=0.2, min_rounds=3)
    elif name == "default" and device == "cpu":
        settings = dict(sizes="affordable", time_per_case=0.2, min_rounds=3)
    elif name == "default":
        settings = dict(sizes="all", time_per_case=0.3, min_rounds=5)
    elif name == "full":
        return Profile(
            name=name,
            sizes="all",
            float64_sizes="all",
            time_per_case=1.0,
            min_rounds=5,
            **{**_FULL_SIZE, "float64_iterations": _FULL_SIZE["iterations"]},
        )
    else:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}")
    return Profile(name=name, float64_sizes="headline", **settings, **_FULL_SIZE)


def run_command(profile: str, device: str) -> str:
    """The command that runs profile `profile` on `device` and writes results/."""
    flags = [] if profile == "default" else [f"--{profile}"]
    device_flags = [] if device == "cpu" else ["--device", device]
    return shlex.join(["python", "-m", "bench.run", *device_flags, *flags])
