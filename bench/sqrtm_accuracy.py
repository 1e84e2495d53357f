"""Forward and backward error of every matrix square root against the float64 reference.

Writes results/sqrtm_accuracy.json and the README's accuracy table (between its markers):
`python -m bench.sqrtm_accuracy [--channels 64 512] [--output-dir results] [--readme README.md]`.
"""

import argparse
import json
import pathlib

from tqdm import tqdm

from impls.backends import available_backends
from impls.testing.accuracy import realistic_case, sqrtm_errors
from impls.testing.metadata import collect, replace_block
from reference.conventions import DEFAULT_EPS

METHODS = [("auto (the default)", {"method": "auto"}), ("eigh", {"method": "eigh"})] + [
    (
        f"newton_schulz x{k}, {backward} backward",
        {"method": "newton_schulz", "num_iters": k, "backward": backward},
    )
    for k in (5, 10, 20)
    for backward in ("lyapunov", "newton_schulz", "autograd")
]


def measure(channels, batch, seed):
    backends = available_backends()
    rows = []
    with tqdm(total=len(channels) * len(backends) * len(METHODS), desc="sqrtm accuracy") as bar:
        for c in channels:
            case = realistic_case(c, batch=batch, seed=seed)
            for backend in backends:
                for label, options in METHODS:
                    forward, backward = sqrtm_errors(backend, case, "float32", **options)
                    rows.append(
                        {
                            "framework": backend.name,
                            "channels": c,
                            "label": label,
                            **options,
                            "forward_error": forward,
                            "backward_error": backward,
                        }
                    )
                    bar.update()
    return rows


def markdown_table(rows):
    frameworks = sorted({r["framework"] for r in rows})
    channels = sorted({r["channels"] for r in rows})
    columns = [(f, c) for c in channels for f in frameworks]
    header = "| method | " + " | ".join(f"{f} C={c} fwd / bwd" for f, c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for label, _ in METHODS:
        cells = []
        for f, c in columns:
            (row,) = [
                r for r in rows if (r["label"], r["framework"], r["channels"]) == (label, f, c)
            ]
            cells.append(f"{row['forward_error']:.1e} / {row['backward_error']:.1e}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("results"))
    parser.add_argument(
        "--readme",
        type=pathlib.Path,
        default=pathlib.Path("README.md"),
        help="README whose table to regenerate; pass '' to leave it alone",
    )
    args = parser.parse_args(argv)

    rows = measure(args.channels, args.batch, args.seed)
    metadata = collect("cpu", "sqrtm-accuracy")
    metadata.update(
        seed=args.seed,
        batch=args.batch,
        dtype="float32",
        eps=DEFAULT_EPS,
        input="covariances of 28x28 ReLU feature maps + eps I "
        "(impls.testing.matrices.relu_covariances)",
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / "sqrtm_accuracy.json"
    path.write_text(json.dumps({"metadata": metadata, "rows": rows}, indent=2) + "\n")
    table = markdown_table(rows)
    print(table)
    if str(args.readme):
        commit = (metadata["git_commit"] or "unknown")[:12]
        provenance = f"`python -m bench.sqrtm_accuracy` at {commit}, {metadata['date_utc']}"
        replace_block(args.readme, "sqrtm-accuracy", table, provenance)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
