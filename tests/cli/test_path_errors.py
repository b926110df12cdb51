"""File-system mistakes: an unreadable dataset folder, a read-only --out, a file where a folder belongs. One line,
exit 1, nothing half-written.

These tests run as root here, and root reads and writes everything whatever the mode bits say, so the kernel's
refusal is simulated: ``os.stat`` / ``os.scandir`` / ``os.mkdir`` raise the ``PermissionError`` (EACCES) that a
normal user gets for paths under the denied folder."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cli import REPO, assert_one_line_error, run_cli
from tests.support.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def deny(monkeypatch):
    """``deny(folder, "read")``: nothing under ``folder`` can be stat-ed or listed (a ``chmod 000`` folder);
    ``deny(folder, "write")``: no folder can be created in it (a read-only folder)."""

    def under(path, folder: Path) -> bool:
        try:
            text = os.fsdecode(path)
        except TypeError:  # a file descriptor
            return False
        return os.path.abspath(text).startswith(str(folder) + os.sep)

    def apply(folder: Path, what: str) -> None:
        folder = Path(folder).resolve()

        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        if what == "read":
            for name in ("stat", "scandir", "listdir"):
                real = getattr(os, name)

                def patched(path=".", *args, _real=real, **kwargs):
                    if under(path, folder) or (name != "stat" and os.path.abspath(os.fsdecode(path)) == str(folder)):
                        refuse(path)
                    return _real(path, *args, **kwargs)

                monkeypatch.setattr(os, name, patched)
        else:
            real_mkdir = os.mkdir

            def mkdir(path, *args, **kwargs):
                if under(path, folder):
                    refuse(path)
                return real_mkdir(path, *args, **kwargs)

            monkeypatch.setattr(os, "mkdir", mkdir)

    return apply


@pytest.fixture
def private_set(workspace, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(workspace / "tiny", data)
    return data


def test_verify_of_an_unreadable_folder(private_set, deny, capsys):
    deny(private_set, "read")
    code, _, err = run_cli(["verify", private_set, "--quiet"], capsys)
    assert_one_line_error(code, err, str(private_set), "Permission denied")


def test_train_on_an_unreadable_folder(private_set, workspace, deny, tmp_path, capsys):
    deny(private_set, "read")
    out = tmp_path / "run"
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", out, "--set", f"data.root={private_set}"],
                           capsys)
    assert_one_line_error(code, err, str(private_set), "Permission denied")
    assert not out.exists()


def test_train_into_a_read_only_folder(workspace, deny, tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    deny(read_only, "write")
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", read_only / "run"], capsys)
    assert_one_line_error(code, err, "cannot create the run folder", "Permission denied")
    assert list(read_only.iterdir()) == []


def test_predict_into_a_read_only_folder(trained_run, clip, deny, tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    deny(read_only, "write")
    code, _, err = run_cli(["predict", trained_run, "--frames", clip / "frames", "--audio", clip / "audio.wav",
                            "--out", read_only / "pred", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "Permission denied")
    assert list(read_only.iterdir()) == []


def test_train_with_a_file_as_the_run_folder(workspace, clip, tmp_path, capsys):
    wav = tmp_path / "audio.wav"
    shutil.copy(clip / "audio.wav", wav)
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", wav], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    assert wav.read_bytes() == (clip / "audio.wav").read_bytes()


def test_predict_frames_given_a_wav_file(trained_run, clip, tmp_path, capsys):
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", trained_run, "--frames", clip / "audio.wav", "--audio", clip / "audio.wav",
                            "--out", out, "--device", "cpu"], capsys)
    line = assert_one_line_error(code, err, "is a file, not a folder of frames")
    assert "file not found" not in line and not out.exists()


def test_predict_frames_folder_that_does_not_exist(trained_run, clip, tmp_path, capsys):
    code, _, err = run_cli(["predict", trained_run, "--frames", tmp_path / "nope", "--audio", clip / "audio.wav",
                            "--out", tmp_path / "pred", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "nope")
    assert not (tmp_path / "pred").exists()


def test_a_damaged_frame_met_by_a_loader_worker_is_one_line(workspace, tmp_path):
    """The DataLoader re-raises a worker's DataError from its text: still one line, and the workers (which ignore
    SIGTERM) are shut down so the process exits instead of hanging."""
    data = tmp_path / "data"
    shutil.copytree(workspace / "tiny", data)
    damaged = sorted(data.glob("synth/*/frames/*"))[0]
    damaged.write_bytes(b"not an image")
    config = tiny_config(data, tmp_path / "cache", data={"num_workers": 1}, stages=[{"epochs": 2}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "coavs", "train", str(tmp_path / "c.yaml"), "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, str(damaged), "unreadable frame")
