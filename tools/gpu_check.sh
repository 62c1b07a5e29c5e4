#!/usr/bin/env bash
# One command for a GPU machine: build, CUDA tests, CPU-vs-CUDA cross-check on real scans, kmap,
# conv, grouping and implicit-GEMM benchmarks, a MinkUNet18 profile and training step (float32 and
# AMP) on CUDA; a log and JSON in OUTDIR. Copy ../shared/data to shared/data in the checkout first:
# it travels, ../shared does not.
#
#   tools/gpu_check.sh OUTDIR          # GPU machine: preinstalled CUDA torch, nvcc, no network
#   tools/gpu_check.sh --cpu OUTDIR    # any machine: the same steps on the CPU with small inputs,
#                                      # the extension as already built (CI runs this)
#
# Installs nothing and never touches the network: the build is `pip install --no-index
# --no-build-isolation --no-deps -e .` with the machine's own torch. PYTHON picks the interpreter
# (default python3); POINTSPARSE_COMMIT names the commit when the checkout has no .git; real scans
# come from $POINTSPARSE_SHARED_DATA, shared/data in the checkout, or ../shared/data.
set -uo pipefail

MODE=cuda
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
OUT=${1:?usage: tools/gpu_check.sh [--cpu] OUTDIR}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: > "$LOG"
STATUS=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, record its exit status and time
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$LOG"
  echo "{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/steps.jsonl"
  [[ $rc -eq 0 ]] || STATUS=1
}

: > "$OUT/steps.jsonl"
if [[ $MODE == cuda ]]; then
  nvidia-smi -L >> "$LOG" 2>&1
  step build 300 env MAX_JOBS="$(nproc)" "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -e .
  step cuda-kernels-registered 60 "$PYTHON" -c "import torch, pointsparse; \
assert torch.cuda.is_available(), 'no CUDA device'; \
assert torch._C._dispatch_has_kernel_for_dispatch_key('pointsparse::conv_gather_scatter', 'CUDA'), 'no CUDA kernels'"
  # The real-scan cross-checks of tests/test_cuda.py are what gpu_check.py runs next (and reports
  # in full); the test step leaves them out so the device time is spent once.
  step cuda-tests 240 "$PYTHON" -m pytest -q -k "cuda and not on_real_scans" -m "not slow" -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml" tests/
  step crosscheck-and-minkunet 240 "$PYTHON" tools/gpu_check.py --device cuda --out "$OUT"
  DEVICE=cuda; REPEATS=10; QUICK=(); PROFILE_CR=1.0
else
  step crosscheck-and-minkunet 120 "$PYTHON" tools/gpu_check.py --device cpu --quick --out "$OUT"
  DEVICE=cpu; REPEATS=1; QUICK=(--voxel-size 0.2); PROFILE_CR=0.125
fi

SCAN=$("$PYTHON" -c "import sys; sys.path.insert(0, 'tools'); import gpu_check as g; \
p = g.shared_data() / g.SCANS[1]; print(p if p.exists() else '')")
if [[ -z "$SCAN" ]]; then  # no real scan here: a generated one, so the benchmarks still run
  SCAN="$OUT/generated_scan.bin"
  "$PYTHON" -c "import sys; sys.path.insert(0, 'tools'); import gpu_check as g; \
g.load_points(False)[0].tofile('$SCAN')"
fi
step kmap-bench 120 "$PYTHON" -m pointsparse.bench kmap --scan "$SCAN" --device "$DEVICE" \
  --repeats "$REPEATS" "${QUICK[@]}" --out "$OUT/kmap_$DEVICE.json"
step conv-bench 180 "$PYTHON" -m pointsparse.bench conv --scan "$SCAN" --device "$DEVICE" \
  --repeats "$REPEATS" "${QUICK[@]}" --out "$OUT/conv_$DEVICE.json"
step grouping-bench 180 "$PYTHON" -m pointsparse.bench grouping --scan "$SCAN" --device "$DEVICE" \
  --repeats "$REPEATS" "${QUICK[@]}" --out "$OUT/grouping_$DEVICE.json"
step implicit-bench 180 "$PYTHON" -m pointsparse.bench implicit --scan "$SCAN" --device "$DEVICE" \
  --repeats "$REPEATS" "${QUICK[@]}" --out "$OUT/implicit_$DEVICE.json"
if [[ $MODE == cuda ]]; then
  step sparse24-bench 120 "$PYTHON" -m pointsparse.bench sparse24 --scan "$SCAN" --device cuda \
    --out "$OUT/sparse24_cuda.json"
fi
step profile 180 "$PYTHON" -m pointsparse profile --scan "$SCAN" --device "$DEVICE" --model minkunet18 \
  --cr "$PROFILE_CR" --quick --repeats 3 "${QUICK[@]}" --out "$OUT/profile_$DEVICE"

echo "gpu_check ($MODE): $([[ $STATUS -eq 0 ]] && echo all steps passed || echo some steps FAILED); see $LOG" \
  | tee -a "$LOG"
exit $STATUS
