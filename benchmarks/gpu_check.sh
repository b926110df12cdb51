#!/usr/bin/env bash
# One command for a GPU machine that cannot waste the run: at most 8 minutes on one H100/H200, build included.
#   bash benchmarks/gpu_check.sh            on the GPU machine ($OUT: where the results go; default below)
#   bash benchmarks/gpu_check.sh --dry-run  the same script on a CPU (Triton interpreter, tiny shapes, no
#                                           install): what CI runs (tests/test_gpu_check.py)
#
# Steps, each with a limit that includes its cold compiles and never past the overall deadline (GPU_CHECK_SECONDS,
# default 470 s, so that packing and the machine's own start fit in 8 minutes):
#   build     pip install --no-deps --no-build-isolation -e . (nvcc for sm_90; the machine's own torch/triton)
#   built     the CUDA kernels are in coavs._C (else every later number would be Triton's or the reference's)
#   ops       python -m benchmarks.gpu_check: same-run copy bandwidth and bf16 matmul rate, then every op checked
#             against its reference before it is timed (CUDA events, CUDA-graph replay, peak memory) against its
#             peers (eager and torch.compile of the reference, the other backends, a copy of its bytes)
#   attention python -m benchmarks.bench_attention (its own file: SDPA with a boolean mask, FlexAttention with a
#             block mask, eager, ours) at N=1024, 20% and 100% active
#   pytest    pytest -m gpu with whatever time is left
# Results land in $OUT as soon as they exist (measurements.jsonl and summary.md after every measurement) and are
# packed at the end, whatever happened, into at most 8 files: gpu_check.log, measurements.jsonl, summary.md,
# status.txt, results.tar.gz (every result file the steps wrote).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
out="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
mkdir -p "$work/results"
total="${GPU_CHECK_SECONDS:-470}"
[ "$dry" = 1 ] && total="${GPU_CHECK_SECONDS:-300}"
status=0
steps=""
export PYTHONUNBUFFERED=1
if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  unset TRITON_INTERPRET
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
fi

pack() {  # always runs: the results tree into one tarball next to the incremental files
  cp -f "$out/measurements.jsonl" "$out/summary.md" "$work/results/" 2>/dev/null
  tar czf "$out/results.tar.gz" -C "$work" results 2>/dev/null
  printf 'status %s\nseconds %s\n%b' "$status" "$SECONDS" "$steps" > "$out/status.txt"
  rm -rf "$work"
}
trap pack EXIT

left() { echo $((total - SECONDS)); }
step() {  # step NAME LIMIT COMMAND...: at most LIMIT seconds and never past the deadline; remembers failures
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, ${remaining} s left"
    steps="${steps}${name} skipped\n"
    status=1
    return 1
  fi
  local start=$SECONDS
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  steps="${steps}${name} exit ${rc} $((SECONDS - start))s\n"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

exec > >(tee "$out/gpu_check.log") 2>&1
echo "== $(date -u) dry_run=$dry budget=${total}s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

if [ "$dry" = 1 ]; then
  echo "== build: skipped in a dry run (nothing is installed); the checkout's coavs._C is used"
else
  step build 180 python3 -m pip install --no-deps --no-build-isolation -e .
fi
if [ "$dry" = 1 ]; then
  step built 30 python3 -c "
from coavs import _native
assert _native.load_error() is None, _native.load_error()
print('coavs._C loads; CUDA kernels:', _native.built_with_cuda())"
else
  step built 30 python3 -c "
from coavs import _native
import torch
assert _native.load_error() is None, _native.load_error()
assert _native.built_with_cuda(), 'coavs._C has no CUDA kernels: the cuda backend would silently fall back'
for op in ('assign_queries', 'debias_logits'):
    assert _native.has_op(op), op
print('coavs._C has its CUDA kernels; device', torch.cuda.get_device_name())"
fi

ops_limit=150
[ "$dry" = 1 ] && ops_limit=240
step ops "$ops_limit" python3 -m benchmarks.gpu_check --out "$out" --seconds $((ops_limit - 15)) \
  $([ "$dry" = 1 ] && echo --dry-run)

if [ "$dry" = 1 ]; then
  # The attention benchmark is its own file with its own tests: check the command line this script uses.
  # The same flags as the GPU run, at the CPU smoke size (B=2; ours is checked against SDPA before timing).
  step attention 120 python3 -m benchmarks.bench_attention --out "$work/results" --quick --keys 49 \
    --fractions 0.2,1.0
else
  step attention 80 python3 -m benchmarks.bench_attention --out "$work/results" --keys 1024 --fractions 0.2,1.0
fi

if [ "$dry" = 1 ]; then
  step pytest 60 python3 -m pytest -q -p no:cacheprovider -m gpu --collect-only tests/ops/test_debias_logits.py
else
  step pytest 200 python3 -m pytest -q -p no:cacheprovider -m gpu -rfE --junitxml="$work/results/pytest.xml"
fi
echo "== total $SECONDS s, status $status"
exit "$status"
