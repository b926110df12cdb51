"""Benchmark of ``debias_logits``: every backend against the eager reference and ``torch.compile`` of it.

    python -m benchmarks.bench_debias [--quick] [--device cuda]

Prints time, effective GB/s and the ratio to eager, and the share of a copy's bandwidth measured in the same run
(GPU: a 256 MiB device-to-device copy, target >= 90% for the fused forward at B=20, Q=100, 256x256; CPU: a copy
moving the same number of bytes as the op, timed interleaved with the providers, target >= 70% at 20x100x64x64).
On CPU the providers are timed interleaved (one call of each in turn, medians), so a busy machine slows them alike.
"""

from __future__ import annotations

import torch

import coavs.ops as ops
from benchmarks.common import Ratio, Work, base_parser, copy_bandwidth_gbs, measure, report
from coavs.ops import _dispatch, reference
from coavs.ops.debias_logits import debias_logits_op


def eager(mask, cls, mask_b, cls_b, alpha):
    """What a model writes without the fused op: two separate subtract expressions."""
    return (1 + alpha) * mask - alpha * mask_b, (1 + alpha) * cls - alpha * cls_b


def work(row, width=72):
    """Forward, fixed strength: read x and x_b, write x' for the mask and class elements; 3 FLOPs each."""
    b, q, h, w = (int(v) for v in row["shape"].split("x"))
    elements = b * q * (h * w + width)
    return Work(3 * elements * getattr(torch, row["dtype"]).itemsize, other_flops=3 * elements)


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float16,bfloat16,float32", help="comma-separated")
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
            fields = {"shape": f"{b}x{q}x{h}x{w}", "dtype": str(dtype).replace("torch.", "")}
            fused = tuple(name for name in providers if name not in ("eager", "compiled_reference"))
            if device.type == "cpu":  # a copy moving the op's bytes (read + write), timed with the providers
                src = torch.empty(nbytes // 2, dtype=torch.uint8)
                dst = torch.empty_like(src)
                providers = {"copy_same_bytes": lambda: dst.copy_(src), **providers}
            measured = measure(providers, device, fields=fields, min_time_s=len(providers),
                               ratios=[Ratio("speedup_vs_eager", "eager"),
                                       Ratio("speedup_vs_compiled", "compiled_reference", rows=fused)])
            if device.type == "cpu":
                copy = measured.pop(0)
                copy_gbs = nbytes / (copy["median_ms"] * 1e-3) / 1e9 if "median_ms" in copy else None
                rows.append({**fields, "provider": "copy_same_bytes", "median_ms": copy.get("median_ms"),
                             "GB/s": copy_gbs, "pct_of_copy_bw": 100.0 if copy_gbs else None})
            for row in measured:
                if "median_ms" in row:
                    row["GB/s"] = nbytes / (row["median_ms"] * 1e-3) / 1e9
                    if copy_gbs:
                        row["pct_of_copy_bw"] = 100 * row["GB/s"] / copy_gbs
                rows.append(row)
            del mask, mask_b, cls, cls_b
    if device.type == "cuda":
        notes = f"device-to-device copy bandwidth in this run: {copy_gbs:.0f} GB/s"
    else:
        notes = ("CPU run, providers timed interleaved (medians); GB/s counts 2 reads + 1 write per element; "
                 "copy_same_bytes: a memcpy moving the same bytes (half read, half written) in the same rounds.")
    report(rows, device, args.out, "debias", notes, work)
    return rows


if __name__ == "__main__":
    main()
