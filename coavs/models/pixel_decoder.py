"""Multi-scale pixel decoder: backbone maps (strides 4, 8, 16, 32) → per-pixel mask features at stride 4 and
three ``D``-channel levels (strides 32, 16, 8) for the transformer decoder's masked cross-attention.

A feature pyramid (lateral 1x1 convs, top-down nearest upsampling, 3x3 output convs), optionally preceded by
transformer-encoder layers on the coarsest level for global context (Mask2Former uses multi-scale deformable
attention there; plain self-attention on the 1/32 level keeps this thin and backend-free).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from coavs.models.audio import _groups
from coavs.models.layers import FFN, SelfAttention, sine_positions


class EncoderLayer(nn.Module):
    """Post-norm transformer-encoder layer over the flattened coarsest level."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        x = self.norm1(x + self.attn(x, pos))
        return self.norm2(x + self.ffn(x))


def _conv_norm(in_ch: int, out_ch: int, kernel: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.GroupNorm(_groups(out_ch), out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """``forward(feats)`` → ``(mask_features [N,D,H/4,W/4], [level_32, level_16, level_8] each [N,D,h,w])``."""

    def __init__(self, in_channels: list[int], dim: int, heads: int = 8, ffn_dim: int = 1024, encoder_layers: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"PixelDecoder needs 4 backbone levels, got {len(in_channels)}")
        self.dim = dim
        self.lateral = nn.ModuleList(_conv_norm(c, dim, 1, relu=False) for c in in_channels)
        self.output = nn.ModuleList(_conv_norm(dim, dim, 3, relu=True) for _ in in_channels[:-1])
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(encoder_layers))
        self.mask_features = nn.Conv2d(dim, dim, 1)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        top = self.lateral[3](feats[3])
        if len(self.encoder):
            n, d, h, w = top.shape
            pos = sine_positions(h, w, d, device=top.device, dtype=top.dtype)
            x = top.flatten(2).transpose(1, 2)
            for layer in self.encoder:
                x = layer(x, pos)
            top = x.transpose(1, 2).reshape(n, d, h, w)
        levels = [top]
        for i in (2, 1, 0):
            lateral = self.lateral[i](feats[i])
            up = F.interpolate(levels[-1], size=lateral.shape[-2:], mode="nearest")
            levels.append(self.output[i](lateral + up))
        # levels: strides 32, 16, 8, 4; the last one becomes the per-pixel mask features.
        return self.mask_features(levels[3]), levels[:3]
