"""What the biased branch hears: bias-only audio ``[N,D]`` and the rule for its markers, active queries and gates.

The biased branch estimates the visual prior, so it must carry no information about the clip's audio
(supplementary D.2). Every variant below is built from the clip's audio *shape* and a random generator only —
never its values — and the test suite proves it (``tests/models/test_biased_audio_free.py``: the branch's input
is bit-identical whatever the clip sounds, and a probe fitted on it, on a trained model, predicts the clip's
classes at chance). The bias-only prompt embedding, per kind:

- ``mute``: a zero embedding — the queries get no audio prompt at all;
- ``noise``: white noise at a fixed level (``coavs.models.audio.BIASED_NOISE_RMS``; never the clip's level, which
  would tell loud classes from quiet ones) in the encoder's input space, through the audio encoder;
- ``ddpm``: the last step of a DDPM forward diffusion whose schedule ends at zero signal-to-noise ratio (betas
  ``linspace(1e-4, 0.02, steps)``, rescaled so that ``ᾱ_T = 0``, Lin et al. 2024): ``sqrt(ᾱ_T)·e +
  sqrt(1 − ᾱ_T)·ε = ε``, Gaussian noise in embedding space, in training and evaluation alike. The reference
  code draws a random ``t`` of a schedule with ``ᾱ_T ≈ 0.37``: its noised embedding kept cosine 0.37 with the
  clean one at the last step and its top class matched the clip's 57 % of the time (chance 10 %), so it is not
  kept;
- ``random_semantic`` (the paper's D.2 ablation, "audio with random semantics"): the embedding of a frame of
  *another clip* of the batch (``clip_index``), drawn at random in training and the next other clip's frame in
  evaluation — a choice that never looks at either clip's audio, so the semantics it brings are independent of
  this clip's; a batch that holds one clip only has no other clip, and its biased branch is muted.

Markers, active queries and gates (``ModelConfig.biased_queries``):

- ``all`` (the default): every marker is present — each query that owns a marker is active with gate 1 — in every
  frame, whatever the audio: each query proposes what its marker's class looks like when nothing names it, which
  is the visual prior the debias subtracts;
- ``own``: the markers the perception module gives the bias-only audio itself (constant for ``mute``; the other
  clip's for ``random_semantic``) — audio-free too, but the rule is whatever the classifier makes of an input it
  never trained on (after a short demo run: 22 of 22 queries active under ``mute``, 2 in the vanilla branch);
- ``shared``: the vanilla branch's markers and active queries (the pre-D.2 behaviour): **not** audio-free — the
  clip's markers come from its audio — kept as the D.2 ablation ``biased_queries/shared``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coavs.audio_spec import LOG_OFFSET

BIASED_AUDIO = ("mute", "noise", "ddpm", "random_semantic")


class DiffusionSchedule(nn.Module):
    """DDPM forward-noising schedule: betas linear in ``[beta_min, beta_max]`` over ``steps``, rescaled to zero
    terminal SNR (``sqrt(ᾱ_t)`` shifted and scaled so that its first value is kept and its last is exactly 0)."""

    def __init__(self, steps: int = 100, beta_min: float = 1e-4, beta_max: float = 0.02):
        super().__init__()
        betas = torch.linspace(beta_min, beta_max, steps, dtype=torch.float64)
        root = torch.cumprod(1 - betas, dim=0).sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last) if steps > 1 else root * 0
        self.steps = steps
        self.register_buffer("alpha_bars", root.square().float(), persistent=False)

    def forward(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·noise`` with ``t [N]`` long, per row of ``x [N,D]``."""
        alpha_bar = self.alpha_bars[t].to(x.dtype)[:, None]
        return alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise.to(x.dtype)

    def last_step(self, x: Tensor) -> Tensor:
        """The end of the forward process for every row of ``x``: ``ε ~ N(0, I)`` exactly (``ᾱ_T = 0``)."""
        t = torch.full((x.shape[0],), self.steps - 1, device=x.device, dtype=torch.long)
        return self.forward(x, t, torch.randn_like(x))


def other_clip_rows(clip_index: Tensor | None, n: int, device, training: bool) -> tuple[Tensor, Tensor]:
    """For each of ``n`` rows, a row of another clip → ``(rows [N] long, has_other [N] bool)``.

    ``clip_index [N]`` (None: every row is its own clip): the choice depends on it alone — random among the rows
    of other clips in training (the global generator), the next row of another clip (cyclically) in evaluation.
    Rows without another clip in the batch get ``has_other`` False (and themselves as ``rows``)."""
    index = torch.arange(n, device=device)
    clips = index if clip_index is None else clip_index.to(device).long()
    other = clips[:, None] != clips[None, :]
    if training:
        cost = torch.rand((n, n), device=device)
    else:
        cost = ((index[None, :] - index[:, None]) % max(n, 1)).float()
    cost = torch.where(other, cost, torch.full_like(cost, float("inf")))
    rows = cost.argmin(dim=1) if n else index
    has_other = other.any(dim=1)
    return torch.where(has_other, rows, index), has_other


def silence_input(audio: Tensor, encoder: nn.Module) -> Tensor:
    """The encoder input of silence shaped like ``audio``: the log-mel of silence for log-mel encoders, zeros for
    waveforms, VGGish features and any other encoder."""
    if getattr(encoder, "input_kind", None) == "logmel":
        return torch.full_like(audio, float(torch.log(torch.tensor(LOG_OFFSET))))
    return torch.zeros_like(audio)


def fixed_noise_input(audio: Tensor, encoder: nn.Module) -> Tensor:
    """The ``noise`` branch's encoder input: white noise at the fixed level, shaped like ``audio``."""
    if not hasattr(encoder, "noise_like"):
        raise ValueError(f"biased audio 'noise' needs a prompt encoder with noise_like(); "
                         f"{type(encoder).__name__} has none (use 'mute' or 'ddpm')")
    return encoder.noise_like(audio, fixed_level=True)


def biased_input(kind: str, audio: Tensor, encoder: nn.Module, partner: tuple[Tensor, Tensor] | None = None,
                 noise_input: Tensor | None = None) -> Tensor:
    """The encoder-space audio the biased branch "hears", for its own markers (``biased_queries="own"``):
    silence for ``mute`` and ``ddpm`` (its noised embedding has no input), ``noise_input`` for ``noise``, the
    partner rows' audio for ``random_semantic`` (silence where there is no other clip)."""
    if kind in ("mute", "ddpm"):
        return silence_input(audio, encoder)
    if kind == "noise":
        return noise_input if noise_input is not None else fixed_noise_input(audio, encoder)
    if kind == "random_semantic":
        rows, has_other = partner
        mask = has_other.view(-1, *([1] * (audio.dim() - 1)))
        return torch.where(mask, audio[rows], silence_input(audio, encoder))
    raise ValueError(f"biased must be one of {BIASED_AUDIO} or None, got {kind!r}")


def biased_embedding(kind: str, embedding: Tensor, encoder: nn.Module, schedule: DiffusionSchedule,
                     partner: tuple[Tensor, Tensor] | None = None, noise_input: Tensor | None = None) -> Tensor:
    """The biased branch's prompt embedding ``[N,D]`` (see the module docstring for ``kind``). ``embedding``:
    the clip's own (used only for its shape, and by ``random_semantic`` for *other* clips' rows); ``partner``:
    :func:`other_clip_rows` (``random_semantic``); ``noise_input``: the encoder-space noise (``noise``)."""
    if kind == "mute":
        return torch.zeros_like(embedding)
    if kind == "noise":
        return encoder(noise_input)
    if kind == "ddpm":
        return schedule.last_step(embedding)  # ᾱ_T = 0: exactly ε, the clip's embedding weighted by 0
    if kind == "random_semantic":
        rows, has_other = partner
        return torch.where(has_other[:, None], embedding[rows], torch.zeros_like(embedding))
    raise ValueError(f"biased must be one of {BIASED_AUDIO} or None, got {kind!r}")
