"""Triton kernels of ``matching_cost``: Mask2Former's matching cost for the whole padded batch.

With x a query's mask logits and t a ground truth's values at the same P points:

    class  −softmax(class_logits)[label] = −exp(c[label] − max c) / Σ_k exp(c_k − max c)   (streamed over K+1)
    mask   (Σ_p softplus(x) − Σ_p x·t) / P                     (= mean sigmoid cross-entropy, as softplus(−x) =
                                                                  softplus(x) − x)
    dice   1 − (2·Σ_p σ(x)·t + 1) / (Σ_p σ(x) + Σ_p t + 1)
    cost   w_class·class + w_mask·mask + w_dice·dice,   +inf where not allowed or padding (g ≥ num_targets[b])

The whole policy of ``coavs.ops.reference.matching_cost`` is applied here, with nothing read back to the host:
an allowed real pair is NaN when its query's mask logits or its ground truth's values hold a NaN or ±inf, when
its query's class row holds a NaN or +inf or is all −inf, or when its label is outside [0, K+1); a sample whose
count is outside [0, G] has every column real and every allowed pair NaN.

Programs: (B · query tiles · ground-truth tiles, point splits). Each streams its share of the points in
``BLOCK_P`` chunks and takes the two pair sums Σ x·t and Σ σ(x)·t as float32 matrix products (IEEE precision);
a tile with no allowed pair skips the point loop (dormant queries cost nothing). With one split (the grid already
fills the GPU, or few points) the same program finishes the cost: one launch. Otherwise each program writes its
partial sums to its own slot of a workspace and ``_matching_finish_kernel`` adds the splits in a fixed order
(deterministic) and finishes: two launches. Inputs of any float dtype are computed in float32; the cost is
float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

# Points per step. The two pair sums are IEEE fp32 dots, i.e. FMAs whose [BLOCK_Q, BLOCK_P] and [BLOCK_P, BLOCK_G]
# operands each thread holds whole along BLOCK_P: at 64 they took 255 registers and spilled (up to ~2 KB on sm_90);
# 16 (tl.dot's smallest K) does the same FMAs in 4x the steps.
BLOCK_P = 16
BLOCK_Q = 16
NUM_WARPS = 4
DEFAULT_SMS = 132  # H100/H200: the split heuristic's target when no device is there to ask
MIN_POINTS_PER_SPLIT = 512


@triton.jit
def _tile(b, q_tile, g_tile, num_queries, num_gt, counts_ptr, allowed_ptr, BLOCK_Q: tl.constexpr,
          BLOCK_G: tl.constexpr):
    """Rows, columns and which pairs count: ``ok`` = allowed and real (``bad_count`` makes every column real)."""
    q = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    g = g_tile * BLOCK_G + tl.arange(0, BLOCK_G)
    count = tl.load(counts_ptr + b)
    bad_count = (count < 0) | (count > num_gt)
    q_valid = q < num_queries
    g_real = (g < num_gt) & ((g < count) | bad_count)
    rows = b * num_queries + q
    ok = tl.load(allowed_ptr + rows[:, None] * num_gt + g[None, :], mask=q_valid[:, None] & g_real[None, :],
                 other=0) != 0
    any_ok = tl.max(tl.max(ok.to(tl.int32), axis=1), axis=0) > 0
    return q, g, q_valid, rows, ok, any_ok, bad_count


@triton.jit
def _point_sums(x_ptr, t_ptr, b, rows, g, q_valid, num_gt, num_points, p_begin, p_end,
                BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr):
    """Sums over points [p_begin, p_end): (Σ x·t, Σ σ·t) [Q, G], (Σ softplus, Σ σ, non-finite x) [Q],
    (Σ t, non-finite t) [G]."""
    g_valid = g < num_gt
    logit_target = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
    sigmoid_target = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
    softplus_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
    sigmoid_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
    target_sum = tl.zeros([BLOCK_G], dtype=tl.float32)
    x_bad = tl.zeros([BLOCK_Q], dtype=tl.float32)
    t_bad = tl.zeros([BLOCK_G], dtype=tl.float32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_valid = p < p_end
        x_mask = q_valid[:, None] & p_valid[None, :]
        t_mask = g_valid[:, None] & p_valid[None, :]
        x = tl.load(x_ptr + rows[:, None] * num_points + p[None, :], mask=x_mask, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + (b * num_gt + g[:, None]) * num_points + p[None, :], mask=t_mask,
                    other=0.0).to(tl.float32)
        x_bad = tl.maximum(x_bad, tl.max(tl.where(tl.abs(x) < float("inf"), 0.0, 1.0), axis=1))
        t_bad = tl.maximum(t_bad, tl.max(tl.where(tl.abs(t) < float("inf"), 0.0, 1.0), axis=1))
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
    return logit_target, sigmoid_target, softplus_sum, sigmoid_sum, x_bad, target_sum, t_bad


@triton.jit
def _finish(cls_ptr, labels_ptr, out_ptr, b, rows, q, g, q_valid, ok, bad_count, num_gt, num_classes, num_points,
            logit_target, sigmoid_target, softplus_sum, sigmoid_sum, x_bad, target_sum, t_bad,
            w_class, w_mask, w_dice, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """The class term, the cost of every pair of the tile and the policy's NaN and +inf; stores the tile."""
    run_max = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
    class_bad = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for k0 in range(0, num_classes, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        c = tl.load(cls_ptr + rows[:, None] * num_classes + k[None, :],
                    mask=q_valid[:, None] & (k < num_classes)[None, :], other=float("-inf")).to(tl.float32)
        class_bad = tl.maximum(class_bad, tl.max(tl.where((c != c) | (c == float("inf")), 1.0, 0.0), axis=1))
        new_max = tl.maximum(run_max, tl.max(c, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(c - shift[:, None]), axis=1)
        run_max = new_max
    class_bad = tl.where(run_max == float("-inf"), 1.0, class_bad)  # an all −inf row has no softmax
    labels = tl.load(labels_ptr + b * num_gt + g, mask=g < num_gt, other=0)
    label_ok = (labels >= 0) & (labels < num_classes)
    safe_labels = tl.where(label_ok, labels, 0)
    picked = tl.load(cls_ptr + rows[:, None] * num_classes + safe_labels[None, :],
                     mask=ok & label_ok[None, :], other=float("-inf")).to(tl.float32)
    shift = tl.where(run_max == float("-inf"), 0.0, run_max)
    prob = tl.exp(picked - shift[:, None]) / tl.where(run_sum > 0, run_sum, 1.0)[:, None]
    mask_cost = (softplus_sum[:, None] - logit_target) / num_points
    dice_cost = 1.0 - (2.0 * sigmoid_target + 1.0) / (sigmoid_sum[:, None] + target_sum[None, :] + 1.0)
    total = -w_class * prob + w_mask * mask_cost + w_dice * dice_cost
    undefined = ((x_bad + class_bad)[:, None] + t_bad[None, :]) > 0
    undefined = undefined | (~label_ok)[None, :] | bad_count
    cost = tl.where(ok, tl.where(undefined, float("nan"), total), float("inf"))
    tl.store(out_ptr + rows[:, None] * num_gt + g[None, :], cost, mask=q_valid[:, None] & (g < num_gt)[None, :])


@triton.jit
def _matching_cost_kernel(
    x_ptr, t_ptr, cls_ptr, labels_ptr, allowed_ptr, counts_ptr, out_ptr, work_ptr,
    num_queries, num_points, num_gt, num_classes, q_tiles, g_tiles, points_per_split, w_class, w_mask, w_dice,
    SPLIT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    b = (tile // (q_tiles * g_tiles)).to(tl.int64)
    q_tile = (tile // g_tiles) % q_tiles
    g_tile = tile % g_tiles
    q, g, q_valid, rows, ok, any_ok, bad_count = _tile(b, q_tile, g_tile, num_queries, num_gt, counts_ptr,
                                                       allowed_ptr, BLOCK_Q, BLOCK_G)
    if SPLIT:
        if any_ok:
            p_begin = split * points_per_split
            p_end = tl.minimum(p_begin + points_per_split, num_points)
            lt, st, sp, ss, xb, ts, tb = _point_sums(x_ptr, t_ptr, b, rows, g, q_valid, num_gt, num_points, p_begin,
                                                     p_end, BLOCK_Q, BLOCK_G, BLOCK_P)
            # The partial sums of this (tile, split) in its own slot: [Q·G Σx·t | Q·G Σσ·t | Q Σsoftplus | Q Σσ |
            # Q x_bad | G Σt | G t_bad].
            slot = work_ptr + (split.to(tl.int64) * tl.num_programs(0) + tile) * (
                2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + 2 * BLOCK_G)
            pair = tl.arange(0, BLOCK_Q)[:, None] * BLOCK_G + tl.arange(0, BLOCK_G)[None, :]
            rq = tl.arange(0, BLOCK_Q)
            rg = tl.arange(0, BLOCK_G)
            tl.store(slot + pair, lt)
            tl.store(slot + BLOCK_Q * BLOCK_G + pair, st)
            tl.store(slot + 2 * BLOCK_Q * BLOCK_G + rq, sp)
            tl.store(slot + 2 * BLOCK_Q * BLOCK_G + BLOCK_Q + rq, ss)
            tl.store(slot + 2 * BLOCK_Q * BLOCK_G + 2 * BLOCK_Q + rq, xb)
            tl.store(slot + 2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + rg, ts)
            tl.store(slot + 2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + BLOCK_G + rg, tb)
    else:
        if any_ok:
            lt, st, sp, ss, xb, ts, tb = _point_sums(x_ptr, t_ptr, b, rows, g, q_valid, num_gt, num_points, 0,
                                                     num_points, BLOCK_Q, BLOCK_G, BLOCK_P)
            _finish(cls_ptr, labels_ptr, out_ptr, b, rows, q, g, q_valid, ok, bad_count, num_gt, num_classes,
                    num_points, lt, st, sp, ss, xb, ts, tb, w_class, w_mask, w_dice, BLOCK_Q, BLOCK_K)
        else:
            tl.store(out_ptr + rows[:, None] * num_gt + g[None, :],
                     tl.full([BLOCK_Q, BLOCK_G], float("inf"), dtype=tl.float32),
                     mask=q_valid[:, None] & (g < num_gt)[None, :])


@triton.jit
def _matching_finish_kernel(
    cls_ptr, labels_ptr, allowed_ptr, counts_ptr, out_ptr, work_ptr,
    num_queries, num_points, num_gt, num_classes, q_tiles, g_tiles, splits, w_class, w_mask, w_dice,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Adds the splits' partial sums (split 0 first: deterministic) and finishes the tile."""
    tile = tl.program_id(0)
    b = (tile // (q_tiles * g_tiles)).to(tl.int64)
    q_tile = (tile // g_tiles) % q_tiles
    g_tile = tile % g_tiles
    q, g, q_valid, rows, ok, any_ok, bad_count = _tile(b, q_tile, g_tile, num_queries, num_gt, counts_ptr,
                                                       allowed_ptr, BLOCK_Q, BLOCK_G)
    if any_ok:
        pair = tl.arange(0, BLOCK_Q)[:, None] * BLOCK_G + tl.arange(0, BLOCK_G)[None, :]
        rq = tl.arange(0, BLOCK_Q)
        rg = tl.arange(0, BLOCK_G)
        lt = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
        st = tl.zeros([BLOCK_Q, BLOCK_G], dtype=tl.float32)
        sp = tl.zeros([BLOCK_Q], dtype=tl.float32)
        ss = tl.zeros([BLOCK_Q], dtype=tl.float32)
        xb = tl.zeros([BLOCK_Q], dtype=tl.float32)
        ts = tl.zeros([BLOCK_G], dtype=tl.float32)
        tb = tl.zeros([BLOCK_G], dtype=tl.float32)
        size = 2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + 2 * BLOCK_G
        for split in range(0, splits):
            slot = work_ptr + (split * tl.num_programs(0) + tile).to(tl.int64) * size
            lt += tl.load(slot + pair)
            st += tl.load(slot + BLOCK_Q * BLOCK_G + pair)
            sp += tl.load(slot + 2 * BLOCK_Q * BLOCK_G + rq)
            ss += tl.load(slot + 2 * BLOCK_Q * BLOCK_G + BLOCK_Q + rq)
            xb = tl.maximum(xb, tl.load(slot + 2 * BLOCK_Q * BLOCK_G + 2 * BLOCK_Q + rq))
            ts += tl.load(slot + 2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + rg)
            tb = tl.maximum(tb, tl.load(slot + 2 * BLOCK_Q * BLOCK_G + 3 * BLOCK_Q + BLOCK_G + rg))
        _finish(cls_ptr, labels_ptr, out_ptr, b, rows, q, g, q_valid, ok, bad_count, num_gt, num_classes, num_points,
                lt, st, sp, ss, xb, ts, tb, w_class, w_mask, w_dice, BLOCK_Q, BLOCK_K)
    else:
        tl.store(out_ptr + rows[:, None] * num_gt + g[None, :],
                 tl.full([BLOCK_Q, BLOCK_G], float("inf"), dtype=tl.float32),
                 mask=q_valid[:, None] & (g < num_gt)[None, :])


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():  # fake CUDA tensors (tracing tests) have no device
        return torch.cuda.get_device_properties(device).multi_processor_count  # cached by PyTorch: no sync
    return DEFAULT_SMS


def launch_params(batch: int, num_queries: int, num_gt: int, num_points: int, num_classes: int,
                  multiprocessors: int = DEFAULT_SMS, splits: int | None = None) -> dict:
    """Tiles, point splits and grid (a pure function of the sizes). Splits: enough programs for about four per
    multiprocessor, each with at least ``MIN_POINTS_PER_SPLIT`` points; one split when the tiles already fill
    the GPU (then one launch)."""
    block_g = min(64, max(16, triton.next_power_of_2(max(num_gt, 1))))
    block_k = min(128, max(16, triton.next_power_of_2(max(num_classes, 1))))
    q_tiles, g_tiles = triton.cdiv(num_queries, BLOCK_Q), triton.cdiv(num_gt, block_g)
    tiles = batch * q_tiles * g_tiles
    if splits is None:
        wanted = triton.cdiv(4 * multiprocessors, max(tiles, 1))
        splits = max(1, min(wanted, num_points // MIN_POINTS_PER_SPLIT))
    per_split = triton.cdiv(triton.cdiv(num_points, splits), BLOCK_P) * BLOCK_P
    splits = triton.cdiv(num_points, per_split) if num_points else 1
    return {"BLOCK_G": block_g, "BLOCK_K": block_k, "q_tiles": q_tiles, "g_tiles": g_tiles, "tiles": tiles,
            "splits": splits, "points_per_split": per_split,
            "slot": 2 * BLOCK_Q * block_g + 3 * BLOCK_Q + 2 * block_g}


def matching_cost(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets,
                  cost_class: float, cost_mask: float, cost_dice: float, splits: int | None = None):
    """Cost ``[B,Q,G]`` float32 (see the module docstring); inputs are made contiguous. ``splits`` forces the
    number of point splits (tests); by default :func:`launch_params` chooses."""
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
    params = launch_params(batch, num_queries, num_gt, num_points, num_classes,
                           _multiprocessors(mask_logits.device), splits)
    split = params["splits"] > 1
    work = (torch.empty(params["splits"] * params["tiles"] * params["slot"], dtype=torch.float32,
                        device=mask_logits.device) if split else cost)
    common = dict(BLOCK_Q=BLOCK_Q, BLOCK_G=params["BLOCK_G"], BLOCK_K=params["BLOCK_K"], num_warps=NUM_WARPS)
    weights = (float(cost_class), float(cost_mask), float(cost_dice))
    launcher(_matching_cost_kernel, cost)[(params["tiles"], params["splits"])](
        mask_logits, target_masks, class_logits, target_labels, allowed.view(torch.uint8), num_targets, cost, work,
        num_queries, num_points, num_gt, num_classes, params["q_tiles"], params["g_tiles"],
        params["points_per_split"], *weights, SPLIT=split, BLOCK_P=BLOCK_P, **common,
    )
    if split:
        launcher(_matching_finish_kernel, cost)[(params["tiles"],)](
            class_logits, target_labels, allowed.view(torch.uint8), num_targets, cost, work,
            num_queries, num_points, num_gt, num_classes, params["q_tiles"], params["g_tiles"], params["splits"],
            *weights, **common,
        )
    return cost
