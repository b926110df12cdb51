"""Per-frame ground-truth statistics and metrics grouped by them (supplementary A.1, A.2).

Everything here works on predictions and labels only, so it runs on any model's output:

- :func:`frame_statistics`: per annotated frame, the area fraction covered by sounding objects, the number of
  sounding semantics (distinct non-background classes) and of sounding instances (connected components per
  class, 8-connected, ignoring specks below ``min_instance_fraction`` of the frame — the generator does not
  record instances, and AVSBench has none, so they are counted from the label masks);
- :class:`GroupedMetrics`: the community metrics (:mod:`coavs.eval.metrics`) accumulated separately for every
  group of frames (an area bin, a semantics count, ...), so each group's numbers are exactly what the metric
  classes give for those frames alone.

Two metric families per group:

- ``binary_*``: sounding vs not sounding, :class:`~coavs.eval.metrics.BinaryAVSMetrics` on the foreground
  score (``scores="probabilities"``, foreground = score > 0.5) against ``labels > 0``: the per-frame IoU averaged
  over the group's frames, as in AVSBench S4/MS3 and in the supplementary's figures;
- ``semantic_*`` (multi-class data only): :class:`~coavs.eval.metrics.SemanticAVSMetrics` on the predicted
  labels, averaged over the classes *present in the group* (``miou_present_classes``): a group holds a few
  classes, and the all-class mean would count every absent class as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from coavs.data.avsbench import IGNORE_INDEX
from coavs.eval.metrics import BinaryAVSMetrics, SemanticAVSMetrics, frame_iou

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_labels(labels: Tensor) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 3:
        raise ValueError(f"labels must be a [N,H,W] tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    return labels


def sounding_mask(labels: Tensor) -> Tensor:
    """``[N,H,W]`` bool: pixels of a sounding object (label neither background 0 nor unannotated 255)."""
    labels = _check_labels(labels)
    return (labels > 0) & (labels != IGNORE_INDEX)


def sounding_area(labels: Tensor) -> Tensor:
    """``[N]`` float64: fraction of each frame covered by sounding objects."""
    mask = sounding_mask(labels)
    if mask.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return mask.flatten(1).double().mean(1).cpu()


def count_semantics(labels: Tensor) -> Tensor:
    """``[N]`` long: distinct sounding classes per frame."""
    labels = _check_labels(labels)
    out = torch.zeros(labels.shape[0], dtype=torch.long)
    for i, frame in enumerate(labels.cpu()):
        classes = torch.unique(frame)
        out[i] = int(((classes > 0) & (classes != IGNORE_INDEX)).sum())
    return out


def count_instances(labels: Tensor, min_instance_fraction: float = 0.0005) -> Tensor:
    """``[N]`` long: sounding instances per frame, the 8-connected components of each class's mask that cover at
    least ``min_instance_fraction`` of the frame (at least one pixel)."""
    labels = _check_labels(labels)
    if not 0.0 <= min_instance_fraction < 1.0:
        raise ValueError(f"min_instance_fraction must be in [0, 1), got {min_instance_fraction}")
    n, h, w = labels.shape
    min_pixels = max(1, int(math.ceil(min_instance_fraction * h * w)))
    out = torch.zeros(n, dtype=torch.long)
    array = labels.cpu().numpy()
    for i in range(n):
        frame = array[i]
        for cls in np.unique(frame):
            if cls == 0 or cls == IGNORE_INDEX:
                continue
            components, count = ndimage.label(frame == cls, structure=EIGHT_CONNECTED)
            if count:
                sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
                out[i] += int((sizes >= min_pixels).sum())
    return out


@dataclass
class FrameStatistics:
    """Ground-truth statistics of ``N`` frames (all ``[N]``)."""

    area: Tensor  # float64, fraction of the frame covered by sounding objects
    semantics: Tensor  # long, distinct sounding classes
    instances: Tensor  # long, sounding instances (connected components)


def frame_statistics(labels: Tensor, min_instance_fraction: float = 0.0005) -> FrameStatistics:
    """:class:`FrameStatistics` of annotated frames ``labels [N,H,W]``."""
    return FrameStatistics(sounding_area(labels), count_semantics(labels),
                           count_instances(labels, min_instance_fraction))


def binary_frame_iou(fg_score: Tensor, labels: Tensor) -> Tensor:
    """``[N]`` float64: AVSBench's per-frame IoU of ``fg_score > 0.5`` with the sounding pixels (the number
    :class:`BinaryAVSMetrics` averages)."""
    return frame_iou(fg_score.detach().float() > 0.5, sounding_mask(labels).to(fg_score.device)).cpu()


# --------------------------------------------------------------------------------------------- area bins
def parse_edges(text: str | list | tuple, name: str = "bins") -> tuple[float, ...]:
    """Bin edges from ``"0,0.1,0.3,1"`` or a sequence: at least two, strictly increasing, within [0, 1]."""
    if isinstance(text, str):
        try:
            edges = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    else:
        edges = tuple(float(v) for v in text)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0 or edges[-1] > 1:
        raise ValueError(f"{name} must be at least two strictly increasing numbers in [0, 1], got {text!r}")
    return edges


def area_bin_index(area: Tensor, edges: tuple[float, ...]) -> Tensor:
    """``[N]`` long: the bin ``[edges[i], edges[i+1])`` of each area (the last bin includes its upper edge);
    -1 for an area of exactly 0 (no sounding object: its own group) and for areas outside the edges."""
    area = area.double()
    edge_t = torch.tensor(edges, dtype=torch.float64)
    index = torch.bucketize(area, edge_t, right=True) - 1
    index = torch.where(area == edge_t[-1], torch.full_like(index, len(edges) - 2), index)
    outside = (index < 0) | (index >= len(edges) - 1) | (area <= 0)
    return torch.where(outside, torch.full_like(index, -1), index)


def area_bin_label(index: int, edges: tuple[float, ...]) -> str:
    """``"10-20%"`` for bin ``index``; ``"none"`` for -1 (no sounding object)."""
    if index < 0:
        return "none"
    return f"{_percent(edges[index])}-{_percent(edges[index + 1])}%"


def _percent(value: float) -> str:
    text = f"{100 * value:.1f}"
    return text[:-2] if text.endswith(".0") else text


# ----------------------------------------------------------------------------------------- grouped metrics
class GroupedMetrics:
    """The community metrics accumulated per group of frames.

    Args:
        num_classes: classes incl. background for the semantic metrics, or None (binary data: S4/MS3).
    """

    def __init__(self, num_classes: int | None = None):
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 or None, got {num_classes}")
        self.num_classes = num_classes
        self._binary: dict = {}
        self._semantic: dict = {}
        self._iou_sq: dict = {}
        self._area: dict = {}

    @property
    def groups(self) -> list:
        """Group keys in first-seen order."""
        return list(self._binary)

    def update(self, keys, fg_score: Tensor, labels: Tensor, pred_labels: Tensor | None = None,
               area: Tensor | None = None) -> None:
        """One batch of annotated frames: ``keys`` (``N`` hashable group keys), ``fg_score [N,H,W]`` float in
        [0,1], ``labels [N,H,W]`` ground truth, ``pred_labels [N,H,W]`` (needed with ``num_classes``), ``area
        [N]`` (the frames' sounding area, for the group's mean; computed from ``labels`` when None)."""
        keys = list(keys)
        labels = _check_labels(labels)
        if fg_score.shape != labels.shape or len(keys) != labels.shape[0]:
            raise ValueError(f"keys ({len(keys)}), fg_score {tuple(fg_score.shape)} and labels "
                             f"{tuple(labels.shape)} must describe the same frames")
        if self.num_classes is not None and (pred_labels is None or pred_labels.shape != labels.shape):
            raise ValueError("semantic grouped metrics need pred_labels shaped like labels")
        area = sounding_area(labels) if area is None else area.double().cpu()
        ious = binary_frame_iou(fg_score, labels)
        gt_fg = sounding_mask(labels)
        for key in dict.fromkeys(keys):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], dtype=torch.long)
            if key not in self._binary:
                self._binary[key] = BinaryAVSMetrics(scores="probabilities")
                self._iou_sq[key] = 0.0
                self._area[key] = 0.0
                if self.num_classes is not None:
                    self._semantic[key] = SemanticAVSMetrics(self.num_classes)
            on_device = rows.to(fg_score.device)
            self._binary[key].update(fg_score[on_device].float(), gt_fg[rows.to(gt_fg.device)])
            self._iou_sq[key] += float(ious[rows].pow(2).sum())
            self._area[key] += float(area[rows].sum())
            if self.num_classes is not None:
                self._semantic[key].update(pred_labels[rows.to(pred_labels.device)],
                                           labels[rows.to(labels.device)])

    def row(self, key) -> dict:
        """The metrics of one group: ``frames``, ``mean_area``, ``binary_miou``, ``binary_fscore``,
        ``binary_iou_std`` (population standard deviation of the per-frame IoU) and, for semantic data,
        ``semantic_miou_present`` and ``semantic_fscore_present``."""
        binary = self._binary[key].compute()
        frames = binary["frames"]
        variance = max(0.0, self._iou_sq[key] / frames - binary["miou"] ** 2) if frames else math.nan
        out = {"frames": frames, "mean_area": self._area[key] / frames if frames else math.nan,
               "binary_miou": binary["miou"], "binary_fscore": binary["fscore"],
               "binary_iou_std": math.sqrt(variance)}
        if self.num_classes is not None:
            semantic = self._semantic[key].compute()
            out["semantic_miou_present"] = semantic["miou_present_classes"]
            out["semantic_fscore_present"] = semantic["fscore_present_classes"]
        return out

    def rows(self, order=None) -> list[dict]:
        """``[{"group": key, **row(key)}]`` for every group (``order``: keys to list, in that order)."""
        keys = self.groups if order is None else [k for k in order if k in self._binary]
        return [{"group": key, **self.row(key)} for key in keys]
