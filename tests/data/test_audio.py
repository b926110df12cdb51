"""Audio reading, resampling, one-second splitting and the VGGish-style log-mel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from coavs.data import DataError
from coavs.data.audio import LOG_OFFSET, load_seconds, log_mel, read_wav, resample, split_seconds


@pytest.mark.parametrize("dtype, scale", [(np.int16, 32767), (np.int32, 2**31 - 1), (np.float32, 1.0)])
def test_read_wav_sample_types(tmp_path, dtype, scale):
    samples = np.array([0.0, 0.5, -0.5, 0.25])
    wavfile.write(tmp_path / "a.wav", 8000, (samples * scale).astype(dtype))
    out, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and out.dtype == np.float32
    np.testing.assert_allclose(out, samples, atol=1e-4)


def test_read_wav_uint8_and_stereo(tmp_path):
    wavfile.write(tmp_path / "u8.wav", 8000, np.array([128, 192, 64], dtype=np.uint8))
    np.testing.assert_allclose(read_wav(tmp_path / "u8.wav")[0], [0.0, 0.5, -0.5])
    stereo = np.stack([np.full(10, 1000), np.full(10, 3000)], axis=1).astype(np.int16)
    wavfile.write(tmp_path / "st.wav", 8000, stereo)
    np.testing.assert_allclose(read_wav(tmp_path / "st.wav")[0], np.full(10, 2000 / 32768), rtol=1e-6)


def test_read_wav_errors(tmp_path):
    with pytest.raises(DataError, match="missing audio file"):
        read_wav(tmp_path / "none.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all, just text")
    with pytest.raises(DataError, match="junk.wav: unreadable wav"):
        read_wav(tmp_path / "junk.wav")


def test_resample_keeps_a_tone():
    rate = 22050
    t = np.arange(rate) / rate
    wave = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate)
    assert wave.shape == (16000,)
    spectrum = torch.fft.rfft(wave).abs()
    assert int(spectrum.argmax()) == 1000  # 1 Hz bins over one second
    assert resample(np.ones(5, np.float32), 16000).shape == (5,)


def test_split_seconds_pads_and_cuts():
    wave = torch.arange(2.5 * 16000)
    out = split_seconds(wave, 3)
    assert out.shape == (3, 16000) and out[1, 0] == 16000 and (out[2, 8000:] == 0).all()
    assert torch.equal(split_seconds(wave, 1)[0], wave[:16000])


def test_log_mel_shape_and_band(tmp_path):
    rate = 16000
    t = np.arange(2 * rate) / rate
    low = np.sin(2 * np.pi * 300 * t) * 0.5
    high = np.sin(2 * np.pi * 4000 * t) * 0.5
    wavfile.write(tmp_path / "tones.wav", rate, np.concatenate([low[:rate], high[:rate]]).astype(np.float32))
    mel = log_mel(load_seconds(tmp_path / "tones.wav", 3))
    assert mel.shape == (3, 1, 96, 64)
    bands = mel[:2, 0].mean(dim=1).argmax(dim=1)  # loudest mel band per second
    assert bands[0] < 16 < 40 < bands[1]
    assert torch.allclose(mel[2], torch.full_like(mel[2], float(np.log(LOG_OFFSET))))  # padded second: silence
    with pytest.raises(ValueError, match=r"\[T, 16000\]"):
        log_mel(torch.zeros(2, 100))
