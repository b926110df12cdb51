"""Plain-PyTorch definitions of every op in ``coavs.ops``.

Each function here is the meaning of its op: short and obviously right. Kernels are tested against these,
and benchmarks import them as the eager baseline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------- debias_logits
def mask_confidence(mask_biased: Tensor) -> Tensor:
    """|2·sigmoid(m_b) − 1| per element, without gradient."""
    return (2 * torch.sigmoid(mask_biased.detach().float()) - 1).abs()


def class_confidence(cls_biased: Tensor) -> Tensor:
    """1 − H(softmax(c_b)) / log(K+1) per row of ``[..., K+1]``, without gradient; shape ``[..., 1]``."""
    c = cls_biased.detach().float()
    width = c.shape[-1]
    if width <= 1:
        return torch.ones_like(c[..., :1])
    p = torch.softmax(c, dim=-1)
    entropy = -(p * torch.log_softmax(c, dim=-1)).nan_to_num(0.0).sum(-1, keepdim=True)
    return (1 - entropy / math.log(width)).clamp(0, 1)


def debias_logits(
    mask: Tensor, cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor]:
    """``x' = (1 + a)·x − a·x_b`` for both the mask pair and the class pair.

    ``a = alpha`` (fixed) or ``alpha·confidence(x_b)`` (uncertainty; see the two confidence functions).
    Either pair may be empty. Computed in float32 (float64 stays float64), returned in the input dtype.
    """
    acc = torch.float64 if mask.dtype == torch.float64 else torch.float32

    def one(x: Tensor, xb: Tensor, confidence) -> Tensor:
        if x.numel() == 0:
            return x.clone()
        a = alpha * confidence(xb).to(acc) if uncertainty else alpha
        return ((1 + a) * x.to(acc) - a * xb.to(acc)).to(x.dtype)

    return one(mask, mask_biased, mask_confidence), one(cls, cls_biased, class_confidence)


def debias_logits_backward(
    grad_mask: Tensor, grad_cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`debias_logits`: ``dx = (1 + a)·g``, ``dx_b = −a·g`` (no gradient through ``a``)."""
    acc = torch.float64 if grad_mask.dtype == torch.float64 else torch.float32

    def one(g: Tensor, xb: Tensor, confidence) -> tuple[Tensor, Tensor]:
        if g.numel() == 0:
            return g.clone(), g.clone()
        a = alpha * confidence(xb).to(acc) if uncertainty else alpha
        g32 = g.to(acc)
        return ((1 + a) * g32).to(g.dtype), (-a * g32).to(g.dtype)

    d_mask, d_mask_b = one(grad_mask, mask_biased, mask_confidence)
    d_cls, d_cls_b = one(grad_cls, cls_biased, class_confidence)
    return d_mask, d_mask_b, d_cls, d_cls_b


def overall_scores(mask: Tensor, cls: Tensor) -> Tensor:
    """Per-pixel class scores ``S[b,k,h,w] = Σ_q softmax(cls[b,q])[k]·σ(mask[b,q,h,w])`` for k < K (no "no object")."""
    probs = torch.softmax(cls.float(), dim=-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, torch.sigmoid(mask.float())).to(mask.dtype)


def debias_overall(
    mask: Tensor, cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> Tensor:
    """The ``overall`` scheme: debias the per-pixel scores ``S`` of :func:`overall_scores`, ``[B,K,H,W]``.

    Uncertainty weight per score: ``|2·clamp(S_b, 0, 1) − 1|`` (no gradient).
    """
    scores = overall_scores(mask, cls)
    scores_biased = overall_scores(mask_biased, cls_biased)
    a = alpha * (2 * scores_biased.detach().clamp(0, 1) - 1).abs() if uncertainty else alpha
    return (1 + a) * scores - a * scores_biased
