"""VGGish as AVSBench computes it (coavs.models.vggish) against an independent port, and ``coavs features``.

The independent port is PyPI's ``torchvggish`` 0.2 (the PyTorch port of the TensorFlow original by H. Taylor,
whose GitHub copy AVSBench ships): its ``mel_features``/``vggish_input`` front end, its network and its
postprocessor, fed random weights from files in the public format (its weight loader, ``torch.hub``, is pointed
at the local files; nothing is downloaded). Its ``resampy``/``soundfile`` imports are stubbed when those packages
are absent: the comparison runs at 16 kHz, where neither is called.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from coavs.data.audio import read_wav
from coavs.data.dataset import open_dataset
from coavs.models.vggish import EMBEDDING_DIM, examples, load_vggish, log_mel, mel_matrix
from tests.support.cli import assert_one_line_error, run_cli, snapshot, write_wav
from tests.support.pretrained import write_vggish_files


@pytest.fixture(scope="module")
def vggish_files(tmp_path_factory):
    return write_vggish_files(tmp_path_factory.mktemp("vggish"))


@pytest.fixture
def port(vggish_files, monkeypatch):
    """PyPI torchvggish's network (raw embeddings) and postprocessor, loaded from the local random-weight files."""
    for name in ("resampy", "soundfile"):
        try:
            __import__(name)
        except ImportError:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    port = pytest.importorskip("torchvggish.torchvggish", reason="the independent port (pip install "
                                                                  "--no-deps torchvggish==0.2)")
    from torchvggish import vggish_input

    weights, pca = vggish_files
    local = {port.VGGISH_WEIGHTS: weights, port.PCA_PARAMS: pca}

    def load_local(url, **kwargs):  # the public files hold NumPy arrays: a trusted local file of our own
        return torch.load(local[url], map_location="cpu", weights_only=False)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", load_local)
    network = port.vggish(postprocess=False).eval()
    return network, port.Postprocessor(), vggish_input


def test_embeddings_equal_the_independent_port_and_quantized_values_are_identical(port, vggish_files, tmp_path):
    network, postprocessor, vggish_input = port
    rng = np.random.default_rng(1)
    t = np.arange(int(16000 * 4.3)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    stereo = np.stack([tone, np.roll(tone, 100)], axis=1)
    wav = write_wav(tmp_path / "clip.wav", (stereo * 32767).astype(np.int16))

    samples, rate = read_wav(wav)  # what `coavs features` reads (scipy, int16 / 32768, channels averaged)
    assert rate == 16000
    from scipy.io import wavfile
    _, pcm = wavfile.read(wav)
    their_examples = vggish_input.waveform_to_examples(pcm / 32768.0, 16000).detach()  # as wavfile_to_examples
    ours = examples(torch.from_numpy(samples))
    assert ours.shape == their_examples.shape == (4, 1, 96, 64)
    torch.testing.assert_close(ours, their_examples, atol=1e-5, rtol=0)

    weights, pca = vggish_files
    model = load_vggish(weights, pca)
    with torch.no_grad():
        their_raw = network(their_examples)
        their_quantized = postprocessor.postprocess(their_raw)
    raw = model.embed(torch.from_numpy(samples), postprocess=False)
    assert raw.shape == (4, EMBEDDING_DIM) and raw.abs().max() > 1.0  # not a degenerate all-zero embedding
    assert (raw - their_raw).abs().max() <= 1e-4
    quantized = model.embed(torch.from_numpy(samples))
    assert torch.equal(quantized, their_quantized)
    assert quantized.min() == 0 and quantized.max() == 255  # both clipping ends are exercised
    assert len(quantized.unique()) > 100


def test_front_end_is_the_tensorflow_one_not_torchaudios():
    weights = mel_matrix()
    assert weights.shape == (257, 64) and (weights[0] == 0).all()
    peaks = weights.argmax(dim=0)
    assert (peaks.diff() >= 0).all()  # bands ordered low to high, each a triangle
    frames = log_mel(torch.zeros(16000))
    assert frames.shape == (98, 64) and torch.allclose(frames, torch.log(torch.tensor(0.01, dtype=frames.dtype)))
    assert examples(torch.zeros(15599)).shape[0] == 0 and examples(torch.zeros(15600)).shape[0] == 1
    assert examples(torch.zeros(16000 * 10)).shape[0] == 10


def test_loading_names_the_file_and_what_is_wrong(vggish_files, tmp_path):
    weights, pca = vggish_files
    with pytest.raises(FileNotFoundError):
        load_vggish(tmp_path / "absent.pth")
    state = torch.load(weights, weights_only=True)
    del state["embeddings.4.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial.pth: not a VGGish state dict \(missing embeddings.4.bias"):
        load_vggish(tmp_path / "partial.pth")
    state["embeddings.4.bias"] = torch.zeros(64)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"embeddings.4.bias must be \(128,\)"):
        load_vggish(tmp_path / "shape.pth")
    torch.save({"pca_means": np.zeros(128)}, tmp_path / "pca.pth")
    with pytest.raises(ValueError, match="no 'pca_eigen_vectors'"):
        load_vggish(weights, tmp_path / "pca.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot read the VGGish weights file"):
        load_vggish(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------- coavs features
def test_features_command_writes_what_the_readers_accept_and_resumes(synth_root, vggish_files, tmp_path, capsys):
    weights, pca = vggish_files
    out = tmp_path / "feats"
    code, stdout, _ = run_cli(["features", synth_root, "--vggish", weights, "--pca", pca, "--out", out, "--quiet",
                               "--device", "cpu"], capsys)
    assert code == 0, stdout
    manifest = json.loads((out / "vggish.json").read_text())
    assert manifest["postprocess"] and manifest["weights"]["name"] == "vggish-10086976.pth"
    dataset = open_dataset(synth_root, "val", audio="vggish", vggish_dir=out)
    item = dataset[0]
    assert item["audio"].shape == (dataset.records[0].num_frames, 128)
    model = load_vggish(weights, pca)
    record = dataset.records[0]
    samples, _ = read_wav(record.audio_path)
    expected = model.embed(torch.from_numpy(samples))[:record.num_frames]
    torch.testing.assert_close(item["audio"], expected)
    files = sorted(out.glob("*.npy"))
    assert "16 written" in stdout and len(files) == 16

    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:60])  # a damaged file is redone
    before = snapshot(out)
    code, stdout, _ = run_cli(["features", synth_root, "--vggish", weights, "--pca", pca, "--out", out, "--quiet",
                               "--device", "cpu"], capsys)
    assert code == 0 and "2 written, 14 already there" in stdout
    after = snapshot(out)
    assert {k for k in after if after[k] != before.get(k)} == {files[0].name, files[1].name}


def test_features_command_user_mistakes_are_one_line(synth_root, vggish_files, tmp_path, capsys):
    weights, pca = vggish_files
    out = tmp_path / "feats"
    code, _, err = run_cli(["features", synth_root, "--vggish", tmp_path / "vggish.pth", "--out", out], capsys)
    assert_one_line_error(code, err, "VGGish weights file not found", "vggish.pth")
    code, _, err = run_cli(["features", synth_root, "--vggish", weights, "--pca", tmp_path / "p.pth"], capsys)
    assert_one_line_error(code, err, "VGGish PCA file not found", "p.pth")
    code, _, err = run_cli(["features", tmp_path / "nowhere", "--vggish", weights], capsys)
    assert_one_line_error(code, err, "nowhere")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["features", synth_root, "--vggish", weights, "--out", tmp_path / "file"], capsys)
    assert_one_line_error(code, err, "is not a folder")
    code, _, _ = run_cli(["features", synth_root, "--vggish", weights, "--out", out, "--split", "test", "--quiet"],
                         capsys)
    assert code == 0
    code, _, err = run_cli(["features", synth_root, "--vggish", weights, "--pca", pca, "--out", out, "--quiet"],
                           capsys)
    assert_one_line_error(code, err, "other weights or settings", "pca", "--overwrite")


def test_features_command_names_a_damaged_wav(synth_copy, vggish_files, capsys):
    weights, _ = vggish_files
    wav = next(synth_copy.rglob("audio.wav"))
    wav.write_bytes(b"RIFF")
    code, _, err = run_cli(["features", synth_copy, "--vggish", weights, "--quiet"], capsys)
    assert_one_line_error(code, err, str(wav))


def test_other_rates_are_resampled_with_a_kaiser_sinc(tmp_path):
    from coavs.preprocess.common import resample_like_resampy

    rate = 44100
    t = np.arange(int(rate * 2)) / rate
    wave = resample_like_resampy(0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    exact = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)
    assert wave.shape == (32000,)
    assert np.abs(wave.numpy() - exact)[2000:-2000].max() < 1e-4  # away from the edges: the band-limited sine


def test_features_on_the_ms3_layout_resample_its_22khz_audio(vggish_files, tmp_path, capsys):
    from coavs.preprocess.common import resample_like_resampy
    from tests.support.datasets import make_ms3

    data = make_ms3(tmp_path / "ms3")
    weights, _ = vggish_files
    code, _, err = run_cli(["features", data, "--vggish", weights, "--quiet", "--device", "cpu"], capsys)
    assert code == 0, err
    dataset = open_dataset(data, "train", audio="vggish", vggish_dir=data / "vggish")
    samples, rate = read_wav(dataset.records[0].audio_path)
    assert rate == 22050
    expected = load_vggish(weights).embed(resample_like_resampy(samples, rate))
    torch.testing.assert_close(dataset[0]["audio"], expected[:5])
