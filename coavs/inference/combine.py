"""Combining the vanilla and the biased branch: the inference modes ``vanilla`` and ``debias`` (the debiased
logits, :func:`coavs.ops.debias_logits`); the product of experts of the ``ensemble`` training strategy
(:func:`ensemble_outputs`); the ``overall`` scheme's per-pixel maps (:func:`overall_maps`); the debias scheme for a
dataset (:func:`resolve_scheme`) and the ``debias_logits`` strategy of a training strategy (:func:`logit_strategy`).

There is no ``ensemble`` inference mode any more: the average of the vanilla and the debiased logits is the debias
at α/2 (``x + α/2·(x − x_b)``), not a strategy of its own; supplementary D.1's "logits ensemble" is the training
strategy ``ensemble`` (:mod:`coavs.training.debias`).

Training (:mod:`coavs.training.debias`) builds its debiased loss from the same functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

import coavs.ops as ops

INFERENCE_MODES = ("vanilla", "debias")
OVERALL_READINGS = ("score", "product")


def logit_strategy(strategy: str) -> str:
    """The ``debias_logits`` strategy of a training strategy (for the debiased loss and at inference):
    ``uncertainty`` stays, every other one (``fixed``, ``bias_only``; ``ensemble`` predicts with its vanilla branch
    alone) combines the branches with a fixed α."""
    return "uncertainty" if strategy == "uncertainty" else "fixed"


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`INFERENCE_MODES`, else a ValueError that lists them."""
    if mode == "ensemble":
        raise ValueError("the inference mode 'ensemble' (the mean of vanilla and debiased logits) was the debias at "
                         "alpha/2 and is gone: use mode debias with --alpha; D.1's logits ensemble is the training "
                         "strategy debias.strategy: ensemble, predicted with mode vanilla")
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
    return mode


def resolve_scheme(scheme: str, binary: bool) -> str:
    """``auto`` → ``mask`` for binary AVS (supplementary B.2: the mask logits only, no background), ``separate``
    for semantic AVS; any other scheme as given."""
    if scheme == "auto":
        return "mask" if binary else "separate"
    return scheme


def overall_maps(mask: Tensor, cls: Tensor, mask_b: Tensor, cls_b: Tensor, alpha: float = 1.0,
                 reading: str = "score", strategy: str = "fixed", gate: Tensor | None = None,
                 gate_b: Tensor | None = None) -> Tensor:
    """The debiased per-pixel class map ``[B,K,h,w]`` at the mask resolution under the ``overall`` scheme
    (see the module docstring for the two readings). ``gate`` / ``gate_b`` ``[B,Q]``: query gates multiplied into
    each branch's masks (None: none). ``uncertainty`` scales α by the biased map's confidence (``score``:
    ``|2·clamp(S_b,0,1) − 1|``; ``product``: the biased branch's top softmax probability), without gradient."""
    if reading not in OVERALL_READINGS:
        raise ValueError(f"reading must be one of {OVERALL_READINGS}, got {reading!r}")
    uncertain = strategy == "uncertainty"

    def one(m, c, g):
        if reading == "score":
            s = torch.sigmoid(m.float())
            if g is not None:
                s = s * g.float()[:, :, None, None]
            return torch.einsum("bqk,bqhw->bkhw", torch.softmax(c.float(), dim=-1)[..., :-1], s)
        m = m.float() if g is None else m.float() * g.float()[:, :, None, None]
        return torch.einsum("bqk,bqhw->bkhw", c.float()[..., :-1], m)

    x, xb = one(mask, cls, gate), one(mask_b, cls_b, gate_b if gate_b is not None else gate)
    if uncertain:
        conf = ((2 * xb.detach().clamp(0, 1) - 1).abs() if reading == "score"
                else torch.softmax(xb.detach(), dim=1).amax(dim=1, keepdim=True))
        a = alpha * conf
    else:
        a = alpha
    return (1 + a) * x - a * xb


def _debias_pair(vanilla: dict, biased: dict, alpha: float, scheme: str, strategy: str, detach_biased: bool) -> dict:
    mask_b, cls_b = biased["pred_masks"], biased["pred_logits"]
    if detach_biased:
        mask_b, cls_b = mask_b.detach(), cls_b.detach()
    out = ops.debias_logits(vanilla["pred_masks"], vanilla["pred_logits"], mask_b, cls_b, alpha=alpha,
                            scheme=scheme, strategy=strategy)
    return {"pred_masks": out.mask, "pred_logits": out.cls}


def debiased_outputs(outputs: dict, alpha: float = 1.0, scheme: str = "separate", strategy: str = "fixed",
                     aux: bool = False, detach_biased: bool = False) -> dict:
    """The debiased prediction from a model output that holds ``"biased"``: ``pred_logits``, ``pred_masks``
    (and ``aux_outputs`` when ``aux``), with the vanilla branch's ``active``/``gate``/``query_marker``."""
    if "biased" not in outputs:
        raise ValueError("outputs hold no biased branch: call the model with biased='mute' (or another kind)")
    biased = outputs["biased"]
    result = _debias_pair(outputs, biased, alpha, scheme, strategy, detach_biased)
    result["aux_outputs"] = ([_debias_pair(v, b, alpha, scheme, strategy, detach_biased)
                              for v, b in zip(outputs["aux_outputs"], biased["aux_outputs"])] if aux else [])
    for key in ("active", "gate", "query_marker"):
        if key in outputs:
            result[key] = outputs[key]
    return result


def ensemble_outputs(outputs: dict, aux: bool = False) -> dict:
    """The product of experts of the two branches (the ``ensemble`` strategy's training prediction): the sum of
    their logits, with the biased branch detached — ``σ(m + sg(m_b))`` per mask pixel and ``softmax(c + sg(c_b))``
    ∝ ``softmax(c)·softmax(sg(c_b))`` per query — with the vanilla branch's ``active``, ``gate`` and
    ``query_marker``."""
    if "biased" not in outputs:
        raise ValueError("outputs hold no biased branch: call the model with biased='mute' (or another kind)")

    def pair(vanilla: dict, biased: dict) -> dict:
        return {"pred_masks": vanilla["pred_masks"] + biased["pred_masks"].detach(),
                "pred_logits": vanilla["pred_logits"] + biased["pred_logits"].detach()}

    result = pair(outputs, outputs["biased"])
    result["aux_outputs"] = ([pair(v, b) for v, b in zip(outputs["aux_outputs"], outputs["biased"]["aux_outputs"])]
                             if aux else [])
    for key in ("active", "gate", "query_marker"):
        if key in outputs:
            result[key] = outputs[key]
    return result


def combine(outputs: dict, mode: str = "debias", alpha: float = 1.0, scheme: str = "separate",
            strategy: str = "fixed") -> tuple[Tensor, Tensor]:
    """Inference logits ``(pred_masks, pred_logits)``: ``vanilla`` or ``debias``."""
    if check_mode(mode) == "vanilla":
        return outputs["pred_masks"], outputs["pred_logits"]
    debiased = debiased_outputs(outputs, alpha, scheme, strategy)
    return debiased["pred_masks"], debiased["pred_logits"]


__all__ = ["INFERENCE_MODES", "OVERALL_READINGS", "check_mode", "combine", "debiased_outputs", "ensemble_outputs",
           "logit_strategy", "overall_maps", "resolve_scheme"]
