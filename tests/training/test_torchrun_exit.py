"""``torchrun`` training ends cleanly: the process group's threads are gone when ``train`` returns, and repeated
2-process runs exit 0 (issue 25: one run in a few died of SIGABRT at interpreter exit after a finished run,
``terminate called without an active exception``, because the default group outlived ``destroy_process_group``;
see ``coavs.training.distributed._import_before_the_group``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_run import make_tiny_set, tiny_config

REPO = Path(__file__).resolve().parents[2]

# Run by torchrun in each process: train, then report the threads still alive. A gloo process group keeps a
# "pt_gloo_runloop" thread per transport pair while it lives.
WORKER = """
import json, os, sys
from pathlib import Path
from coavs.training.trainer import train
train(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
names = sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
Path(sys.argv[2], f"threads-{os.environ['RANK']}.json").write_text(json.dumps(names))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    data = make_tiny_set(root / "tiny")
    config = tiny_config(data, root / "cache", run={"max_steps": 1})
    (root / "config.json").write_text(json.dumps(config))
    (root / "worker.py").write_text(WORKER)
    return root


def _torchrun(root: Path, run_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(root / "worker.py"), str(root / "config.json"), str(run_dir)]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc")
def test_the_process_group_threads_end_with_the_training(setup):
    run_dir = setup / "threads"
    result = _torchrun(setup, run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        names = json.loads((run_dir / f"threads-{rank}.json").read_text())
        assert "pt_gloo_runloop" not in names, f"rank {rank}: the gloo group outlived train(): {names}"


@pytest.mark.slow
def test_repeated_two_process_runs_all_exit_zero(setup):
    failures = []
    for attempt in range(10):
        result = _torchrun(setup, setup / f"repeat{attempt}")
        if result.returncode != 0 or "terminate called" in result.stderr:
            failures.append((attempt, result.returncode, result.stderr[-600:]))
    assert not failures, failures
