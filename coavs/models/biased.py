"""Bias-only audio for the biased branch: an audio embedding ``[N,D]`` that carries no (or the wrong) semantics.

Supplementary D.2: the biased branch must carry no audio semantics, so by default (``ModelConfig.biased_queries
= "own"``) its markers, active queries and gates are perceived from the bias-only audio itself
(:func:`biased_input` gives the input the k-means descriptor is computed from). ``"shared"`` reuses the vanilla
branch's markers and active queries and replaces only the prompting embedding (the earlier behaviour; an
ablation: changing only the markers then moves the "visual prior" logits). The bias-only audio:

- ``mute``: a zero embedding — the queries get no audio prompt at all;
- ``noise``: white noise in the encoder's input space, run through the audio encoder;
- ``ddpm``: the embedding noised by a forward-diffusion step at a random ``t`` (training) or the last step
  (evaluation), ``sqrt(ᾱ_t)·e + sqrt(1 − ᾱ_t)·ε`` with betas ``linspace(1e-4, 0.02, steps)`` — as the
  reference code does;
- ``random_semantic``: the embedding of another frame of the batch whose markers differ (an ablation; the
  paper reports it hurts by 0.8–2.1%).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coavs.audio_spec import LOG_OFFSET

BIASED_AUDIO = ("mute", "noise", "ddpm", "random_semantic")


class DiffusionSchedule(nn.Module):
    """DDPM forward-noising schedule (betas linear in ``[beta_min, beta_max]`` over ``steps``)."""

    def __init__(self, steps: int = 100, beta_min: float = 1e-4, beta_max: float = 0.02):
        super().__init__()
        betas = torch.linspace(beta_min, beta_max, steps, dtype=torch.float64)
        self.steps = steps
        self.register_buffer("alpha_bars", torch.cumprod(1 - betas, dim=0).float(), persistent=False)

    def forward(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·noise`` with ``t [N]`` long, per row of ``x [N,D]``."""
        alpha_bar = self.alpha_bars[t].to(x.dtype)[:, None]
        return alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise.to(x.dtype)


def other_semantic_partner(scores: Tensor, threshold: float) -> Tensor:
    """For each frame, the next frame (cyclically) whose present-marker set differs → ``[N]`` long; the next
    frame when none differs."""
    n = scores.shape[0]
    present = scores >= threshold
    differs = (present[:, None, :] != present[None, :, :]).any(dim=-1)
    index = torch.arange(n, device=scores.device)
    offset = (index[None, :] - index[:, None]) % n
    offset = torch.where(offset == 0, torch.full_like(offset, n), offset)  # self last
    cost = torch.where(differs, offset, offset + n)
    return cost.argmin(dim=1)


def silence_input(audio: Tensor, encoder: nn.Module) -> Tensor:
    """The encoder input of silence shaped like ``audio``: the log-mel of silence for log-mel encoders, zeros for
    waveforms, VGGish features and any other encoder."""
    if getattr(encoder, "input_kind", None) == "logmel":
        return torch.full_like(audio, float(torch.log(torch.tensor(LOG_OFFSET))))
    return torch.zeros_like(audio)


def biased_input(kind: str, audio: Tensor, encoder: nn.Module, scores: Tensor, threshold: float,
                 noise_input: Tensor | None = None) -> Tensor:
    """The encoder-space audio the biased branch "hears", for its own markers (``biased_queries="own"``):
    silence for ``mute`` and ``ddpm`` (its noised embedding has no input), ``noise_input`` (the noise the
    embedding was made from) for ``noise``, the partner frame's audio for ``random_semantic``."""
    if kind in ("mute", "ddpm"):
        return silence_input(audio, encoder)
    if kind == "noise":
        return noise_input if noise_input is not None else encoder.noise_like(audio)
    if kind == "random_semantic":
        return audio[other_semantic_partner(scores, threshold)]
    raise ValueError(f"biased must be one of {BIASED_AUDIO} or None, got {kind!r}")


def biased_embedding(kind: str, embedding: Tensor, audio: Tensor, encoder: nn.Module, scores: Tensor,
                     schedule: DiffusionSchedule, threshold: float, training: bool,
                     noise_input: Tensor | None = None) -> Tensor:
    """The biased branch's audio embedding ``[N,D]`` (see the module docstring for ``kind``); ``noise_input``:
    the encoder-space noise to use for ``noise`` (default: drawn here)."""
    if kind == "mute":
        return torch.zeros_like(embedding)
    if kind == "noise":
        if not hasattr(encoder, "noise_like"):
            raise ValueError(f"biased audio 'noise' needs a prompt encoder with noise_like(); "
                             f"{type(encoder).__name__} has none (use 'mute' or 'ddpm')")
        return encoder(noise_input if noise_input is not None else encoder.noise_like(audio))
    if kind == "ddpm":
        n = embedding.shape[0]
        if training:
            t = torch.randint(0, schedule.steps, (n,), device=embedding.device)
        else:
            t = torch.full((n,), schedule.steps - 1, device=embedding.device, dtype=torch.long)
        return schedule(embedding, t, torch.randn_like(embedding))
    if kind == "random_semantic":
        return embedding[other_semantic_partner(scores, threshold)]
    raise ValueError(f"biased must be one of {BIASED_AUDIO} or None, got {kind!r}")
