"""A damaged or hostile checkpoint given to ``eval``, ``predict`` or ``train --resume`` is one line with exit 1
(loaded with ``weights_only=True``: the malicious pickle never runs), and nothing is written; so is a checkpoint
whose recorded config is not a run config."""

from __future__ import annotations

import shutil

import pytest

from tests.support.cli import CHECKPOINT_DAMAGE, assert_one_line_error, bad_checkpoint, run_cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

MESSAGES = {"truncated": "is not a readable checkpoint", "empty": "is an empty file, not a checkpoint",
            "random": "is not a readable checkpoint", "malicious": "was refused"}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_eval_of_a_bad_checkpoint(damage, trained_run, tmp_path, capsys):
    path = bad_checkpoint(damage, tmp_path / "model.pt", trained_run / "checkpoints" / "last.pt")
    rows = tmp_path / "rows.json"
    code, _, err = run_cli(["eval", path, "--split", "val", "--out", rows], capsys)
    assert_one_line_error(code, err, str(path), MESSAGES[damage])
    assert not rows.exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_predict_with_a_bad_checkpoint(damage, trained_run, clip, tmp_path, capsys):
    path = bad_checkpoint(damage, tmp_path / "model.pt", trained_run / "checkpoints" / "last.pt")
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", path, "--frames", clip / "frames", "--audio", clip / "audio.wav",
                            "--out", out, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, MESSAGES[damage])
    assert not out.exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_resume_from_a_bad_checkpoint(damage, run_copy, tmp_path, capsys):
    good = tmp_path / "good.pt"
    shutil.copy(run_copy / "checkpoints" / "last.pt", good)
    bad_checkpoint(damage, run_copy / "checkpoints" / "last.pt", good)
    before = snapshot(run_copy)
    code, _, err = run_cli(["train", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, MESSAGES[damage])
    after = snapshot(run_copy)
    after.pop(".lock", None)
    assert after == before and not (run_copy / "checkpoints" / "PWNED").exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_wav_given_as_the_run_folder(command, clip, tmp_path, capsys):
    argv = [command, clip / "audio.wav"]
    if command == "predict":
        argv += ["--frames", clip / "frames", "--audio", clip / "audio.wav", "--out", tmp_path / "pred",
                 "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "audio.wav is not a readable checkpoint")
    assert not (tmp_path / "pred").exists()


def test_a_foreign_checkpoint_is_named_as_such(tmp_path, capsys):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    code, _, err = run_cli(["eval", path], capsys)
    assert_one_line_error(code, err, "is not a coavs training checkpoint")


@pytest.mark.parametrize("config, reason", [
    ("{not json", "not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)"),
    ("[1, 2]", "not a JSON object (got a list)"),
    ('{"nonsense": 1}', "unknown key(s) nonsense"),
    (None, "missing (not written by coavs train)"),
])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_whose_recorded_config_is_damaged(command, config, reason, run_copy, tmp_path, capsys):
    import torch

    path = run_copy / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    if config is None:
        del state["config"]
    else:
        state["config"] = config
    torch.save(state, path)
    argv = ["eval", path, "--split", "val"] if command == "eval" else ["train", "--resume", "--out", run_copy]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"the config recorded in the checkpoint {path}: {reason}")
