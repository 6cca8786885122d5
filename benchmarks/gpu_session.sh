#!/usr/bin/env bash
# One device session for the kernels (issue 15): GPU kernel tests with the fixed configs, then the
# target rows (and the search config sweep). Run from the repository root (or its copy) on the
# GPU machine; results go to $OUT (default ./gpu_out). Needs only torch, triton, pytest, hypothesis.
# SDIM_ONLY=1: just the SDIM kernel tests and `--targets --sdim` (both table paths, the packed-config
# sweep, bf16 history; about 1-2 minutes).
set -uo pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
TESTS="tests/kernels/test_triton_topk.py tests/kernels/test_triton_sdim.py tests/kernels/test_triton_simhash.py
       tests/kernels/test_triton_configs.py"
BENCH="--targets ${SWEEP:+--sweep} --out $OUT/kernels_h200.json"
if [ -n "${SDIM_ONLY:-}" ]; then
    TESTS=tests/kernels/test_triton_sdim.py
    BENCH="--targets --sdim --out $OUT/kernels_h200_sdim.json"
fi
t0=$(date +%s)
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider $TESTS \
    --durations=8 2>&1 | tee "$OUT/tests.log" | tail -25
echo "tests: rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/tests.log"
t0=$(date +%s)
timeout ${BENCH_TIMEOUT:-330} python3 -m benchmarks.kernels $BENCH \
    2>&1 | tee "$OUT/bench.log" | grep -v "^  " | tail -60
echo "bench: rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s"
