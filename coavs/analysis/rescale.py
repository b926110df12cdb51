"""The supplementary A.1 intervention: rescale every frame so each sounding object covers 30–40 % of it.

The supplementary scales "each target object" to 30–40 % of the image. ``per="object"`` (the default) measures
``a`` as the area of one object: the sounding area divided by the number of sounding instances (8-connected
components of each class, :func:`coavs.analysis.stats.count_instances`), i.e. the mean object area — exactly the
object's area in a single-object frame. One view cannot put objects of different sizes in the range at once, so
in a multi-object frame the *mean* object lands there; the achieved per-object area is what the analysis reports.
``per="frame"`` (the earlier behaviour, kept for comparison) measures the whole sounding area instead.

A frame whose area ``a`` lies outside ``[lo, hi]`` is zoomed by the linear factor
``z = sqrt(t / a)``, with ``t`` the nearest point of ``[lo, hi]`` (the smallest change that lands in the range):

- ``z > 1`` (small objects): a window of ``H/z × W/z`` centred on the bounding box of the sounding pixels
  (shifted to stay inside the frame) is resized to ``H × W``. The zoom never cuts a sounding object: it stops
  where the bounding box of all sounding pixels fills the window, so frames whose objects lie far apart end
  below the target;
- ``z < 1`` (large objects): the whole frame is shrunk by ``z`` into the centre of an ``H × W`` canvas filled
  with the frame's mean colour; the border is background.

Frames are resampled bilinearly, labels by nearest neighbour (``F.grid_sample``, ``align_corners=False``), so
the output keeps the input's size and the model sees its usual resolution. Pixel rounding moves the achieved
area a little; the zoom is corrected up to twice to land in the range. Frames in range, frames without a
sounding object and unannotated frames are unchanged. The analysis reports the achieved area (from the
transformed labels), not the planned one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from coavs.analysis.stats import count_instances, sounding_mask

DEFAULT_TARGET = (0.30, 0.40)
PER = ("object", "frame")


def object_area(labels: Tensor) -> Tensor:
    """``[N]`` float64: the mean area fraction of one sounding object (sounding area / sounding instances; 0
    without one)."""
    area = sounding_mask(labels).flatten(1).double().mean(1)
    return area / count_instances(labels).clamp_min(1).double()


def _measure(labels: Tensor, per: str) -> float:
    if per == "object":
        return float(object_area(labels[None])[0])
    return float(sounding_mask(labels[None]).double().mean())


def check_target(target) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 < lo <= hi <= 0.9``."""
    try:
        lo, hi = (float(target), float(target)) if isinstance(target, (int, float)) else map(float, target)
    except (TypeError, ValueError):
        raise ValueError(f"target area must be a fraction or a (min, max) pair, got {target!r}") from None
    if not 0.0 < lo <= hi <= 0.9:
        raise ValueError(f"target area must satisfy 0 < min <= max <= 0.9, got {target!r}")
    return lo, hi


def zoom_factor(area: float, target=DEFAULT_TARGET) -> float:
    """Linear zoom that brings an area fraction ``area`` to the nearest point of ``target``; 1 for ``area == 0``."""
    lo, hi = check_target(target)
    if area <= 0.0 or lo <= area <= hi:
        return 1.0
    return math.sqrt(min(max(area, lo), hi) / area)


def _bounding_box(mask: Tensor) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` (end exclusive) of the true pixels of a non-empty ``[H,W]`` mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _warp(frame: Tensor, labels: Tensor, box, zoom: float) -> tuple[Tensor, Tensor]:
    """Resample the source window of ``zoom`` (see the module docstring) to the frame's size."""
    height, width = labels.shape
    h, w = height / zoom, width / zoom
    if zoom < 1.0:
        cy, cx = height / 2, width / 2
    else:
        y0, y1, x0, x1 = box
        cy = min(max((y0 + y1) / 2, h / 2), height - h / 2)
        cx = min(max((x0 + x1) / 2, w / 2), width - w / 2)
    # affine map from output coordinates in [-1, 1] to input coordinates in [-1, 1] (align_corners=False)
    theta = torch.tensor([[w / width, 0.0, 2 * cx / width - 1], [0.0, h / height, 2 * cy / height - 1]],
                         dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    inside = torch.ones(1, 1, height, width)
    warped = F.grid_sample(torch.cat([frame.float()[None], inside], 1), grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)[0]
    coverage = warped[3:].clamp(0, 1)
    fill = frame.float().mean(dim=(1, 2))[:, None, None]
    new_frame = warped[:3] + (1 - coverage) * fill  # pixels outside the source take the mean colour
    new_labels = F.grid_sample(labels.float()[None, None], grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[0, 0].round().to(labels.dtype)
    return new_frame.to(frame.dtype), new_labels


def rescale_frame(frame: Tensor, labels: Tensor, target=DEFAULT_TARGET,
                  per: str = "object") -> tuple[Tensor, Tensor, float]:
    """One frame ``[3,H,W]`` (float) and its labels ``[H,W]`` (int) rescaled so each sounding object (``per=
    "object"``) or all of them together (``"frame"``) cover ``target`` of it (see the module docstring). Returns
    ``(frame, labels, zoom)``; ``zoom == 1`` means unchanged."""
    if frame.dim() != 3 or labels.dim() != 2 or frame.shape[1:] != labels.shape:
        raise ValueError(f"frame must be [3,H,W] and labels [H,W] of the same size, got {tuple(frame.shape)} and "
                         f"{tuple(labels.shape)}")
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    lo, hi = check_target(target)
    mask = sounding_mask(labels[None])[0]
    area = _measure(labels, per) if mask.numel() else 0.0
    zoom = zoom_factor(area, (lo, hi))
    if zoom == 1.0:
        return frame, labels, 1.0
    height, width = labels.shape
    box = _bounding_box(mask)
    largest = min(height / (box[1] - box[0]), width / (box[3] - box[2]))  # the box of all objects fills the frame
    result = (frame, labels, 1.0)
    for _ in range(3):
        zoom = min(zoom, largest) if zoom > 1.0 else zoom
        if zoom <= 1.0 and result[2] == 1.0 and area < lo:
            return result  # the objects already span the frame: nothing can be zoomed without cutting one
        new_frame, new_labels = _warp(frame, labels, box, zoom)
        result = (new_frame, new_labels, zoom)
        achieved = _measure(new_labels, per)
        if lo <= achieved <= hi or achieved == 0.0 or (zoom >= largest and achieved < lo):
            break
        zoom *= math.sqrt(min(max(achieved, lo), hi) / achieved)
    return result


class RescaledDataset(Dataset):
    """A clip dataset whose annotated frames are rescaled to ``target`` sounding area (:func:`rescale_frame`).

    Items are the base dataset's, with ``frames`` and ``labels`` replaced and ``zoom [T]`` and ``object_area
    [T]`` (the achieved mean area of one sounding object) added; every other attribute (``num_classes``,
    ``label_map``, ``kind``, ...) is the base dataset's. ``per``: ``object`` (A.1) or ``frame``.
    """

    def __init__(self, base: Dataset, target=DEFAULT_TARGET, per: str = "object"):
        if per not in PER:
            raise ValueError(f"per must be one of {PER}, got {per!r}")
        self.base = base
        self.target = check_target(target)
        self.per = per

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        if name == "base":  # not yet set (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.base[index])
        frames, labels = item["frames"].clone(), item["labels"].clone()
        zoom = torch.ones(frames.shape[0])
        annotated = item.get("annotated", torch.ones(frames.shape[0], dtype=torch.bool))
        for t in range(frames.shape[0]):
            if not bool(annotated[t]):
                continue
            scale = 255.0 if frames.dtype == torch.uint8 else 1.0
            frame, labels[t], zoom[t] = rescale_frame(frames[t].float() / scale, labels[t], self.target, self.per)
            frames[t] = (frame * scale).round().to(frames.dtype) if scale != 1.0 else frame
        item.update(frames=frames, labels=labels, zoom=zoom, object_area=object_area(labels).float())
        return item
