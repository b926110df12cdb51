"""The community's AVS metrics (AVSBench), as streaming accumulators.

``BinaryAVSMetrics`` (S4 = v1s, MS3 = v1m) follows AVSBench's ``utility.py`` (``mask_iou``, ``Eval_Fmeasure``),
``SemanticAVSMetrics`` (AVSS = v2) its ``compute_color_metrics.py`` and ``test.py``. Call ``update`` once per
batch and ``compute`` at the end; nothing keeps the predictions.

Definitions, to the epsilon:

- S4/MS3 mIoU: ``pred = σ(logit) > 0.5`` (float32); per frame ``inter / (union + 1e-7)``; a frame whose ground
  truth is empty scores ``Σ(1 − gt)(1 − pred) / (H·W + 1e-7)`` (correctly predicted empty pixels); mean over
  frames.
- S4/MS3 F-score: ``p = σ(logit)``; thresholds ``torch.linspace(0, 1 − 1e-10, 255)`` in float32 (the last one
  rounds to 1.0); at each threshold ``pred = p ≥ th``, ``precision = tp / (Σpred + 1e-20)``,
  ``recall = tp / (Σgt + 1e-20)``, ``F = 1.3·P·R / (0.3·P + R)`` with NaN → 0; frames with empty ground truth are
  skipped; the F curve is averaged over frames and its maximum is reported.
- AVSS: labels ``argmax`` (of ``softmax`` over classes, for scores) and ground truth shifted to ``1…C`` and
  histogrammed per frame (a negative ground-truth label is ignored; a label ``≥ C`` counts as no class, so a
  prediction there is a false positive); per frame and class ``IoU = inter / (union + 2.220446049250313e-16)``
  and ``F = 1.3·P·R / (0.3·P + R)`` with ``P = inter/pred``, ``R = inter/gt``, NaN → 0; both are summed over
  frames and divided by the number of frames where the class's union is non-zero (NaN → 0); the reported number
  is the mean over all ``C`` classes (absent classes count as 0).

Aggregation. The original S4/MS3 scripts average the *per-batch* numbers (``mask_iou`` returns the batch mean,
``Eval_Fmeasure`` the maximum of the batch's mean curve, and ``AverageMeter`` averages those over batches), so
their result depends on the batch size: a short last batch weighs as much as a full one, the F-score's maximum is
taken per batch (a mean of maxima ≥ the maximum of the mean), and a batch whose frames all have empty ground
truth adds an F of 0. The default here is per-dataset: every frame weighs the same and one F curve is averaged
over all frames. ``per_batch=True`` reproduces the original scripts (each ``update`` call is one batch). The AVSS
script already sums per-class statistics over the dataset, so it has no per-batch mode.

Counts are exact integers; the ratios and sums are taken in float64 (the original scripts use float32, which
differs from this in the 7th significant digit at most).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

IOU_EPS = 1e-7
PR_EPS = 1e-20
BETA2 = 0.3
NUM_THRESHOLDS = 255
AVSS_IOU_EPS = 2.220446049250313e-16
AVSS_NUM_CLASSES = 71


def f_thresholds(num: int = NUM_THRESHOLDS, device=None) -> Tensor:
    """AVSBench's F-score thresholds: ``torch.linspace(0, 1 − 1e-10, num)`` in float32."""
    return torch.linspace(0, 1 - 1e-10, num, device=device)


def _f_measure(precision: Tensor, recall: Tensor) -> Tensor:
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


def _check_binary_ground_truth(gt: Tensor, name: str = "gt") -> Tensor:
    """Ground truth as float64 0/1; bool, integer or floating input with values in {0, 1}."""
    if not isinstance(gt, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(gt).__name__}")
    if gt.dtype == torch.bool:
        return gt
    if gt.is_complex():
        raise TypeError(f"{name} must be real, got {gt.dtype}")
    if gt.numel() and not bool(((gt == 0) | (gt == 1)).all()):
        raise ValueError(f"{name} must be a binary mask (values 0 and 1); binarise it first")
    return gt != 0


# ------------------------------------------------------------------------------------------- S4 / MS3
def frame_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """AVSBench's per-frame IoU of binary masks ``[N,H,W]`` (bool), float64 ``[N]``.

    ``inter / (union + 1e-7)``; a frame with empty ground truth scores ``Σ(¬gt ∧ ¬pred) / (H·W + 1e-7)``.
    """
    pixels = pred.shape[-1] * pred.shape[-2]
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    empty = ~gt.flatten(1).any(1)
    inter = torch.where(empty, (~pred & ~gt).flatten(1).sum(1), inter)
    union = torch.where(empty, torch.full_like(union, pixels), union)
    return inter.double() / (union.double() + IOU_EPS)


def frame_f_curves(probs: Tensor, gt: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame F-measure curves, ``([M, T] float64, [N] bool valid)``: AVSBench's ``_eval_pr`` for every
    frame whose ground truth is not empty (``M`` of them), in one pass.

    ``probs [N,H,W]`` float32, ``gt [N,H,W]`` bool, ``thresholds [T]`` float32 ascending. A pixel is predicted at
    threshold ``i`` iff ``p ≥ th[i]``, i.e. iff ``i < #{th ≤ p}``: histogram that count per frame and sum the tail.
    """
    valid = gt.flatten(1).any(1)
    probs, gt = probs[valid], gt[valid]
    frames, num = probs.shape[0], thresholds.numel()
    if frames == 0:
        return torch.zeros(0, num, dtype=torch.float64, device=probs.device), valid
    flat = probs.flatten(1).contiguous()
    passed = torch.searchsorted(thresholds, flat, right=True)  # #{th <= p}, 0..T
    passed = passed.masked_fill(flat.isnan(), 0)  # NaN >= th is False at every threshold
    bins = passed + (num + 1) * torch.arange(frames, device=probs.device)[:, None]
    hist_all = torch.bincount(bins.flatten(), minlength=frames * (num + 1)).view(frames, num + 1)
    hist_fg = torch.bincount(bins[gt.flatten(1)], minlength=frames * (num + 1)).view(frames, num + 1)
    # predicted at threshold i: pixels whose count is > i  ->  reverse cumulative sum from i + 1
    predicted = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].double()
    true_pos = hist_fg.flip(1).cumsum(1).flip(1)[:, 1:].double()
    positives = gt.flatten(1).sum(1).double()[:, None]
    precision = true_pos / (predicted + PR_EPS)
    recall = true_pos / (positives + PR_EPS)
    return _f_measure(precision, recall), valid


class BinaryAVSMetrics:
    """S4/MS3 mIoU and F-score (AVSBench ``mask_iou`` and ``Eval_Fmeasure``), streamed over batches.

    Args:
        scores: what ``update`` receives: ``"logits"`` (the model's mask logits, as AVSBench's scripts) or
            ``"probabilities"`` (e.g. the foreground score of ``coavs.ops.semantic_inference(mode="binary")``).
        per_batch: average per-batch numbers like the original scripts (batch-size dependent; see the module
            docstring) instead of the per-dataset default.
        num_thresholds: points of the F curve (255).
    """

    def __init__(self, scores: str = "logits", per_batch: bool = False, num_thresholds: int = NUM_THRESHOLDS):
        if scores not in ("logits", "probabilities"):
            raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 2:
            raise ValueError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
        self.scores = scores
        self.per_batch = bool(per_batch)
        self.num_thresholds = num_thresholds
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames seen
        self.f_frames = 0  # frames with non-empty ground truth (the F-score's frames)
        self.batches = 0
        self._iou_sum = 0.0  # per-dataset: Σ frame IoU; per-batch: Σ batch mIoU
        self._f_curve_sum = torch.zeros(self.num_thresholds, dtype=torch.float64)  # per-dataset
        self._f_batch_sum = 0.0  # per-batch: Σ batch F

    def _probabilities(self, pred: Tensor) -> Tensor:
        p = pred.detach().float()
        return torch.sigmoid(p) if self.scores == "logits" else p

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """One batch: ``pred [N,H,W]`` (or ``[N,1,H,W]``) logits or probabilities, ``gt`` the same shape, binary."""
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise TypeError("pred must be a floating-point Tensor of logits or probabilities")
        if not isinstance(gt, Tensor):
            raise TypeError(f"gt must be a Tensor, got {type(gt).__name__}")
        if pred.dim() == 4 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if gt.dim() == 4 and gt.shape[1] == 1:
            gt = gt[:, 0]
        if pred.dim() != 3 or pred.shape != gt.shape:
            raise ValueError(f"pred and gt must both be [N,H,W] with the same shape, got {tuple(pred.shape)} and "
                             f"{tuple(gt.shape)}")
        gt = _check_binary_ground_truth(gt.to(pred.device))
        if pred.shape[0] == 0:
            return
        probs = self._probabilities(pred)
        if bool(probs.isnan().any()):  # e.g. a sample coavs.ops.semantic_inference left undefined (NaN outputs)
            raise ValueError("pred holds NaN scores (non-finite model outputs?); they would count as background")
        ious = frame_iou(probs > 0.5, gt)
        curves, _ = frame_f_curves(probs, gt, f_thresholds(self.num_thresholds, probs.device))
        curves = curves.cpu()
        n, m = pred.shape[0], curves.shape[0]
        self.frames += n
        self.f_frames += m
        self.batches += 1
        if self.per_batch:
            self._iou_sum += float(ious.sum()) / n
            # Eval_Fmeasure: max of the batch's mean curve; 0 when no frame of the batch has a ground truth.
            self._f_batch_sum += float((curves.sum(0) / m).max()) if m else 0.0
        else:
            self._iou_sum += float(ious.sum())
            self._f_curve_sum += curves.sum(0)

    def merge(self, other: "BinaryAVSMetrics") -> None:
        """Adds the statistics of ``other`` (e.g. another process's shard)."""
        if (other.per_batch, other.num_thresholds, other.scores) != (self.per_batch, self.num_thresholds,
                                                                   self.scores):
            raise ValueError("can only merge BinaryAVSMetrics with the same scores, per_batch and num_thresholds")
        self.frames += other.frames
        self.f_frames += other.f_frames
        self.batches += other.batches
        self._iou_sum += other._iou_sum
        self._f_curve_sum += other._f_curve_sum
        self._f_batch_sum += other._f_batch_sum

    def compute(self) -> dict:
        """``{"miou", "fscore", "frames", "fscore_frames", "batches", "aggregation"}``; NaN before any frame."""
        if self.per_batch:
            miou = self._iou_sum / self.batches if self.batches else math.nan
            fscore = self._f_batch_sum / self.batches if self.batches else math.nan
        else:
            miou = self._iou_sum / self.frames if self.frames else math.nan
            if self.f_frames:
                fscore = float((self._f_curve_sum / self.f_frames).max())
            else:  # no frame with a ground truth: AVSBench's score curve stays at zeros
                fscore = 0.0 if self.frames else math.nan
        return {"miou": miou, "fscore": fscore, "frames": self.frames, "fscore_frames": self.f_frames,
                "batches": self.batches, "aggregation": "per_batch" if self.per_batch else "per_dataset"}


# ----------------------------------------------------------------------------------------------- AVSS
def frame_class_counts(labels: Tensor, gt: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per frame and class ``(inter, pred, gt)`` pixel counts ``[N,C]`` int64, as AVSBench's ``torch.histc`` of the
    shifted labels: pixels with ``gt < 0`` are ignored; ``gt ≥ C`` is no class (its predictions still count)."""
    n = labels.shape[0]
    labels, gt = labels.reshape(n, -1), gt.reshape(n, -1)
    considered = gt >= 0
    offset = num_classes * torch.arange(n, device=labels.device)[:, None]

    def count(selected: Tensor, values: Tensor) -> Tensor:
        bins = (values + offset)[selected]
        return torch.bincount(bins, minlength=n * num_classes).view(n, num_classes)

    area_pred = count(considered, labels)
    area_gt = count(considered & (gt < num_classes), gt)
    area_inter = count(considered & (labels == gt), labels)
    return area_inter, area_pred, area_gt


class SemanticAVSMetrics:
    """AVSS mIoU and F-score (AVSBench ``calc_color_miou_fscore`` + ``test.py``), streamed over batches.

    Args:
        num_classes: ``C``, classes including background (71 for AVSBench-semantic, background = 0).
    """

    def __init__(self, num_classes: int = AVSS_NUM_CLASSES):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (classes including background), got "
                             f"{num_classes!r}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self._iou_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self._f_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self._class_frames = torch.zeros(self.num_classes, dtype=torch.int64)

    def _labels(self, pred: Tensor) -> Tensor:
        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(f"score predictions must be [N,C,H,W] with C={self.num_classes}, got "
                                 f"{tuple(pred.shape)}")
            # AVSBench: argmax of the softmax (saturated probabilities can tie where the logits do not).
            return torch.softmax(pred.detach().float(), dim=1).argmax(1)
        if pred.dtype == torch.bool or pred.is_complex():
            raise TypeError(f"label predictions must be an integer tensor, got {pred.dtype}")
        if pred.dim() != 3:
            raise ValueError(f"label predictions must be [N,H,W], got {tuple(pred.shape)}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.num_classes):
            raise ValueError(f"predicted labels must lie in [0, {self.num_classes}), got "
                             f"[{int(pred.min())}, {int(pred.max())}]")
        return pred.long()

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """One batch: ``pred`` labels ``[N,H,W]`` (int, in ``[0, C)``) or class scores ``[N,C,H,W]`` (float);
        ``gt [N,H,W]`` integer labels (0 = background; negative = ignore)."""
        if not isinstance(pred, Tensor) or not isinstance(gt, Tensor):
            raise TypeError("pred and gt must be Tensors")
        if gt.is_floating_point() or gt.dtype == torch.bool or gt.is_complex():
            raise TypeError(f"gt must be an integer label tensor, got {gt.dtype}")
        labels = self._labels(pred)
        if gt.dim() != 3 or labels.shape != gt.shape:
            raise ValueError(f"gt must be [N,H,W] matching the predictions {tuple(labels.shape)}, got "
                             f"{tuple(gt.shape)}")
        if labels.shape[0] == 0:
            return
        inter, area_pred, area_gt = frame_class_counts(labels, gt.to(labels.device).long(), self.num_classes)
        inter, area_pred, area_gt = inter.cpu().double(), area_pred.cpu().double(), area_gt.cpu().double()
        union = area_pred + area_gt - inter
        self._iou_sum += (inter / (AVSS_IOU_EPS + union)).sum(0)
        self._f_sum += _f_measure(inter / area_pred, inter / area_gt).sum(0)
        self._class_frames += (union > 0).sum(0)
        self.frames += labels.shape[0]

    def merge(self, other: "SemanticAVSMetrics") -> None:
        """Adds the statistics of ``other`` (e.g. another process's shard)."""
        if other.num_classes != self.num_classes:
            raise ValueError("can only merge SemanticAVSMetrics with the same num_classes")
        self.frames += other.frames
        self._iou_sum += other._iou_sum
        self._f_sum += other._f_sum
        self._class_frames += other._class_frames

    def compute(self) -> dict:
        """``miou``/``fscore``: mean over all ``C`` classes (AVSBench's number; absent classes count 0);
        ``miou_present_classes``/``fscore_present_classes``: mean over classes seen (union > 0 in some frame);
        ``per_class_iou``/``per_class_fscore`` lists; ``class_frames``; ``frames``."""
        counts = self._class_frames.double()
        per_class_iou = torch.nan_to_num(self._iou_sum / counts, nan=0.0)
        per_class_f = torch.nan_to_num(self._f_sum / counts, nan=0.0)
        present = self._class_frames > 0
        empty = not bool(present.any())
        return {
            "miou": math.nan if self.frames == 0 else float(per_class_iou.mean()),
            "fscore": math.nan if self.frames == 0 else float(per_class_f.mean()),
            "miou_present_classes": math.nan if empty else float(per_class_iou[present].mean()),
            "fscore_present_classes": math.nan if empty else float(per_class_f[present].mean()),
            "per_class_iou": per_class_iou.tolist(),
            "per_class_fscore": per_class_f.tolist(),
            "class_frames": self._class_frames.tolist(),
            "frames": self.frames,
        }
