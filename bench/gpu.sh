#!/usr/bin/env bash
# The GPU benchmark suite: torch only (no TensorFlow, nothing downloaded or installed), every
# sqrtm size and method, IBP head, VGG-16 + IBP training step at 448x448, and the card's matmul
# rate (float32 and TF32) that the report uses as the floor of the Newton-Schulz timings.
# Meant to fit in 8 minutes on a datacenter GPU; the JSON records how long it took.
#
#   bench/gpu.sh             # needs CUDA; writes $OUT/bench-cuda.json (results/ when OUT is unset)
#   bench/gpu.sh --dry-run   # same code paths, tiny sizes, on the CPU when there is no GPU
#
# Then, on any machine with the JSON in results/: python -m bench.report
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

start=$SECONDS
PYTHONUNBUFFERED=1 "$python" -m bench.run --device cuda "${mode[@]}" --output "$output"
echo "GPU suite took $((SECONDS - start)) s; results in $output"
