"""Shared benchmark plumbing: timing, device labels, the copy-bandwidth baseline, result files.

Every benchmark compares against its baseline in the same run and writes
``benchmarks/results/<device>/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_label(device: torch.device) -> str:
    """A folder-safe device name, e.g. ``NVIDIA_H100_80GB_HBM3`` or ``cpu-2cores``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{torch.get_num_threads()}threads"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int = 3, min_time_s: float = 0.2, max_reps: int = 200) -> dict:
    """Median, 20% and 80% quantiles of ``fn()`` in milliseconds (CUDA events on GPU, wall clock on CPU)."""
    if device.type == "cuda":
        import triton.testing

        med, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
        return {"median_ms": med, "p20_ms": lo, "p80_ms": hi}
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (time.perf_counter() - start < min_time_s or len(samples) < 3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=5) if len(samples) >= 5 else [min(samples)] * 4
    return {"median_ms": statistics.median(samples), "p20_ms": q[0], "p80_ms": q[-1]}


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Peak extra device memory of one ``fn()`` call in MiB (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def copy_bandwidth_gbs(nbytes: int, device: torch.device) -> float:
    """Device-to-device copy bandwidth (read + write) for a buffer of ``nbytes``, measured now."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src), device)["median_ms"]
    return 2 * src.numel() * 4 / (t * 1e-3) / 1e9


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (a subfolder per device)")
    return parser


def environment(device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(out: Path, name: str, device: torch.device, rows: list[dict], notes: str = "") -> Path:
    """Writes ``<out>/<device>/<name>.json`` and ``.md`` (a table of every row) and returns the folder."""
    folder = out / device_label(device)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"env": environment(device), "rows": rows}, indent=2))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [f"# {name} on {environment(device)['device']}", "", notes, "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    return folder


def print_table(rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
