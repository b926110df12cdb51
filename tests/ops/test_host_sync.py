"""No op reads device memory back to the host, and every op's launches per call are the documented ones.

Every public op of ``coavs.ops`` (``tests/support/op_cases.py``: attention included) runs forward and backward
with every backend that runs on this CPU (reference, native, Triton under the interpreter) inside
``tests.support.host_sync.HostSyncCheck``, which records host reads (``.item()``, ``bool(t)``, ``torch.equal``,
``.tolist()``, ``.cpu()``, boolean indexing, ``nonzero``, tensors built from Python data, ...) and counts launches
(ATen compute ops, Triton kernels, C++ ops). A host read fails the test; the launch counts must equal the table in
``docs/performance.md`` (so the documentation cannot drift from the code).

The detector itself is tested first: each kind of host read it claims to catch is caught, and plain device work
is not flagged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import coavs.ops as ops
from tests.support.helpers import backends_for
from tests.support.host_sync import HostSyncCheck
from tests.support.op_cases import CASES, upstream_gradients

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"
CASE_BACKENDS = [(case, backend) for case in CASES for backend in backends_for(case.op, "cpu")]
# Host reads still there, each with its owner; the test is a strict xfail, so it fails (XPASS) the day the read
# goes and the entry must be removed. None left.
KNOWN_HOST_READS: dict[tuple[str, str], str] = {}

# ------------------------------------------------------------------------------------------ the detector
_t = torch.arange(6, dtype=torch.float32)
HOST_READS = {
    "item": lambda: _t[0].item(),
    "bool": lambda: bool(_t[0]),
    "int": lambda: int(_t[1]),
    "float": lambda: float(_t[1]),
    "if tensor": lambda: 1 if (_t > 2).any() else 0,
    "torch.equal": lambda: torch.equal(_t, _t),
    "allclose": lambda: torch.allclose(_t, _t),
    "tolist": lambda: _t.tolist(),
    "numpy": lambda: _t.numpy(),
    "cpu": lambda: _t.cpu(),
    "to cpu": lambda: _t.to("cpu"),
    "to device cpu": lambda: _t.to(device=torch.device("cpu")),
    "boolean index": lambda: _t[_t > 2],
    "boolean setitem": lambda: _t.clone().__setitem__(_t > 2, 0.0),
    "nonzero": lambda: _t.nonzero(),
    "masked_select": lambda: _t.masked_select(_t > 2),
    "unique": lambda: torch.unique(_t),
    "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    "tensor from data": lambda: torch.tensor([1.0, 2.0]),
    "range(tensor)": lambda: range(_t[2].long()),
}
NOT_HOST_READS = {
    "arithmetic": lambda: (_t * 2 + 1).sum(),
    "where with a scalar": lambda: torch.where(_t > 2, _t, 0.0),
    "masked_fill": lambda: _t.masked_fill(_t > 2, 0.0),
    "integer index": lambda: _t[2],
    "slice fill": lambda: _t.clone()[2:].fill_(0),
    "any/all stay tensors": lambda: (_t > 2).any() & (_t < 9).all(),
    "shape arithmetic": lambda: _t.view(2, 3).shape[1] * 2,
}


@pytest.mark.parametrize("name", sorted(HOST_READS))
def test_detector_catches(name):
    with HostSyncCheck() as check:
        HOST_READS[name]()
    assert check.host_reads, f"{name}: not detected"


@pytest.mark.parametrize("name", sorted(NOT_HOST_READS))
def test_detector_does_not_flag(name):
    with HostSyncCheck() as check:
        NOT_HOST_READS[name]()
    assert not check.host_reads, check.report()


def test_detector_counts_launches():
    with HostSyncCheck() as check:
        x = torch.empty(4)  # no launch: an allocation
        y = x.view(2, 2).t()  # no launch: views
        z = (y.fill_(1.0) * 2).sum()  # three launches
        torch.empty(0).mul_(2)  # no launch: nothing to compute
    assert check.launches["aten"] == 3, dict(check.ops)
    del z


def test_detector_sees_inside_custom_ops_and_counts_triton_and_native():
    mask, cls = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4)
    for backend, kind in (("native", "native"), ("triton", "triton")):
        if backend not in backends_for("semantic_inference", "cpu"):
            continue
        with ops.use_backend(backend), HostSyncCheck() as check:
            ops.semantic_inference(mask, cls, (5, 5))
        assert check.launches[kind] == 1, (backend, dict(check.ops))
        assert check.launches["aten"] >= 1, (backend, dict(check.ops))  # the class softmax, outside the kernel


# ------------------------------------------------------------------------------------------ the ops
def measure(case, backend) -> tuple[HostSyncCheck, HostSyncCheck | None]:
    """(forward check, backward check or None) of one case on one backend, after one warm-up call."""
    with ops.use_backend(backend):
        forward, leaves = case.build()
        forward()  # imports, lazy registration and (interpreter) rewriting stay out of the count
        with HostSyncCheck() as fwd:
            outputs = forward()
        if not (case.backward and outputs):
            return fwd, None
        grads = upstream_gradients(outputs)
        with HostSyncCheck() as bwd:
            torch.autograd.grad(outputs, leaves, grads, allow_unused=True)
        return fwd, bwd


def _known(case, backend):
    reason = KNOWN_HOST_READS.get((case.name, backend))
    return pytest.param(case, backend, id=f"{case.name}-{backend}",
                        marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [])


@pytest.mark.parametrize("case,backend", [_known(c, b) for c, b in CASE_BACKENDS])
def test_no_host_reads(case, backend):
    fwd, bwd = measure(case, backend)
    assert not fwd.host_reads, f"{case.name} [{backend}] forward:\n{fwd.report()}"
    if bwd is not None:
        assert not bwd.host_reads, f"{case.name} [{backend}] backward:\n{bwd.report()}"


def documented_launches() -> dict[tuple[str, str], tuple[int, int | None]]:
    """``(case, backend) -> (forward, backward)`` from the launch table of docs/performance.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*(\d+|–)\s*\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = (int(m.group(3)), None if m.group(4) == "–" else int(m.group(4)))
    return rows


def test_every_case_is_documented():
    documented = documented_launches()
    missing = [f"{c.name} [{b}]" for c, b in CASE_BACKENDS if (c.name, b) not in documented]
    assert not missing, f"docs/performance.md has no launch row for: {missing}"


@pytest.mark.parametrize("case,backend", CASE_BACKENDS, ids=[f"{c.name}-{b}" for c, b in CASE_BACKENDS])
def test_launches_are_the_documented_ones(case, backend):
    documented = documented_launches().get((case.name, backend))
    if documented is None:
        pytest.fail(f"docs/performance.md has no launch row for {case.name} [{backend}]")
    fwd, bwd = measure(case, backend)
    got = (fwd.total_launches, None if bwd is None else bwd.total_launches)
    assert got == documented, (f"{case.name} [{backend}]: measured (forward, backward) launches {got}, "
                               f"documented {documented}; forward ops {dict(fwd.ops)}"
                               + (f", backward ops {dict(bwd.ops)}" if bwd is not None else ""))
