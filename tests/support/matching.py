"""Mask2Former's matcher cost written as in its own code, for checking the matching-cost op and the matcher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask2former_cost(mask_logits, target, class_logits, labels, weights=(2.0, 5.0, 5.0), dtype=torch.float64):
    """Mask2Former's per-sample matcher costs ``[Q,G]`` from ``[Q,P]`` logits and ``[G,P]`` targets, written as in
    its code (BCE against ones/zeros, einsum); ``weights`` = (class, mask, dice). float64 checks the op; the
    benchmark times it in float32 as its per-sample baseline."""
    x, t = mask_logits.to(dtype), target.to(dtype)
    hw = x.shape[1]
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    ce = (torch.einsum("nc,mc->nm", pos, t) + torch.einsum("nc,mc->nm", neg, 1 - t)) / hw
    s = x.sigmoid()
    dice = 1 - (2 * torch.einsum("nc,mc->nm", s, t) + 1) / (s.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    prob = class_logits.to(dtype).softmax(-1)
    return weights[1] * ce + weights[0] * (-prob[:, labels]) + weights[2] * dice
