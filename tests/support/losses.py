"""Fake model outputs and a deterministic matcher, for checking the loss and debias arithmetic."""

from __future__ import annotations

import torch


class FirstQueriesMatcher:
    """Ground truth g goes to query g (deterministic, for checking the loss arithmetic)."""

    def __call__(self, pred_logits, pred_masks, targets, query_marker, active, generator=None):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def fake_outputs(n=3, q=4, k=3, layers=2, size=8, requires_grad=False):
    def pred():
        return {"pred_logits": torch.randn(n, q, k + 1, requires_grad=requires_grad),
                "pred_masks": torch.randn(n, q, size, size, requires_grad=requires_grad)}

    out = pred()
    out.update(aux_outputs=[pred() for _ in range(layers)], active=torch.ones(n, q, dtype=torch.bool),
               query_marker=torch.full((q,), -1))
    return out
