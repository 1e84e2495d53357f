"""Does the input pipeline keep up with training? Images per second of each framework's input
pipeline alone against one training step on batches already in memory, on the CPU.

    python -m bench.pipeline_speed [--batches 12] [--output results]

Two sizes: the synthetic data set's 32 x 32 images (held in memory: the pipeline only gathers
them) and 448 x 448 crops of JPEG files (the image-folder path: decode, resize, random crop and
flip, as for CUB-200-2011). The pipelines are `bench.accuracy.pipeline_torch.make_loader` (in
this process, and with worker processes) and `bench.accuracy.pipeline_tf.make_dataset`; the step
is the benchmarks' SGD step of the small backbone with the IBP head (`bench.adapters`). The
pipeline keeps up while its rate is above the step's: the ratio column says by how much.

Writes <output>/pipeline.json (with the results envelope) and <output>/pipeline.md.
"""

import argparse
import pathlib
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from impls.testing import readme_blocks
from impls.testing.metadata import collect, hardware, read_results, write_rows

DEFAULT_OUTPUT = pathlib.Path("results")
FILE_NAME = "pipeline.json"
DOCUMENT = "results/pipeline.md"
SEED = 0
#: (image side, batch): the synthetic data's size at reproduce-accuracy's batch, and the paper's
#: crops at a batch small enough that a CPU step takes seconds, not minutes (rates are per image).
SIZES = ((32, 16), (448, 4))
#: Side of the JPEG files the 448 crops are taken from (CUB-200-2011's images are about 500 px).
SOURCE_SIDE = (500, 375)
#: Worker processes of the torch loader beside the in-process one.
TORCH_WORKERS = 2
#: Untimed steps first: TensorFlow traces its step, and torch's first steps on a CPU run several
#: times slower than later ones (allocator and kernel caches filling).
WARM_UP_STEPS = 2


def _images_per_second(batches: Iterable[Any], batch: int) -> float:
    """Steady-state rate of an iterable of batches: the first batch (start-up) is not counted."""
    iterator = iter(batches)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _ in iterator:
        count += batch
    return count / (time.perf_counter() - start)


def _step_images_per_second(step: Callable[[], Any], batch: int, repeats: int) -> float:
    """Batch over the median time of `repeats` steps, after WARM_UP_STEPS untimed ones."""
    for _ in range(WARM_UP_STEPS):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def _jpeg_folder(root: pathlib.Path, count: int, rng: np.random.Generator) -> None:
    """`count` smooth random colour images per class in two class folders, as JPEG files."""
    from PIL import Image

    width, height = SOURCE_SIDE
    for name in ("a", "b"):
        (root / name).mkdir()
        for index in range(count):
            coarse = rng.random((height // 25, width // 25, 3))
            image = Image.fromarray(np.uint8(255 * coarse)).resize((width, height))
            image.save(root / name / f"{index:03d}.jpg", quality=90)


def _split(side: int, images_needed: int, scratch: pathlib.Path) -> Any:
    from bench.accuracy import data, image_folders

    if side == 32:
        return data.synthetic(SEED).train
    rng = np.random.default_rng(SEED)
    # Two classes; one image in five goes to the test split.
    _jpeg_folder(scratch, images_needed // 2 * 5 // 4 + 1, rng)
    return image_folders.image_folder(scratch, side).train


def measure(num_batches: int, repeats: int) -> list[dict[str, Any]]:
    from bench.adapters import adapter_for
    from impls.backends import available_backends

    rows = []
    for side, batch in SIZES:
        with tempfile.TemporaryDirectory(prefix="ibp-pipeline-") as scratch:
            split = _split(side, num_batches * batch, pathlib.Path(scratch))
            order = np.random.default_rng(SEED).permutation(len(split))
            batches = [order[i * batch : (i + 1) * batch] for i in range(num_batches)]
            images = split.load(batches[0])  # channels-last floats in [0, 1]
            labels = np.asarray(split.labels[batches[0]])
            for backend in available_backends():
                adapter = adapter_for(backend, "cpu")
                step = adapter.model_train_step(
                    "small",
                    backend.feature_map(images, "float32", adapter.device, "channels_last"),
                    adapter.labels(labels),
                )
                step_rate = _step_images_per_second(step, batch, repeats)
                for pipeline, loader in _pipelines(backend.name, split, batches):
                    rate = _images_per_second(loader, batch)
                    rows.append(
                        {
                            "framework": backend.name,
                            "image_side": side,
                            "batch": batch,
                            "pipeline": pipeline,
                            "pipeline_images_per_second": round(rate, 1),
                            "step_images_per_second": round(step_rate, 2),
                        }
                    )
    return rows


def _pipelines(
    framework: str, split: Any, batches: list[np.ndarray]
) -> list[tuple[str, Iterable[Any]]]:
    if framework == "torch":
        from bench.accuracy.pipeline_torch import make_loader

        return [
            (f"make_loader(workers={workers})", make_loader(split, batches, SEED, workers=workers))
            for workers in (0, TORCH_WORKERS)
        ]
    from bench.accuracy.pipeline_tf import make_dataset

    return [("make_dataset", make_dataset(split, batches, SEED))]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| framework | images | pipeline | pipeline (images/s) | training step (images/s) "
        "| pipeline / step |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        side, pipeline_rate = row["image_side"], row["pipeline_images_per_second"]
        ratio = pipeline_rate / row["step_images_per_second"]
        lines.append(
            f"| {row['framework']} | {side}x{side}, batch {row['batch']} | `{row['pipeline']}` "
            f"| {pipeline_rate:.1f} | {row['step_images_per_second']:.2f} | {ratio:.0f}x |"
        )
    return "\n".join(lines)


def render(path: pathlib.Path) -> str:
    """results/pipeline.md from the results file `path` alone."""
    metadata, document = read_results(path)
    load = ", ".join(f"{x:.1f}" for x in metadata["load_average_at_end"] or [])
    return (
        "# Input pipeline against training step\n\n"
        f"{readme_blocks.provenance(metadata)}\n\n"
        "Images per second of the input pipeline alone (steady state: the first batch, start-up, "
        "is not counted) and of one SGD step of the small backbone with the IBP head on a batch "
        f"already in memory: {metadata['num_batches']} batches per pipeline; for the step, the "
        f"median of {metadata['repeats']} timed steps after {metadata['warm_up_steps']} untimed "
        f"ones. {hardware(metadata)}, load average {load or 'unknown'} at the end (a shared "
        "machine slows both columns). 32x32: the synthetic images, in memory. 448x448: random "
        f"crops and flips of {SOURCE_SIDE[0]}x{SOURCE_SIDE[1]} JPEG files, decoded per batch. "
        "A ratio above 1 means the pipeline keeps up.\n\n" + markdown_table(document["rows"]) + "\n"
    )


@readme_blocks.register_document(DOCUMENT)
def committed_document(root: pathlib.Path) -> str:
    return render(root / "results" / FILE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batches", type=int, default=12, help="batches per pipeline (>= 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps (>= 1)")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    if arguments.batches < 2 or arguments.repeats < 1:
        parser.error("--batches must be at least 2 and --repeats at least 1")
    start = time.monotonic()
    rows = measure(arguments.batches, arguments.repeats)
    metadata = collect(
        "cpu",
        "pipeline",
        command=shlex.join(["python", "-m", "bench.pipeline_speed", *argv]),
        wall_seconds=time.monotonic() - start,
        seed=SEED,
        num_batches=arguments.batches,
        repeats=arguments.repeats,
        warm_up_steps=WARM_UP_STEPS,
    )
    path = write_rows(arguments.output, FILE_NAME, metadata, rows, (DOCUMENT, render))
    print(markdown_table(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
