"""Every Triton launch of ``kernels/`` compiles with Triton's real compiler for sm_80 and sm_90 (no GPU needed).

The tests here run ``python -m benchmarks.compile_check`` once, in a subprocess without ``TRITON_INTERPRET``
(conftest sets it for this process, and the jit decorator reads it when ``kernels/`` is imported), then read its
JSON. See ``benchmarks/compile_check.py`` for what is enumerated and checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMEM_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}


def _clean_env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("COAVS_TRITON_AUTOTUNE", None)
    return env


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_check", "--arch", "80,90", "--jobs", "2",
                           "--json", str(out)], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                          timeout=1800)
    assert out.exists(), f"the compile check wrote nothing (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    summary = json.loads(out.read_text())
    summary["returncode"], summary["stdout"] = proc.returncode, proc.stdout
    return summary


def test_every_launch_compiles_for_sm80_and_sm90(check):
    errors = [f"sm_{l['arch']} {l['kernel']} [{l['case']}] {l['config'] or ''}: {l['error']}"
              for l in check["launches"] if not l["ok"]]
    assert not errors, "\n".join(errors[:30])
    assert {l["arch"] for l in check["launches"]} == {80, 90}
    assert set(check["per_op"]) == {"debias_logits", "assign_queries", "matching_cost", "semantic_inference",
                                    "masked_cross_attention"}


def test_check_passes_as_a_whole(check):
    """Coverage (every launch kernel reached, every bool constexpr both ways), pruning and spills together."""
    assert check["returncode"] == 0 and not check["failures"], "\n".join(check["failures"][:30])


def test_autotune_pruning_keeps_only_configs_that_fit(check):
    tuned = [l for l in check["launches"] if l["config"] is not None and l["ok"]]
    assert tuned, "no autotune config was compiled"
    for launch in tuned:
        limit = SMEM_PER_BLOCK[launch["arch"]]
        assert launch["smem_estimate"] >= launch["shared"], launch  # the pruner's bound holds
        if not launch["pruned"]:
            assert launch["shared"] <= limit, launch
        assert launch["pruned"] == (launch["smem_estimate"] > limit), launch


def test_default_configs_do_not_spill(check):
    """No default launch spills, except those in benchmarks/results/compile/known_spills.json (a baseline of
    kernels still to fix; the check also fails when a listed one stops spilling)."""
    known = set(check["known_spills"])
    spills = [f"sm_{l['arch']} {l['kernel']} [{l['case']}]: {l['spill_stores']} B stores"
              for l in check["launches"] if l["ok"] and l["config"] is None and (l["spill_stores"] or
                                                                                l["spill_loads"])
              and f"sm_{l['arch']} {l['kernel']} [{l['case']}]" not in known]
    assert not spills, "\n".join(spills)


def test_compile_one_reports_a_kernel_the_compiler_rejects(tmp_path):
    """The check is not vacuous: a kernel that the interpreter runs but the compiler rejects (a variable whose
    shape differs between the branches of a runtime ``if``) is reported as failed."""
    (tmp_path / "bad_kernel_mod.py").write_text(textwrap.dedent('''
        import triton
        import triton.language as tl

        @triton.jit
        def bad_kernel(x_ptr, n, BLOCK: tl.constexpr):
            pid = tl.program_id(0)
            if pid < n:
                a = tl.zeros([BLOCK], dtype=tl.float32)
            else:
                a = tl.zeros([BLOCK, 2], dtype=tl.float32)
            tl.store(x_ptr + tl.arange(0, BLOCK), tl.sum(tl.reshape(a, [BLOCK, -1]), axis=1))
    '''))
    script = textwrap.dedent('''
        import json, sys
        from benchmarks.compile_check import Launch, compile_one
        launch = Launch("bad", "bad", "bad_kernel_mod", "bad_kernel", 90, {"x_ptr": "*fp32", "n": "i32",
                        "BLOCK": "constexpr"}, {"BLOCK": 64}, {}, {"num_warps": 4})
        print(json.dumps(compile_one(launch)))
    ''')
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["ok"] and "Mismatched type" in result["error"], result
