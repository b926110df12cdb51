"""Audio: read a wav at whatever rate it has, resample to 16 kHz, cut into one-second pieces, and turn each second
into a VGGish-style 96x64 log-mel patch.

VGGish (the features AVSBench uses) frames 16 kHz audio with a 25 ms window and a 10 ms hop, takes the magnitude
of a 512-point FFT, maps it to 64 HTK mel bands between 125 and 7500 Hz, takes ``log(mel + 0.01)`` and groups 96
frames (0.96 s) into one example. Here each second ``t`` of audio (samples ``16000·t … 16000·(t+1)``) gives one
patch: its first 96 frames (the STFT is not centred), so patch ``t`` belongs to video frame ``t`` exactly instead
of drifting by 40 ms per second.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile

from coavs.audio_spec import LOG_OFFSET, MEL_BANDS, MEL_FRAMES, SAMPLE_RATE
from coavs.data.errors import DataError


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] ``[N]`` and the file's sample rate. Channels are averaged.

    Raises :class:`DataError` for a missing, truncated or undecodable file, and for a file that cannot be used as
    audio: no samples at all, or NaN / infinite samples (float wavs). ``coavs verify``, training and ``coavs
    predict`` all read wavs here, so they share this rule."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", wavfile.WavFileWarning)
        try:
            rate, data = wavfile.read(path)
        except FileNotFoundError:
            raise DataError(path, "missing audio file") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(path, f"unreadable wav ({exc or type(exc).__name__})") from None
        except Exception as exc:  # scipy raises struct.error for a cut header
            raise DataError(path, f"unreadable wav ({type(exc).__name__}: {exc})") from None
    for warning in caught:
        if "EOF" in str(warning.message) or "truncat" in str(warning.message).lower():
            raise DataError(path, f"truncated wav ({warning.message})")
    if rate <= 0:
        raise DataError(path, f"sample rate {rate} in the header")
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        samples = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    elif np.issubdtype(data.dtype, np.floating):
        samples = data.astype(np.float32)
    else:
        raise DataError(path, f"unsupported sample type {data.dtype}")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise DataError(path, "the wav holds no samples (0 s of audio)")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise DataError(path, f"the wav holds NaN or infinite samples ({bad} of {samples.size})")
    return np.ascontiguousarray(samples), int(rate)


@contextlib.contextmanager
def one_thread():
    """Run torch CPU ops on one thread for the duration. Per-clip audio ops are tiny; with several intra-op threads
    on a busy machine their OpenMP barriers cost 10-50x the work (measured: 100 ms vs 2 ms for one 5 s log-mel on
    2 loaded cores). DataLoader workers already use one thread; this covers decoding in the main process."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resample(samples: np.ndarray | torch.Tensor, rate: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """``[N]`` at ``rate`` -> float32 tensor at ``target`` Hz (torchaudio's band-limited sinc resampling)."""
    wave = torch.as_tensor(samples, dtype=torch.float32)
    if rate == target:
        return wave
    import torchaudio.functional as AF

    with one_thread():
        return AF.resample(wave, orig_freq=int(rate), new_freq=int(target))


def split_seconds(wave: torch.Tensor, num_seconds: int, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``[N]`` -> ``[num_seconds, rate]``: second ``t`` is ``wave[rate·t : rate·(t+1)]``; a short clip is padded
    with silence, a long one cut."""
    total = num_seconds * rate
    wave = wave[:total]
    if wave.numel() < total:
        wave = torch.nn.functional.pad(wave, (0, total - wave.numel()))
    return wave.reshape(num_seconds, rate)


def load_seconds(path: str | os.PathLike, num_seconds: int) -> torch.Tensor:
    """The first ``num_seconds`` of a wav as ``[num_seconds, 16000]`` float32 at 16 kHz."""
    samples, rate = read_wav(path)
    return split_seconds(resample(samples, rate), num_seconds)


@functools.lru_cache(maxsize=1)
def _mel_transform():
    import torchaudio.transforms as AT

    return AT.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160, f_min=125.0,
                             f_max=7500.0, n_mels=MEL_BANDS, power=1.0, center=False, mel_scale="htk", norm=None)


def log_mel(seconds: torch.Tensor) -> torch.Tensor:
    """VGGish-style log-mel patches: ``[T, 16000]`` (16 kHz) -> ``[T, 1, 96, 64]`` (time, mel band)."""
    if seconds.dim() != 2 or seconds.shape[1] != SAMPLE_RATE:
        raise ValueError(f"seconds must be [T, {SAMPLE_RATE}], got {tuple(seconds.shape)}")
    with torch.no_grad(), one_thread():
        mel = _mel_transform()(seconds.float())  # [T, 64, 98]
        return torch.log(mel[..., :MEL_FRAMES] + LOG_OFFSET).transpose(1, 2).unsqueeze(1).contiguous()
