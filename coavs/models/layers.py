"""Small building blocks shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_positions(height: int, width: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """DETR's normalised 2-D sine position encoding, ``[H·W, dim]`` (row-major): the first ``dim/2`` channels
    encode y, the last ``dim/2`` encode x, as interleaved sin/cos with temperature 10000."""
    half = dim // 2
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2).float() / half)

    def encode(v: Tensor) -> Tensor:
        p = v[:, None] / freq
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=2).reshape(height * width, dim).to(dtype)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``[B,L,D]`` → ``[B,h,L,D/h]``."""
    b, length, dim = x.shape
    return x.view(b, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``[B,h,L,dh]`` → ``[B,L,h·dh]``."""
    b, heads, length, dh = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * dh)


class SelfAttention(nn.Module):
    """Multi-head self-attention (``scaled_dot_product_attention``); positions are added to queries and keys."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        q, k = self.qk(x if pos is None else x + pos).chunk(2, dim=-1)
        v = self.v(x)
        attn = F.scaled_dot_product_attention(split_heads(q, self.heads), split_heads(k, self.heads),
                                              split_heads(v, self.heads),
                                              dropout_p=self.dropout if self.training else 0.0)
        return self.out(merge_heads(attn))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
