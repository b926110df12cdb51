"""Benchmark of ``semantic_inference``: the fused op against eager post-processing (interpolate + sigmoid + einsum
+ argmax, :func:`coavs.ops.reference.semantic_inference`).

    python -m benchmarks.bench_inference [--quick] [--device cuda] [--dtypes float32,float16]

Shapes: B=20, Q=100, K=71 with masks 56x56 -> 224x224 and 128x128 -> 512x512 (``--quick``: B=2, 28 -> 112).
Reports the median time, the peak extra memory of one call (CUDA: the caching allocator's peak; CPU: the peak
resident-set growth (VmHWM) of one call in a fresh subprocess) and both ratios to eager.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import coavs.ops as ops
from benchmarks.common import Ratio, Work, base_parser, matmul_flops, measure, print_table, report
from coavs.ops import _dispatch, reference

K = 71
ROOT = Path(__file__).resolve().parents[1]


def make_inputs(batch, queries, side, device, dtype):
    g = torch.Generator().manual_seed(0)
    mask = (torch.randn(batch, queries, side, side, generator=g) * 3).to(device=device, dtype=dtype)
    cls = (torch.randn(batch, queries, K + 1, generator=g) * 3).to(device=device, dtype=dtype)
    return mask, cls


def providers(mask, cls, size, device):
    """name -> callable; ``eager`` first (the baseline), then the default fused choice and every backend."""
    table = {"eager": lambda: reference.semantic_inference(mask, cls, size)}
    if device.type == "cuda":
        compiled = torch.compile(reference.semantic_inference)
        table["compiled_eager"] = lambda: compiled(mask, cls, size)
    spec = _dispatch.REGISTRY["semantic_inference"]
    for backend in ("native", "triton"):
        if backend == "triton" and device.type != "cuda":
            continue  # the interpreter is for tests, not timing
        if _dispatch.availability(spec, backend, device.type)[0]:
            def run(backend=backend):
                with ops.use_backend(backend):
                    return ops.semantic_inference(mask, cls, size)
            table[f"fused_{backend}"] = run
    return table


def work(row):
    """Compulsory work of semantic_inference (argmax labels): read the [B,Q,h,w] mask logits and [B,Q,K+1] class
    logits, write [B,H,W] int64 labels. Per output pixel: the class-score contraction (2·Q·K, a matmul), and
    ~15 FLOPs per query (bilinear taps, sigmoid) and one per class (argmax)."""
    parts = row["shape"].split()
    batch, queries = int(parts[0][1:]), int(parts[1][1:])
    side, out = (int(v) for v in parts[3].split("->"))
    es = getattr(torch, row["dtype"]).itemsize
    pixels = batch * out * out
    return (Work(es * batch * queries * (side * side + K + 1) + 8 * pixels, other_flops=pixels * (15 * queries + K))
            + matmul_flops(2 * pixels * queries * K, getattr(torch, row["dtype"])))


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _cpu_peak_child(args) -> None:
    """Runs one provider once in this fresh process and prints its peak resident-set growth in MiB."""
    batch, queries, side, out, dtype, name = args
    mask, cls = make_inputs(int(batch), int(queries), int(side), torch.device("cpu"), getattr(torch, dtype))
    size = (int(out), int(out))
    fn = providers(mask, cls, size, torch.device("cpu"))[name]
    small_mask, small_cls = mask[:1, :, :8, :8].contiguous(), cls[:1]
    providers(small_mask, small_cls, (16, 16), torch.device("cpu"))[name]()  # threads, libraries, arenas
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    before = _status_kib("VmRSS")
    fn()
    print(json.dumps({"peak_MiB": (_status_kib("VmHWM") - before) / 1024}))


def cpu_peak_mb(batch, queries, side, out, dtype, name) -> float | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "benchmarks.bench_inference", "--peak-child", str(batch), str(queries), str(side),
           str(out), str(dtype).replace("torch.", ""), name]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if run.returncode != 0:
        print(f"peak memory of {name} not measured: {run.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_MiB"]


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--peak-child":
        return _cpu_peak_child(sys.argv[2:])
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32", help="comma-separated, e.g. float32,float16")
    parser.add_argument("--cpu-peak", action=argparse.BooleanOptionalAction, default=None,
                        help="measure CPU peak memory in subprocesses (default: on, off with --quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu_peak = (not args.quick) if args.cpu_peak is None else args.cpu_peak
    batch, queries = (2, 100) if args.quick else (20, 100)
    shapes = [(28, 112)] if args.quick else [(56, 224), (128, 512)]
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for side, out in shapes:
            mask, cls = make_inputs(batch, queries, side, device, dtype)
            size = (out, out)
            table = providers(mask, cls, size, device)
            expected = table["eager"]()
            fields = {"shape": f"B{batch} Q{queries} K{K} {side}->{out}", "dtype": str(dtype).replace("torch.", "")}
            measured = measure(table, device, fields=fields, ratios=[Ratio("speedup_vs_eager", "eager")],
                               warmup=1, min_time_s=0.2, max_rounds=5)
            for row in measured:
                name = row["provider"]
                if device.type == "cpu":
                    row["peak_MiB"] = cpu_peak_mb(batch, queries, side, out, dtype, name) if cpu_peak else None
                if "error" not in row:
                    row["labels_equal_eager"] = (table[name]() == expected).float().mean().item()
                print_table([row])
            base_mb = measured[0].get("peak_MiB")
            for row in measured:
                peak = row.get("peak_MiB")
                row["memory_vs_eager"] = (peak / base_mb) if peak is not None and base_mb else None
            rows += measured
            del mask, cls, expected
    notes = ("peak_MiB: extra memory of one call (CUDA: allocator peak; CPU: peak RSS growth in a fresh process). "
             "The output alone is B·H·W·8 bytes (int64 labels). labels_equal_eager: fraction of identical labels "
             "(near-ties may round either way).")
    report(rows, device, args.out, "inference", notes, work)
    return rows


if __name__ == "__main__":
    main()
