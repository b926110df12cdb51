"""Shared benchmark plumbing: the provider loop, timing, device labels, the copy-bandwidth baseline, the roofline,
result files.

Every benchmark follows one flow: build ``{provider name: zero-argument callable}`` for a shape, hand it to
:func:`measure` (interleaved timing on CPU, CUDA-event timing on GPU, peak memory on GPU, ratios against the
baselines, one row per provider), collect the rows, then :func:`report` adds the roofline columns, prints the table
and writes ``benchmarks/results/<device>/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from coavs import jsonio

RESULTS = Path(__file__).resolve().parent / "results"


def device_label(device: torch.device) -> str:
    """A folder-safe device name, e.g. ``NVIDIA_H100_80GB_HBM3`` or ``cpu-amd-25-17-1threads`` (vendor, family and
    model: CPU timings differ up to ~2x between machines, so each CPU keeps its own results)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        fields = _cpuinfo()
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), "")
        family = "-".join(fields[k] for k in ("cpu family", "model") if k in fields)
        name = "-".join(part for part in ("cpu", vendor, family, f"{torch.get_num_threads()}threads") if part)
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


@dataclass(frozen=True)
class Ratio:
    """One ratio column of :func:`measure`: ``baseline time / provider time`` (a speed-up; ``inverse``: provider
    time / baseline time, a cost ratio) of the measurement ``of`` (``median_ms``, or ``cpu_ms`` when measured),
    written on the rows of ``rows`` (None: every measured provider, the baseline's own row included). A row gets no
    column when the baseline failed or was not measured."""

    column: str
    baseline: str
    inverse: bool = False
    rows: tuple[str, ...] | None = None
    of: str = "median_ms"


def _summary(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=5) if len(values) >= 2 else [values[0]] * 4
    return {"median_ms": statistics.median(values), "p20_ms": q[0], "p80_ms": q[-1]}


def interleaved(providers: Mapping[str, Callable[[], object]], *, warmup: int = 3, min_time_s: float = 1.0,
                min_rounds: int = 5, max_rounds: int = 200, cpu_time: bool = False) -> dict:
    """CPU timing: every round calls each provider once, in turn, so load from other processes on a shared machine
    hits them alike. Stops after ``max_rounds``, or once ``min_rounds`` are done and ``min_time_s`` has passed.
    Returns ``name -> {"median_ms", "p20_ms", "p80_ms"[, "cpu_ms"]}`` (``cpu_ms``: median process CPU time of all
    threads, which other processes disturb far less) or ``name -> exception`` for a provider that raised (in warm-up
    or later; it is dropped from the remaining rounds)."""
    live, failed = dict(providers), {}
    for name, fn in list(live.items()):
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # a provider that cannot run here is reported, not fatal
            failed[name] = exc
            del live[name]
    wall: dict = {name: [] for name in live}
    cpu: dict = {name: [] for name in live}
    start, rounds = time.perf_counter(), 0
    while live and rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < min_time_s):
        for name, fn in list(live.items()):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                fn()
            except Exception as exc:
                failed[name] = exc
                del live[name]
                continue
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
        rounds += 1
    results: dict = {}
    for name in providers:
        if name in failed:
            results[name] = failed[name]
            continue
        results[name] = _summary(wall[name])
        if cpu_time:
            results[name]["cpu_ms"] = statistics.median(cpu[name])
    return results


def measure(providers: Mapping[str, Callable[[], object]], device: torch.device, *, fields: dict | None = None,
            ratios: Sequence[Ratio] = (), warmup: int = 3, min_time_s: float = 1.0, min_rounds: int = 5,
            max_rounds: int = 200, memory: bool = True, cpu_time: bool = False) -> list[dict]:
    """The provider loop every benchmark uses: times each ``providers[name]()`` and returns one row per provider,
    in the dict's order: ``{**fields, "provider", "median_ms", "p20_ms", "p80_ms"[, "cpu_ms"][, "peak_MiB"],
    <ratio columns>}``, or ``{**fields, "provider", "error"}`` for a provider that raised (reported, not fatal).

    CPU: :func:`interleaved` rounds (``warmup`` … ``cpu_time`` are its knobs). GPU: :func:`time_ms` per provider
    (triton's ``do_bench``: CUDA events, caches flushed). ``memory``: a ``peak_MiB`` column (extra device memory of
    one call; None on CPU). ``ratios``: the :class:`Ratio` columns, computed from this call's measurements."""
    fields = dict(fields or {})
    if device.type == "cpu":
        timings = interleaved(providers, warmup=warmup, min_time_s=min_time_s, min_rounds=min_rounds,
                              max_rounds=max_rounds, cpu_time=cpu_time)
    else:
        timings = {}
        for name, fn in providers.items():
            try:
                timings[name] = time_ms(fn, device)
            except Exception as exc:  # a provider that cannot run here is reported, not fatal
                timings[name] = exc
    rows = []
    for name, fn in providers.items():
        t = timings[name]
        if isinstance(t, Exception):
            rows.append({**fields, "provider": name, "error": f"{type(t).__name__}: {t}"[:80]})
            continue
        row = {**fields, "provider": name, **t}
        if memory:
            row["peak_MiB"] = peak_memory_mb(fn, device)
        rows.append(row)
    measured = {row["provider"]: row for row in rows if "error" not in row}
    for ratio in ratios:
        base = measured.get(ratio.baseline, {}).get(ratio.of)
        if not base:
            continue
        for name, row in measured.items():
            if (ratio.rows is None or name in ratio.rows) and row.get(ratio.of):
                row[ratio.column] = row[ratio.of] / base if ratio.inverse else base / row[ratio.of]
    return rows


def report(rows: list[dict], device: torch.device, out: Path, name: str, notes: str = "", work_of=None) -> Path:
    """The end of every benchmark: the roofline columns (when ``work_of(row)`` gives a :class:`Work`, see
    :func:`add_roofline`), the notes and the table on stdout, and ``<out>/<device>/<name>.json`` and ``.md``."""
    if work_of is not None:
        add_roofline(rows, device, work_of)
    if notes:
        print(notes)
    print_table(rows)
    folder = write_results(out, name, device, rows, notes)
    print(f"results in {folder}")
    return folder


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


def cpu_model() -> str:
    """The host CPU as /proc/cpuinfo names it, with its family/model numbers and torch's vector ISA (CPU timings
    differ up to ~2x between machines that both say "Intel Xeon"): e.g. ``Intel(R) Xeon(R) Processor (6/207,
    AVX512)``. Falls back to ``platform.processor()`` where /proc/cpuinfo is missing."""
    fields = _cpuinfo()
    name = fields.get("model name") or platform.processor() or "cpu"
    if "cpu family" in fields and "model" in fields:
        name += f" ({fields['cpu family']}/{fields['model']}, {torch.backends.cpu.get_cpu_capability()})"
    return name


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def environment(device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "roofline_peaks": ROOFLINE_PEAKS,
    }


def write_results(out: Path, name: str, device: torch.device, rows: list[dict], notes: str = "") -> Path:
    """Writes ``<out>/<device>/<name>.json`` and ``.md`` (a table of every row) and returns the folder."""
    folder = out / device_label(device)
    folder.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    jsonio.write_json(folder / f"{name}.json", {"env": env, "rows": rows})  # NaN -> null
    columns = list(dict.fromkeys(k for row in rows for k in row))
    where = env["device"] if device.type == "cuda" else f"cpu: {env['cpu']}, {env['threads']} thread(s)"
    lines = [f"# {name} on {where}", "", notes, "",
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


# ---------------------------------------------------------------------------------------------------------------
# Roofline: the compulsory work of a call and the lower bound it puts on the time.
#
# The figures every benchmark uses (NVIDIA datasheets, SXM parts, dense, no sparsity). bf16/fp16 matmul FLOPs are
# bounded by the tensor-core figure; every other FLOP (elementwise, reductions, fp32 matmuls without TF32) by the
# fp32 non-tensor figure. The bound is max(bytes / HBM bandwidth, tensor FLOPs / tensor peak + other FLOPs / fp32
# peak); bytes are the compulsory traffic: every input read once, every output written once.
ROOFLINE_PEAKS = {
    "H100": {"hbm_TBps": 3.35, "bf16_dense_TFLOPs": 989.0, "fp32_TFLOPs": 67.0},
    "H200": {"hbm_TBps": 4.8, "bf16_dense_TFLOPs": 989.0, "fp32_TFLOPs": 67.0},
}


@dataclass(frozen=True)
class Work:
    """Compulsory work of one call: bytes moved (inputs once + outputs once) and FLOPs, split into matmul FLOPs
    that tensor cores can run (16-bit operands) and all other FLOPs."""

    bytes: float
    tensor_flops: float = 0.0
    other_flops: float = 0.0

    @property
    def flops(self) -> float:
        return self.tensor_flops + self.other_flops

    def __add__(self, other: "Work") -> "Work":
        return Work(self.bytes + other.bytes, self.tensor_flops + other.tensor_flops,
                    self.other_flops + other.other_flops)


def matmul_flops(flops: float, dtype: torch.dtype) -> Work:
    """``flops`` of matmul work: tensor-core FLOPs for 16-bit dtypes, fp32 FLOPs otherwise."""
    return Work(0, flops, 0) if dtype in (torch.float16, torch.bfloat16) else Work(0, 0, flops)


def nbytes(*tensors_or_counts) -> int:
    """Total bytes of tensors (or of (numel, dtype) pairs)."""
    total = 0
    for t in tensors_or_counts:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        else:
            numel, dtype = t
            total += int(numel) * torch.empty((), dtype=dtype).element_size()
    return total


def lower_bound_s(work: Work, gpu: str) -> float:
    peak = ROOFLINE_PEAKS[gpu]
    memory = work.bytes / (peak["hbm_TBps"] * 1e12)
    compute = work.tensor_flops / (peak["bf16_dense_TFLOPs"] * 1e12) + work.other_flops / (peak["fp32_TFLOPs"] * 1e12)
    return max(memory, compute)


def _gpu_of(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gpu for gpu in ROOFLINE_PEAKS if gpu in name), None)


_COPY_MS: dict = {}


def copy_ms(total_bytes: int, device: torch.device) -> float:
    """Median time of ``y.copy_(x)`` with x and y of ``total_bytes / 2`` bytes each, both allocated and touched
    before timing, so that the copy moves ``total_bytes`` (read + write) like the op it is compared with and
    nothing else (a fresh CPU allocation of this size is mmapped and page-faults on its first write: 4 GB/s
    instead of 25 at 173 MB on one core); measured once per size and run."""
    key = (int(total_bytes), str(device))
    if key not in _COPY_MS:
        x = torch.empty(max(1, int(total_bytes) // 8), dtype=torch.float32, device=device).fill_(1.0)
        y = torch.zeros_like(x)
        _COPY_MS[key] = time_ms(lambda: y.copy_(x), device)["median_ms"]
    return _COPY_MS[key]


def roofline_fields(work: Work, median_ms: float | None, device: torch.device) -> dict:
    """The roofline columns of one measurement: MB, GFLOP, the H100/H200 lower bounds, and the share of the bound
    reached (GPU: the bound of this GPU when it is an H100/H200; CPU: a copy of the same bytes, measured now)."""
    fields = {"MB": work.bytes / 1e6, "GFLOP": work.flops / 1e9}
    for gpu in ROOFLINE_PEAKS:
        fields[f"{gpu}_bound_us"] = lower_bound_s(work, gpu) * 1e6
    h100 = ROOFLINE_PEAKS["H100"]
    memory_s = work.bytes / (h100["hbm_TBps"] * 1e12)
    fields["bound_by"] = "memory" if memory_s >= lower_bound_s(work, "H100") else "compute"
    if median_ms is None or median_ms <= 0:
        return fields
    fields["achieved_GB/s"] = work.bytes / (median_ms * 1e-3) / 1e9
    fields["achieved_GFLOP/s"] = work.flops / (median_ms * 1e-3) / 1e9
    gpu = _gpu_of(device)
    if gpu is not None:
        fields["pct_of_bound"] = 100 * lower_bound_s(work, gpu) * 1e3 / median_ms
    elif device.type == "cpu" and work.bytes > 0:
        copy = copy_ms(work.bytes, device)
        fields["copy_GB/s"] = work.bytes / (copy * 1e-3) / 1e9
        fields["pct_of_copy"] = 100 * copy / median_ms
    return fields


def add_roofline(rows: list[dict], device: torch.device, work_of) -> list[dict]:
    """Adds the roofline columns to every row that has a ``median_ms`` and for which ``work_of(row)`` returns a
    :class:`Work` (None: no roofline for that row, e.g. host-side work), prints one roofline line per distinct
    work and returns the rows."""
    print(roofline_legend(device))
    seen = set()
    for row in rows:
        if row.get("median_ms") is None:
            continue
        work = work_of(row)
        if work is None:
            continue
        row.update(roofline_fields(work, row["median_ms"], device))
        if work not in seen:
            seen.add(work)
            label = ", ".join(f"{k}={row[k]}" for k in row if k in ROOFLINE_KEYS)
            print(f"roofline [{label}]: {work.bytes / 1e6:.4g} MB, {work.flops / 1e9:.4g} GFLOP -> "
                  + ", ".join(f"{gpu} >= {lower_bound_s(work, gpu) * 1e6:.4g} us" for gpu in ROOFLINE_PEAKS))
    return rows


# Row fields that identify a shape in the roofline lines.
ROOFLINE_KEYS = ("shape", "dtype", "mode", "level", "N", "active", "config")


def roofline_legend(device: torch.device) -> str:
    peaks = "; ".join(f"{gpu}: HBM {p['hbm_TBps']} TB/s, bf16 dense {p['bf16_dense_TFLOPs']:g} TFLOP/s, fp32 "
                      f"{p['fp32_TFLOPs']:g} TFLOP/s" for gpu, p in ROOFLINE_PEAKS.items())
    if _gpu_of(device):
        share = f"pct_of_bound: the {_gpu_of(device)} bound / measured time"
    elif device.type == "cpu":
        share = ("pct_of_copy: time of y.copy_(x) into an allocated y, moving the same bytes, measured in this run "
                 "/ measured time (copy_GB/s: that copy's bandwidth)")
    else:
        share = "no share: not an H100/H200"
    return f"roofline peaks: {peaks}. Bytes: inputs read once + outputs written once. {share}."
