"""Inference-time "nothing sounds" gate from the perception classifier (beyond the paper).

The audio classifier gives ``p = σ(audio_logits) [N,C]``, one probability per sounding class. Modes:

- ``any``: a frame whose top class probability ``max_c p_c`` is below ``τ`` is predicted empty (all
  background; binary foreground score 0) — silence and noise should make nothing sound. A model with a
  sounding head (``model.sounding_head``) is gated on that head's "anything sounds" probability instead;
- ``class``: a pixel labelled class ``k`` whose own probability ``p_k`` is below ``τ`` becomes background — the
  visible object whose sound is not heard (e.g. under another clip's audio) is not segmented. Classes without
  a classifier marker are never gated; binary models (one class) gate as ``any``.

``τ`` is calibrated on a training or validation split, never on the test split (:func:`calibrate_gate`): the
scores of the positive cases (``any``: frames with a sounding pixel; ``class``: every (frame, sounding class)
pair), with the frame's own audio, and of negatives made from the same frames (silence and white noise); ``τ``
keeps ``keep`` of the positives (the ``1 − keep`` quantile of their scores) and, when the negatives' 95th
percentile lies below that, sits midway between the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from coavs.data.splits import is_binary
from coavs.errors import ConfigError
from coavs.eval.runner import _clip_indices, _model_batches
from coavs.inference.gate import GATE_MODES, Gate, apply_gate, sounding_probability  # noqa: F401  (re-export)

CALIBRATION_SPLITS = ("train", "val")
GATE_FILE = "gate.json"


@dataclass
class GateSection:
    """``gate`` config section: ``mode`` none (default) | any | class; ``threshold`` a fixed τ (None: calibrate
    on ``split`` — train or val — keeping ``keep`` of the positive cases; ``max_clips`` caps the clips used)."""

    mode: str = "none"
    threshold: float | None = None
    keep: float = 0.98
    split: str = "val"
    max_clips: int | None = None

    def __post_init__(self):
        if self.mode not in GATE_MODES:
            raise ConfigError(f"gate.mode must be one of {', '.join(GATE_MODES)}, got {self.mode!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"gate.threshold must be in [0, 1] or null (calibrate), got {self.threshold}")
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"gate.keep must be in (0, 1], got {self.keep}")
        if self.split not in CALIBRATION_SPLITS:
            raise ConfigError(f"gate.split must be train or val (never the test split), got {self.split!r}")


def _positive_scores(probs: Tensor, labels: Tensor, mode: str, binary: bool, sounding: Tensor | None = None) -> Tensor:
    valid = (labels != 255) & (labels != 0)
    if mode == "any" or binary:
        has = valid.flatten(1).any(dim=1)
        return (sounding if sounding is not None and mode == "any" else probs.amax(dim=1))[has]
    scores = []
    classes = probs.shape[1]
    for i in range(labels.shape[0]):
        present = labels[i][valid[i]].unique()
        present = present[(present >= 1) & (present <= classes)]
        scores.append(probs[i, present - 1])
    return torch.cat(scores) if scores else probs.new_zeros(0)


def choose_threshold(positive: Tensor, negative: Tensor, keep: float) -> float:
    """τ from positive and negative scores (see the module docstring)."""
    if positive.numel() == 0:
        raise ValueError("cannot calibrate the gate: no positive case in the calibration split")
    pos = positive.double().sort().values
    tau = float(pos[min(int(math.floor((1.0 - keep) * pos.numel())), pos.numel() - 1)])
    if negative.numel():
        neg95 = float(torch.quantile(negative.double(), 0.95))
        if neg95 < tau:
            tau = (tau + neg95) / 2
    return min(max(tau, 0.0), 1.0)


def calibrate_gate(model, dataset, mode: str, keep: float = 0.98, *, batch_size: int = 8, device="cpu",
                   max_clips: int | None = None, seed: int = 0, precision: str = "fp32") -> tuple[Gate, dict]:
    """Calibrate τ on ``dataset`` (a training or validation split) → ``(Gate, stats)``; see the module
    docstring. ``stats``: ``positives``, ``negatives``, ``positive_kept``, ``negative_gated``."""
    if mode not in GATE_MODES[1:]:
        raise ValueError(f"mode must be 'any' or 'class', got {mode!r}")
    binary = is_binary(dataset)
    positives, negatives = [], []
    indices = _clip_indices(dataset, max_clips, distributed=False)
    for batch, outputs in _model_batches(model, dataset, indices, batch_size=batch_size, device=device,
                                         conditions=("normal", "silence", "noise"), needs_biased=False, biased=None,
                                         seed=seed, num_workers=0, precision=precision, progress=False):
        labels = batch["labels"]
        for condition, out in outputs.items():
            sounding = (sounding_probability(out.get("audio_logits"), out.get("sounding_logit"))
                        if mode == "any" else None)
            if out.get("audio_logits") is None and sounding is None:
                raise ValueError("the gate needs the model's audio classifier (num_audio_classes > 0)")
            probs = torch.sigmoid(out["audio_logits"].float()) if out.get("audio_logits") is not None else None
            if condition == "normal":
                positives.append(_positive_scores(probs, labels, mode, binary, sounding).cpu())
            else:
                negatives.append((sounding if sounding is not None else probs.amax(dim=1)).cpu())
    pos = torch.cat(positives) if positives else torch.zeros(0)
    neg = torch.cat(negatives) if negatives else torch.zeros(0)
    tau = choose_threshold(pos, neg, keep)
    stats = {"positives": int(pos.numel()), "negatives": int(neg.numel()),
             "positive_kept": float((pos >= tau).double().mean()) if pos.numel() else math.nan,
             "negative_gated": float((neg < tau).double().mean()) if neg.numel() else math.nan}
    return Gate(mode, tau), stats


def save_gate(run_dir, gate: Gate, stats: dict | None = None, split: str | None = None) -> Path:
    path = Path(run_dir) / GATE_FILE
    path.write_text(json.dumps({"mode": gate.mode, "threshold": gate.threshold, "split": split,
                                "stats": stats or {}}, indent=2))
    return path


def load_gate(run_dir) -> Gate | None:
    """The gate a run calibrated (``<run>/gate.json``), or None (no file, or a checkpoint path)."""
    path = Path(run_dir)
    path = path / GATE_FILE if path.is_dir() else path.parent.parent / GATE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Gate(data["mode"], float(data["threshold"]))


__all__ = ["GATE_MODES", "GateSection", "Gate", "apply_gate", "calibrate_gate", "choose_threshold", "save_gate",
           "load_gate"]
