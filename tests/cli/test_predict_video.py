"""``coavs predict --video``: a small video written with PyAV in the test (frames and an audio track), end to end
through the CLI, and one-line errors (PyAV missing, no audio, undecodable file)."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from coavs.cli import main
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

FPS, NUM_FRAMES, WIDTH, HEIGHT = 4, 10, 48, 32  # 2.5 s: frames shown at 0.5 s and 1.5 s are taken
RATE = 16000


def needs_av():
    return pytest.importorskip("av", reason="PyAV is not installed (pip install 'coavs[video]')")


def write_video(path: Path, audio: np.ndarray | None) -> Path:
    """An MPEG-4 video whose frame ``i`` is a flat grey of level ``25·i``, with ``audio`` (16 kHz mono float) as
    an AAC track when given."""
    av = needs_av()
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = container.add_stream("aac", rate=RATE) if audio is not None else None
        if sound is not None:
            sound.layout = "mono"
        for i in range(NUM_FRAMES):
            image = np.full((HEIGHT, WIDTH, 3), 25 * i, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            for start in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate = RATE
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video")
    config = tiny_config(make_tiny_set(root / "tiny"), root / "cache", run={"max_steps": 1})
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "tiny.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


def test_read_video_takes_the_frame_at_each_half_second_and_the_audio_track(tmp_path):
    from coavs.eval.predict import read_video

    sound = tone(2.5)
    frames, names, track = read_video(write_video(tmp_path / "clip.mp4", sound))
    assert names == ["0", "1"]
    assert [f.shape for f in frames] == [(HEIGHT, WIDTH, 3)] * 2
    # shown at 0.5 s: frame 2 (level 50); at 1.5 s: frame 6 (level 150); MPEG-4 is lossy, levels are 25 apart
    assert [round(float(f.mean()) / 25) for f in frames] == [2, 6]
    assert track is not None and abs(len(track) - len(sound)) < 0.25 * RATE  # AAC pads
    spectrum = np.abs(np.fft.rfft(track.numpy()[: 2 * RATE]))
    assert abs(np.argmax(spectrum) * RATE / (2 * RATE) - 440.0) < 2.0  # the track is the tone we wrote


def test_predict_video_end_to_end_with_its_own_audio(trained_run, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", tone(2.5))
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), "--video", str(video), "--out", str(out), "--device", "cpu"]) == 0
    assert "2 frames (vanilla)" in capsys.readouterr().out
    from PIL import Image

    for folder in ("masks", "overlays"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["0.png", "1.png"]
        with Image.open(out / folder / "0.png") as image:
            assert image.size == (WIDTH, HEIGHT)
    summary = json.loads((out / "predictions.json").read_text())
    assert [f["frame"] for f in summary["frames"]] == ["0", "1"]
    assert all(0.0 <= f["sounding_fraction"] <= 1.0 for f in summary["frames"])


def test_predict_video_without_a_track_takes_audio_from_a_wav(trained_run, tmp_path, capsys):
    video = write_video(tmp_path / "silent.mp4", None)
    argv = ["predict", str(trained_run), "--video", str(video), "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "no audio: pass --audio" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    wav = tmp_path / "sound.wav"
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(RATE)
        handle.writeframes((tone(2.0) * 32767).astype("<i2").tobytes())
    assert main(argv + ["--audio", str(wav), "--out", str(tmp_path / "b")]) == 0
    assert len(json.loads((tmp_path / "b" / "predictions.json").read_text())["frames"]) == 2


@pytest.mark.parametrize("case, message", [
    ("garbage", "cannot decode"),
    ("missing", "not found"),
    ("no_av", "needs PyAV: pip install av"),
])
def test_predict_video_mistakes_are_one_line(case, message, trained_run, tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    if case == "garbage":
        needs_av()
        video.write_bytes(b"this is not a video" * 100)
    elif case == "no_av":
        video.write_bytes(b"\0" * 1000)
        monkeypatch.setitem(sys.modules, "av", None)  # import av now fails, as without PyAV
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), "--video", str(video), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "predictions.json").exists()

