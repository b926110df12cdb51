"""Mask2Former-style transformer decoder on ``coavs.ops``.

Per layer: masked cross-attention to one feature level (round robin over strides 32, 16, 8; the mask is the
previous prediction's, key visible iff its logit ≥ 0) → self-attention among the queries → FFN, each with a
residual and post-LayerNorm. Prediction heads (class ``K+1`` logits and a mask embedding dotted with the
per-pixel mask features) run on the initial queries and after every layer.

Branches: the queries of ``b`` branches (vanilla, biased) are laid side by side, ``[N, b·Q, D]``. Cross-attention,
FFN and heads treat them as ``b·Q`` queries of one frame, so keys, values and mask features are computed once;
self-attention runs per branch (``[N·b, Q, D]``), so the branches never see each other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import coavs.ops as ops
from coavs.models.layers import FFN, MLP, SelfAttention, merge_heads, sine_positions, split_heads


class MaskedCrossAttention(nn.Module):
    """Queries ``[N,L,D]`` attend to one level's keys ``[N,HW,D]`` where the attention mask lets them;
    rows of dormant queries (``active`` False) get no update."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor, keys_in: Tensor, values_in: Tensor, attn_mask,
                active: Tensor) -> Tensor:
        q = split_heads(self.q(tgt + query_pos), self.heads)
        k = split_heads(self.k(keys_in), self.heads)
        v = split_heads(self.v(values_in), self.heads)
        k, v = k.to(q.dtype), v.to(q.dtype)
        attn = ops.masked_cross_attention(q, k, v, attn_mask, active, q.shape[-1] ** -0.5)
        update = self.out(merge_heads(attn).to(tgt.dtype)) * active[..., None].to(tgt.dtype)
        return self.norm(tgt + self.drop(update))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.cross = MaskedCrossAttention(dim, heads, dropout)
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor, keys_in: Tensor, values_in: Tensor, attn_mask, active: Tensor,
                branches: int) -> Tensor:
        n, length, dim = tgt.shape
        q = length // branches
        tgt = self.cross(tgt, query_pos.repeat(branches, 1), keys_in, values_in, attn_mask, active)
        per_branch = tgt.reshape(n * branches, q, dim)
        per_branch = self.norm_self(per_branch + self.drop(self.self_attn(per_branch, query_pos)))
        tgt = per_branch.reshape(n, length, dim)
        return self.norm_ffn(tgt + self.drop(self.ffn(tgt)))


class TransformerDecoder(nn.Module):
    """``forward(queries, query_pos, levels, mask_features, active, branches)`` → list of
    ``(class_logits [N,b·Q,K+1], mask_logits [N,b·Q,H/4,W/4])``, one per layer plus the initial one."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int, num_classes: int, dropout: float = 0.0,
                 num_levels: int = 3):
        super().__init__()
        self.num_levels = num_levels
        self.level_embed = nn.Parameter(torch.zeros(num_levels, dim))
        nn.init.normal_(self.level_embed, std=0.02)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = MLP(dim, dim, dim, 3)

    def predict(self, tgt: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.norm(tgt)
        mask_embed = self.mask_head(x)
        masks = torch.einsum("nqc,nchw->nqhw", mask_embed, mask_features.to(mask_embed.dtype))
        return self.class_head(x), masks

    def forward(self, queries: Tensor, query_pos: Tensor, levels: list[Tensor], mask_features: Tensor, active: Tensor,
                branches: int = 1) -> list[tuple[Tensor, Tensor]]:
        if len(levels) != self.num_levels:
            raise ValueError(f"TransformerDecoder expects {self.num_levels} feature levels, got {len(levels)}")
        memories = []
        for i, level in enumerate(levels):
            _, dim, h, w = level.shape
            values_in = level.flatten(2).transpose(1, 2) + self.level_embed[i].to(level.dtype)
            keys_in = values_in + sine_positions(h, w, dim, device=level.device, dtype=level.dtype)
            memories.append((keys_in, values_in, (h, w)))
        tgt = queries
        predictions = [self.predict(tgt, mask_features)]
        for index, layer in enumerate(self.layers):
            keys_in, values_in, size = memories[index % self.num_levels]
            attn_mask = ops.build_attention_mask(predictions[-1][1].detach(), size)
            tgt = layer(tgt, query_pos, keys_in, values_in, attn_mask, active, branches)
            predictions.append(self.predict(tgt, mask_features))
        return predictions
