"""Launches and host reads per call of every op, forward and backward, per backend, measured on the CPU.

    python -m benchmarks.op_launches [--json PATH] [--markdown]

Runs the cases of ``tests/support/op_cases.py`` with every backend that runs here (reference, native, Triton under
the interpreter: set ``TRITON_INTERPRET=1`` without a GPU; this module sets it when no GPU is present and Triton
was not imported yet) inside ``tests.support.host_sync.HostSyncCheck``. A launch is an ATen compute op, a Triton
kernel or a C++ op: on a GPU each is one kernel (or copy); a host read is anything that would wait for the GPU.
``--markdown`` prints the rows of the table in ``docs/performance.md`` (``tests/ops/test_host_sync.py`` checks that
table against these measurements). The compile report (``benchmarks/compile_report.py``) includes the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "triton" not in sys.modules:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def census() -> list[dict]:
    """One row per (case, backend): launches by kind and host reads, forward and backward."""
    import torch

    import coavs.ops as ops
    from tests.support.helpers import backends_for
    from tests.support.host_sync import HostSyncCheck
    from tests.support.op_cases import CASES, upstream_gradients

    rows = []
    for case in CASES:
        for backend in backends_for(case.op, "cpu"):
            with ops.use_backend(backend):
                forward, leaves = case.build()
                forward()
                with HostSyncCheck() as fwd:
                    outputs = forward()
                bwd = None
                if case.backward and outputs:
                    grads = upstream_gradients(outputs)
                    with HostSyncCheck() as bwd:
                        torch.autograd.grad(outputs, leaves, grads, allow_unused=True)
            row = {"case": case.name, "op": case.op, "backend": backend,
                   "forward_launches": fwd.total_launches, "forward_kinds": dict(fwd.launches),
                   "forward_host_reads": [r.what for r in fwd.host_reads], "forward_ops": dict(fwd.ops)}
            if bwd is not None:
                row.update(backward_launches=bwd.total_launches, backward_kinds=dict(bwd.launches),
                           backward_host_reads=[r.what for r in bwd.host_reads], backward_ops=dict(bwd.ops))
            rows.append(row)
    return rows


def markdown_rows(rows: list[dict]) -> list[str]:
    lines = ["| case | backend | forward | backward | host reads | forward launches by kind |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        reads = len(r["forward_host_reads"]) + len(r.get("backward_host_reads", []))
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["forward_kinds"].items()))
        lines.append(f"| `{r['case']}` | {r['backend']} | {r['forward_launches']} | "
                     f"{r.get('backward_launches', '–')} | {reads} | {kinds} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    rows = census()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print("\n".join(markdown_rows(rows)))
    else:
        for r in rows:
            print(f"{r['case']:45s} {r['backend']:9s} fwd {r['forward_launches']:3d} "
                  f"bwd {r.get('backward_launches', '-'):>3} reads {len(r['forward_host_reads'])}"
                  f"/{len(r.get('backward_host_reads', []))}")
    return 1 if any(r["forward_host_reads"] or r.get("backward_host_reads") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
