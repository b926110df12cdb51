#!/usr/bin/env bash
# One command for a GPU machine, at most 8 minutes on one H100/H200: build for sm_90 (no dependency resolution:
# the machine has its own torch/triton), the GPU tests, the benchmarks at their headline shapes, and the
# compile report; everything lands in benchmarks/results/<device>/ (gpu_check.log, the benchmarks' json/md,
# compile/sm_90.{md,json}). The full benchmark is `make bench`.
#   bash benchmarks/gpu_check.sh
# Step time limits (seconds): build 170, info 10, pytest 100, benchmarks 120 in all, compile report 70 = 470.
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset TRITON_INTERPRET
results="${OUT:-benchmarks/results}"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9_.\n-' '_')
device="${device:-no-gpu}"
out="$results/$device"
mkdir -p "$out"
log="$out/gpu_check.log"
status=0
step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep the tail of its output, remember failures
  local limit=$1 name=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.out" 2>&1
  local rc=$?
  tail -n 30 "$out/$name.out"
  echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
  [ "$rc" -eq 0 ] || status=1
}
exec > >(tee "$log") 2>&1
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
step 170 build python3 -m pip install --no-deps --no-build-isolation -e .
step 10 info python3 -m coavs info
step 100 pytest python3 -m pytest -m gpu -q -x -p no:cacheprovider
# Headline shapes: the issue's training batch (B=20, Q=100) on the GPU; each benchmark's own defaults
# otherwise, minus the slow extras (CPU peak-memory subprocesses, the N sweep of the attention benchmark).
step 25 bench_debias python3 -m benchmarks.bench_debias --out "$results"
step 20 bench_assign python3 -m benchmarks.bench_assign --out "$results" --dtypes bfloat16
step 30 bench_attention python3 -m benchmarks.bench_attention --out "$results" --keys 784 --fractions 0.2,1.0
step 25 bench_inference python3 -m benchmarks.bench_inference --out "$results" --no-cpu-peak
step 20 bench_matching python3 -m benchmarks.bench_matching --out "$results"
step 70 compile_report python3 -m benchmarks.compile_report --arch 90 --jobs "$MAX_JOBS" --full --out "$out/compile"
echo "== total $SECONDS s, status $status"
exit "$status"
