"""``matching_cost``: batched, assignment-constrained Hungarian matching costs (docs/design.md, op 2).

Backends: reference, native (C++ CPU), triton (CUDA tensors). No CUDA kernel: the Triton one is a pair of small
matrix products per tile and is what runs on GPUs. The costs carry no gradient (matching is not differentiated).
Nothing is read back to the host: values the kernels cannot trust (labels, counts) follow the NaN policy of
:func:`coavs.ops.reference.matching_cost` instead of raising.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference


def _triton_cost(*args):
    from coavs.kernels import matching_cost as k

    return k.matching_cost(*args)


def _native_cost(*args):
    return torch.ops.coavs_C.matching_cost(*args)


_dispatch.register(
    _dispatch.OpSpec(
        name="matching_cost",
        impls={"reference": reference.matching_cost, "native": _native_cost, "triton": _triton_cost},
        gpu_order=("triton", "reference"),
        native_op="matching_cost",
        note="GPU: Triton kernel (no CUDA kernel); CPU: C++ kernel",
    )
)


def _fake_cost(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets, cost_class, cost_mask,
               cost_dice):
    dtype = torch.float64 if mask_logits.dtype == torch.float64 else torch.float32
    return mask_logits.new_empty(mask_logits.shape[0], mask_logits.shape[1], target_masks.shape[1], dtype=dtype)


def _matching_cost(
    mask_logits: Tensor, target_masks: Tensor, class_logits: Tensor, target_labels: Tensor, allowed: Tensor,
    num_targets: Tensor, cost_class: float, cost_mask: float, cost_dice: float
) -> Tensor:
    """Cost ``[B,Q,G]``; see :func:`coavs.ops.reference.matching_cost`."""
    return _dispatch.run("matching_cost", mask_logits.device, mask_logits, target_masks, class_logits,
                         target_labels, allowed, num_targets, cost_class, cost_mask, cost_dice)


matching_cost_op = _dispatch.define_op("coavs::matching_cost", _matching_cost)


matching_cost_op.register_fake(_fake_cost)

if _native.load_error() is None and _native.has_op("matching_cost"):
    torch.library.register_fake("coavs_C::matching_cost")(_fake_cost)


def _weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _validate(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets) -> None:
    named = (("mask_logits", mask_logits), ("target_masks", target_masks), ("class_logits", class_logits),
             ("target_labels", target_labels), ("allowed", allowed), ("num_targets", num_targets))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    for name, t in named[:3]:
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [B,Q,P], got shape {tuple(mask_logits.shape)}")
    batch, num_queries, num_points = mask_logits.shape
    if target_masks.dim() != 3 or target_masks.shape[0] != batch or target_masks.shape[2] != num_points:
        raise ValueError(f"target_masks must be [B,G,P] with B={batch}, P={num_points} (the same points as "
                         f"mask_logits), got {tuple(target_masks.shape)}")
    num_gt = target_masks.shape[1]
    if class_logits.dim() != 3 or class_logits.shape[:2] != (batch, num_queries) or class_logits.shape[2] < 1:
        raise ValueError(f"class_logits must be [B,Q,K+1] with B={batch}, Q={num_queries}, got "
                         f"{tuple(class_logits.shape)}")
    if target_labels.dtype != torch.long or target_labels.shape != (batch, num_gt):
        raise ValueError(f"target_labels must be a long [B,G] = [{batch},{num_gt}] tensor, got {target_labels.dtype} "
                         f"{tuple(target_labels.shape)}")
    if allowed.dtype != torch.bool or allowed.shape != (batch, num_queries, num_gt):
        raise ValueError(f"allowed must be a bool [B,Q,G] = [{batch},{num_queries},{num_gt}] tensor, got "
                         f"{allowed.dtype} {tuple(allowed.shape)}")
    if num_targets.dtype != torch.long or num_targets.shape != (batch,):
        raise ValueError(f"num_targets must be a long [B] tensor, got {num_targets.dtype} {tuple(num_targets.shape)}")
    if num_points < 1 and batch * num_queries * num_gt > 0:
        raise ValueError("matching_cost needs at least one sampled point (P >= 1)")
    for name, t in named[1:]:
        if t.device != mask_logits.device:
            raise ValueError(f"{name} must be on the device of mask_logits: {t.device} vs {mask_logits.device}")


def matching_cost(
    mask_logits: Tensor,
    target_masks: Tensor,
    class_logits: Tensor,
    target_labels: Tensor,
    allowed: Tensor,
    num_targets: Tensor | None = None,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
) -> Tensor:
    """Mask2Former's matching cost of every query against every ground truth, for the whole padded batch.

    Args:
        mask_logits: predicted mask logits at ``P`` sampled points ``[B,Q,P]``.
        target_masks: ground-truth masks at the same points ``[B,G,P]`` (float in [0,1], or bool); padded.
        class_logits: ``[B,Q,K+1]`` (last = "no object").
        target_labels: ``[B,G]`` long class of each ground truth (padding entries are ignored).
        allowed: ``[B,Q,G]`` bool, which query may take which ground truth (a ground truth of marker ``s`` only the
            ``d`` queries of ``s``; dormant queries none).
        num_targets: ``[B]`` long, real ground truths per sample (columns ``g ≥ num_targets[b]`` are padding);
            None = all ``G``.
        cost_class, cost_mask, cost_dice: weights (Mask2Former's 2, 5, 5).

    Returns the cost ``[B,Q,G]`` (float32; float64 for float64 ``mask_logits`` on the CPU backends):
    ``cost_class·(−softmax(c)[label]) + cost_mask·mean sigmoid-CE + cost_dice·dice``, ``+inf`` where not allowed
    or padding. One kernel launch; no gradient.

    Non-finite values (every backend alike): an allowed, real pair costs NaN when its query's mask logits or its
    ground truth's values hold a NaN or ±inf, or its class row holds a NaN or +inf or is all −inf (a −inf class
    logit beside finite ones has probability 0). Any finite class logits keep float32 precision (stable softmax).
    Bad values (every backend alike; checking them would read device memory back to the host): a real ground
    truth whose label is outside ``[0, K+1)`` costs NaN for its allowed pairs, and a sample whose
    ``num_targets`` is outside ``[0, G]`` has NaN for every allowed pair. The matcher refuses NaN costs with an
    error. Meta tensors give the output's shape and dtype. Launches on a GPU: one (two when the tiles alone would
    leave the GPU's multiprocessors idle and the points are split over programs), plus one for a default
    ``num_targets`` and one to convert bool ``target_masks``.
    """
    if num_targets is None and isinstance(target_masks, Tensor) and target_masks.dim() == 3:
        num_targets = torch.full((target_masks.shape[0],), target_masks.shape[1], dtype=torch.long,
                                 device=target_masks.device)
    if isinstance(target_masks, Tensor) and target_masks.dtype == torch.bool:
        target_masks = target_masks.to(torch.float32)
    _validate(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets)
    weights = (_weight("cost_class", cost_class), _weight("cost_mask", cost_mask), _weight("cost_dice", cost_dice))
    return matching_cost_op(mask_logits.detach(), target_masks.detach(), class_logits.detach(), target_labels,
                            allowed, num_targets, *weights)
