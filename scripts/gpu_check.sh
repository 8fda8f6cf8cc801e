#!/usr/bin/env bash
# The GPU checks in one go (docs/performance.md#on-a-gpu), for a machine with a CUDA GPU:
#   bash scripts/gpu_check.sh            # from the repo root, with the project's environment
# 1. the `gpu` tests: float64 population members against single runs on cuda, trainer=gpu runs
#    in 32-true and bf16-mixed; 2. a population's member-samples/s at K = 1, 64, 512 against the
#    raw loop, fp32 and bf16-mixed; 3. `make bench` on cuda. Figures go to $OUT (outputs/gpu).
set -euo pipefail
out=${OUT:-outputs/gpu}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_population.py tests/test_devices.py \
    2>&1 | tee "$out/gpu-tests.txt"
for precision in 32-true bf16-mixed; do
    "$py" scripts/bench.py population --device cuda --precision "$precision" \
        --sizes 1 64 512 --rounds 3 --steps 200 --out "$out/population-$precision"
done
"$py" scripts/bench.py --device cuda --reps 3 --out "$out/bench"
