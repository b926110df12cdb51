"""Resource report of every compiled kernel for one target: registers, spills, shared memory, occupancy.

    python -m benchmarks.compile_report [--arch 90] [--jobs 2] [--out benchmarks/results/compile] [--no-cuda] [--full]

Triton: every distinct launch of ``benchmarks.compile_check`` (all ops, dtypes, flags, shape classes, autotune
configs) compiled for ``sm_<arch>``; registers and spills from ptxas's ``-v`` log, shared memory from the kernel
metadata. CUDA: every source in ``csrc/build.json``'s ``cuda_sources`` compiled with ``nvcc -Xptxas -v`` for
the same arch; threads per block from the kernels' ``__launch_bounds__``. Instructions per kernel: PTX counts of
``wgmma.mma_async``, ``mma.sync``, ``cp.async`` (and ``cp.async.bulk``, ``ldmatrix``) and SASS counts of ``HGMMA``,
``HMMA``, ``LDGSTS``, ``UTMALDG`` and local-memory ``LDL``/``STL`` (Triton's bundled ``cuobjdump``), for the Triton
launches and the CUDA objects alike. Launches and host reads per op and backend: ``benchmarks/op_launches.py`` in a
subprocess (Triton under the interpreter). Writes ``sm_<arch>.md`` and ``sm_<arch>.json``.

Occupancy on sm_90 (H100/H200): 65536 registers, 2048 threads, 32 blocks and 228 KiB shared memory per SM,
227 KiB per block, registers allocated per warp in units of 256, 1 KiB of shared memory reserved per block:

    warps W = threads / 32,  regs/warp = ceil(regs·32 / 256)·256
    blocks/SM = min(32, floor(2048 / threads), floor(floor(65536 / regs/warp) / W),
                    floor(228 KiB / (smem + 1 KiB)))                 (0 when smem > 227 KiB)
    occupancy = blocks/SM · W / 64                                   (64 = 2048 / 32 warps per SM)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "compile"
SM = {"regs": 65536, "threads": 2048, "blocks": 32, "smem": 228 * 1024, "smem_block": 227 * 1024,
      "reserved": 1024, "warp_alloc": 256}


def occupancy(regs: int, threads: int, smem: int) -> tuple[int, float]:
    """``(blocks per SM, occupancy)`` with the sm_90 limits above."""
    warps = math.ceil(threads / 32)
    if smem > SM["smem_block"] or warps == 0:
        return 0, 0.0
    regs_per_warp = math.ceil(max(regs, 1) * 32 / SM["warp_alloc"]) * SM["warp_alloc"]
    blocks = min(SM["blocks"], SM["threads"] // (warps * 32), (SM["regs"] // regs_per_warp) // warps,
                 SM["smem"] // (smem + SM["reserved"]))
    return blocks, blocks * warps / (SM["threads"] // 32)


# ------------------------------------------------------------------------------------------------------ CUDA

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _threads_per_block(source: Path) -> int | None:
    """The block size of the file's kernels: its ``__launch_bounds__`` (resolved through ``constexpr int``
    constants in the file and the ``csrc/`` headers it includes) when they all agree."""
    texts = [source.read_text()]
    for include in re.findall(r'#include\s+"([^"]+)"', texts[0]):
        header = ROOT / "csrc" / include
        if header.exists():
            texts.append(header.read_text())
    text = "\n".join(texts)
    constants = {name: int(value) for name, value in re.findall(r"constexpr\s+int\w*\s+(\w+)\s*=\s*(\d+)\s*;", text)}
    bounds = {constants.get(b, int(b) if b.isdigit() else None) for b in re.findall(r"__launch_bounds__\((\w+)", text)}
    return bounds.pop() if len(bounds) == 1 and None not in bounds else None


def cuda_kernels(arch: int) -> list[dict]:
    """ptxas resources of every kernel in ``csrc/build.json``'s CUDA sources (empty list without nvcc)."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.exists():
        print(f"no nvcc at {nvcc}: CUDA kernels left out", file=sys.stderr)
        return []
    import torch
    from torch.utils import cpp_extension

    build = json.loads((ROOT / "csrc" / "build.json").read_text())
    includes = [str(ROOT / d) for d in build["include_dirs"]] + cpp_extension.include_paths() + \
        [sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    rows = []
    for source in build["cuda_sources"]:
        path = ROOT / source
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(nvcc), *build["nvcc_flags"], *getattr(cpp_extension, "COMMON_NVCC_FLAGS", []),
                   f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
                   f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c", str(path),
                   "-o", str(Path(tmp) / "out.o"), *[f"-I{d}" for d in includes]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            sass = _object_sass(Path(tmp) / "out.o") if proc.returncode == 0 else {}
        if proc.returncode != 0:
            rows.append({"source": source, "error": proc.stderr.strip()[-600:]})
            continue
        threads = _threads_per_block(path)
        current = None
        found = []
        for line in (proc.stdout + "\n" + proc.stderr).splitlines():
            if m := _ENTRY.search(line):
                current = {"source": source, "mangled": m.group(1), "threads": threads, "stack": 0,
                           "spill_stores": 0, "spill_loads": 0}
                found.append(current)
            elif current is not None and (m := _FRAME.search(line)):
                current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            elif current is not None and (m := _USED.search(line)):
                smem = _SMEM.search(line)
                current.update(n_regs=int(m.group(1)), shared=int(smem.group(1)) if smem else 0)
        names = _demangle([r["mangled"] for r in found])
        for row in found:
            row["kernel"] = names[row["mangled"]]
            row["sass"] = sass.get(row["mangled"])
            if threads:
                row["blocks_per_sm"], row["occupancy"] = occupancy(row.get("n_regs", 0), threads, row.get("shared", 0))
        rows.extend(found)
    return rows


def _object_sass(obj: Path) -> dict:
    """Mangled kernel name -> SASS opcode counts (``compile_check.SASS_COUNTS``) of an object file."""
    from benchmarks.compile_check import SASS_COUNTS, cuobjdump
    tool = cuobjdump()
    if tool is None:
        return {}
    proc = subprocess.run([tool, "-sass", str(obj)], capture_output=True, text=True)
    counts, current = {}, None
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            counts[current] = {name: 0 for name in SASS_COUNTS}
        elif current is not None:
            for name, pattern in SASS_COUNTS.items():
                counts[current][name] += len(re.findall(pattern, line))
    return counts


def op_launches() -> list[dict]:
    """``benchmarks.op_launches``'s census (launches and host reads per op, backend and direction), measured in
    a subprocess under the Triton interpreter (this process compiles kernels and must not interpret them)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "launches.json"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.op_launches", "--json", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        if not out.exists():
            print(f"op launches not measured (exit {proc.returncode}): {proc.stderr.strip()[-400:]}", file=sys.stderr)
            return []
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------- report

def triton_kernels(arch: int, jobs: int, full: bool) -> tuple[list[dict], dict]:
    from benchmarks import compile_check
    compile_check.FULL = full
    summary = compile_check.run((arch,), jobs, ptxas="all", sass=True)
    rows = []
    for launch in summary["launches"]:
        row = {k: launch.get(k) for k in ("op", "kernel", "case", "config", "pruned", "ok", "error", "n_regs",
                                           "spill_stores", "spill_loads", "shared", "num_warps", "seconds", "ptx",
                                           "sass")}
        row["constexprs"] = launch["constexprs"]
        if launch["ok"]:
            row["threads"] = launch["num_warps"] * 32
            row["blocks_per_sm"], row["occupancy"] = occupancy(launch["n_regs"] or 0, row["threads"],
                                                               launch["shared"])
        rows.append(row)
    return rows, summary


def _span(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _instruction_lines(triton_rows: list[dict], cuda_rows: list[dict]) -> list[str]:
    """Tensor-core and async-copy instructions per kernel and dtype (ranges over the launches)."""
    lines = ["## Tensor cores and asynchronous copies, per kernel and dtype", "",
             "PTX: `wgmma` (`wgmma.mma_async`, Hopper's warpgroup MMA), `mma.sync` (per-warp MMA), `cp.async` "
             "(global→shared asynchronous copy, what `num_stages` pipelining emits), `bulk` (`cp.async.bulk`, the "
             "tensor-memory accelerator). SASS (cuobjdump): `HGMMA`, `HMMA`, `LDGSTS`, `UTMALDG`, and `LDL/STL` "
             "(local memory). Counts are static instructions in the kernel, ranges over its launches.", "",
             "| op | kernel | dtype | launches | wgmma | mma.sync | cp.async | bulk | HGMMA | HMMA | LDGSTS | UTMALDG "
             "| LDL/STL |", "|---|---|---|---:|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in triton_rows:
        if r["ok"] and r.get("ptx"):
            kind = " (autotune)" if r["config"] else ""
            groups.setdefault((r["op"], r["kernel"] + kind, r["case"].split()[0]), []).append(r)
    for (op, kernel, dtype), rows in sorted(groups.items()):
        ptx = [r["ptx"] for r in rows]
        sass = [r["sass"] for r in rows if r.get("sass")]
        cells = [_span([p[k] for p in ptx]) for k in ("wgmma", "mma_sync", "cp_async", "cp_async_bulk")]
        cells += [_span([x[k] for x in sass]) for k in ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "local")]
        lines.append(f"| {op} | {kernel} | {dtype} | {len(rows)} | " + " | ".join(cells) + " |")
    cuda = [r for r in cuda_rows if r.get("sass")]
    if cuda:
        lines += ["", "| CUDA source | kernel | HGMMA | HMMA | LDGSTS | UTMALDG | LDL/STL |", "|---|---|---|---|---|---|---|"]
        for r in cuda:
            x = r["sass"]
            lines.append(f"| {r['source']} | `{r['kernel'].split('(')[0]}` | {x['HGMMA']} | {x['HMMA']} | {x['LDGSTS']} "
                         f"| {x['UTMALDG']} | {x['local']} |")
    return lines + [""]


def _launch_lines(census: list[dict]) -> list[str]:
    if not census:
        return ["## Launches and host reads per op", "", "Not measured (see stderr).", ""]
    from benchmarks.op_launches import markdown_rows
    return ["## Launches and host reads per op", "",
            "Measured on the CPU by `benchmarks/op_launches.py` (every backend that runs there; Triton under the "
            "interpreter): a launch is an ATen compute op, a Triton kernel or a C++ op, each one kernel or copy on "
            "a GPU; a host read is anything that waits for the GPU (`.item()`, `bool(t)`, `.tolist()`, boolean "
            "indexing, ...). The shapes are `tests/support/op_cases.py`'s small ones.", "",
            *markdown_rows(census), ""]


def _markdown(arch: int, triton_rows: list[dict], cuda_rows: list[dict], summary: dict,
              census: list[dict] | None = None) -> str:
    ok = [r for r in triton_rows if r["ok"]]
    lines = [f"# Kernel resources on sm_{arch}", "",
             "Generated by `python -m benchmarks.compile_report` (Triton "
             f"{__import__('triton').__version__}, no GPU needed{', --full' if summary.get('full') else ''}). "
             "Occupancy formula: see the module docstring "
             "(65536 regs, 2048 threads, 32 blocks, 228 KiB smem per SM; 227 KiB per block).", ""]
    if not summary.get("full"):
        lines += ["Without `--full`: masked_cross_attention at head dims 128/256 and its autotune configs away from "
                  "the benchmark shapes are not in this table.", ""]
    lines += [f"Triton: {len(triton_rows)} distinct launches, {len(triton_rows) - len(ok)} failed to compile; "
              f"max registers {max((r['n_regs'] or 0) for r in ok) if ok else '-'}; "
              f"launches with spills {sum(1 for r in ok if r['spill_stores'] or r['spill_loads'])} "
              f"(default configs: {sum(1 for r in ok if r['config'] is None and (r['spill_stores'] or r['spill_loads']))}); "
              f"max shared memory {max((r['shared'] for r in ok), default=0)} B; compile wall {summary['wall_s']} s.", ""]
    lines += ["## Triton, per kernel (range over its launches)", "",
              "| op | kernel | launches | regs | spill B (st/ld) | smem B | warps | blocks/SM | occupancy |",
              "|---|---|---:|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["op"], r["kernel"], "autotune" if r["config"] else "default"), []).append(r)

    def span(values):
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    for (op, kernel, kind), rows in sorted(groups.items()):
        lines.append(f"| {op} | {kernel} ({kind}) | {len(rows)} | {span([r['n_regs'] for r in rows])} | "
                     f"{max(r['spill_stores'] for r in rows)}/{max(r['spill_loads'] for r in rows)} | "
                     f"{span([r['shared'] for r in rows])} | {span([r['num_warps'] for r in rows])} | "
                     f"{span([r['blocks_per_sm'] for r in rows])} | "
                     f"{min(r['occupancy'] for r in rows):.0%}–{max(r['occupancy'] for r in rows):.0%} |")
    lines += ["", "## CUDA (`csrc/build.json` cuda_sources, nvcc -Xptxas -v)", ""]
    if not cuda_rows:
        lines.append("No CUDA kernels compiled (no nvcc).")
    else:
        lines += ["| source | kernel | regs | spill B (st/ld) | stack B | smem B | threads | blocks/SM | occupancy |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in cuda_rows:
            if "error" in r:
                lines.append(f"| {r['source']} | compile error: {r['error'][-200:]!r} | | | | | | | |")
                continue
            occ = f"{r['occupancy']:.0%}" if "occupancy" in r else "?"
            lines.append(f"| {r['source']} | `{r['kernel']}` | {r.get('n_regs')} | {r['spill_stores']}/"
                         f"{r['spill_loads']} | {r['stack']} | {r.get('shared')} | {r['threads'] or '?'} | "
                         f"{r.get('blocks_per_sm', '?')} | {occ} |")
    lines += [""] + _instruction_lines(triton_rows, cuda_rows) + _launch_lines(census or [])
    lines += ["## Triton, every launch", "", "| op | kernel | case | config | regs | spill B | smem B | warps | "
              "blocks/SM | occupancy |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in triton_rows:
        if not r["ok"]:
            lines.append(f"| {r['op']} | {r['kernel']} | {r['case']} | {r['config'] or 'default'} | "
                         f"FAILED: {r['error'][:120]} | | | | | |")
            continue
        config = (r["config"] or "default") + (" (pruned)" if r["pruned"] else "")
        lines.append(f"| {r['op']} | {r['kernel']} | {r['case']} | {config} | {r['n_regs']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['shared']} | {r['num_warps']} | "
                     f"{r['blocks_per_sm']} | {r['occupancy']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-cuda", action="store_true", help="Triton kernels only")
    parser.add_argument("--cuda-rows", type=Path, default=None,
                        help="reuse the CUDA rows of an earlier report's JSON instead of running nvcc")
    parser.add_argument("--no-launches", action="store_true", help="leave out the launch/host-read census")
    parser.add_argument("--full", action="store_true",
                        help="also the attention kernels at head dims 128/256 and every autotune config at every "
                             "shape (20-75 s a compile on 2 cores; use on a many-core machine)")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if any(m.startswith("coavs.kernels.") for m in sys.modules):
        print("warning: kernels/ was imported before TRITON_INTERPRET was cleared", file=sys.stderr)
    triton_rows, summary = triton_kernels(args.arch, args.jobs, args.full)
    if args.cuda_rows:
        cuda_rows = json.loads(args.cuda_rows.read_text())
        cuda_rows = cuda_rows["cuda"] if isinstance(cuda_rows, dict) else cuda_rows
    else:
        cuda_rows = [] if args.no_cuda else cuda_kernels(args.arch)
    census = [] if args.no_launches else op_launches()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sm_{args.arch}.json").write_text(json.dumps(
        {"arch": args.arch, "limits": SM, "full": args.full, "triton": triton_rows, "cuda": cuda_rows,
         "launches": census, "rejected": summary["rejected"],
         "failures": summary["failures"], "wall_s": summary["wall_s"]}, indent=1))
    (args.out / f"sm_{args.arch}.md").write_text(_markdown(args.arch, triton_rows, cuda_rows, summary, census))
    print(f"wrote {args.out}/sm_{args.arch}.md and .json: {len(triton_rows)} Triton launches, "
          f"{len(cuda_rows)} CUDA kernels; {len(summary['failures'])} check failures")
    for failure in summary["failures"]:
        print("FAIL", failure)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
