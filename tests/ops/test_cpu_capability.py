"""The AVX2 copies of the CPU loops (debias_logits, semantic_inference) give the same bits as the portable loops
that COAVS_CPU_CAPABILITY=default forces (and that CPUs without AVX2 run); the attention kernel's AVX-512, AVX2
and portable copies agree to rounding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.helpers import backends_for

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
import torch
import coavs.ops as ops
from coavs.ops.debias_logits import debias_logits_op

g = torch.Generator().manual_seed(0)
out = {}
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for n in (1, 7, 8, 9, 203):  # tails of the 8-lane loops
        m = torch.randn(2, 1, 1, n, generator=g) * 6
        m[0, 0, 0, ::5] = float("nan")
        m[1, 0, 0, ::7] = float("inf")
        mb = torch.randn(2, 1, 1, n, generator=g) * 6
        c, cb = torch.randn(2, 3, n % 11 + 1, generator=g) * 4, torch.randn(2, 3, n % 11 + 1, generator=g) * 4
        m, mb, c, cb = (t.to(dtype) for t in (m, mb, c, cb))
        for unc in (False, True):
            with ops.use_backend("native"):
                fwd = debias_logits_op(m, c, mb, cb, 0.7, unc)
                bwd = torch.ops.coavs.debias_logits_backward(m, c, mb, cb, 0.7, unc)
            out[f"debias {dtype} {n} {unc}"] = [t.view(torch.uint8) for t in (*fwd, *bwd)]
    mask = (torch.randn(2, 5, 7, 9, generator=g) * 3).to(dtype)
    cls = torch.randn(2, 5, 4, generator=g) * 3
    with ops.use_backend("native"):
        for size in ((7, 9), (23, 17), (3, 4)):
            out[f"inference {dtype} {size}"] = [ops.semantic_inference(mask, cls, size)]
torch.save(out, sys.argv[1])
"""


def _run(path, capability):
    env = {k: v for k, v in os.environ.items() if k != "COAVS_CPU_CAPABILITY"}
    if capability:
        env["COAVS_CPU_CAPABILITY"] = capability
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env, cwd=ROOT, timeout=600)
    return torch.load(path)


@pytest.mark.skipif("native" not in backends_for("debias_logits", "cpu"), reason="needs the C++ extension")
def test_avx2_and_portable_cpu_loops_give_the_same_bits(tmp_path):
    fast = _run(tmp_path / "fast.pt", None)
    portable = _run(tmp_path / "portable.pt", "default")
    assert fast.keys() == portable.keys()
    for key in fast:
        for a, b in zip(fast[key], portable[key]):
            assert torch.equal(a, b), key


ATTENTION_SCRIPT = r"""
import sys
import torch
import coavs.ops as ops
from coavs.ops import reference

g = torch.Generator().manual_seed(1)
out = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16):
    for dh in (32, 13):  # whole vectors, and a tail on every width
        logits = torch.randn(2, 9, 11, 13, generator=g)
        logits[0, 3] = -1  # a row that sees nothing sees every key
        mask = ops.build_attention_mask(logits, (11, 13))
        active = torch.rand(2, 9, generator=g) < 0.7
        q, k, v = (torch.randn(2, 3, n, dh, generator=g).to(dtype).requires_grad_() for n in (9, 143, 143))
        with ops.use_backend("native"):
            o = ops.masked_cross_attention(q, k, v, mask, active, 0.3)
        o.backward(torch.randn(o.shape, generator=g).to(dtype))
        out[f"{dtype} {dh}"] = [t.detach().double() for t in (o, q.grad, k.grad, v.grad)]
torch.save(out, sys.argv[1])
"""


@pytest.mark.skipif("native" not in backends_for("masked_cross_attention", "cpu"), reason="needs the C++ extension")
def test_attention_agrees_on_every_instruction_set(tmp_path):
    """COAVS_CPU_CAPABILITY caps the attention kernel's ISA (AVX-512 with 8-lane forward / 16-lane backward
    vectors, AVX2, portable 4 lanes), so every copy runs here; they differ only by summation order (the 8-lane
    forwards of AVX-512 and AVX2 may agree bit for bit; the portable copy's row sums do not)."""
    results = {}
    for capability in (None, "avx2", "default"):
        env = {k: v for k, v in os.environ.items() if k != "COAVS_CPU_CAPABILITY"}
        if capability:
            env["COAVS_CPU_CAPABILITY"] = capability
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        path = tmp_path / f"{capability}.pt"
        subprocess.run([sys.executable, "-c", ATTENTION_SCRIPT, str(path)], check=True, env=env, cwd=ROOT,
                       timeout=600)
        results[capability] = torch.load(path)
    widest = results[None]
    for capability in ("avx2", "default"):
        for key, tensors in results[capability].items():
            tolerance = 2e-2 if "bfloat16" in key else 1e-5 if "float32" in key else 1e-12
            for a, b in zip(widest[key], tensors):
                torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance, msg=f"{capability} {key}")
    portable = results["default"]
    assert any(not torch.equal(a, b) for key in widest for a, b in zip(widest[key], portable[key])), \
        "COAVS_CPU_CAPABILITY=default did not change the attention kernel's ISA"
