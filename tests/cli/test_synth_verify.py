"""`verify` on good and damaged sets, and smoke tests of `coavs synth` / `coavs verify`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from coavs.cli import main
from coavs.data.avsbench import read_avss_records
from coavs.data.verify import verify_dataset

from tests.support.datasets import make_ms3, make_s4


def test_verify_good_synthetic_set(synth_root):
    report = verify_dataset(synth_root)
    assert report.ok and report.problems == [] and report.synthetic
    assert report.clips == {"train": {"synth": 8}, "val": {"synth": 4}, "test": {"synth": 4}}
    assert report.frame_sizes == {"48x48": 48} and report.audio_rates == {"16000": 16}
    assert report.files_checked == 16 * 7 and report.num_classes == 11
    assert "OK" in report.format()


def test_verify_lists_every_problem(synth_copy):
    records = read_avss_records(synth_copy, "train")
    records[0].frame_paths[2].unlink()
    records[1].audio_path.write_bytes(records[1].audio_path.read_bytes()[:3000])
    records[2].mask_paths[0].write_bytes(b"\x89PNG broken")
    Image.fromarray(np.full((48, 48, 3), 64, dtype=np.uint8)).save(records[3].mask_paths[1])  # grey 64 = palette id 56
    short = records[4].audio_path
    from scipy.io import wavfile

    wavfile.write(short, 16000, np.zeros(8000, dtype=np.int16))
    with open(synth_copy / "metadata.csv", "a") as f:
        f.write("x,x,0,0,dog,nowhere,synth\n")
    report = verify_dataset(synth_copy, workers=2)
    assert not report.ok
    text = report.format()
    found = {(p.severity, p.path.split("/")[-1] if p.path else "", p.message.split(" (")[0]) for p in report.problems}
    assert ("error", "2.jpg", "missing frame") in found
    assert ("error", "audio.wav", "truncated wav") in found
    assert ("error", "0.png", "unreadable mask") in found
    assert ("warning", "audio.wav", "audio lasts 0.50 s for 3 frames") in found
    assert any(p.path.endswith("metadata.csv") and "line 18" in p.message for p in report.problems)
    assert any(p.path.endswith(f"{records[3].uid}/labels_rgb/1.png") for p in report.errors)
    assert len(report.errors) == 5 and "FAILED: 5 errors, 1 warnings" in text


def test_verify_quick_checks_existence_only(synth_copy):
    records = read_avss_records(synth_copy, "test")
    records[0].mask_paths[0].write_bytes(b"garbage")
    records[1].mask_paths[2].unlink()
    records[2].audio_path.write_bytes(b"")
    report = verify_dataset(synth_copy, deep=False)
    assert [p.message.split(" (")[0] for p in report.errors] == ["missing mask", "empty audio file"]
    assert report.frame_sizes == {}


def test_verify_s4_and_ms3(tmp_path):
    s4 = verify_dataset(make_s4(tmp_path / "s4"))
    assert s4.ok and s4.clips == {"train": {"s4": 1}, "val": {"s4": 1}, "test": {"s4": 1}}
    assert sum("official S4 release has" in p.message for p in s4.problems) == 3
    ms3 = verify_dataset(make_ms3(tmp_path / "ms3"))
    assert ms3.ok and ms3.audio_rates == {"22050": 2}


def test_cli_synth_then_verify(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["synth", str(out), "--clips", "6", "--frames", "2", "--size", "32", "--semantics", "1-2",
                 "--distractors", "0-1", "--silent-prob", "0.2", "--frame-format", "png", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "6 clips (train 4, val 1, test 1)" in printed and "visible-but-silent rate" in printed
    assert (out / "synth" / "synth_00000" / "frames" / "0.png").exists()
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (out / "synth" / "synth_00001" / "audio.wav").unlink()
    assert main(["verify", str(out), "--quiet"]) == 1
    assert "missing audio" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--area", "big", "--quiet"]) == 1
    expected = "coavs synth: error: --area must be a number or a range MIN-MAX, got 'big'"
    assert capsys.readouterr().err.strip() == expected
    assert main(["synth", str(tmp_path / "a"), "--classes", "violin,unicorn", "--quiet"]) == 1
    assert "classes must be" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().endswith("missing: dataset folder does not exist")
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 1
    assert "cannot tell the layout" in capsys.readouterr().err


def test_cli_entry_point(tmp_path):
    """The real command line, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-m", "coavs", "synth", str(tmp_path / "s"), "--clips", "3", "--frames",
                             "1", "--size", "24", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "coavs", "verify", str(tmp_path / "s"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
