"""The measurements of ``benchmarks/gpu_check.sh``: every op checked, then timed against its peers, in one process.

    python -m benchmarks.gpu_check --out DIR [--seconds 150] [--dry-run] [--only debias,assign,...]

Per op and shape, in this order, each written to ``DIR/measurements.jsonl`` (one JSON object per line, flushed
and synced) and ``DIR/summary.md`` (rewritten) as soon as it exists, so a run cut short keeps what it measured:

1. the ceilings of this run: a device-to-device copy (bytes read + written per second) and a bf16 matrix
   product (FLOP/s), measured, not datasheet figures;
2. correctness of every provider against the reference (float64 or float32 on the same inputs) before it is
   timed; a wrong provider is reported and not timed;
3. time (CUDA events around each call, median of the repetitions after a warm-up; cold-compile time of the
   first call reported apart), the time of a CUDA-graph replay of the same call where it can be captured (the
   capture's error otherwise), the peak extra memory of one call;
4. ratios against every peer of the same op and shape, and the share of the copy bandwidth (memory-bound ops:
   compulsory bytes / time) or of the bf16 rate (``semantic_inference``: class-mixture FLOPs / time).

Peers: the eager reference (``coavs.ops.reference``), ``torch.compile`` of it (compiled once per shape: its cold
compile is measured), the other coavs backends, and a copy of the op's bytes. The attention benchmark with SDPA
and FlexAttention is ``benchmarks/bench_attention.py`` (its own file; ``gpu_check.sh`` runs it).

``--seconds``: the budget; a provider that would start with less than its expected cost left (cold compiles
included) is skipped and reported as such. ``--dry-run``: the same code on the CPU with tiny shapes, Triton
under the interpreter and ``torch.compile(backend="eager")``, wall-clock timing, no graphs (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    device: str
    dry_run: bool
    reps: int
    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Recorder:
    """Appends one JSON line per record and rewrites the summary after every record."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "measurements.jsonl"
        self.rows: list[dict] = []

    def add(self, **row) -> dict:
        row = {"t": round(time.monotonic() - START, 2), **row}
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.write_summary()
        line = {k: v for k, v in row.items() if k not in ("traceback",)}
        print("gpu_check:", json.dumps(line, default=str), flush=True)
        return row

    def write_summary(self) -> None:
        (self.out / "summary.md").write_text(summary_markdown(self.rows))


START = time.monotonic()


# ------------------------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn, settings: Settings) -> dict:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on the CPU), after warm-up."""
    import torch
    for _ in range(1 if settings.dry_run else 2):
        fn()
    _sync(settings.device)
    samples = []
    if settings.device == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(settings.reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        samples = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(settings.reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p20_ms": samples[len(samples) // 5],
            "p80_ms": samples[(4 * len(samples)) // 5], "reps": len(samples)}


def graph_time(fn, settings: Settings) -> dict:
    """Median milliseconds of a CUDA-graph replay of ``fn()`` (captured once after warm-up), or why not."""
    import torch
    if settings.device != "cuda":
        return {"graph": "n/a (no CUDA)"}
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
    except Exception as exc:  # a capture that fails is a finding, not a crash
        torch.cuda.synchronize()
        return {"graph": f"not capturable: {type(exc).__name__}: {str(exc)[:160]}"}
    timing = time_call(graph.replay, settings)
    return {"graph_ms": timing["median_ms"]}


def peak_extra_mib(fn, settings: Settings) -> float | None:
    import torch
    if settings.device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------------------------------------ ceilings
def ceilings(rec: Recorder, settings: Settings) -> dict:
    """The copy bandwidth and bf16 matrix rate of this run (also the roofline's denominators)."""
    import torch
    dev = settings.device
    n = (1 << 28) if dev == "cuda" else (1 << 18)  # 1 GiB of float32 on a GPU
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), settings)["median_ms"]
    copy_gbs = 2 * n * 4 / (t * 1e-3) / 1e9
    rec.add(kind="ceiling", name="d2d_copy", bytes=2 * n * 4, median_ms=t, GBps=copy_gbs)
    side = 8192 if dev == "cuda" else 128
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = torch.randn(side, side, device=dev, dtype=dtype), torch.randn(side, side, device=dev, dtype=dtype)
    t = time_call(lambda: a @ b, settings)["median_ms"]
    tflops = 2 * side**3 / (t * 1e-3) / 1e12
    rec.add(kind="ceiling", name=f"{str(dtype)[6:]}_matmul", size=side, median_ms=t, TFLOPs=tflops)
    del src, dst, a, b
    return {"copy_GBps": copy_gbs, "matmul_TFLOPs": tflops}


# ------------------------------------------------------------------------------------------------ one op
@dataclass
class OpRun:
    """One op at one shape: ``providers`` name → callable; ``check(output) -> (ok, error)`` against the
    reference; ``bytes``/``flops``: compulsory work (for the shares of the ceilings); ``compile_s``: expected
    cold-compile seconds of a provider (for the deadline)."""

    op: str
    shape: str
    dtype: str
    providers: dict
    check: callable
    bytes: float
    flops: float = 0.0
    expected_s: dict | None = None
    bound: str = "copy"


def run_op(run: OpRun, rec: Recorder, settings: Settings, roof: dict) -> None:
    times = {}
    for name, fn in run.providers.items():
        expected = (run.expected_s or {}).get(name, 5.0)
        base = dict(kind="op", op=run.op, shape=run.shape, dtype=run.dtype, provider=name)
        if settings.left() < expected + 5:
            rec.add(**base, status="skipped", reason=f"{settings.left():.0f} s left, needs ~{expected:.0f} s")
            continue
        try:
            t0 = time.monotonic()
            out = fn()
            _sync(settings.device)
            first_s = time.monotonic() - t0
            ok, error = (True, 0.0) if name == "copy" else run.check(out)
            if not ok:
                rec.add(**base, status="wrong", error=error, first_call_s=round(first_s, 3))
                continue
            timing = time_call(fn, settings)
            row = dict(base, status="ok", max_error=error, first_call_s=round(first_s, 3), **timing)
            row.update(graph_time(fn, settings))
            row["peak_extra_MiB"] = peak_extra_mib(fn, settings)
            seconds = timing["median_ms"] * 1e-3
            row["GBps"] = run.bytes / seconds / 1e9
            row["pct_of_copy"] = 100 * row["GBps"] / roof["copy_GBps"]
            if run.flops:
                row["TFLOPs"] = run.flops / seconds / 1e12
                row["pct_of_matmul"] = 100 * row["TFLOPs"] / roof["matmul_TFLOPs"]
            times[name] = timing["median_ms"]
            rec.add(**row)
        except Exception as exc:  # one provider failing must not stop the run
            rec.add(**base, status="error", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                    traceback=traceback.format_exc()[-1500:])
            _sync_quietly(settings)
    ours = [n for n in times if n.startswith("coavs")]
    for mine in ours:
        rec.add(kind="ratio", op=run.op, shape=run.shape, dtype=run.dtype, provider=mine,
                speedup={peer: times[peer] / times[mine] for peer in times if peer not in (mine, "copy")})


def _sync_quietly(settings: Settings) -> None:
    try:
        _sync(settings.device)
    except Exception:
        pass


def _close(got, expected, atol, rtol) -> tuple[bool, float]:
    """Same NaN/±inf positions and finite values within tolerance; (ok, max abs error)."""
    import torch
    got, expected = got.double(), expected.double()
    if got.shape != expected.shape:
        return False, math.inf
    if not (torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())):
        return False, math.inf
    finite = expected.isfinite()
    if not finite.any():
        return True, 0.0
    err = (got[finite] - expected[finite]).abs()
    ok = bool((err <= atol + rtol * expected[finite].abs()).all())
    return ok, float(err.max())


def _all_close(outputs, expected, atol, rtol) -> tuple[bool, float]:
    worst = 0.0
    for g, e in zip(outputs, expected):
        ok, err = _close(g, e, atol, rtol)
        if not ok:
            return False, err
        worst = max(worst, err)
    return True, worst


def _coavs_providers(op: str, settings: Settings, call) -> dict:
    """``coavs[<backend>]`` providers for every backend of ``op`` that runs here (not the reference)."""
    import coavs.ops as ops
    from coavs.ops import _dispatch
    spec = _dispatch.REGISTRY[op]
    out = {}
    for backend in ("triton", "cuda", "native"):
        if _dispatch.availability(spec, backend, settings.device)[0]:
            def run(backend=backend):
                with ops.use_backend(backend):
                    return call()
            out[f"coavs[{backend}]"] = run
    return out


def _compiled(fn, settings: Settings):
    import torch
    return torch.compile(fn, backend="eager" if settings.dry_run else "inductor")


def _copy_of(nbytes: float, settings: Settings):
    """A copy moving ``nbytes`` (read + written) on the device: the op's bandwidth peer."""
    import torch
    src = torch.empty(max(1, int(nbytes) // 8), device=settings.device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


# ------------------------------------------------------------------------------------------------ the ops
def debias_runs(settings: Settings) -> list[OpRun]:
    import torch

    from coavs.ops import reference
    from coavs.ops.debias_logits import debias_logits_backward_op, debias_logits_op
    dev = settings.device
    shape = (20, 100, 256, 256) if not settings.dry_run else (2, 3, 8, 8)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    mask, mask_b = (torch.randn(shape, generator=g).to(dev, dtype) * 3 for _ in range(2))
    cls, cls_b = (torch.randn(*shape[:2], 72, generator=g).to(dev, dtype) * 3 for _ in range(2))
    grads = (torch.randn(shape, generator=g).to(dev, dtype), torch.randn(*shape[:2], 72, generator=g).to(dev, dtype))
    alpha = 1.0
    expected = [t.to(dtype) for t in reference.debias_logits(mask.float(), cls.float(), mask_b.float(),
                                                             cls_b.float(), alpha, False)]
    expected_b = [t.to(dtype) for t in reference.debias_logits_backward(grads[0].float(), grads[1].float(),
                                                                      mask_b.float(), cls_b.float(), alpha, False)]
    tol = (2e-2, 2e-2) if dtype == torch.bfloat16 else (1e-5, 1e-5)
    label = "x".join(map(str, shape)) + " K+1=72"
    elements = mask.numel() + cls.numel()
    forward = {**_coavs_providers("debias_logits", settings,
                                  lambda: debias_logits_op(mask, cls, mask_b, cls_b, alpha, False)),
               "eager": lambda: reference.debias_logits(mask, cls, mask_b, cls_b, alpha, False)}
    compiled = _compiled(reference.debias_logits, settings)
    forward["torch.compile"] = lambda: compiled(mask, cls, mask_b, cls_b, alpha, False)
    forward["copy"] = _copy_of(3 * elements * mask.element_size(), settings)
    backward = {**_coavs_providers("debias_logits_backward", settings,
                                   lambda: debias_logits_backward_op(*grads, mask_b.new_empty(0), cls_b.new_empty(0),
                                                                     alpha, False)),
                "eager": lambda: reference.debias_logits_backward(*grads, mask_b, cls_b, alpha, False)}
    backward["copy"] = _copy_of(3 * elements * mask.element_size(), settings)
    return [
        OpRun("debias_logits", label, str(dtype)[6:], forward, lambda out: _all_close(out, expected, *tol),
              3 * elements * mask.element_size(), expected_s={"torch.compile": 40}),
        OpRun("debias_logits_backward", label, str(dtype)[6:], backward,
              lambda out: _all_close(out, expected_b, *tol), 3 * elements * mask.element_size()),
    ]


def assign_runs(settings: Settings) -> list[OpRun]:
    import torch

    from coavs.ops import reference
    from coavs.ops.assign_queries import assign_queries_backward_op, assign_queries_op
    dev = settings.device
    b, s, d, q, width = (20, 20, 5, 100, 256) if not settings.dry_run else (2, 3, 2, 7, 8)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(1)
    scores = torch.rand(b, s, generator=g).to(dev)
    audio = torch.randn(b, width, generator=g).to(dev, dtype)
    feat = torch.randn(q, width, generator=g).to(dev, dtype)
    args = (scores, audio, feat, d, 0.4, 0.0, True)
    expected = reference.assign_queries(*args)
    queries, gate, active = expected
    grad_q = torch.randn(b, q, width, generator=g).to(dev, dtype)
    grad_gate = torch.randn(b, q, generator=g).to(dev)
    back_args = (grad_q, grad_gate, audio, gate, active, s, d, True)
    expected_b = reference.assign_queries_backward(*back_args)
    tol = (2e-2, 2e-2) if dtype == torch.bfloat16 else (1e-5, 1e-5)
    label = f"B{b} S{s} d{d} Q{q} D{width}"
    nbytes = (b * q * width + q * width + b * width) * audio.element_size()
    forward = {**_coavs_providers("assign_queries", settings, lambda: assign_queries_op(*args)),
               "eager": lambda: reference.assign_queries(*args)}
    compiled = _compiled(reference.assign_queries, settings)
    forward["torch.compile"] = lambda: compiled(*args)
    forward["copy"] = _copy_of(nbytes, settings)
    backward = {**_coavs_providers("assign_queries_backward", settings,
                                   lambda: assign_queries_backward_op(*back_args)),
                "eager": lambda: reference.assign_queries_backward(*back_args)}
    backward["copy"] = _copy_of(nbytes, settings)
    return [
        OpRun("assign_queries", label, str(dtype)[6:], forward, lambda out: _all_close(out, expected, *tol), nbytes,
              expected_s={"torch.compile": 40}),
        OpRun("assign_queries_backward", label, str(dtype)[6:], backward,
              lambda out: _all_close(out, expected_b, *tol), nbytes),
    ]


def matching_runs(settings: Settings) -> list[OpRun]:
    import torch

    from coavs.ops import reference
    from coavs.ops.matching_cost import matching_cost_op
    dev = settings.device
    b, q, gt, p, k = (20, 100, 10, 12544, 72) if not settings.dry_run else (2, 6, 3, 40, 5)
    g = torch.Generator(device="cpu").manual_seed(2)
    x = (torch.randn(b, q, p, generator=g) * 3).to(dev)
    t = (torch.rand(b, gt, p, generator=g) > 0.5).float().to(dev)
    c = torch.randn(b, q, k, generator=g).to(dev)
    labels = torch.randint(0, k - 1, (b, gt), generator=g).to(dev)
    allowed = (torch.rand(b, q, gt, generator=g) < 0.3).to(dev)
    counts = torch.randint(1, gt + 1, (b,), generator=g).to(dev)
    args = (x, t, c, labels, allowed, counts, 2.0, 5.0, 5.0)
    expected = reference.matching_cost(x.double(), t.double(), c.double(), *args[3:])
    providers = {**_coavs_providers("matching_cost", settings, lambda: matching_cost_op(*args)),
                 "eager": lambda: reference.matching_cost(*args)}
    compiled = _compiled(reference.matching_cost, settings)
    providers["torch.compile"] = lambda: compiled(*args)
    nbytes = 4 * (x.numel() + t.numel() + c.numel() + b * q * gt) + 8 * labels.numel()
    providers["copy"] = _copy_of(nbytes, settings)
    return [OpRun("matching_cost", f"B{b} Q{q} G{gt} P{p} K+1={k}", "float32", providers,
                  lambda out: _close(out, expected, 2e-4, 2e-5), nbytes, expected_s={"torch.compile": 60})]


def semantic_runs(settings: Settings) -> list[OpRun]:
    import torch

    import coavs.ops as ops
    from coavs.ops import reference
    dev = settings.device
    shapes = [(20, 100, 56, 224), (20, 100, 128, 512)] if not settings.dry_run else [(2, 5, 6, 13)]
    k = 71
    runs = []
    for b, q, side, size in shapes:
        g = torch.Generator(device="cpu").manual_seed(3)
        mask = (torch.randn(b, q, side, side, generator=g) * 3).to(dev)
        cls = (torch.randn(b, q, k + 1, generator=g) * 3).to(dev)
        out_size = (size, size)
        scores = reference.semantic_scores(mask, cls, out_size)  # float32 eager, [B,K,H,W]
        top2 = scores.topk(2, dim=1).values
        best = top2[:, 0]
        decisive = (top2[:, 0] - top2[:, 1]) > 1e-4

        def check(labels, scores=scores, best=best, decisive=decisive):
            if labels.shape != best.shape or labels.dtype != torch.int64:
                return False, math.inf
            chosen = scores.gather(1, labels.clamp(0, k - 1)[:, None])[:, 0]
            gap = float((best - chosen).max())
            exact = float((labels == scores.argmax(1))[decisive].float().mean())
            return gap <= 1e-4 * max(1.0, float(best.abs().max())) and exact == 1.0, gap

        providers = {**_coavs_providers("semantic_inference", settings,
                                        lambda mask=mask, cls=cls: ops.semantic_inference(mask, cls, out_size)),
                     "eager": lambda mask=mask, cls=cls: reference.semantic_inference(mask, cls, out_size)}
        compiled = _compiled(reference.semantic_inference, settings)
        providers["torch.compile"] = lambda mask=mask, cls=cls: compiled(mask, cls, out_size)
        nbytes = 4 * (mask.numel() + cls.numel()) + 8 * b * size * size
        providers["copy"] = _copy_of(nbytes, settings)
        flops = 2 * b * size * size * q * k  # the class mixture (tensor-core work)
        runs.append(OpRun("semantic_inference", f"B{b} Q{q} K{k} {side}->{size}", "float32", providers, check,
                          nbytes, flops=flops, expected_s={"torch.compile": 60, "eager": 10}, bound="matmul"))
        del scores
    return runs


# In order of what the issue asks of a GPU run: semantic inference against torch.compile of the eager formula, the
# elementwise ops against the copy bandwidth, then the matching cost.
OPS = {"semantic": semantic_runs, "debias": debias_runs, "assign": assign_runs, "matching": matching_runs}


# ------------------------------------------------------------------------------------------------ summary
def summary_markdown(rows: list[dict]) -> str:
    lines = ["# GPU check: measurements", ""]
    for r in rows:
        if r.get("kind") == "ceiling":
            value = f"{r['GBps']:.0f} GB/s" if "GBps" in r else f"{r['TFLOPs']:.1f} TFLOP/s"
            lines.append(f"- ceiling {r['name']}: {value} ({r['median_ms']:.3f} ms)")
        elif r.get("kind") == "info":
            lines.append(f"- {r.get('name')}: {r.get('value')}")
    lines += ["", "| op | shape | dtype | provider | status | median ms | graph ms | first call s | peak MiB | "
              "% copy BW | % bf16 matmul | max error |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def fmt(v, spec=".4g"):
        return "" if v is None else (format(v, spec) if isinstance(v, (int, float)) else str(v))

    for r in rows:
        if r.get("kind") != "op":
            continue
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error') or r.get('reason')}"
        graph = r.get("graph_ms", r.get("graph"))
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | {status} | "
                     f"{fmt(r.get('median_ms'))} | {fmt(graph)} | {fmt(r.get('first_call_s'))} | "
                     f"{fmt(r.get('peak_extra_MiB'))} | {fmt(r.get('pct_of_copy'), '.1f')} | "
                     f"{fmt(r.get('pct_of_matmul'), '.1f')} | {fmt(r.get('max_error'))} |")
    ratios = [r for r in rows if r.get("kind") == "ratio"]
    if ratios:
        lines += ["", "Speed-up of each coavs backend over every peer of the same op and shape (peer time / ours):", ""]
        for r in ratios:
            peers = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())
            lines.append(f"- {r['op']} {r['shape']} {r['provider']}: {peers}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=150.0, help="time budget of the whole driver")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter (CI)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(OPS)}")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.dry_run:
        print("gpu_check: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    settings = Settings(device, args.dry_run, reps=2 if args.dry_run else 30,
                        deadline=time.monotonic() + args.seconds)
    rec = Recorder(args.out)
    rec.add(kind="info", name="device", value=torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)")
    rec.add(kind="info", name="versions", value=f"torch {torch.__version__}, python {sys.version.split()[0]}")
    failures = 0
    try:
        roof = ceilings(rec, settings)
    except Exception as exc:
        rec.add(kind="error", name="ceilings", error=f"{type(exc).__name__}: {exc}")
        return 1
    for name in (args.only.split(",") if args.only else OPS):
        try:
            runs = OPS[name](settings)
        except Exception as exc:
            failures += 1
            rec.add(kind="error", name=name, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                    traceback=traceback.format_exc()[-1500:])
            continue
        for run in runs:
            run_op(run, rec, settings, roof)
        del runs
        if device == "cuda":
            torch.cuda.empty_cache()
    bad = [r for r in rec.rows if r.get("status") in ("wrong", "error") and r.get("provider", "").startswith("coavs")]
    rec.add(kind="info", name="result", value=f"{len(bad)} coavs providers wrong or failing; {failures} ops not set up")
    return 1 if bad or failures else 0


if __name__ == "__main__":
    sys.exit(main())
