"""Audio encoders: one audio input per frame → embedding ``[N,D]``.

Inputs (``ModelConfig.audio_input``):
- ``vggish``: precomputed 128-d VGGish embeddings ``[N,128]`` (the AVSBench feature files) → MLP
  128 → 512 → ReLU → D, as the reference code's ``audio_proj``;
- ``logmel``: VGGish-style log-mel patches ``[N,1,96,64]`` (0.96 s, 64 mel bands) → small CNN;
- ``waveform``: 16 kHz waveforms ``[N,L]`` → log-mel (torchaudio, VGGish parameters) → the same CNN.

Each encoder also gives a fixed, non-learned ``descriptor`` of its input (what k-means clusters are fitted on)
and ``noise_like`` (white noise in its input space: at the clip's level for the noise condition, at a fixed level
for the ``noise`` biased branch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coavs.audio_spec import LOG_OFFSET, MEL_BANDS, MEL_FRAMES, SAMPLE_RATE

VGGISH_DIM = 128
BIASED_NOISE_RMS = 0.05  # the ``noise`` biased branch's level (RMS, full scale 1): fixed, never the clip's


class LogMel(nn.Module):
    """16 kHz waveform ``[N,L]`` → VGGish-style log-mel ``[N,1,96,64]``: 25 ms Hann window, 10 ms hop, magnitude
    of a 512-point FFT, 64 HTK mel bands over 125–7500 Hz, ``log(mel + 0.01)``; cropped or padded to 96 frames
    (the parameters of :func:`coavs.data.audio.log_mel`). ``torch.stft`` and a fixed filterbank (torchaudio's
    ``melscale_fbanks``), so it traces under ``torch.compile``."""

    def __init__(self):
        super().__init__()
        import torchaudio.functional as AF

        self.register_buffer("window", torch.hann_window(400), persistent=False)
        fbanks = AF.melscale_fbanks(n_freqs=257, f_min=125.0, f_max=7500.0, n_mels=MEL_BANDS,
                                    sample_rate=SAMPLE_RATE, norm=None, mel_scale="htk")
        self.register_buffer("fbanks", fbanks, persistent=False)  # [257,64]

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.shape[-1] < 400:
            waveform = F.pad(waveform, (0, 400 - waveform.shape[-1]))
        spec = torch.stft(waveform.float(), n_fft=512, hop_length=160, win_length=400, window=self.window,
                          center=False, return_complex=True).abs()  # [N,257,frames]
        logmel = torch.log(torch.matmul(spec.transpose(1, 2), self.fbanks) + LOG_OFFSET)  # [N,frames,64]
        frames = logmel.shape[1]
        if frames >= MEL_FRAMES:
            logmel = logmel[:, :MEL_FRAMES]
        else:
            logmel = F.pad(logmel, (0, 0, 0, MEL_FRAMES - frames), value=math.log(LOG_OFFSET))
        return logmel.unsqueeze(1)


class LogMelCNN(nn.Module):
    """``[N,1,T,F]`` log-mel → ``[N,D]``: stride-2 conv blocks (conv3x3 → GroupNorm → ReLU), global average
    pool, linear."""

    def __init__(self, dim: int, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, in_ch = [], 1
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(_groups(out_ch), out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(in_ch, dim)

    def forward(self, logmel: Tensor) -> Tensor:
        return self.proj(self.body(logmel).mean(dim=(2, 3)))


class VGGishMLP(nn.Module):
    """Precomputed VGGish embeddings ``[N,128]`` → ``[N,D]`` (128 → 512 → ReLU → D, as the paper's code)."""

    def __init__(self, dim: int, in_dim: int = VGGISH_DIM, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class AudioEncoder(nn.Module):
    """One audio input per frame → embedding ``[N,D]`` (see the module docstring for the three inputs)."""

    def __init__(self, input_kind: str, dim: int, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        if input_kind not in ("vggish", "logmel", "waveform"):
            raise ValueError(f"input_kind must be 'vggish', 'logmel' or 'waveform', got {input_kind!r}")
        self.input_kind = input_kind
        self.dim = dim
        self.logmel = LogMel() if input_kind in ("logmel", "waveform") else None
        self.net = VGGishMLP(dim) if input_kind == "vggish" else LogMelCNN(dim, channels)

    @property
    def descriptor_dim(self) -> int:
        return VGGISH_DIM if self.input_kind == "vggish" else 2 * MEL_BANDS

    def check_input(self, audio: Tensor) -> None:
        """Raise a ValueError naming the expected shape when ``audio`` does not fit this encoder."""
        if not isinstance(audio, Tensor) or not audio.is_floating_point():
            raise TypeError(f"audio must be a floating-point tensor, got "
                            f"{type(audio).__name__ if not isinstance(audio, Tensor) else audio.dtype}")
        expected = {"vggish": "[N,128]", "logmel": "[N,1,T,64]", "waveform": "[N,L]"}[self.input_kind]
        ok = {"vggish": audio.dim() == 2 and audio.shape[1] == VGGISH_DIM,
              "logmel": audio.dim() == 4 and audio.shape[1] == 1 and audio.shape[3] == MEL_BANDS,
              "waveform": audio.dim() == 2}[self.input_kind]
        if not ok:
            raise ValueError(f"audio for a {self.input_kind!r} encoder must be {expected}, got "
                             f"{tuple(audio.shape)}")

    def to_logmel(self, audio: Tensor) -> Tensor:
        return self.logmel(audio) if self.input_kind == "waveform" else audio

    def forward(self, audio: Tensor) -> Tensor:
        if self.input_kind == "vggish":
            return self.net(audio)
        return self.net(self.to_logmel(audio))

    @property
    def descriptor_kind(self) -> str:
        """What :meth:`descriptor` returns: ``vggish`` or ``logmel_stats`` (marker files record it)."""
        return "vggish" if self.input_kind == "vggish" else "logmel_stats"

    @torch.no_grad()
    def descriptor(self, audio: Tensor) -> Tensor:
        """A fixed (not learned) description of the input, ``[N,F]``: the VGGish vector itself, or
        :func:`logmel_stats`. K-means markers are fitted on these."""
        if self.input_kind == "vggish":
            return audio.float()
        return logmel_stats(self.to_logmel(audio))

    @torch.no_grad()
    def noise_like(self, audio: Tensor, generator: torch.Generator | None = None,
                   fixed_level: bool = False) -> Tensor:
        """White noise in this encoder's input space, shaped like ``audio``: no semantics.

        At the clip's level (the ``noise`` audio condition and negatives): waveform: Gaussian noise with each
        clip's RMS; log-mel: the log-mel of white noise, shifted to each patch's mean level; VGGish: Gaussian with
        the batch's per-dimension mean and std (no VGGish network here to run noise through).
        ``fixed_level`` (the ``noise`` biased branch, which must not hear the clip, not even its loudness):
        waveform and log-mel at the fixed RMS :data:`BIASED_NOISE_RMS` of full scale, VGGish standard normal —
        the result depends on ``audio``'s shape, dtype and device only.
        """
        if self.input_kind == "waveform":
            rms = (torch.full((audio.shape[0], 1), BIASED_NOISE_RMS, device=audio.device) if fixed_level
                   else audio.float().pow(2).mean(dim=1, keepdim=True).sqrt())
            return (_randn(audio.shape, audio, generator) * rms).to(audio.dtype)
        if self.input_kind == "logmel":
            n, _, frames, _ = audio.shape
            hop_samples = 160 * (frames - 1) + 400
            if fixed_level:
                return self.logmel(BIASED_NOISE_RMS * _randn((n, hop_samples), audio, generator))[:, :, :frames] \
                    .to(audio.dtype)
            noise = self.logmel(_randn((n, hop_samples), audio, generator))[:, :, :frames]
            level = audio.float().mean(dim=(1, 2, 3), keepdim=True) - noise.mean(dim=(1, 2, 3), keepdim=True)
            return (noise + level).to(audio.dtype)
        if fixed_level:
            return _randn(audio.shape, audio, generator).to(audio.dtype)
        mean = audio.float().mean(dim=0, keepdim=True)
        std = audio.float().std(dim=0, unbiased=False, keepdim=True)
        return (mean + std * _randn(audio.shape, audio, generator)).to(audio.dtype)


def logmel_stats(logmel: Tensor) -> Tensor:
    """Log-mel ``[N,1,T,64]`` → ``[N,128]``: the mean and the standard deviation over time of each band."""
    x = logmel.float().squeeze(1)
    return torch.cat([x.mean(dim=1), x.std(dim=1, unbiased=False)], dim=1)


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, device=like.device, dtype=torch.float32, generator=generator)


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the width, else the largest divisor ≤ 8."""
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1
