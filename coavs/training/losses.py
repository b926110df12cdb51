"""Mask2Former's set loss with the assignment-constrained matcher, targets from semantic labels, and the audio
classifier's multi-label loss.

Per prediction (the final one and every auxiliary one, each matched on its own):
- class cross-entropy over all queries (matched → their ground-truth class, the rest → "no object" with
  weight ``no_object_weight`` = 0.1);
- for matched pairs, mask BCE and dice on ``num_points`` points chosen by importance sampling on the
  predicted mask (``oversample_ratio`` 3, ``importance_ratio`` 0.75), both summed over pairs and divided by the
  number of ground-truth masks.
Total = Σ over predictions of ``class_weight·CE + mask_weight·BCE + dice_weight·dice`` (2, 5, 5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coavs.training.matcher import ConstrainedHungarianMatcher
from coavs.training.point_sampling import point_sample, uncertain_points

IGNORE_LABEL = 255

Indices = list[tuple[Tensor, Tensor]]  # per frame: (query_idx, target_idx)


# ---------------------------------------------------------------------------------------------- targets
class FrameTargets(NamedTuple):
    """What the set loss and the audio classifier learn from, for ``N`` frames.

    ``targets``: per frame a dict ``labels [G] long``, ``masks [G,H,W]`` (float 0/1), ``markers [G] long``
    (the class's marker; −1 = any active query may take it). ``annotated [N]`` bool: frames with at least one
    labelled pixel (others, e.g. AVSBench v1s training frames 1–4, take no loss). ``presence [N,K]`` float:
    which label values occur in each frame.
    """

    targets: list[dict]
    annotated: Tensor
    presence: Tensor


def targets_from_labels(labels: Tensor, num_classes: int, class_to_marker: Tensor | None = None,
                        background_is_class: bool = True, ignore_label: int = IGNORE_LABEL) -> FrameTargets:
    """Semantic label maps ``[N,H,W]`` (0 = background, ``ignore_label`` = unannotated) → per-frame
    Mask2Former targets: one mask per present class, label = the class index (= label value).

    ``background_is_class``: AVSS counts background as class 0 with its own mask; binary AVS (S4/MS3, labels
    0/1) sets it False, so only the sounding class 1 gets a mask. ``class_to_marker [K]``: each class's marker
    (``AVSModel.class_to_marker()``); None → every target unconstrained (−1). Unannotated pixels belong to no
    mask (they count as negatives inside an annotated frame).
    """
    if not isinstance(labels, Tensor) or labels.dim() != 3:
        raise ValueError(f"labels must be [N,H,W], got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    valid = labels != ignore_label
    if valid.any():
        bad = labels[valid]
        if bad.min() < 0 or bad.max() >= num_classes:
            raise ValueError(f"label values must lie in [0, {num_classes}) or equal {ignore_label}; found "
                             f"{int(bad.min())} … {int(bad.max())}")
    if class_to_marker is not None:
        class_to_marker = torch.as_tensor(class_to_marker, dtype=torch.long, device=labels.device)
        if class_to_marker.shape != (num_classes,):
            raise ValueError(f"class_to_marker must be [K] = [{num_classes}], got {tuple(class_to_marker.shape)}")
    first = 0 if background_is_class else 1
    classes = torch.arange(num_classes, device=labels.device)
    # presence[n, k]: label k occurs in frame n (one pass over the pixels).
    onehot_counts = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.long)
    flat = torch.where(valid, labels, num_classes).flatten(1)
    onehot_counts.scatter_add_(1, flat, torch.ones_like(flat))
    presence = (onehot_counts[:, :num_classes] > 0)
    annotated = valid.flatten(1).any(dim=1)
    targets = []
    for n in range(labels.shape[0]):
        present = classes[presence[n] & (classes >= first)]
        masks = (labels[n][None] == present[:, None, None]).float()
        markers = class_to_marker[present] if class_to_marker is not None else torch.full_like(present, -1)
        targets.append({"labels": present, "masks": masks, "markers": markers})
    return FrameTargets(targets, annotated, presence.float())


# ------------------------------------------------------------------------------------------ loss pieces
def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """``Σ_pairs 1 − (2·Σσ(x)·t + 1) / (Σσ(x) + Σt + 1)`` / num_masks, for ``[M,P]`` point logits and targets."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-pair mean BCE over points, summed over pairs / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1).sum() / num_masks


def classification_loss(pred_logits: Tensor, targets: list[dict], indices: Indices,
                        no_object_weight: float) -> Tensor:
    """Cross-entropy over ``[N,Q,K+1]``: matched queries → their class, the others → no object (weighted)."""
    n, q, width = pred_logits.shape
    target_classes = torch.full((n, q), width - 1, dtype=torch.long, device=pred_logits.device)
    batch_idx, query_idx = _matched(indices, pred_logits.device)
    if batch_idx.numel():
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]).to(pred_logits.device)
    weight = torch.ones(width, device=pred_logits.device, dtype=torch.float32)
    weight[-1] = no_object_weight
    return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, weight)


def _matched(indices: Indices, device) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
    query = torch.cat([src for src, _ in indices]).to(device)
    return batch.long(), query.long()


def audio_classification_loss(logits: Tensor, presence: Tensor, annotated: Tensor | None = None) -> Tensor:
    """Multi-label BCE of the audio classifier ``[N,C]`` against class presence ``[N,C]``, over annotated
    frames (zero when there are none)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), presence.float(), reduction="none").mean(dim=1)
    if annotated is None:
        return loss.mean()
    weight = annotated.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------- criterion
class LossResult(NamedTuple):
    total: Tensor
    terms: dict[str, Tensor]  # "ce", "mask", "dice" (final) and "ce_<i>", … for auxiliary prediction i
    indices: list[Indices]  # per prediction (final first, then aux in order); reuse them for the debiased loss


class SetCriterion(nn.Module):
    """Mask2Former's loss with the assignment-constrained matcher (``coavs.training.matcher``).

    ``forward(outputs, targets, annotated=None, indices=None, aux=None)``: ``outputs`` as returned by ``AVSModel``
    (``pred_logits``, ``pred_masks``, ``aux_outputs``, ``query_marker``, ``active``); ``targets`` a list of
    per-frame dicts (:func:`targets_from_labels`); frames where ``annotated`` is False are left out. Pass
    ``indices`` (a previous ``LossResult.indices``) to skip matching — the debiased loss uses the vanilla
    branch's matching this way.
    """

    def __init__(self, num_classes: int, matcher=None, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_ratio: float = 0.75, aux_loss: bool = True):
        super().__init__()
        if matcher is None:
            matcher = ConstrainedHungarianMatcher(cost_class=class_weight, cost_mask=mask_weight,
                                                  cost_dice=dice_weight, num_points=num_points)
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"ce": class_weight, "mask": mask_weight, "dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_ratio = importance_ratio
        self.aux_loss = aux_loss
        self.generator: torch.Generator | None = None  # set for reproducible point sampling (matcher and loss)

    def predictions(self, outputs: dict, aux: bool | None = None) -> list[dict]:
        """The final prediction, then the auxiliary ones (if ``aux``, default ``aux_loss``)."""
        preds = [{"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}]
        if self.aux_loss if aux is None else aux:
            preds += list(outputs.get("aux_outputs", []))
        return preds

    def match(self, outputs: dict, targets: list[dict], aux: bool | None = None) -> list[Indices]:
        """Matcher indices for every prediction (final first), on already-selected frames."""
        query_marker, active = outputs["query_marker"], outputs["active"]
        extra = {} if self.generator is None else {"generator": self.generator}
        with torch.no_grad():
            return [self.matcher(p["pred_logits"].detach().float(), p["pred_masks"].detach().float(), targets,
                                 query_marker, active, **extra) for p in self.predictions(outputs, aux)]

    def forward(self, outputs: dict, targets: list[dict], annotated: Tensor | None = None,
                indices: list[Indices] | None = None, num_masks: float | None = None,
                aux: bool | None = None) -> LossResult:
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"targets has {len(targets)} frames, outputs {outputs['pred_logits'].shape[0]}")
        outputs, targets = _select_frames(outputs, targets, annotated)
        if indices is None:
            indices = self.match(outputs, targets, aux)
        preds = self.predictions(outputs, aux)
        if len(indices) != len(preds):
            raise ValueError(f"indices cover {len(indices)} predictions, outputs have {len(preds)}")
        if num_masks is None:
            num_masks = float(max(sum(len(t["labels"]) for t in targets), 1))
        terms: dict[str, Tensor] = {}
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        for i, (pred, idx) in enumerate(zip(preds, indices)):
            suffix = "" if i == 0 else f"_{i - 1}"
            ce = classification_loss(pred["pred_logits"], targets, idx, self.no_object_weight)
            bce, dice = self.mask_losses(pred["pred_masks"], targets, idx, num_masks)
            for name, value in (("ce", ce), ("mask", bce), ("dice", dice)):
                terms[name + suffix] = value
                total = total + self.weights[name] * value
        return LossResult(total, terms, indices)

    def mask_losses(self, pred_masks: Tensor, targets: list[dict], indices: Indices,
                    num_masks: float) -> tuple[Tensor, Tensor]:
        batch_idx, query_idx = _matched(indices, pred_masks.device)
        if batch_idx.numel() == 0:
            zero = pred_masks.sum().float() * 0.0  # keeps the graph (and DDP) happy
            return zero, zero
        src = pred_masks[batch_idx, query_idx][:, None].float()  # [M,1,h,w]
        tgt = torch.cat([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])
        tgt = tgt[:, None].to(src.device, torch.float32)  # [M,1,H,W]
        with torch.no_grad():
            coords = uncertain_points(src.detach(), self.num_points, self.oversample_ratio, self.importance_ratio,
                                      generator=self.generator)
            point_labels = point_sample(tgt, coords).squeeze(1)
        point_logits = point_sample(src, coords).squeeze(1)
        return (sigmoid_ce_loss(point_logits, point_labels, num_masks),
                dice_loss(point_logits, point_labels, num_masks))


def _select_frames(outputs: dict, targets: list[dict], annotated: Tensor | None) -> tuple[dict, list[dict]]:
    """Keep only annotated frames (per-frame tensors indexed on the batch dim; ``query_marker`` is per query)."""
    if annotated is None or bool(annotated.all()):
        return outputs, targets
    keep = annotated.nonzero().flatten().to(outputs["pred_logits"].device)

    def take(d: dict) -> dict:
        out = {}
        for key, value in d.items():
            if key == "query_marker" or value is None:
                out[key] = value
            elif key == "aux_outputs":
                out[key] = [take(a) for a in value]
            elif key == "biased":
                out[key] = take(value)
            elif isinstance(value, Tensor) and value.dim() >= 1:
                out[key] = value.index_select(0, keep)
            else:
                out[key] = value
        return out

    return take(outputs), [targets[i] for i in keep.tolist()]
