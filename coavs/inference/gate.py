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


def apply_gate(labels: Tensor, fg: Tensor, audio_logits: Tensor | None, gate: Gate | None,
               binary: bool) -> tuple[Tensor, Tensor]:
    """``(labels [N,H,W], fg [N,H,W])`` with the gate applied (see the module docstring)."""
    if gate is None:
        return labels, fg
    if audio_logits is None:
        raise ValueError("the gate needs the model's audio classifier (num_audio_classes > 0)")
    probs = torch.sigmoid(audio_logits.float()).to(labels.device)
    if gate.mode == "any" or binary:
        keep = probs.amax(dim=1) >= gate.threshold
        view = keep[:, None, None]
        return torch.where(view, labels, torch.zeros_like(labels)), torch.where(view, fg, torch.zeros_like(fg))
    n, classes = probs.shape
    k = int(labels.max()) + 1 if labels.numel() else 1
    heard = torch.ones(n, max(k, classes + 1), dtype=torch.bool, device=labels.device)
    heard[:, 1:classes + 1] = probs >= gate.threshold
    keep = heard.gather(1, labels.flatten(1)).view_as(labels)
    return torch.where(keep, labels, torch.zeros_like(labels)), torch.where(keep, fg, torch.zeros_like(fg))


__all__ = ["GATE_MODES", "Gate", "apply_gate"]
