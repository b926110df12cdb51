"""masked_cross_attention makes no host synchronisation and a fixed number of kernel launches (issue 22).

No GPU here, so two checks stand for one:
- the Triton path's Python (the plan, forward and backward wrappers of ``kernels/``) runs on ``meta`` tensors
  under benchmarks/compile_check.py's stub driver, with each kernel launch recorded instead of compiled: any
  read of a tensor's values on the host (``.item()``, ``.tolist()``, ``bool()``, ``torch.equal``, a copy to the
  CPU) raises on meta tensors, and the launches are counted (3 forward with the plan, 2 backward);
- the public Python path (validation, defaults, plan and op calls) runs on CPU tensors under a dispatch mode
  that fails on the operators behind those reads.
A minimal attention-only version of the generic harness the "ops" helper is building for every op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import coavs.ops as ops
from coavs.ops.masked_cross_attention import pack_visibility

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
              torch.ops.aten.is_nonzero.default}


class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"host read of a tensor value: {func}")
        return func(*args, **(kwargs or {}))


def _launch_count_script() -> str:
    return """
import json, os, torch
os.environ.pop("TRITON_INTERPRET", None)
os.environ["COAVS_TRITON_AUTOTUNE"] = "0"
from unittest import mock
import triton
from triton.runtime import jit as jit_mod
from benchmarks.compile_check import StubDriver
from coavs.kernels import masked_cross_attention as k, masked_cross_attention_plan as p
launches = []
def record(self, *args, **kwargs):
    launches.append(self.fn.__name__)
triton.runtime.driver.set_active(StubDriver(90))
m = lambda shape, dtype: torch.empty(shape, dtype=dtype, device="meta")
result = {}
with mock.patch.object(jit_mod.JITFunction, "_do_compile", record):
    for dtype in (torch.float16, torch.float32, torch.float64):
        B, h, Q, H, W, dh = 20, 8, 100, 32, 32, 32
        plan = p.attention_plan(m((B, Q, 32), torch.int32), m((B, Q), torch.bool), H, W, 16)
        result["plan"] = list(launches); launches.clear()
        q, kk, v = m((B, h, Q, dh), dtype), m((B, h, H * W, dh), dtype), m((B, h, H * W, dh), dtype)
        out, lse = k.masked_cross_attention_forward(q, kk, v, *plan, 0.17, H, W, 16)
        result["forward"] = list(launches); launches.clear()
        k.masked_cross_attention_backward(q, q, kk, v, out, lse, *plan, 0.17, H, W, 16)
        result["backward"] = list(launches); launches.clear()
        result[str(dtype)] = [tuple(out.shape), str(lse.dtype)]
print(json.dumps(result))
"""


def test_triton_path_has_no_host_read_and_five_launches():
    """In a child process without TRITON_INTERPRET (conftest sets it here): plan 2 launches + forward 1,
    backward 2, for float16, float32 and float64 at the benchmark shape; meta tensors make any host read fail."""
    pytest.importorskip("triton")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _launch_count_script()], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plan"] == ["_plan_rows_kernel", "_plan_lists_kernel"]
    assert result["forward"] == ["_forward_kernel"]
    assert result["backward"] == ["_backward_dq_kernel", "_backward_dkv_kernel"]
    assert result["torch.float64"] == [[20, 8, 100, 32], "torch.float64"]


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_public_path_reads_no_tensor_value(backend):
    """Validation, defaults (mask None, active None), the plan and the op: no value read on the host. The native
    kernels are C++ (their own reads are not host syncs); the check is on the Python around them."""
    visible = torch.rand(2, 7, 30) < 0.4
    q, k, v = (torch.randn(2, 2, n, 8, requires_grad=True) for n in (7, 30, 30))
    with ops.use_backend(backend), _NoHostReads():
        for mask, active in ((pack_visibility(visible, (5, 6)), torch.rand(2, 7) < 0.5), (None, None)):
            out = ops.masked_cross_attention(q, k, v, mask, active)
            out.backward(torch.ones_like(out))


def test_the_check_catches_a_host_read():
    """The mode is not vacuous: bool() of a tensor, .item() and torch.equal all fail under it."""
    t = torch.ones(3)
    for read in (lambda: bool(t.any()), lambda: t.sum().item(), lambda: torch.equal(t, t)):
        with pytest.raises(AssertionError, match="host read"), _NoHostReads():
            read()
