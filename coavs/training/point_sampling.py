"""Point sampling shared by the matcher and the set loss (Mask2Former's conventions).

Points are ``(x, y)`` in ``[0,1]²`` (x along the width), sampled bilinearly with ``grid_sample(align_corners=False)``
so that a point at ``(i + 0.5)/W`` reads pixel ``i`` exactly. The matcher samples ``random_points`` (uniform);
the loss may reuse the matcher's points (``MatchResult.point_coords``) or draw ``uncertain_points``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``x [B,C,H,W]`` at ``coords [B,P,2]`` (``(x, y)`` in ``[0,1]``) → ``[B,C,P]``.

    Outside-the-image points read zeros (``grid_sample``'s zero padding). Bool or integer maps (ground-truth
    masks) are read as float32; ``coords`` is cast to the dtype of ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B,C,H,W], got shape {tuple(x.shape)}")
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must be [B,P,2], got shape {tuple(coords.shape)}")
    if coords.shape[0] != x.shape[0]:
        raise ValueError(f"coords must have the batch size of x: {coords.shape[0]} vs {x.shape[0]}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    grid = (2.0 * coords - 1.0).to(x.dtype)[:, :, None, :]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]


def sample_mask_list(masks: list[Tensor], coords: Tensor) -> Tensor:
    """Ground-truth masks of a batch at its points: ``masks[b] [G_b,H_b,W_b]`` (any dtype, bool included) and
    ``coords [B,P,2]`` → ``[B,G,P]`` float32, padded with zeros to ``G = max G_b``.

    The same values as ``point_sample(masks[b][None].float(), coords[b:b+1])`` (bilinear, ``align_corners=False``,
    zeros outside). On CUDA it pads and calls ``point_sample`` once; on the CPU it reads only the four taps of
    every point from each mask (no float copy of the full masks), which is many times faster for large masks.
    """
    batch, num_points = coords.shape[0], coords.shape[1]
    if len(masks) != batch:
        raise ValueError(f"masks must hold one [G,H,W] tensor per sample ({batch}), got {len(masks)}")
    num_gt = max((m.shape[0] for m in masks), default=0)
    out = torch.zeros(batch, num_gt, num_points, dtype=torch.float32, device=coords.device)
    if num_gt == 0:
        return out
    if coords.is_cuda and len({tuple(m.shape[-2:]) for m in masks}) == 1:
        padded = torch.nn.utils.rnn.pad_sequence([m.to(coords.device, torch.float32) for m in masks],
                                                 batch_first=True)
        return point_sample(padded, coords)
    for b, m in enumerate(masks):
        count = m.shape[0]
        if count == 0:
            continue
        index, weight = _bilinear_taps(coords[b].float(), m.shape[-2], m.shape[-1])
        flat = m.to(coords.device).reshape(count, -1)
        if flat.dtype == torch.bool:
            flat = flat.view(torch.uint8)
        taps = torch.gather(flat, 1, index.reshape(1, -1).expand(count, -1))  # [G_b, 4·P] in the mask dtype
        out[b, :count] = (taps.view(count, 4, num_points).float() * weight).sum(1)
    return out


def _bilinear_taps(coords: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Flat indices ``[4,P]`` and weights ``[4,P]`` of ``grid_sample``'s bilinear taps (align_corners=False);
    taps outside the map get weight 0 (zero padding)."""
    ix = coords[:, 0] * width - 0.5
    iy = coords[:, 1] * height - 0.5
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1])
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1])
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    index = ys.clamp(0, height - 1).long() * width + xs.clamp(0, width - 1).long()
    return index, weight * inside


def random_points(batch: int, num_points: int, device=None, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B,P,2]`` points uniform in ``[0,1)²``. A ``generator`` on another device draws there and is moved, so
    one CPU generator gives the same points on any device."""
    if batch < 0 or num_points < 0:
        raise ValueError(f"batch and num_points must be >= 0, got {batch} and {num_points}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    draw_on = generator.device if generator is not None else device
    points = torch.rand(batch, num_points, 2, generator=generator, device=draw_on, dtype=dtype)
    return points.to(device)


def uncertain_points(mask_logits: Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_ratio: float = 0.75, generator: torch.Generator | None = None) -> Tensor:
    """Mask2Former's importance sampling for the loss: ``[N,P,2]`` points.

    Draws ``int(P·oversample_ratio)`` uniform points per mask, keeps the ``int(P·importance_ratio)`` most uncertain
    (smallest ``|logit|`` of ``mask_logits [N,1,h,w]`` there) and fills the rest with fresh uniform points.
    No gradient.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"mask_logits must be [N,1,h,w], got shape {tuple(mask_logits.shape)}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_ratio <= 1:
        raise ValueError(f"importance_ratio must be in [0, 1], got {importance_ratio}")
    n, device = mask_logits.shape[0], mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    with torch.no_grad():
        candidates = random_points(n, num_sampled, device, generator)
        uncertainty = -point_sample(mask_logits.detach(), candidates)[:, 0].float().abs()  # [N, num_sampled]
        top = uncertainty.topk(num_uncertain, dim=1).indices
        chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
        rest = random_points(n, num_points - num_uncertain, device, generator)
        return torch.cat([chosen, rest], dim=1)
