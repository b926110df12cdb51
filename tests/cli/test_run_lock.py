"""One run per run folder: ``coavs train`` holds an OS lock on ``<out>/.lock`` for the run's life; a second run
into the folder is refused in one line naming the holder's pid; a run killed with SIGKILL leaves no lock behind
(the kernel releases it), and its leftover temporary checkpoint is removed on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from coavs.errors import UserError
from coavs.training import checkpoint as ckpt
from coavs.training.run_lock import RunLock
from tests.support.cli import REPO, assert_one_line_error, run_cli, snapshot
from tests.support.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_second_train_into_a_running_run_is_refused_naming_the_pid(workspace, tmp_path, capsys):
    """The issue's case: two ``coavs train --out runs/x`` at once. The second stops in one line naming the first's
    pid and writes nothing; the first's folder holds one run (its seed, its log with each step once)."""
    config = tiny_config(workspace / "tiny", workspace / "cache", stages=[{"epochs": 40}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "coavs", "train", str(tmp_path / "c.yaml"), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        lock = out / ".lock"
        _wait_for(lambda: (lock.is_file() and lock.read_text().strip() == str(first.pid)) or first.poll() is not None)
        assert first.poll() is None, first.communicate()[0]
        code, _, err = run_cli(["train", tmp_path / "c.yaml", "--out", out, "--set", "run.seed=1"], capsys)
        assert_one_line_error(code, err, f"is in use by another coavs run (pid {first.pid})")
        _wait_for(lambda: (out / "log.jsonl").is_file() and len((out / "log.jsonl").read_text().splitlines()) >= 3)
    finally:
        first.send_signal(signal.SIGTERM)  # the first run saves and stops
        output = first.communicate(timeout=120)[0].decode()
    assert first.returncode == 0, output
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == 0
    steps = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))


def test_the_lock_is_held_for_the_whole_run(workspace, tmp_path):
    """Every step of a running train() sees its folder locked against a second run."""
    from coavs.training.trainer import train

    out = tmp_path / "run"
    refusals = []

    def try_second_run(step, _):
        try:
            RunLock(out).acquire()
        except UserError as exc:
            refusals.append((step, str(exc)))

    config = tiny_config(workspace / "tiny", workspace / "cache", run={"max_steps": 3})
    summary = train(config, out, on_step=try_second_run)
    assert summary["finished"]
    assert [s for s, _ in refusals] == [1, 2, 3] and f"pid {os.getpid()}" in refusals[0][1]
    with RunLock(out) as lock:  # released at the end: the next run gets it, and sees no stale holder
        assert lock.held and lock.previous_pid is None


def test_a_killed_run_leaves_no_lock_and_resume_cleans_its_temporary(workspace, tmp_path, capsys):
    """kill -9 mid-run: the kernel drops the flock, so --resume takes the folder over (and says so), and a
    half-written ``.last.pt.tmp-PID`` left by the killed writer is deleted."""
    config = tiny_config(workspace / "tiny", workspace / "cache", stages=[{"epochs": 40}],
                         run={"checkpoint_every": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "coavs", "train", str(tmp_path / "c.yaml"), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        _wait_for(lambda: (out / "checkpoints" / "last.pt").is_file() or process.poll() is not None)
        assert process.poll() is None, "the run ended before it could be killed"
        assert (out / ".lock").read_text().strip() == str(process.pid)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    leftover = out / "checkpoints" / f".last.pt.tmp-{process.pid}"
    leftover.write_bytes(b"half a checkpoint")  # what a kill during save_atomic leaves
    saved_step = ckpt.load(out / "checkpoints" / "last.pt")["step"]
    code, _, err = run_cli(["train", "--resume", "--out", out, "--max-steps", saved_step + 1], capsys)
    assert code == 0, err
    assert not leftover.exists()
    assert f"took over the run folder from pid {process.pid}" in (out / "train.log").read_text()
    assert json.loads((out / "summary.json").read_text())["step"] == saved_step + 1


def test_a_refused_or_failed_start_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", tmp_path / "missing.yaml", "--out", out], capsys)
    assert_one_line_error(code, err, "config file not found")
    bad_data = tmp_path / "c.yaml"
    bad_data.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "absent")}}))
    code, _, err = run_cli(["train", bad_data, "--out", out], capsys)
    assert_one_line_error(code, err, "dataset folder does not exist")
    assert not out.exists()
