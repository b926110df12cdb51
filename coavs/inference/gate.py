"""The calibrated "nothing sounds" gate applied to predictions (:class:`Gate`, :func:`apply_gate`); its
calibration on a training or validation split lives in :mod:`coavs.eval.gate`, whose docstring explains the
modes ``any`` and ``class``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GATE_MODES = ("none", "any", "class")


@dataclass(frozen=True)
class Gate:
    """A calibrated gate: ``mode`` (any | class) and ``threshold`` τ."""

    mode: str
    threshold: float

    def __post_init__(self):
        if self.mode not in GATE_MODES[1:]:
            raise ValueError(f"Gate.mode must be 'any' or 'class', got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Gate.threshold must be in [0, 1], got {self.threshold}")


def sounding_probability(audio_logits: Tensor | None, sounding_logit: Tensor | None) -> Tensor:
    """``[N]`` "anything sounds": the sounding head's probability when the model has one, else the classifier's
    top class probability."""
    if sounding_logit is not None:
        return torch.sigmoid(sounding_logit.float())
    if audio_logits is None:
        raise ValueError("the gate needs the model's audio classifier (num_audio_classes > 0) or its sounding head")
    return torch.sigmoid(audio_logits.float()).amax(dim=1)


def apply_gate(labels: Tensor, fg: Tensor, audio_logits: Tensor | None, gate: Gate | None,
               binary: bool, sounding_logit: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(labels [N,H,W], fg [N,H,W])`` with the gate applied (see the module docstring)."""
    if gate is None:
        return labels, fg
    if gate.mode == "any" or binary:  # a one-class model's class gate is its one probability
        score = sounding_probability(audio_logits, sounding_logit if gate.mode == "any" else None)
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


__all__ = ["GATE_MODES", "Gate", "apply_gate", "sounding_probability"]
