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
from tests.cli.conftest import REPO, assert_one_line_error, run_cli, snapshot
from tests.training.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

HOLD = """
import sys, time
from coavs.training.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_second_train_into_a_held_folder_is_refused_naming_the_pid(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        before = snapshot(out)
        code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", out], capsys)
        assert_one_line_error(code, err, f"is in use by another coavs run (pid {holder.pid})")
        assert snapshot(out) == before  # only the holder's .lock: no config.json, log or checkpoint
    finally:
        holder.kill()
        holder.wait()


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
