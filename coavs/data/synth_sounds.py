"""The sounds of synthetic Co-AVS (coavs/data/synth.py): one recipe per class (harmonic stacks, bursts, chirps,
noise bands, AM and FM patterns) and the clip's mix of the sounding classes over a noise floor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from coavs.data.synth import SynthClass


def _noise_band(n: int, rate: int, lo: float, hi: float, rng) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    out = np.fft.irfft(spectrum, n)
    return out / (np.abs(out).max() + 1e-9)


def _harmonics(f0, t, count, decay=1.0, phase_rng=None):
    """Sum of harmonics ``k·f0`` (f0 may vary in time) with amplitude ``k^-decay``."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, t.shape)) * (t[1] - t[0]) if t.size > 1 else 0 * t
    out = np.zeros_like(t)
    for k in range(1, count + 1):
        offset = phase_rng.uniform(0, 2 * np.pi) if phase_rng is not None else 0.0
        out += np.sin(k * phase + offset) / k ** decay
    return out


def _events(t: np.ndarray, rate_hz: float, rng) -> np.ndarray:
    """Time since the last event of a jittered periodic train, ``[N]`` seconds."""
    period = 1.0 / rate_hz
    starts = np.arange(rng.uniform(0, period), t[-1] + period, period)
    starts = starts + rng.uniform(-0.1, 0.1, starts.shape) * period
    idx = np.searchsorted(starts, t, side="right") - 1
    since = t - starts[np.clip(idx, 0, None)]
    since[idx < 0] = 1e3
    return since


def class_sound(cls: SynthClass, seconds: float, rate: int, rng) -> np.ndarray:
    """``[seconds·rate]`` float64 waveform of ``cls``'s sound with unit RMS (pitch jittered by ±4 % per clip)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f = cls.pitch * rng.uniform(0.96, 1.04)
    kind = cls.sound
    if kind == "bowed":  # harmonic stack with vibrato
        out = _harmonics(f * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t)), t, 8, 1.0, rng)
    elif kind == "bark":  # short harmonic bursts with noise, ~3 per second
        since = _events(t, 3.0, rng)
        env = np.exp(-since / 0.05) * (since < 0.15)
        out = env * (_harmonics(f * (1 - 0.3 * np.clip(since, 0, 0.15)), t, 5, 0.8, rng)
                     + 0.4 * _noise_band(n, rate, 500, 3000, rng))
    elif kind == "engine":  # low noise band plus a low harmonic hum, amplitude-modulated at 25 Hz
        out = (0.6 * _noise_band(n, rate, 60, 400, rng) + 0.5 * _harmonics(np.full(n, f), t, 6, 1.2, rng)) * (
            1 + 0.5 * np.sin(2 * np.pi * 25 * t))
    elif kind == "chirp":  # rising FM sweeps, ~5 per second
        since = _events(t, 5.0, rng)
        active = since < 0.07
        inst_f = f * (1 + 0.6 * np.clip(since / 0.07, 0, 1))
        out = active * np.sin(2 * np.pi * np.cumsum(inst_f) / rate) * np.sin(np.pi * np.clip(since / 0.07, 0, 1))
    elif kind == "drum":  # decaying noise hits with a low thump, 4 per second
        since = _events(t, 4.0, rng)
        out = np.exp(-since / 0.04) * (0.6 * _noise_band(n, rate, 100, 4000, rng) + np.sin(2 * np.pi * f * since))
    elif kind == "piano":  # decaying harmonic notes, 2 per second, pitch from a small scale
        since = _events(t, 2.0, rng)
        note = np.floor((t - since) * 2.0 + 0.5).astype(int)
        ratios = np.array([1.0, 1.125, 1.25, 1.5])[rng.integers(0, 4, note.max() + 2)]
        out = np.exp(-since / 0.3) * _harmonics(f * ratios[np.clip(note, 0, None)], t, 6, 1.5, rng)
    elif kind == "siren":  # tone swept up and down at 0.8 Hz
        out = _harmonics(f * (1 + 0.25 * np.sin(2 * np.pi * 0.8 * t + rng.uniform(0, 6.3))), t, 3, 1.0, rng)
    elif kind == "rotor":  # mid noise band chopped at the blade rate (pitch = chop rate)
        out = _noise_band(n, rate, 300, 1500, rng) * (0.15 + (np.sin(2 * np.pi * f * t) > 0.3))
    elif kind == "cry":  # harmonic voice with vibrato, amplitude-modulated at 4 Hz
        out = _harmonics(f * (1 + 0.03 * np.sin(2 * np.pi * 7 * t)), t, 6, 1.0, rng) * (
            0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6.3)) ** 2)
    elif kind == "bell":  # inharmonic partials, one strike per second
        since = _events(t, 1.0, rng)
        out = sum(np.exp(-since / (0.6 / k)) * np.sin(2 * np.pi * f * r * since) / k
                  for k, r in enumerate((1.0, 2.76, 5.40, 8.93), start=1))
    else:
        raise ValueError(f"unknown sound recipe {kind!r}")
    out = out - out.mean()
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-9)


def mix_sounds(classes: list[SynthClass], seconds: float, rate: int, noise: float, rng) -> np.ndarray:
    """The clip's waveform ``[N] int16``: the sounding classes at RMS ~0.1 each plus a white noise floor."""
    n = int(round(seconds * rate))
    wave = rng.standard_normal(n) * noise
    for cls in classes:
        wave += 0.1 * rng.uniform(0.75, 1.25) * class_sound(cls, seconds, rate, rng)
    peak = np.abs(wave).max()
    if peak > 0.95:
        wave *= 0.95 / peak
    return np.round(wave * 32767).astype(np.int16)
