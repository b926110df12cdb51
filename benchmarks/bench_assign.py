"""Benchmark of ``assign_queries``: every backend against the eager reference and a per-sample Python loop.

    python -m benchmarks.bench_assign [--quick] [--device cuda]

The per-sample loop is what the paper's code does (a Python loop over the batch, indexing the present markers'
queries). Forward and forward+backward; ratios are to the per-sample loop and to the eager reference.
"""

from __future__ import annotations

import torch

import coavs.ops as ops
from benchmarks.common import Ratio, Work, base_parser, measure, report
from coavs.ops import _dispatch, reference


def per_sample_loop(scores, audio, query_feat, dilation, threshold=0.4):
    """The paper's style: for each sample, find the present markers and add the audio to their queries."""
    out = []
    for b in range(scores.shape[0]):
        present = (scores[b] >= threshold).nonzero().flatten()
        if present.numel() == 0:
            present = scores[b].argmax()[None]
        rows = (present[:, None] * dilation + torch.arange(dilation, device=scores.device)).flatten()
        queries = query_feat.clone()
        queries[rows] = queries[rows] + audio[b]
        out.append(queries)
    return torch.stack(out)


def _step(fn, leaves, backward: bool):
    def run():
        out = fn()
        if backward:
            torch.autograd.grad(out.float().square().sum(), leaves)
        return out
    return run


def work(row):
    """Compulsory work of assign_queries (hard gates, float32 scores). Forward: read scores, audio and query_feat,
    write queries, gate and active; 2 FLOPs per query element. Backward: read the queries' gradient and the gate,
    write d_query_feat, d_audio and d_scores; 3 FLOPs per query element."""
    b, s, _, q, d = (int(part[1:]) for part in row["shape"].split())
    es = getattr(torch, row["dtype"]).itemsize
    fwd = Work(4 * b * s + es * (b * d + q * d + b * q * d) + 5 * b * q, other_flops=2 * b * q * d)
    bwd = Work(es * (b * q * d + q * d + b * d) + 4 * (b * q + b * s), other_flops=3 * b * q * d)
    return fwd + bwd if row["mode"] == "fwd+bwd" else fwd


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # (B, S, d, Q, D): AVSS-sized clusters with dilation, the paper's d=1 with 71 markers.
    shapes = [(4, 4, 5, 20, 64)] if args.quick else [(20, 20, 5, 100, 256), (20, 10, 10, 100, 256),
                                                     (20, 70, 1, 100, 256)]
    spec = _dispatch.REGISTRY["assign_queries"]
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for b, s, d, q, width in shapes:
            gen = torch.Generator(device="cpu").manual_seed(0)
            scores = (torch.rand(b, s, generator=gen) ** 3).to(device)  # a few markers present per sample
            audio = torch.randn(b, width, generator=gen).to(device, dtype).requires_grad_()
            query_feat = torch.randn(q, width, generator=gen).to(device, dtype).requires_grad_()
            leaves = [audio, query_feat]
            providers = {
                "per_sample_loop": lambda: per_sample_loop(scores, audio, query_feat, d),
                "eager_reference": lambda: reference.assign_queries(scores, audio, query_feat, d, 0.4, 0.0, False)[0],
            }
            for backend in ("native", "cuda", "triton"):
                if _dispatch.availability(spec, backend, device.type)[0]:
                    def run(backend=backend):
                        with ops.use_backend(backend):
                            return ops.assign_queries(scores, audio, query_feat, d).queries
                    providers[backend] = run
            for mode in ("fwd", "fwd+bwd"):
                steps = {name: _step(fn, leaves, backward=mode == "fwd+bwd") for name, fn in providers.items()}
                fields = {"shape": f"B{b} S{s} d{d} Q{q} D{width}", "dtype": str(dtype)[6:], "mode": mode}
                rows += measure(steps, device, fields=fields, min_time_s=0.2,
                                ratios=[Ratio("speedup_vs_loop", "per_sample_loop"),
                                        Ratio("speedup_vs_eager", "eager_reference")])
    notes = ("per_sample_loop = the paper's Python loop over the batch; eager_reference = coavs.ops.reference "
             "(batched PyTorch). fwd+bwd differentiates a square-sum of the queries w.r.t. audio and query_feat.")
    report(rows, device, args.out, "assign", notes, work)
    return rows


if __name__ == "__main__":
    main()
