"""A run folder knows its run (issue 24): a checkpoint copied in from another run is refused on resume, and a
checkpoint that cannot be written (disk full) is one line with exit 1 while the previous checkpoint survives."""

from __future__ import annotations

import errno
import shutil

import pytest

from coavs.training import checkpoint as ckpt
from tests.support.cli import assert_one_line_error, run_cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stopped_runs(workspace, tmp_path_factory):
    """Two runs of tiny.yaml stopped after step 1: seed 0 and seed 1, and a second seed-0 run."""
    from coavs.cli import main

    root = tmp_path_factory.mktemp("identity")
    for name, seed in (("a", 0), ("b", 1), ("twin", 0)):
        assert main(["train", str(workspace / "tiny.yaml"), "--out", str(root / name), "--max-steps", "1",
                     "--set", f"run.seed={seed}"]) == 0
    return root


def _copy(stopped_runs, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(stopped_runs / name, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


@pytest.mark.parametrize("donor", ["b", "twin"])  # another seed, and the same config in another folder
def test_a_checkpoint_from_another_run_is_refused_on_resume(donor, stopped_runs, tmp_path, capsys):
    run = _copy(stopped_runs, tmp_path, "a")
    shutil.copy(stopped_runs / donor / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = snapshot(run)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert_one_line_error(code, err, "belongs to another run")
    after = snapshot(run)
    after.pop(".lock", None)
    assert after == before


def test_the_run_id_is_in_config_json_and_the_checkpoint(stopped_runs):
    import json

    config = json.loads((stopped_runs / "a" / "config.json").read_text())
    state = ckpt.load(stopped_runs / "a" / "checkpoints" / "last.pt")
    assert config["resolved"]["run_id"] == state["run_id"] and len(state["run_id"]) == 16
    assert state["run_id"] != ckpt.load(stopped_runs / "twin" / "checkpoints" / "last.pt")["run_id"]


def test_own_checkpoint_resumes(stopped_runs, tmp_path, capsys):
    run = _copy(stopped_runs, tmp_path, "a")
    code, out, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert code == 0, err
    assert "trained 3 steps" in out


class _FullDisk:
    """A file whose writes stop after ``room`` bytes with ENOSPC, as on a full disk."""

    def __init__(self, path, mode, room):
        self.file, self.room = open(path, mode), room  # noqa: SIM115 (closed in __exit__)

    def write(self, data):
        data = bytes(data)
        self.file.write(data[:self.room])
        if len(data) > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(stopped_runs, tmp_path, capsys, monkeypatch):
    run = _copy(stopped_runs, tmp_path, "a")
    last = run / "checkpoints" / "last.pt"
    previous = last.read_bytes()
    monkeypatch.setattr(ckpt, "open", lambda path, mode: _FullDisk(path, mode, room=4096), raising=False)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    line = assert_one_line_error(code, err, "cannot write the checkpoint", str(last), "No space left on device",
                                 "the previous checkpoint is unchanged")
    assert "MiB free" in line
    assert last.read_bytes() == previous and ckpt.load(last)["step"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary file left


def test_a_short_write_is_caught(tmp_path, monkeypatch):
    class Short(_FullDisk):
        def write(self, data):  # writes part and says so, as write(2) may
            data = bytes(data)[:self.room]
            self.file.write(data)
            return len(data)

    path = tmp_path / "last.pt"
    ckpt.save_atomic({"step": 1}, path)
    monkeypatch.setattr(ckpt, "open", lambda p, mode: Short(p, mode, room=100), raising=False)
    with pytest.raises(ckpt.UserError, match="short write"):
        ckpt.save_atomic({"step": 2, "big": list(range(1000))}, path)
    assert ckpt.load(path)["step"] == 1
