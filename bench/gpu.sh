#!/usr/bin/env bash
# The GPU benchmark suite: torch only (no TensorFlow, nothing downloaded or installed), every
# sqrtm size and method (the classic and the minimax Newton-Schulz root included), IBP head,
# VGG-16 + IBP training step at 448x448, and the card's matmul rate (float32 and TF32) that the
# report uses as the floor of the Newton-Schulz timings; then `auto`'s measured table for cuda
# (choices and accuracy ranges).
# Meant to fit in 10 minutes on a datacenter GPU; the JSONs record how long each part took.
#
#   bench/gpu.sh             # needs CUDA; writes into $OUT (results/ when OUT is unset):
#                            #   bench-cuda.json, BENCHMARKS.md and plots (with the committed
#                            #   products.json beside them: product counts are the same on every
#                            #   device), auto_table.json (the committed table plus the cuda
#                            #   rows and ranges; without OUT, impls/auto_table.json itself),
#                            #   condition_range.json and auto.md
#   bench/gpu.sh --dry-run   # same code paths, tiny sizes, on the CPU when there is no GPU
#
# Then, in the repository: copy bench-cuda.json and condition_range.json into results/ and
# auto_table.json over impls/auto_table.json, and run `python -m bench.report --document docs/benchmarks.md`
# and `python -m bench.measure_auto --render` (re-renders results/auto.md and the block in docs/roots.md).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [[ -x .venv/bin/python && -z ${PYTHON:-} ]]; then
    python=.venv/bin/python
fi

mode=()
case "${1:-}" in
    --dry-run) mode=(--dry-run) ;;
    "") ;;
    *) echo "usage: bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac

if [[ -n ${OUT:-} ]]; then
    output=$OUT
elif [[ ${#mode[@]} -gt 0 ]]; then
    output=$(mktemp -d -t ibp-gpu-dry-run-XXXXXX)
else
    output=results
fi

"$python" - "${mode[@]}" <<'PYTHON'
import importlib.util
import sys

import torch

missing = [m for m in ("pytest", "pytest_benchmark", "scipy") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry them; nothing is installed)")
if not torch.cuda.is_available() and "--dry-run" not in sys.argv:
    sys.exit("no CUDA device: run on a GPU machine, or pass --dry-run")
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
print(f"torch {torch.__version__} on {device}", flush=True)
PYTHON

mkdir -p "$output"
if [[ ! -e $output/products.json ]]; then
    # The report prints each method's matrix products beside its time.
    cp results/products.json "$output/"
fi
start=$SECONDS
PYTHONUNBUFFERED=1 "$python" -m bench.run --device cuda "${mode[@]}" --output "$output"
echo "GPU suite took $((SECONDS - start)) s; results in $output"

# auto's table: the committed one, with the cuda rows measured here added (or replaced).
if [[ ${#mode[@]} -gt 0 ]]; then
    # dry run: the code path, on the CPU
    auto_sizes=(--channels 8 16 --repeats 1 --conditions 1e2 1e8 --device cpu)
else
    auto_sizes=(--device cuda)
fi
if [[ $output == results ]]; then
    table=impls/auto_table.json  # in a checkout without OUT: the package's own table
else
    table=$output/auto_table.json
    [[ -e $table ]] || cp impls/auto_table.json "$table"
    # The range points of the other devices are kept beside the new ones.
    [[ -e $output/condition_range.json || ! -e results/condition_range.json ]] ||
        cp results/condition_range.json "$output/"
fi
start=$SECONDS
PYTHONUNBUFFERED=1 "$python" -m bench.measure_auto "${auto_sizes[@]}" --table "$table" \
    --output "$output"
echo "auto table took $((SECONDS - start)) s; results in $output"
