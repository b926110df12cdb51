"""``benchmarks/gpu_check.sh`` is tested on the CPU before any GPU run depends on it.

The whole script runs with ``--dry-run`` (Triton under the interpreter, tiny shapes, no install): every step must
pass, the results must come back in at most 8 files, and every op must have been checked and timed. The driver's
guards are tested on their own: a wrong provider is reported and never timed, a provider the deadline cannot fit is
skipped and reported, and each measurement is on disk as soon as it is made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in for the GPU run")
def test_dry_run_of_the_whole_script(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env={**_env(), "OUT": str(out)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {"gpu_check.log", "measurements.jsonl", "summary.md", "status.txt", "results.tar.gz"} <= set(files)
    assert (out / "status.txt").read_text().startswith("status 0")
    rows = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rows if r["kind"] == "ceiling"} == {"d2d_copy", "float32_matmul"}
    checked = {(r["op"], r["provider"]) for r in rows if r["kind"] == "op" and r["status"] == "ok"}
    for op in ("semantic_inference", "debias_logits", "debias_logits_backward", "assign_queries",
               "assign_queries_backward", "matching_cost"):
        assert {(op, "coavs[triton]"), (op, "coavs[native]"), (op, "eager"), (op, "copy")} <= checked, op
    assert ("semantic_inference", "torch.compile") in checked
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        attention = [n for n in names if n.endswith("/attention.json")]
        assert attention, names
        attention_rows = json.loads(tar.extractfile(attention[0]).read())["rows"]
    assert "results/measurements.jsonl" in names and "results/summary.md" in names
    # the attention step ran with the GPU run's flags: ours matched SDPA (no error row) and was timed
    ours = [r for r in attention_rows if r["provider"] == "ours"]
    assert ours and all("median_ms" in r and "error" not in r for r in ours), ours
    assert {r["active"] for r in ours} == {0.2, 1.0} and {r["N"] for r in ours} == {49}


def _settings(seconds=60.0):
    import time
    return gpu_check.Settings("cpu", True, reps=2, deadline=time.monotonic() + seconds)


def test_a_wrong_provider_is_reported_and_not_timed(tmp_path):
    rec = gpu_check.Recorder(tmp_path)
    expected = torch.arange(4.0)
    calls = {"right": 0, "wrong": 0}

    def provider(name, value):
        def call():
            calls[name] += 1
            return value
        return call

    run = gpu_check.OpRun("toy", "4", "float32", {"right": provider("right", expected.clone()),
                                                  "wrong": provider("wrong", expected + 1)},
                          lambda out: gpu_check._close(out, expected, 1e-6, 0), bytes=32)
    gpu_check.run_op(run, rec, _settings(), {"copy_GBps": 1.0, "matmul_TFLOPs": 1.0})
    status = {r["provider"]: r["status"] for r in rec.rows if r["kind"] == "op"}
    assert status == {"right": "ok", "wrong": "wrong"}
    assert calls["wrong"] == 1, "a wrong provider was timed"
    assert calls["right"] > 1


def test_the_deadline_skips_and_reports(tmp_path):
    rec = gpu_check.Recorder(tmp_path)
    run = gpu_check.OpRun("toy", "4", "float32", {"slow": lambda: torch.zeros(1)}, lambda out: (True, 0.0),
                          bytes=4, expected_s={"slow": 100.0})
    gpu_check.run_op(run, rec, _settings(seconds=30.0), {"copy_GBps": 1.0, "matmul_TFLOPs": 1.0})
    (row,) = [r for r in rec.rows if r["kind"] == "op"]
    assert row["status"] == "skipped" and "needs ~100 s" in row["reason"]


def test_each_measurement_is_on_disk_at_once(tmp_path):
    rec = gpu_check.Recorder(tmp_path)
    rec.add(kind="op", op="toy", shape="1", dtype="float32", provider="a", status="ok", median_ms=1.0)
    lines = (tmp_path / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["provider"] == "a"
    assert "| toy | 1 | float32 | a | ok |" in (tmp_path / "summary.md").read_text()


def test_driver_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
