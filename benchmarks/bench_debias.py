"""Benchmark of ``debias_logits``: every backend against the eager reference and ``torch.compile`` of it.

    python -m benchmarks.bench_debias [--quick] [--device cuda]

Prints time, effective GB/s and the ratio to eager; on GPU also the share of the device-to-device copy
bandwidth measured in the same run (target: >= 90% for the fused forward at B=20, Q=100, 256x256).
"""

from __future__ import annotations

import torch

import coavs.ops as ops
from benchmarks.common import (base_parser, copy_bandwidth_gbs, peak_memory_mb, print_table, time_ms,
                               write_results)
from coavs.ops import _dispatch, reference
from coavs.ops.debias_logits import debias_logits_op


def eager(mask, cls, mask_b, cls_b, alpha):
    """What a model writes without the fused op: two separate subtract expressions."""
    return (1 + alpha) * mask - alpha * mask_b, (1 + alpha) * cls - alpha * cls_b


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float16,float32", help="comma-separated")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        shapes = [(4, 100, 64, 64)]
    elif device.type == "cuda":
        shapes = [(20, 100, 256, 256), (20, 100, 128, 128), (20, 100, 64, 64)]
    else:
        shapes = [(4, 100, 64, 64), (20, 100, 64, 64)]
    width = 72  # AVSS: 71 classes + "no object"
    copy_gbs = copy_bandwidth_gbs(256 * 2**20, device) if device.type == "cuda" else None
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for b, q, h, w in shapes:
            mask = torch.randn(b, q, h, w, device=device, dtype=dtype)
            mask_b = torch.randn_like(mask)
            cls = torch.randn(b, q, width, device=device, dtype=dtype)
            cls_b = torch.randn_like(cls)
            nbytes = 3 * (mask.numel() + cls.numel()) * mask.element_size()  # read x, x_b; write x'
            compiled = torch.compile(reference.debias_logits)
            providers = {
                "eager": lambda: eager(mask, cls, mask_b, cls_b, 1.0),
                "compiled_reference": lambda: compiled(mask, cls, mask_b, cls_b, 1.0, False),
            }
            spec = _dispatch.REGISTRY["debias_logits"]
            for backend in ("native", "cuda", "triton"):
                if _dispatch.availability(spec, backend, device.type)[0]:
                    def run(backend=backend):
                        with ops.use_backend(backend):
                            return debias_logits_op(mask, cls, mask_b, cls_b, 1.0, False)
                    providers[backend] = run
            base_ms = None
            for name, fn in providers.items():
                try:
                    t = time_ms(fn, device)
                except Exception as exc:  # a provider that cannot run here is reported, not fatal
                    rows.append({"shape": f"{b}x{q}x{h}x{w}", "dtype": str(dtype).replace("torch.", ""),
                                 "provider": name, "error": type(exc).__name__})
                    continue
                base_ms = base_ms or t["median_ms"]
                gbs = nbytes / (t["median_ms"] * 1e-3) / 1e9
                row = {"shape": f"{b}x{q}x{h}x{w}", "dtype": str(dtype).replace("torch.", ""), "provider": name,
                       "median_ms": t["median_ms"], "GB/s": gbs, "speedup_vs_eager": base_ms / t["median_ms"],
                       "peak_MiB": peak_memory_mb(fn, device)}
                if copy_gbs:
                    row["pct_of_copy_bw"] = 100 * gbs / copy_gbs
                rows.append(row)
            del mask, mask_b, cls, cls_b
    notes = f"device-to-device copy bandwidth in this run: {copy_gbs:.0f} GB/s" if copy_gbs else \
        "CPU run: native vs eager; GB/s counts 2 reads + 1 write per element."
    print(notes)
    print_table(rows)
    folder = write_results(args.out, "debias", device, rows, notes)
    print(f"results in {folder}")
    return rows


if __name__ == "__main__":
    main()
