"""The calibrated "nothing sounds" gate applied to predictions (:class:`Gate`, :func:`apply_gate`) and its
optional sounding probe (:class:`SoundingProbe`); calibration and probe fitting on a training or validation split
live in :mod:`coavs.eval.gate`, whose docstring explains the modes ``any`` and ``class``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

GATE_MODES = ("none", "any", "class")


class SoundingProbe(nn.Module):
    """"Does anything sound?" from the audio embedding ``[N,D]`` → one logit per frame ``[N]``: a two-layer MLP
    fitted after training on the frozen embedding (:func:`coavs.eval.gate.fit_sounding_probe`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))

    def forward(self, embedding: Tensor) -> Tensor:
        if embedding.dim() != 2 or embedding.shape[1] != self.dim:
            raise ValueError(f"the sounding probe reads audio embeddings [N,{self.dim}], got "
                             f"{tuple(embedding.shape)}")
        return self.net(embedding.float()).squeeze(1)


@dataclass(frozen=True, eq=False)
class Gate:
    """A calibrated gate: ``mode`` (any | class), ``threshold`` τ and, for ``any``, an optional sounding ``probe``
    (None: the classifier's top class probability is the "anything sounds" score)."""

    mode: str
    threshold: float
    probe: SoundingProbe | None = None

    def __post_init__(self):
        if self.mode not in GATE_MODES[1:]:
            raise ValueError(f"Gate.mode must be 'any' or 'class', got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Gate.threshold must be in [0, 1], got {self.threshold}")
        if self.probe is not None and self.mode != "any":
            raise ValueError("a sounding probe gates whole frames: it needs mode 'any'")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Gate):
            return NotImplemented
        same_probe = (self.probe is None) == (other.probe is None) and (self.probe is None or all(
            torch.equal(a, b) for a, b in zip(self.probe.state_dict().values(), other.probe.state_dict().values())))
        return self.mode == other.mode and self.threshold == other.threshold and same_probe


def sounding_probability(audio_logits: Tensor | None, probe: SoundingProbe | None = None,
                         embedding: Tensor | None = None) -> Tensor:
    """``[N]`` "anything sounds": the probe's probability on ``embedding`` when there is a probe, else the
    classifier's top class probability."""
    if probe is not None:
        if embedding is None:
            raise ValueError("the sounding probe needs the model's audio_embedding output")
        with torch.no_grad():
            return torch.sigmoid(probe.to(embedding.device)(embedding))
    if audio_logits is None:
        raise ValueError("the gate needs the model's audio classifier (num_audio_classes > 0) or a sounding probe")
    return torch.sigmoid(audio_logits.float()).amax(dim=1)


def apply_gate(labels: Tensor, fg: Tensor, audio_logits: Tensor | None, gate: Gate | None,
               binary: bool, embedding: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(labels [N,H,W], fg [N,H,W])`` with the gate applied (see :mod:`coavs.eval.gate`); ``embedding``: the
    model's ``audio_embedding [N,D]``, read by a gate with a sounding probe."""
    if gate is None:
        return labels, fg
    if gate.mode == "any" or binary:  # a one-class model's class gate is its one probability
        score = sounding_probability(audio_logits, gate.probe, embedding)
        view = (score.to(labels.device) >= gate.threshold)[:, None, None]
        return torch.where(view, labels, torch.zeros_like(labels)), torch.where(view, fg, torch.zeros_like(fg))
    if audio_logits is None:
        raise ValueError("the class gate needs the model's audio classifier (num_audio_classes > 0)")
    probs = torch.sigmoid(audio_logits.float()).to(labels.device)
    n, classes = probs.shape
    k = int(labels.max()) + 1 if labels.numel() else 1
    heard = torch.ones(n, max(k, classes + 1), dtype=torch.bool, device=labels.device)
    heard[:, 1:classes + 1] = probs >= gate.threshold
    keep = heard.gather(1, labels.flatten(1)).view_as(labels)
    return torch.where(keep, labels, torch.zeros_like(labels)), torch.where(keep, fg, torch.zeros_like(fg))


__all__ = ["GATE_MODES", "Gate", "SoundingProbe", "apply_gate", "sounding_probability"]
