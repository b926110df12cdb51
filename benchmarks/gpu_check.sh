#!/usr/bin/env bash
# One command for a GPU machine: build (no dependency resolution: the machine has its own torch/triton),
# run the GPU tests, run every benchmark, and leave results under benchmarks/results/<device>/.
#   bash benchmarks/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
{
  echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  python3 -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
  python3 -m coavs info
  python3 -m pytest -m gpu -q -x -p no:cacheprovider 2>&1 | tail -n 25
  echo "pytest -m gpu exit: ${PIPESTATUS[0]}"
  for bench in benchmarks/bench_*.py; do
    name=$(basename "$bench" .py)
    echo "== $name"
    timeout 240 python3 -m "benchmarks.$name" --out "$out" "$@" 2>&1 | tail -n 40
  done
} 2>&1 | tee "$log"
