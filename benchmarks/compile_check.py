"""Compile every Triton launch the ``kernels/`` wrappers can make with Triton's real compiler, without a GPU.

    python -m benchmarks.compile_check [--arch 80,90] [--jobs 2] [--json PATH] [--list]

How the launches are found: the wrappers in ``kernels/`` are called on ``meta`` tensors (shapes and dtypes,
no data) for every case below (op × dtype × flag × shape class), under a stub Triton driver whose target is
``GPUTarget("cuda", arch, 32)``. Triton's own launcher binds the arguments and specialises them exactly as on a
GPU (pointer dtypes, integers equal to 1 or divisible by 16, constexprs); the compile step is replaced by a
recorder, so each launch yields ``(kernel, signature, constexprs, attrs, options)``. Autotuned kernels yield
every config, each marked kept or pruned by the kernel's own ``early_config_prune`` (which reads the stub's
shared-memory limit). The distinct launches are then compiled (``triton.compile`` on an ``ASTSource``, PTX and
ptxas for the target) in a process pool; ptxas's ``-v`` log gives registers and spills, the kernel metadata its
shared memory.

It fails (exit 1) on: a compile error; a kept autotune config whose shared memory exceeds the target's limit;
a launch kernel of ``kernels/`` never reached; a constexpr flag (bool) of a kernel seen with one value only;
a spill in a default (non-autotuned) config. Coverage is checked against the kernels themselves, so a new kernel
or flag without a case here fails instead of going unchecked. ``TRITON_INTERPRET`` must be unset (the jit
decorator reads it when ``kernels/`` is imported); the Triton cache goes to a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ARCHS = (80, 90)
# Largest dynamic shared memory one block may use (opt-in), bytes: A100 163 KiB, H100/H200 227 KiB.
SMEM_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}
KERNEL_MODULES = ("coavs.kernels.debias_logits", "coavs.kernels.assign_queries", "coavs.kernels.matching_cost",
                  "coavs.kernels.semantic_inference", "coavs.kernels.masked_cross_attention",
                  "coavs.kernels.masked_cross_attention_plan")
FLOATS = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------------------------- stub driver

class _StubUtils:
    def __init__(self, arch):
        self.arch = arch

    def get_device_properties(self, device):
        return {"max_shared_mem": SMEM_PER_BLOCK[self.arch], "multiprocessor_count": 132 if self.arch == 90 else 108,
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}


class StubDriver:
    """The parts of Triton's active driver that binding, specialisation and autotune pruning read."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        self.utils = _StubUtils(arch)

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch  # one binder cache per target

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device("meta")

    def get_device_interface(self):
        raise RuntimeError("the compile check has no device")

    def get_benchmarker(self):
        def refuse(*args, **kwargs):
            raise RuntimeError("the compile check does not benchmark")
        return refuse

    def get_empty_cache_for_benchmark(self):
        raise RuntimeError("the compile check has no device")


# ------------------------------------------------------------------------------------------------- the cases

def _t(shape, dtype):
    import torch
    return torch.empty(shape, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype, device="meta")


def _debias_cases():
    from coavs.kernels import debias_logits as k
    # (mask shape, cls shape): tiny, odd, a wide class row (BLOCK_K 8192, BLOCK_ROWS 1), the benchmark shapes.
    shapes = {"tiny": ((1, 1, 1, 1), (1, 1, 1)), "odd": ((3, 5, 7, 9), (3, 5, 7)),
              "wide": ((2, 3, 4, 4), (2, 3, 5000)), "bench": ((20, 100, 256, 256), (20, 100, 72))}
    for dtype in FLOATS + ("float64",):
        for (name, (ms, cs)), unc, backward in itertools.product(shapes.items(), (False, True), (False, True)):
            label = f"{dtype} {name} uncertainty={unc} backward={backward}"
            m, c = _t(ms, dtype), _t(cs, dtype)
            if backward:
                yield label, lambda m=m, c=c, u=unc: k.debias_logits_backward(m, c, m, c, 0.5, u)
            else:
                yield label, lambda m=m, c=c, u=unc: k.debias_logits_forward(m, c, m, c, 0.5, u)


def _assign_cases():
    from coavs.kernels import assign_queries as k
    # (B, S, d, Q, D)
    shapes = {"tiny": (1, 1, 1, 1, 1), "odd": (3, 3, 2, 7, 33), "quick": (4, 4, 5, 20, 64),
              "bench": (20, 20, 5, 100, 256), "bench-d1": (20, 70, 1, 100, 256)}
    for dtype in FLOATS + ("float64",):
        for (name, (b, s, d, q, w)), soft, backward in itertools.product(shapes.items(), (False, True),
                                                                          (False, True)):
            label = f"{dtype} {name} soft={soft} backward={backward}"
            if backward:
                yield label, lambda b=b, s=s, d=d, q=q, w=w, soft=soft: k.assign_queries_backward(
                    _t((b, q, w), dtype), _t((b, q), dtype), _t((b, w), dtype), _t((b, q), dtype),
                    _t((b, q), "bool"), s, d, soft)
            else:
                yield label, lambda b=b, s=s, d=d, q=q, w=w, soft=soft: k.assign_queries_forward(
                    _t((b, s), dtype), _t((b, w), dtype), _t((q, w), dtype), d, 0.5, 0.0, soft)


def _matching_cases():
    from coavs.kernels import matching_cost as k
    # (B, Q, G, P, K+1)
    shapes = {"tiny": (1, 1, 1, 1, 1), "odd": (3, 17, 5, 333, 7), "quick": (2, 20, 3, 256, 6),
              "many-gt": (2, 12, 70, 100, 200), "bench": (20, 100, 10, 12544, 72)}
    for dtype, (name, (b, q, g, p, kk)) in itertools.product(FLOATS, shapes.items()):
        yield f"{dtype} {name}", lambda b=b, q=q, g=g, p=p, kk=kk, dtype=dtype: k.matching_cost(
            _t((b, q, p), dtype), _t((b, g, p), dtype), _t((b, q, kk), dtype), _t((b, g), "int64"),
            _t((b, q, g), "bool"), _t((b,), "int64"), 1.0, 1.0, 1.0)


def _semantic_cases():
    from coavs.kernels import semantic_inference as k
    # What coavs.ops.semantic_inference asks for: (reduce, classes passed, mask_debias, overall, foreground).
    # Non-overall binary passes one foreground weight per query (K = 1, no foreground vector); overall binary the
    # K class probabilities with foreground weights (a background) or without (all ones).
    schemes = [("argmax", "K", md, ov, False) for md, ov in ((False, False), (True, False), (False, True))]
    schemes += [("foreground", "1", md, False, False) for md in (False, True)]
    schemes += [("foreground", "K", False, True, fg) for fg in (False, True)]
    schemes += [("max_query", "0", md, False, False) for md in (False, True)]
    # (B, Q, h, w, H, W, K): resized (benchmark), same-size (odd), and many classes (two 128-wide class tiles).
    sizes = {"bench-resize": (20, 100, 56, 56, 224, 224, 71), "odd-same": (3, 7, 9, 11, 9, 11, 5),
             "classes-200": (2, 20, 16, 16, 64, 48, 200)}
    for dtype, (reduce, passed, md, ov, fg), unc, gate, (name, (b, q, h, w, oh, ow, kk)) in itertools.product(
            FLOATS, schemes, (False, True), (False, True), sizes.items()):
        if unc and not (md or ov):
            continue  # the strategy only matters to a debias
        if name == "classes-200" and (reduce != "argmax" or dtype != "float32"):
            continue
        label = f"{dtype} {name} reduce={reduce} classes={passed} mask_debias={md} overall={ov} foreground={fg} " \
                f"uncertainty={unc} gate={gate}"

        def call(b=b, q=q, h=h, w=w, oh=oh, ow=ow, kk=kk, reduce=reduce, passed=passed, md=md, ov=ov, fg=fg,
                 unc=unc, gate=gate, dtype=dtype):
            f32 = "float32"
            empty = _t((0,), f32)
            width = {"K": kk, "1": 1, "0": 0}[passed]
            # The op passes the first K columns of a softmax over K+1 (a strided view), or one weight per query.
            probs = _t((b, q, width + 1), f32)[..., :width] if passed == "K" else (
                _t((b, q, 1), f32) if passed == "1" else empty)
            return k.semantic_inference(
                _t((b, q, h, w), dtype), _t((b, q, h, w), dtype) if (md or ov) else _t((0,), dtype), probs,
                _t((b, q, kk + 1), f32)[..., :kk] if ov else empty, _t((b, q), f32) if gate else empty,
                _t((kk,), f32) if fg else empty, oh, ow, 0.5, unc, md, ov, reduce)
        yield label, call


def _attention_cases():
    from coavs.kernels import masked_cross_attention as k
    from coavs.kernels import masked_cross_attention_plan as plan_kernels
    # (B, h, Q, (H, W), dh): one key; a map that is not a multiple of the patch; the benchmark maps (N = 49 and
    # 4096, one head per program at B=2); dh from tiny to the 256 maximum. The plan kernels run once per shape.
    shapes = {"tiny": (1, 1, 1, (1, 1), 1), "odd": (3, 2, 7, (10, 10), 24), "bench-49": (20, 8, 100, (7, 7), 32),
              "bench-4096": (20, 8, 100, (64, 64), 32), "strip": (2, 2, 33, (1, 130), 16),
              "dh64": (2, 2, 16, (28, 28), 64), "dh128": (2, 2, 16, (28, 28), 128),
              "dh256": (2, 2, 16, (64, 64), 256)}
    for name, (b, h, q, (height, width), dh) in shapes.items():
        if FULL or name not in FULL_ONLY_SHAPES:
            yield f"plan {name}", lambda b=b, q=q, height=height, width=width: plan_kernels.attention_plan(
                _t((b, q, -(-height * width // 32)), "int32"), _t((b, q), "bool"), height, width, 16)
    for dtype, (name, (b, h, q, (height, width), dh)), backward, tuned in itertools.product(
            FLOATS, shapes.items(), (False, True), (False, True)):  # float64 runs the reference on a GPU
        if not FULL and (name in FULL_ONLY_SHAPES or (tuned and name not in TUNED_SHAPES)):
            continue
        label = f"{dtype} {name} backward={backward} {'autotune' if tuned else 'default'}"

        def call(b=b, h=h, q=q, height=height, width=width, dh=dh, backward=backward, tuned=tuned, dtype=dtype):
            n = height * width
            ph, pw = plan_kernels.patch_shape(height, width)
            blocks, tiles = -(-height // ph) * -(-width // pw), -(-q // 16)
            plan = (_t((b, q, blocks), "int64"), _t((b, q), "int32"), _t((b,), "int32"), _t((b, tiles, 2), "int32"),
                    _t((b, tiles, blocks), "int32"), _t((b, blocks, 2), "int32"), _t((b, blocks, tiles), "int32"))
            qq, kk, vv = _t((b, h, q, dh), dtype), _t((b, h, n, dh), dtype), _t((b, h, n, dh), dtype)
            acc = "float64" if dtype == "float64" else "float32"
            os.environ["COAVS_TRITON_AUTOTUNE"] = "1" if tuned else "0"
            if backward:
                return k.masked_cross_attention_backward(qq, qq, kk, vv, qq, _t((b, h, q), acc), *plan, dh ** -0.5,
                                                         height, width, 16)
            return k.masked_cross_attention_forward(qq, kk, vv, *plan, dh ** -0.5, height, width, 16)
        yield label, call


# The attention kernels at head dims 128 and 256 take 20-75 s each to compile (LLVM on 64x256 float32 tiles,
# measured on the 2-core CI machine), so by default (CI) the attention shape classes stop at dh=64 and the
# autotune configs are compiled at the benchmark shapes (dh=32, with and without key splits) only.
# ``--full`` (the compile report) compiles every shape class, every autotune config at each.
TUNED_SHAPES = ("bench-49", "bench-4096")
FULL_ONLY_SHAPES = ("dh128", "dh256")
FULL = False
REJECTED: list[dict] = []
# Default launches known to spill (a baseline to shrink, never to grow): see the file's comment.
KNOWN_SPILLS_FILE = Path(__file__).resolve().parent / "results" / "compile" / "known_spills.json"
# Bool constexprs that are constant on a GPU by design: name -> why.
CONSTANT_FLAGS = {"UPCAST": "True only under the interpreter (its bfloat16 dot), never compiled"}  # launches a wrapper refused with a clear error (no config fits the shared memory)

CASES = {"debias_logits": _debias_cases, "assign_queries": _assign_cases, "matching_cost": _matching_cases,
         "semantic_inference": _semantic_cases, "masked_cross_attention": _attention_cases}


# --------------------------------------------------------------------------------------------------- capture

@dataclasses.dataclass
class Launch:
    op: str
    case: str
    module: str
    kernel: str
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    config: str | None = None  # autotune config, None for a fixed launch
    pruned: bool = False
    smem_estimate: int | None = None  # the pruner's bound for an autotune config

    def key(self):
        return (self.module, self.kernel, self.arch, repr(sorted(self.signature.items())),
                repr(sorted((str(k), repr(v)) for k, v in self.constexprs.items())),
                repr(sorted((str(k), repr(v)) for k, v in self.attrs.items())),
                repr(sorted((k, repr(v)) for k, v in self.options.items())))


def _config_name(config) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw}, warps={config.num_warps}, stages={config.num_stages}"


def capture(arch: int, ops=None) -> list[Launch]:
    """Every launch of the cases of ``ops`` (default all) as Triton would compile it for ``arch``."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the compile check needs compiled (not interpreted) kernels")
    from unittest import mock

    import triton
    from triton.runtime import autotuner as autotuner_mod
    from triton.runtime import jit as jit_mod

    launches: list[Launch] = []
    state = {"op": None, "case": None, "config": None, "pruned": False, "estimate": None}

    def record(self, key, signature, device, constexprs, options, attrs, warmup):
        launches.append(Launch(state["op"], state["case"], self.module, self.fn.__name__, arch, dict(signature),
                               {self.arg_names[path[0]]: v for path, v in constexprs.items()},
                               dict(attrs), dict(options.__dict__), state["config"], state["pruned"],
                               state["estimate"]))
        return None  # no kernel: JITFunction.run returns before launching

    def every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        kept = self.prune_configs(kwargs)
        estimate = getattr(self.early_config_prune, "estimate", None)
        try:
            for config in self.configs:
                state["config"], state["pruned"] = _config_name(config), config not in kept
                state["estimate"] = estimate(config, self.nargs, kwargs) if estimate else None
                self.fn.run(*args, **kwargs, **config.all_kwargs())
        finally:
            state["config"], state["pruned"], state["estimate"] = None, False, None

    saved_env = os.environ.get("COAVS_TRITON_AUTOTUNE")
    previous = triton.runtime.driver._active  # None without a GPU (reading .active would raise)
    triton.runtime.driver.set_active(StubDriver(arch))
    try:
        with mock.patch.object(jit_mod.JITFunction, "_do_compile", record), \
                mock.patch.object(autotuner_mod.Autotuner, "run", every_config):
            for op, cases in CASES.items():
                if ops and op not in ops:
                    continue
                for label, call in cases():
                    state["op"], state["case"] = op, label
                    try:
                        call()
                    except ValueError as error:  # the pruner's refusal, before any launch; anything else fails
                        if "shared memory" not in str(error):
                            raise
                        REJECTED.append({"arch": arch, "op": op, "case": label, "error": str(error)})
    finally:
        triton.runtime.driver._active = previous
        if saved_env is None:
            os.environ.pop("COAVS_TRITON_AUTOTUNE", None)
        else:
            os.environ["COAVS_TRITON_AUTOTUNE"] = saved_env
    return launches


def launch_kernels():
    """``(module, name) -> JITFunction`` of every kernel a wrapper launches (``@triton.jit`` functions named
    ``*_kernel``; the others are device helpers)."""
    from triton.runtime.jit import JITFunction
    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and name.endswith("_kernel"):
                found[(module_name, value.fn.__name__)] = value
    return found


def coverage_problems(launches: list[Launch]) -> list[str]:
    """A launch kernel never reached, or a bool constexpr seen with one value only."""
    problems = []
    kernels = launch_kernels()
    for (module, name), fn in kernels.items():
        seen = [launch for launch in launches if launch.module == module and launch.kernel == name]
        if not seen:
            problems.append(f"{module}.{name}: no case launches it")
            continue
        for index in fn.constexprs:
            param = fn.arg_names[index]
            values = {launch.constexprs.get(param) for launch in seen}
            if param not in CONSTANT_FLAGS and any(isinstance(v, bool) for v in values) and values != {False, True}:
                problems.append(f"{module}.{name}: constexpr {param} only seen as {sorted(values)}")
    return problems


# --------------------------------------------------------------------------------------------------- compile

# Instructions counted in each compiled kernel: PTX mnemonics (what Triton asked for) and, when Triton's
# cuobjdump is there, SASS opcodes (what ptxas made of it). wgmma / HGMMA: Hopper's warpgroup tensor-core MMA;
# mma.sync / HMMA: the per-warp tensor-core MMA (Ampere style); cp.async / LDGSTS: asynchronous global-to-shared
# copies (what software pipelining uses); cp.async.bulk / UTMALDG: the tensor-memory-accelerator copies.
PTX_COUNTS = {"wgmma": r"\bwgmma\.mma_async\b", "mma_sync": r"\bmma\.sync\b", "cp_async": r"\bcp\.async\.(?!bulk)",
              "cp_async_bulk": r"\bcp\.async\.bulk\b", "ldmatrix": r"\bldmatrix\b"}
SASS_COUNTS = {"HGMMA": r"\bHGMMA\b", "HMMA": r"\bHMMA\b", "LDGSTS": r"\bLDGSTS\b", "UTMALDG": r"\bUTMALDG\b",
               "local": r"\b(?:LDL|STL)\b"}


def ptx_counts(ptx: str) -> dict:
    return {name: len(re.findall(pattern, ptx)) for name, pattern in PTX_COUNTS.items()}


def cuobjdump() -> str | None:
    """Triton's own cuobjdump (its wheel ships one), else one on the PATH."""
    import shutil

    import triton
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


def sass_counts(cubin: bytes) -> dict | None:
    """SASS opcode counts of a cubin (None without cuobjdump)."""
    import subprocess
    tool = cuobjdump()
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        proc = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return {name: len(re.findall(pattern, proc.stdout)) for name, pattern in SASS_COUNTS.items()}


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _worker_init(cache_dir):
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_INTERPRET", None)


def _compile_to_ptx(source, target, options: dict) -> dict:
    """Triton's pipeline up to PTX (no ptxas): compile errors and shared memory, not registers. Returns the
    metadata the stages filled in."""
    from triton._C.libtriton import ir
    from triton.compiler.compiler import make_backend

    backend = make_backend(target)
    parsed = backend.parse_options(dict(options))
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = source.make_ir(target, parsed, backend.get_codegen_implementation(parsed), backend.get_module_map(),
                            context)
    stages: dict = {}
    backend.add_stages(stages, parsed, source.language)
    metadata = {"target": target, **parsed.__dict__}
    for ext, stage in stages.items():
        if ext == "cubin":
            break
        module = stage(module, metadata)
        if ext == "ptx":
            metadata["ptx"] = module
    return metadata


def compile_one(launch: Launch, ptxas: bool = True, sass: bool = False) -> dict:
    """Compile one launch; ``{"ok", "error", "seconds", "n_regs", "spill_stores", "spill_loads", "shared",
    "ptx"}`` (registers and spills need ptxas: None without it; ``ptx``: :data:`PTX_COUNTS`), plus ``"sass"``
    (:data:`SASS_COUNTS`) with ``sass``."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    target = GPUTarget("cuda", launch.arch, 32)
    start = time.perf_counter()
    log = io.StringIO()
    try:
        source = ASTSource(fn, launch.signature, launch.constexprs, launch.attrs)
        if ptxas:
            with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
                knobs.nvidia.dump_ptxas_log = True
                compiled = triton.compile(source, target=target, options=launch.options)
            shared, warps = compiled.metadata.shared, compiled.metadata.num_warps
            ptx = compiled.asm.get("ptx", "")
            counts = sass_counts(compiled.asm["cubin"]) if sass and "cubin" in compiled.asm else None
        else:
            metadata = _compile_to_ptx(source, target, launch.options)
            shared, warps = metadata["shared"], metadata["num_warps"]
            ptx, counts = metadata.get("ptx", ""), None
        text = log.getvalue()
        regs = _PTXAS_REGS.findall(text)
        spills = _PTXAS_SPILL.findall(text)
        result = {"ok": True, "ptxas": ptxas, "n_regs": int(regs[-1]) if regs else None,
                  "spill_stores": sum(int(s) for s, _ in spills) if ptxas else None,
                  "spill_loads": sum(int(l) for _, l in spills) if ptxas else None,
                  "shared": int(shared), "num_warps": int(warps), "ptx": ptx_counts(ptx)}
        if sass:
            result["sass"] = counts
    except Exception as error:  # noqa: BLE001 - every compile error is a finding
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        where = f"{lines[0]} " if len(lines) > 1 else ""  # "at L:C:" of a CompilationError, then the reason
        result = {"ok": False, "ptxas": ptxas,
                  "error": f"{type(error).__name__}: {where}{lines[-1] if lines else ''}"[:400]}
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _compile_job(job):
    launch, ptxas, sass = job
    return compile_one(launch, ptxas, sass)


def compile_all(launches: list[Launch], jobs: int = 2, ptxas: str = "default",
                sass: bool = False) -> tuple[list[Launch], list[dict]]:
    """Distinct launches and their compile results (a fresh Triton cache: nothing is reused across runs).
    ``ptxas``: "all" runs ptxas for every launch (registers, spills); "default" only for the default
    (non-autotuned) configs, the autotune configs stop at PTX (compile errors and shared memory).
    ``sass``: SASS opcode counts of every ptxas-compiled launch (cuobjdump)."""
    unique: dict[tuple, Launch] = {}
    for launch in launches:
        unique.setdefault(launch.key(), launch)
    distinct = list(unique.values())
    work = [(launch, ptxas == "all" or launch.config is None, sass) for launch in distinct]
    with tempfile.TemporaryDirectory(prefix="coavs-compile-") as cache:
        if jobs <= 1:
            _worker_init(cache)
            results = [_compile_job(job) for job in work]
        else:
            import multiprocessing
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                     initargs=(cache,)) as pool:
                results = list(pool.map(_compile_job, work, chunksize=1))
    return distinct, results


def check(distinct: list[Launch], results: list[dict]) -> list[str]:
    """Failures: compile errors, kept configs over the shared-memory limit, spills in default configs (other
    than the known ones, which must still spill)."""
    failures = []
    known = known_spills()
    for launch, result in zip(distinct, results):
        where = f"sm_{launch.arch} {launch.module}.{launch.kernel} [{launch.case}]" + (
            f" config({launch.config})" if launch.config else "")
        if not result["ok"]:
            failures.append(f"{where}: {result['error']}")
            continue
        if not launch.pruned and result["shared"] > SMEM_PER_BLOCK[launch.arch]:
            failures.append(f"{where}: {result['shared']} B shared memory > {SMEM_PER_BLOCK[launch.arch]} B "
                            "and the config was not pruned")
        if launch.config is not None and (launch.smem_estimate is None or launch.smem_estimate < result["shared"]):
            failures.append(f"{where}: the pruner's shared-memory bound {launch.smem_estimate} B is below the "
                            f"compiled {result['shared']} B")
        spills = launch.config is None and (result["spill_stores"] or result["spill_loads"])
        name = f"sm_{launch.arch} {launch.kernel} [{launch.case}]"
        if launch.config is None and result.get("ptxas") and name in known:
            if not spills:
                failures.append(f"{where}: listed in {KNOWN_SPILLS_FILE.name} but no longer spills: delete it")
            continue
        if spills:
            failures.append(f"{where}: default config spills ({result['spill_stores']} B stores, "
                            f"{result['spill_loads']} B loads)")
    return failures


def known_spills() -> set[str]:
    if not KNOWN_SPILLS_FILE.exists():
        return set()
    return set(json.loads(KNOWN_SPILLS_FILE.read_text())["launches"])


def _jsonable(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def run(archs=ARCHS, jobs: int = 2, ops=None, ptxas: str = "default", sass: bool = False) -> dict:
    """Capture, compile and check; a JSON-able summary (``failures`` empty when everything passes)."""
    start = time.perf_counter()
    launches = [launch for arch in archs for launch in capture(arch, ops)]
    capture_s = time.perf_counter() - start
    problems = coverage_problems(launches) if not ops else []
    distinct, results = compile_all(launches, jobs, ptxas, sass)
    failures = problems + check(distinct, results)
    per_op = {}
    for launch, result in zip(distinct, results):
        row = per_op.setdefault(launch.op, {"launches": 0, "failed": 0, "compile_s": 0.0})
        row["launches"] += 1
        row["failed"] += not result["ok"]
        row["compile_s"] = round(row["compile_s"] + result["seconds"], 2)
    return {
        "archs": list(archs), "cases_launched": len(launches), "distinct_launches": len(distinct),
        "ptxas": ptxas, "full": FULL, "capture_s": round(capture_s, 2), "wall_s": round(time.perf_counter() - start, 2), "jobs": jobs,
        "per_op": per_op, "failures": failures, "rejected": list(REJECTED), "known_spills": sorted(known_spills()),
        "launches": [dict(_jsonable(dataclasses.asdict(launch)), **result)
                     for launch, result in zip(distinct, results)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)), help="comma-separated, e.g. 80,90")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes")
    parser.add_argument("--ops", default=None, help="comma-separated op names (default all, with coverage)")
    parser.add_argument("--json", type=Path, default=None, help="write the full result here")
    parser.add_argument("--list", action="store_true", help="list the distinct launches without compiling")
    parser.add_argument("--full", action="store_true", help="autotune configs at every shape class, too")
    args = parser.parse_args(argv)
    global FULL
    FULL = args.full
    archs = tuple(int(a) for a in args.arch.split(","))
    ops = args.ops.split(",") if args.ops else None
    if args.list:
        launches = [launch for arch in archs for launch in capture(arch, ops)]
        unique = {launch.key(): launch for launch in launches}
        for launch in unique.values():
            print(f"sm_{launch.arch} {launch.kernel} [{launch.case}] {launch.config or ''}"
                  f"{' (pruned)' if launch.pruned else ''}")
        print(f"{len(unique)} distinct launches of {len(launches)}")
        return 0
    summary = run(archs, args.jobs, ops)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    for op, row in summary["per_op"].items():
        print(f"{op:24s} {row['launches']:4d} launches  {row['failed']:3d} failed  {row['compile_s']:7.1f} s compile")
    print(f"{summary['distinct_launches']} distinct launches ({summary['cases_launched']} captured) for "
          f"sm_{', sm_'.join(map(str, archs))} in {summary['wall_s']:.1f} s wall ({args.jobs} processes)")
    for failure in summary["failures"]:
        print("FAIL", failure)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
