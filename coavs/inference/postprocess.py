"""Model outputs → per-pixel predictions: labels and a foreground ("sounding") score at the frame size, for an
inference mode (:mod:`coavs.inference.combine`), through :func:`coavs.ops.semantic_inference`, with the gate
(:mod:`coavs.inference.gate`) applied last."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import coavs.ops as ops
from coavs.inference.combine import check_mode, overall_maps
from coavs.inference.gate import apply_gate


def postprocess(outputs: dict, size: tuple[int, int], mode: str = "vanilla", binary: bool = False,
                alpha: float = 1.0, scheme: str = "separate", strategy: str = "fixed",
                overall_reading: str = "score", gate=None) -> tuple[Tensor, Tensor]:
    """Model outputs → ``(pred_labels [N,H,W] long, fg_score [N,H,W] float in [0,1])`` at ``size`` for ``mode``.

    Semantic models: labels = argmax of the per-class scores ``S[k] = Σ_q softmax(c_q)[k]·σ(m_q)·gate_q``;
    ``fg_score`` = the non-background share ``Σ_{k≠0} S[k] / Σ_k S[k]``. Binary models (S4/MS3): ``fg_score`` =
    the sounding class's score ``S[1]`` clipped to [0,1], labels = ``fg_score > 0.5``. Debias scheme ``overall``
    reads the debiased map of :func:`coavs.inference.combine.overall_maps` exactly as training does — at the mask
    resolution, each branch weighted by its *own* query gate (the biased branch's from its own active set), then
    resized: ``overall_reading="score"`` (``S' = (1+α)·S − α·S_b``): labels = its argmax, ``fg_score`` = its
    non-background share (binary: ``S'[1]``), both clipped to [0,1]; ``"product"`` (the literal product of mask
    and class logits, supplementary D.3): labels = its argmax, ``fg_score`` = 1 − its background softmax (binary:
    its sounding-class softmax). ``gate``: a :class:`coavs.inference.gate.Gate` applied last."""
    gate_q = outputs.get("gate")
    biased, debias = None, None
    mask, cls = outputs["pred_masks"], outputs["pred_logits"]
    if mode == "debias":
        if "biased" not in outputs:
            raise ValueError("mode 'debias' needs outputs with a biased branch")
        if scheme == "overall":
            labels, fg = _overall_reading(outputs, size, alpha, strategy, binary, overall_reading)
            return _gated(labels, fg, outputs, gate, binary)
        biased = (outputs["biased"]["pred_masks"], outputs["biased"]["pred_logits"])
        debias = ops.Debias(alpha=alpha, scheme=scheme, strategy=strategy)
    else:
        check_mode(mode)
    fg = ops.semantic_inference(mask, cls, size, gate=gate_q, biased=biased, debias=debias, mode="binary",
                                background=0)
    if binary:
        fg = fg.clamp(0.0, 1.0)
        return _gated((fg > 0.5).long(), fg, outputs, gate, binary)
    total = ops.semantic_inference(mask, cls, size, gate=gate_q, biased=biased, debias=debias, mode="binary")
    labels = ops.semantic_inference(mask, cls, size, gate=gate_q, biased=biased, debias=debias, mode="semantic")
    fg = (fg / total.clamp_min(1e-12)).clamp(0.0, 1.0)
    return _gated(labels, fg, outputs, gate, binary)


def _gated(labels: Tensor, fg: Tensor, outputs: dict, gate, binary: bool) -> tuple[Tensor, Tensor]:
    """``apply_gate`` with the model outputs it reads (the classifier's logits, the audio embedding)."""
    return apply_gate(labels, fg, outputs.get("audio_logits"), gate, binary, outputs.get("audio_embedding"))


def _overall_reading(outputs: dict, size, alpha: float, strategy: str, binary: bool,
                     reading: str) -> tuple[Tensor, Tensor]:
    """Labels and foreground score of the debiased ``overall`` map (plain PyTorch; see :func:`postprocess`)."""
    biased = outputs["biased"]
    maps = overall_maps(outputs["pred_masks"], outputs["pred_logits"], biased["pred_masks"], biased["pred_logits"],
                        alpha, reading, strategy, outputs.get("gate"), biased.get("gate"))
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    if reading == "score":
        if binary:
            fg = (maps[:, 1] if maps.shape[1] > 1 else maps[:, 0]).clamp(0.0, 1.0)
            return (fg > 0.5).long(), fg
        positive = maps.clamp_min(0.0)
        fg = positive[:, 1:].sum(1) / positive.sum(1).clamp_min(1e-12)
        return maps.argmax(dim=1), fg.clamp(0.0, 1.0)
    probs = torch.softmax(maps, dim=1)
    if binary:
        fg = probs[:, 1] if probs.shape[1] > 1 else probs[:, 0]
        return (fg > 0.5).long(), fg
    return maps.argmax(dim=1), (1.0 - probs[:, 0]).clamp(0.0, 1.0)


__all__ = ["postprocess"]
