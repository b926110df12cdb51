"""torch.compile captures the Triton kernels themselves, not an opaque op: checked without a GPU.

Where Triton compiles (no ``TRITON_INTERPRET``), the ops are ``torch.library.triton_op`` s. A child process traces
each op's Triton path with AOTAutograd on fake CUDA tensors (no device needed) and checks that the forward graph
holds ``triton_kernel_wrapper_functional`` nodes (Inductor calls those kernels directly; CUDA graphs capture them)
and no ``coavs::`` op, which would be an opaque Python call. Tracing on fake tensors also proves the Triton path
reads no tensor value on the host. The CPU backends trace too (to ``coavs_C`` ops or ATen), compared to eager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, logging, warnings
    import torch
    import coavs.ops as ops
    from coavs.ops.assign_queries import assign_queries_backward_op
    from coavs.ops.debias_logits import debias_logits_backward_op
    from coavs.ops.attention_plan import empty_plan
    from coavs.ops.masked_cross_attention import AttentionMask, masked_cross_attention_backward_op
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._functorch.aot_autograd import aot_function

    logging.disable(logging.WARNING)  # no driver on this machine: mutation analysis falls back (and says so)
    warnings.simplefilter("ignore")

    def graph_of(fn, *args):
        graphs = []
        def compiler(gm, _):
            graphs.append(gm.code)
            return gm
        with ops.use_backend("triton"):
            aot_function(fn, fw_compiler=compiler)(*args)
        return graphs[0]

    mode = FakeTensorMode()
    with mode:
        dev = "cuda"
        m, mb = torch.empty(2, 3, 8, 8, device=dev), torch.empty(2, 3, 8, 8, device=dev)
        c, cb = torch.empty(2, 3, 6, device=dev), torch.empty(2, 3, 6, device=dev)
        scores, audio, feat = torch.empty(2, 4, device=dev), torch.empty(2, 8, device=dev), torch.empty(9, 8, device=dev)
        gate, active = torch.empty(2, 9, device=dev), torch.empty(2, 9, dtype=torch.bool, device=dev)
        x, t = torch.empty(2, 9, 40, device=dev), torch.empty(2, 3, 40, device=dev)
        labels, allowed = torch.empty(2, 3, dtype=torch.long, device=dev), torch.empty(2, 9, 3, dtype=torch.bool, device=dev)
        counts = torch.empty(2, dtype=torch.long, device=dev)
        # attention over a 12x10 key map: the public op (plan + forward), and the backward op on a plan
        aq, ak = torch.empty(2, 4, 9, 32, device=dev, dtype=torch.float16), torch.empty(2, 4, 120, 32, device=dev,
                                                                                       dtype=torch.float16)
        bits, occ = torch.empty(2, 9, 4, dtype=torch.int32, device=dev), torch.empty(2, 9, 2, dtype=torch.uint8,
                                                                                    device=dev)
        plan = empty_plan(2, 9, 12, 10, dev)
        lse = torch.empty(2, 4, 9, device=dev)
        cases = {
            "debias_logits": (lambda a, b, d, e: ops.debias_logits(a, b, d, e, 0.5, strategy="uncertainty"), m, c, mb, cb),
            "debias_logits_backward": (lambda a, b, d, e: debias_logits_backward_op(a, b, d, e, 0.5, True), m, c, mb, cb),
            "assign_queries": (lambda s, a, q: ops.assign_queries(s, a, q, 2, soft=True)[:3], scores, audio, feat),
            "assign_queries_backward": (lambda g, a, ga, ac: assign_queries_backward_op(
                g, ga, a, ga, ac, 4, 2, True), torch.empty(2, 9, 8, device=dev), audio, gate, active),
            "matching_cost": (lambda *a: ops.matching_cost(*a), x, t, torch.empty(2, 9, 6, device=dev), labels,
                              allowed, counts),
            "semantic_inference": (lambda a, b: ops.semantic_inference(a, b, (16, 16)), m, c),
            "masked_cross_attention": (lambda q, k, v, b, o, a: ops.masked_cross_attention(
                q, k, v, AttentionMask(b, o, 120, (12, 10)), a), aq, ak, ak, bits, occ, active),
            "masked_cross_attention_backward": (lambda g, q, k, v, lse, *plan: masked_cross_attention_backward_op(
                g, q, k, v, g, lse, *plan, 0.2, 12, 10, 16), aq, aq, ak, ak, lse, *plan),
        }
        out = {}
        for name, (fn, *args) in cases.items():
            code = graph_of(fn, *args)
            out[name] = {"kernels": code.count("triton_kernel_wrapper_functional("),
                         "opaque": code.count("torch.ops.coavs.")}
    print(json.dumps(out))
''')


def test_triton_kernels_land_in_the_compiled_graph():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    graphs = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_kernels = {"debias_logits": 1, "debias_logits_backward": 1, "assign_queries": 1,
                        "assign_queries_backward": 1, "matching_cost": 1, "semantic_inference": 1,
                        "masked_cross_attention": 3, "masked_cross_attention_backward": 2}
    for name, count in expected_kernels.items():
        assert graphs[name]["opaque"] == 0, f"{name}: an opaque coavs op in the graph: {graphs[name]}"
        assert graphs[name]["kernels"] == count, f"{name}: {graphs[name]}"


CPU_SCRIPT = textwrap.dedent('''
    import torch
    import coavs.ops as ops
    torch.manual_seed(0)
    m, mb = torch.randn(2, 3, 5, 6, requires_grad=True), torch.randn(2, 3, 5, 6)
    c, cb = torch.randn(2, 3, 7, requires_grad=True), torch.randn(2, 3, 7)

    def step(m, c, mb, cb):
        d = ops.debias_logits(m, c, mb, cb, 0.5, strategy="uncertainty")
        a = ops.assign_queries(torch.sigmoid(c[:, :, :4].sum(1)), d.cls.mean(1), torch.ones(9, 7), 2, soft=True)
        labels = ops.semantic_inference(d.mask.detach(), d.cls.detach(), (9, 8), gate=a.gate.detach()[:, :3])
        return (d.mask.square().sum() + a.queries.sum()), labels

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for backend in ("native", "reference"):
        with ops.use_backend(backend):
            (loss, labels), (loss_c, labels_c) = step(m, c, mb, cb), compiled(m, c, mb, cb)
            torch.testing.assert_close(loss_c, loss)
            assert torch.equal(labels_c, labels)
            g = torch.autograd.grad(loss, (m, c))
            g_c = torch.autograd.grad(loss_c, (m, c))
            for x, y in zip(g_c, g):
                torch.testing.assert_close(x, y)
        torch._dynamo.reset()
    print("ok")
''')


def test_cpu_backends_compile_as_triton_ops():
    """Outside the interpreter the ops are triton_ops on the CPU too; compiled == eager, forward and backward."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CPU_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
