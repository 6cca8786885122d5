#!/usr/bin/env bash
# One device session for issue 15, as one command on the GPU machine (benchmarks/README.md "GPU
# session"): GPU kernel tests, then the rows (a) DARE training step ours vs eager, (b) batched vs
# one-at-a-time HTTP scoring, (c) padded vs jagged-equivalent search, then the kernel target rows
# (and, with SWEEP=1, the search config sweep). Run from the repository root (or its copy); results
# go to $OUT (default ./gpu_out): session.log, tests.log, bench.log and one .json per benchmark.
# Needs torch, triton, pytest, hypothesis (on the image); (a) and (b) also need the wheels that
# scripts/gpu_wheels.sh puts in .whl/ (carry .whl): they are installed into /tmp/site first.
# Every step has its own timeout and fails soft; the whole session stays under SESSION_S seconds
# (default 540): the kernel rows get what the earlier steps left, at most BENCH_TIMEOUT (330).
# SDIM_ONLY=1: just the SDIM kernel tests and `--targets --sdim` (both table paths, the packed-config
# sweep, bf16 history; about 1-2 minutes).
set -uo pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONPATH=$PWD TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
SUMMARY=()

say() { echo "$*" | tee -a "$LOG"; }

# step NAME TIMEOUT_S CMD...: run CMD under a timeout, output appended to the log; never stops the session
step() {
  local name=$1 limit=$2 t0 rc status
  shift 2
  t0=$(date +%s)
  say "=== $name (timeout ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -v "^  " | tail -40
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 124 | 137) status=TIMEOUT ;; *) status=FAILED ;; esac
  SUMMARY+=("$(printf '%-16s %-8s rc=%-3s %4d s' "$name" "$status" "$rc" $(( $(date +%s) - t0 )))")
  say "=== $name: $status (rc=$rc) in $(( $(date +%s) - t0 )) s"
}

nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$LOG"

if [ -n "${SDIM_ONLY:-}" ]; then
  step sdim_tests "${TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_sdim.py
  step sdim_rows "${BENCH_TIMEOUT:-330}" python3 -m benchmarks.kernels --targets --sdim --out "$OUT/kernels_h200_sdim.json"
  for line in "${SUMMARY[@]}"; do say "$line"; done
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  wheels=(.whl/*.whl)
  # typing-extensions only when the image's is older than pydantic-core's minimum (4.16)
  if python3 -c "import importlib.metadata as m, sys; v = m.version('typing_extensions').split('.');
sys.exit(0 if (int(v[0]), int(v[1])) >= (4, 16) else 1)" 2>/dev/null; then
    wheels=($(printf '%s\n' "${wheels[@]}" | grep -v typing_extensions))
  fi
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${wheels[@]}" 2>&1 | tee -a "$LOG"; then
    export PYTHONPATH=/tmp/site:$PWD
    say "wheels: installed ${#wheels[@]} into /tmp/site"
  else
    say "wheels: INSTALL FAILED; (a) and (b) will fail on their imports"
  fi
else
  say "wheels: no .whl/ (run scripts/gpu_wheels.sh here and carry .whl); (a) and (b) need them"
fi
python3 -c "import pydantic, fastapi, uvicorn, recsys.models.dare, serving.app; print('imports ok: pydantic',
pydantic.VERSION, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__)" 2>&1 | tail -3 | tee -a "$LOG"

t0=$(date +%s)
timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_topk.py \
    tests/kernels/test_triton_sdim.py tests/kernels/test_triton_simhash.py tests/kernels/test_triton_configs.py \
    --durations=8 2>&1 | tee "$OUT/tests.log" | tail -25
rc=${PIPESTATUS[0]}
echo "tests: rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/tests.log" "$LOG"
SUMMARY+=("$(printf '%-16s %-8s rc=%-3s %4d s' tests "$([ "$rc" = 0 ] && echo ok || echo FAILED)" "$rc" $(( $(date +%s) - t0 )))")

step dare_step "${DARE_TIMEOUT:-90}" python3 -m benchmarks.dare_step --device cuda --out "$OUT/dare_step.json"
step serving_batched "${SERVING_TIMEOUT:-150}" python3 -m benchmarks.serving_batched --device cuda \
    --out "$OUT/serving_batched.json"
step jagged "${JAGGED_TIMEOUT:-90}" python3 -m benchmarks.jagged_vs_padded --device cuda --cands 1,512 \
    --out "$OUT/jagged_vs_padded.json"

left=$(( ${SESSION_S:-540} - ($(date +%s) - START) - 10 ))
limit=$(( left < ${BENCH_TIMEOUT:-330} ? left : ${BENCH_TIMEOUT:-330} ))
if [ "$limit" -ge 60 ]; then
  t0=$(date +%s)
  timeout "$limit" python3 -m benchmarks.kernels --targets ${SWEEP:+--sweep} --out "$OUT/kernels_h200.json" \
      2>&1 | tee "$OUT/bench.log" | grep -v "^  " | tail -60
  rc=${PIPESTATUS[0]}
  say "bench: rc=$rc in $(( $(date +%s) - t0 )) s (timeout $limit s)"
  SUMMARY+=("$(printf '%-16s %-8s rc=%-3s %4d s' kernels "$([ "$rc" = 0 ] && echo ok || echo FAILED)" "$rc" $(( $(date +%s) - t0 )))")
else
  say "bench: SKIPPED, only $left s of the session left"
fi

say "=== summary ($(( $(date +%s) - START )) s in all)"
for line in "${SUMMARY[@]}"; do say "$line"; done
python3 - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
for name in ("dare_step", "serving_batched", "jagged_vs_padded"):
    path = pathlib.Path(sys.argv[1]) / f"{name}.json"
    if not path.is_file():
        print(f"{name}: no rows")
        continue
    for r in json.loads(path.read_text()):
        print(f"{name:16s} {r['metric'][:60]:60s} {r['value']!s:>10} ref {r['reference']!s:>10} ratio {r['ratio']}")
EOF
