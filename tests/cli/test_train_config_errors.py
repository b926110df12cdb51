"""``coavs train`` refuses a bad config at the start, in one line, before any training work: nothing is written
into the run folder (it is not even created)."""

from __future__ import annotations

import pytest
import torch

from tests.support.cli import assert_one_line_error, run_cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("override, message", [
    ("eval.split=bogus", "eval.split must be one of train, val, test"),
    ("data.split=bogus", "data.split must be one of train, val, test"),
    ("optim.lr=.inf", "optim.lr=inf"),
    ("optim.lr=.nan", "optim.lr=nan"),
    ("optim.grad_clip=.inf", "optim.grad_clip=inf"),
    ("stages=[{epochs: 1, lr_scale: .nan}]", "stages[0].lr_scale=nan"),
    ("data.image_size=0", "data.image_size must be >= 1"),
    ("data.num_frames=0", "data.num_frames must be >= 1"),
    ("optim.betas=[1.5,2]", "optim.betas must both be in [0, 1)"),
    ("data.audio=vggish", "data.audio=vggish needs data.vggish_dir"),
], ids=lambda v: v if "=" in v else None)
def test_bad_value_is_refused_before_training(override, message, workspace, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", out, "--set", override], capsys)
    assert_one_line_error(code, err, message)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_device_without_cuda_is_one_line(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", out, "--set", "run.device=cuda"], capsys)
    assert_one_line_error(code, err, "run.device is cuda, but no CUDA device is visible")
    assert not out.exists()


def test_non_utf8_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("data:\n  root: /données\n".encode("latin-1"))
    out = tmp_path / "run"
    code, _, err = run_cli(["train", config, "--out", out], capsys)
    assert_one_line_error(code, err, "is not UTF-8 text")
    assert not out.exists()


def test_multi_line_yaml_error_is_folded_into_one_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("data:\n  root: [unclosed\nrun:\n  seed: 1\n")
    code, _, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "cannot parse")
    assert snapshot(tmp_path / "run") == {}


@pytest.mark.parametrize("folder, message", [
    ("absent", "is not a folder (data.audio=vggish reads <uid>.npy"),
    ("empty", "data.markers=fit: 8 VGGish feature files missing"),
])
def test_vggish_audio_without_its_features(folder, message, workspace, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--out", out, "--set", "data.audio=vggish",
                            "--set", f"data.vggish_dir={tmp_path / folder}"], capsys)
    assert_one_line_error(code, err, message)
    assert not out.exists()
