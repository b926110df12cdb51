"""Clip items → frame batches: the models see frames, the datasets hold clips.

:func:`collate_frames` is the DataLoader ``collate_fn`` of training and evaluation. It concatenates the frames of
every clip of a batch along one dimension ``N`` (clips of different lengths mix freely: AVSS v1s/v1m clips have 5
frames, v2 clips 10) and drops padding frames (``valid`` False). Each frame keeps where it came from.

A frame batch is a dict:

- ``frames [N,3,H,W]`` (float in [0,1], or uint8 when the dataset was opened with ``uint8_frames``),
  ``audio [N,…]`` (the audio of each frame's second), ``labels [N,H,W]`` long (255 = unannotated),
  ``annotated [N]`` bool;
- ``clip_index [N]`` long (dataset index of the clip), ``frame_index [N]`` long (frame within the clip),
  ``uid`` list of ``N`` clip ids;
- any other per-frame tensor of the items (Co-AVS: ``sounding``/``visible``/``silent [N,K]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

_PER_CLIP = ("uid", "index", "valid")


def collate_frames(items: list[dict]) -> dict:
    """Clip items of a ``coavs.data`` dataset → one frame batch (see the module docstring)."""
    if not items:
        raise ValueError("collate_frames needs at least one clip")
    keep = [item["valid"].bool() if "valid" in item else torch.ones(item["frames"].shape[0], dtype=torch.bool)
            for item in items]
    batch: dict = {}
    for key, value in items[0].items():
        if key in _PER_CLIP or not isinstance(value, Tensor):
            continue
        batch[key] = torch.cat([item[key][k] for item, k in zip(items, keep)])
    batch["clip_index"] = torch.cat([torch.full((int(k.sum()),), int(item["index"]), dtype=torch.long)
                                     for item, k in zip(items, keep)])
    batch["frame_index"] = torch.cat([k.nonzero().flatten() for k in keep])
    batch["uid"] = [item["uid"] for item, k in zip(items, keep) for _ in range(int(k.sum()))]
    return batch


def select_frames(batch: dict, which: Tensor) -> dict:
    """The frames ``which`` (bool ``[N]`` or long indices) of a frame batch."""
    if which.dtype == torch.bool:
        which = which.nonzero().flatten()
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() >= 1:
            out[key] = value.index_select(0, which.to(value.device))
        elif isinstance(value, list):
            out[key] = [value[i] for i in which.tolist()]
        else:
            out[key] = value
    return out


def to_device(batch: dict, device: torch.device, non_blocking: bool = False) -> dict:
    """Tensors of ``batch`` moved to ``device``; uint8 frames become float in [0,1] there."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            value = value.to(device, non_blocking=non_blocking)
            if key == "frames" and value.dtype == torch.uint8:
                value = value.float().div_(255.0)
        out[key] = value
    return out
