"""Triton kernel of ``matching_cost``: Mask2Former's matching cost for the whole padded batch in one launch.

With x a query's mask logits and t a ground truth's values at the same P points:

    class  −softmax(class_logits)[label]                       (log-sum-exp streamed over the K+1 logits)
    mask   (Σ_p softplus(x) − Σ_p x·t) / P                     (= mean sigmoid cross-entropy, as softplus(−x) =
                                                                  softplus(x) − x)
    dice   1 − (2·Σ_p σ(x)·t + 1) / (Σ_p σ(x) + Σ_p t + 1)
    cost   w_class·class + w_mask·mask + w_dice·dice,   +inf where not allowed or padding (g ≥ num_targets[b])

Grid (B, query tiles, ground-truth tiles). Each program streams the points in ``BLOCK_P`` chunks and takes the two
pair sums Σ x·t and Σ σ(x)·t as float32 matrix products (IEEE precision). A tile with no allowed pair skips the
point loop (dormant queries cost nothing). Inputs of any float dtype are computed in float32; the cost is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Points per step. The two pair sums are IEEE fp32 dots, i.e. FMAs whose [BLOCK_Q, BLOCK_P] and [BLOCK_P, BLOCK_G]
# operands each thread holds whole along BLOCK_P: at 64 they took 255 registers and spilled (up to ~2 KB on sm_90);
# 16 (tl.dot's smallest K) does the same FMAs in 4x the steps.
BLOCK_P = 16
NUM_WARPS = 4


@triton.jit
def _matching_cost_kernel(
    x_ptr, t_ptr, cls_ptr, labels_ptr, allowed_ptr, counts_ptr, out_ptr,
    num_queries, num_points, num_gt, num_classes, w_class, w_mask, w_dice,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    g = tl.program_id(2).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    count = tl.load(counts_ptr + b)
    q_valid = q < num_queries
    g_valid = g < count
    pair_valid = q_valid[:, None] & g_valid[None, :]
    rows = b * num_queries + q
    ok = tl.load(allowed_ptr + rows[:, None] * num_gt + g[None, :], mask=pair_valid, other=0) != 0
    any_ok = tl.max(tl.max(ok.to(tl.int32), axis=1), axis=0) > 0

    cost = tl.full([BLOCK_Q, BLOCK_G], float("inf"), dtype=tl.float32)
    if any_ok:
        # Class: −softmax(c)[label] = −exp(c[label] − logsumexp(c)).
        run_max = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
        for k0 in range(0, num_classes, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            c = tl.load(cls_ptr + rows[:, None] * num_classes + k[None, :],
                        mask=q_valid[:, None] & (k < num_classes)[None, :], other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(run_max, tl.max(c, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(c - shift[:, None]), axis=1)
            run_max = new_max
        # Padding rows (all −inf) get 0: their costs are never stored.
        log_norm = tl.where(run_sum > 0, run_max + tl.log(tl.where(run_sum > 0, run_sum, 1.0)), 0.0)
        labels = tl.load(labels_ptr + b * num_gt + g, mask=g_valid, other=0)
        picked = tl.load(cls_ptr + rows[:, None] * num_classes + labels[None, :], mask=pair_valid,
                         other=0.0).to(tl.float32)
        prob = tl.exp(picked - log_norm[:, None])

        # Mask and dice: per-query sums, per-target sums, and two pair sums as matrix products.
        logit_target = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
        sigmoid_target = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
        softplus_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
        sigmoid_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
        target_sum = tl.zeros([BLOCK_G], dtype=tl.float32)
        for p0 in range(0, num_points, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_valid = p < num_points
            x_mask = q_valid[:, None] & p_valid[None, :]
            x = tl.load(x_ptr + rows[:, None] * num_points + p[None, :], mask=x_mask, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + (b * num_gt + g[:, None]) * num_points + p[None, :],
                        mask=g_valid[:, None] & p_valid[None, :], other=0.0).to(tl.float32)
            # One exponential e = exp(−|x|): σ(x) = 1/(1+e) (x ≥ 0) or e/(1+e); softplus = max(x,0) + log(1+e).
            e = tl.exp(-tl.abs(x))
            inv = 1.0 / (1.0 + e)
            sig = tl.where(x_mask, tl.where(x >= 0, inv, e * inv), 0.0)
            softplus = tl.where(x_mask, tl.maximum(x, 0.0) + tl.log(1.0 + e), 0.0)
            t_cols = tl.trans(t)
            logit_target += tl.dot(x, t_cols, input_precision="ieee")
            sigmoid_target += tl.dot(sig, t_cols, input_precision="ieee")
            softplus_sum += tl.sum(softplus, axis=1)
            sigmoid_sum += tl.sum(sig, axis=1)
            target_sum += tl.sum(t, axis=1)
        mask_cost = (softplus_sum[:, None] - logit_target) / num_points
        dice_cost = 1.0 - (2.0 * sigmoid_target + 1.0) / (sigmoid_sum[:, None] + target_sum[None, :] + 1.0)
        total = -w_class * prob + w_mask * mask_cost + w_dice * dice_cost
        cost = tl.where(ok, total, float("inf"))
    tl.store(out_ptr + rows[:, None] * num_gt + g[None, :], cost, mask=q_valid[:, None] & (g < num_gt)[None, :])


def matching_cost(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets,
                  cost_class: float, cost_mask: float, cost_dice: float):
    """Cost ``[B,Q,G]`` float32 (see the module docstring); inputs are made contiguous."""
    if torch.float64 in (mask_logits.dtype, target_masks.dtype, class_logits.dtype):
        raise TypeError("the Triton matching_cost computes in float32; use the native or reference backend for "
                        "float64 inputs")
    mask_logits, target_masks = mask_logits.contiguous(), target_masks.contiguous()
    class_logits, target_labels = class_logits.contiguous(), target_labels.contiguous()
    allowed, num_targets = allowed.contiguous(), num_targets.contiguous()
    batch, num_queries, num_points = mask_logits.shape
    num_gt, num_classes = target_masks.shape[1], class_logits.shape[2]
    cost = torch.empty(batch, num_queries, num_gt, dtype=torch.float32, device=mask_logits.device)
    if cost.numel() == 0:
        return cost
    block_q = 32 if num_queries > 16 else 16
    block_g = min(64, max(16, triton.next_power_of_2(num_gt)))
    block_k = min(128, max(16, triton.next_power_of_2(num_classes)))
    grid = (batch, triton.cdiv(num_queries, block_q), triton.cdiv(num_gt, block_g))
    _matching_cost_kernel[grid](
        mask_logits, target_masks, class_logits, target_labels, allowed.view(torch.uint8), num_targets, cost,
        num_queries, num_points, num_gt, num_classes, float(cost_class), float(cost_mask), float(cost_dice),
        BLOCK_Q=block_q, BLOCK_G=block_g, BLOCK_P=BLOCK_P, BLOCK_K=block_k, num_warps=NUM_WARPS,
    )
    return cost
