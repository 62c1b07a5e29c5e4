#!/usr/bin/env bash
# One command for a GPU machine: offline build, summary.json (MinkUNet18 steps in four precisions,
# where the GPU time goes per layer and pass, host syncs, launches, kernel maps, a wide layer), the
# CUDA tests one file per process (a crash costs one file, is named with its test id and bisected),
# CPU-vs-CUDA cross-check on real scans, implicit GEMM, 2:4, conv, kmap and grouping benchmarks and
# the profiler. Run `make gpu-prep` first and carry shared/ (real scans, build-tool wheels): it
# travels with the checkout, ../shared does not.
#
#   tools/gpu_check.sh [--budget S] OUTDIR        # GPU machine: preinstalled CUDA torch, nvcc, no network
#   tools/gpu_check.sh --cpu [--budget S] OUTDIR  # any machine: the same steps on the CPU with small
#                                                 # inputs, the extension as already built (CI runs this)
#
# Steps run most informative first, each under its own limit and all within --budget seconds
# (default 480: a device lent for 15 minutes, one call of at most 600 s, minus start-up); a step
# that no longer fits is skipped and recorded as such. What comes back from a device is at most 8
# files: OUTDIR holds summary.json, gpu_check.log, steps.jsonl and results.tar.gz (everything,
# re-packed after every step, so a run cut short still returns what it did).
# Never touches the network: the build is tools/build_offline.sh (an editable PEP 660 install with
# the machine's own torch; if that fails, an in-place build); setuptools, wheel or ninja, where the
# machine lacks them, come from wheels in shared/wheels (`make gpu-prep` puts them there). PYTHON
# picks the interpreter (default python3); POINTSPARSE_COMMIT names the commit when the checkout
# has no .git; real scans come from $POINTSPARSE_SHARED_DATA, shared/data in the checkout, or
# ../shared/data.
set -uo pipefail

MODE=cuda
BUDGET=480
while [[ "${1:-}" == --* ]]; do
  case $1 in
    --cpu) MODE=cpu; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${1:?usage: tools/gpu_check.sh [--cpu] [--budget S] OUTDIR}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
# An in-place build is imported from the checkout; scripts under tools/ need it on sys.path too.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$LOG"
STATUS=0

step() {  # step NAME TIMEOUT_S COMMAND...: run within what is left of the budget, log, record
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if ((left < 20)); then
    echo "=== $name: skipped, ${left} s of the budget left" | tee -a "$LOG"
    echo "{\"step\": \"$name\", \"exit\": null, \"seconds\": 0, \"skipped\": true}" >> "$OUT/steps.jsonl"
    STATUS=1
    return
  fi
  ((limit > left)) && limit=$left
  local start=$SECONDS
  echo "=== $name (limit $limit s)" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$LOG"
  echo "{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/steps.jsonl"
  [[ $rc -eq 0 ]] || STATUS=1
  pack
}

pack() {  # everything OUTDIR holds, in one file beside it
  tar -czf "$OUT/results.tar.gz.part" -C "$OUT" --exclude=results.tar.gz --exclude=results.tar.gz.part . \
    && mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
}

cuda_tests() {  # the CUDA tests, one file per process; the first crash, if any, bisected
  "$PYTHON" tools/run_test_files.py --out "$OUT/tests" --jobs 4 -- -k "cuda and not on_real_scans" -m "not slow"
  local rc=$?
  "$PYTHON" tools/gpu_summary.py --add-tests "$OUT/tests/tests.json" --device cuda --out "$OUT/summary.json"
  local crashed
  crashed=$("$PYTHON" -c "import json; c = json.load(open('$OUT/tests/tests.json'))['crashes']; \
print(next(iter(c.values()))['test'] if c else '')")
  if [[ -n "$crashed" && $((BUDGET - SECONDS)) -gt 90 ]]; then
    timeout $((BUDGET - SECONDS - 60)) "$PYTHON" tools/run_test_files.py --bisect "$crashed" --out "$OUT/bisect" \
      -- -k "cuda and not on_real_scans" -m "not slow"
  fi
  return $rc
}
export -f cuda_tests
export OUT BUDGET

: > "$OUT/steps.jsonl"
scan_path() {  # the second real scan, or a generated one so that the benchmarks still run
  local scan
  scan=$("$PYTHON" -c "import sys; sys.path.insert(0, 'tools'); import gpu_check as g; \
p = g.shared_data() / g.SCANS[1]; print(p if p.exists() else '')")
  if [[ -z "$scan" ]]; then
    scan="$OUT/generated_scan.bin"
    "$PYTHON" -c "import sys; sys.path.insert(0, 'tools'); import gpu_check as g; \
g.load_points(False)[0].tofile('$scan')"
  fi
  echo "$scan"
}
bench() {  # bench SUITE LIMIT_S OUTNAME [ARGS...]: one benchmark suite on the scan, JSON to OUTDIR
  local suite=$1 limit=$2 name=$3
  shift 3
  step "$name" "$limit" "$PYTHON" -m pointsparse.bench "$suite" --scan "$SCAN" --device "$DEVICE" \
    --repeats "$REPEATS" "${QUICK[@]}" --out "$OUT/$name.json" "$@"
}

build_tools() {  # setuptools, wheel and ninja for the build: from shared/wheels where missing
  local missing=()
  "$PYTHON" -c "import setuptools" 2>/dev/null || missing+=("setuptools<82")
  "$PYTHON" -c "import wheel" 2>/dev/null || missing+=(wheel)
  command -v ninja >/dev/null || missing+=(ninja)  # without it the build compiles file by file
  if ((${#missing[@]} == 0)); then echo "setuptools, wheel and ninja present"; return 0; fi
  echo "missing: ${missing[*]}"
  [[ -d shared/wheels ]] || { echo "no shared/wheels to install them from (make gpu-prep)"; return 1; }
  PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --no-index --find-links shared/wheels "${missing[@]}"
}
export -f build_tools
export PYTHON

if [[ $MODE == cuda ]]; then
  nvidia-smi -L >> "$LOG" 2>&1
  DEVICE=cuda; REPEATS=10; QUICK=(); PROFILE_CR=1.0
  # Scripts that pip installs (ninja) land beside the interpreter, which need not be on PATH.
  PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
  step build-tools 60 bash -c build_tools
  step build 300 env MAX_JOBS="$(nproc)" bash -c \
    'tools/build_offline.sh || { echo "editable install failed: building in place"; tools/build_offline.sh --inplace; }'
  step cuda-kernels-registered 60 "$PYTHON" -c "import torch, pointsparse; \
assert torch.cuda.is_available(), 'no CUDA device'; \
assert torch._C._dispatch_has_kernel_for_dispatch_key('pointsparse::conv_implicit', 'CUDA'), 'no CUDA kernels'"
  SCAN=$(scan_path)
  # What the GPU-speed work is measured by first, then the tests (the real-scan cross-checks of
  # tests/test_cuda.py are what gpu_check.py runs and reports in full, so the tests leave them out).
  step summary 180 "$PYTHON" tools/gpu_summary.py --device cuda --scan "$SCAN" --out "$OUT/summary.json"
  step cuda-tests 240 bash -c cuda_tests
  step crosscheck-and-minkunet 180 "$PYTHON" tools/gpu_check.py --device cuda --out "$OUT"
  bench implicit 150 implicit_cuda_float16 --dtype float16
  step sparse24-bench 120 "$PYTHON" -m pointsparse.bench sparse24 --scan "$SCAN" --device cuda \
    --out "$OUT/sparse24_cuda.json"
  bench kmap 90 kmap_cuda
  bench host 60 host_cuda --threads 1
  bench conv 150 conv_cuda
  bench implicit 120 implicit_cuda_float32
  bench implicit 120 implicit_cuda_tf32 --tf32
  bench implicit 120 implicit_cuda_bfloat16 --dtype bfloat16  # bfloat16's AUTO follows float16's numbers
  bench grouping 150 grouping_cuda
else
  DEVICE=cpu; REPEATS=1; QUICK=(--voxel-size 0.2); PROFILE_CR=0.125
  SCAN=$(scan_path)
  step summary 180 "$PYTHON" tools/gpu_summary.py --device cpu --quick --scan "$SCAN" --out "$OUT/summary.json"
  bench implicit 120 implicit_cpu
  step crosscheck-and-minkunet 120 "$PYTHON" tools/gpu_check.py --device cpu --quick --out "$OUT"
  bench conv 120 conv_cpu
  bench kmap 120 kmap_cpu
  bench grouping 120 grouping_cpu
fi
step profile 180 "$PYTHON" -m pointsparse profile --scan "$SCAN" --device "$DEVICE" --model minkunet18 \
  --cr "$PROFILE_CR" --quick --repeats 3 "${QUICK[@]}" --out "$OUT/profile_$DEVICE"

echo "gpu_check ($MODE): $([[ $STATUS -eq 0 ]] && echo all steps passed || echo some steps FAILED); see $LOG" \
  | tee -a "$LOG"
exit $STATUS
