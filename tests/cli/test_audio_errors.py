"""One rule for unusable audio, shared by ``coavs predict``, ``coavs verify`` and training (``read_wav``): a wav
with no samples, or with NaN / infinite samples, is an error (predict: one line, exit 1, nothing written)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.support.cli import assert_one_line_error, run_cli, write_wav

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_AUDIO = {
    "all_nan": (np.full(16000, np.nan, dtype=np.float32), "NaN or infinite samples (16000 of 16000)"),
    "one_inf": (np.concatenate([np.zeros(999, np.float32), np.array([np.inf], np.float32)]),
                "NaN or infinite samples (1 of 1000)"),
    "no_samples": (np.zeros(0, dtype=np.int16), "holds no samples"),
}


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_predict_refuses_unusable_audio(name, trained_run, clip, tmp_path, capsys):
    samples, message = BAD_AUDIO[name]
    wav = write_wav(tmp_path / f"{name}.wav", samples)
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", trained_run, "--frames", clip / "frames", "--audio", wav, "--out", out,
                            "--device", "cpu"], capsys)
    assert_one_line_error(code, err, str(wav), message)
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_verify_reports_the_same_rule(name, workspace, tmp_path, capsys):
    samples, message = BAD_AUDIO[name]
    data = tmp_path / "data"
    shutil.copytree(workspace / "tiny", data)
    victim = sorted(data.glob("synth/*/audio.wav"))[0]
    victim.unlink()
    write_wav(victim, samples)
    code, out, _ = run_cli(["verify", data, "--json", "--quiet"], capsys)
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert [p["path"] for p in errors] == [str(victim)] and message in errors[0]["message"]


def test_predict_writes_valid_json_for_good_audio(trained_run, clip, tmp_path, capsys):
    """The normal case still works, and predictions.json is strict JSON (no NaN)."""
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", trained_run, "--frames", clip / "frames", "--audio", clip / "audio.wav",
                            "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    summary = json.loads((out / "predictions.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert all(np.isfinite(f["mean_sounding_score"]) for f in summary["frames"])
