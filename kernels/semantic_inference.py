"""Triton kernel of ``semantic_inference``: resize, sigmoid, gate, class mixture and argmax in one pass.

Program ``(pixel block, b)`` owns ``BLOCK_P`` output pixels of batch item ``b`` and never writes anything but
their result, so no ``[B,Q,H,W]`` or ``[B,K,H,W]`` tensor exists. Per pixel (float32 arithmetic):

    bilinear tap (one axis, as F.interpolate with align_corners=False and a given size):
        scale = in / out,  src = max(scale·(i + 0.5) − 0.5, 0),  i0 = floor(src),  i1 = min(i0 + 1, in − 1),
        l1 = src − i0,  l0 = 1 − l1                            (equal sizes copy)
    m_q   = l0y·(l0x·v00 + l1x·v01) + l1y·(l0x·v10 + l1x·v11)
            mask debias (op 4) per corner first: v' = (1 + a)·v − a·v_b,  a = alpha or alpha·tanh(|v_b|/2)
    s_q   = gate[b,q]·σ(m_q)
    S[k]  = Σ_q probs[b,q,k]·s_q                                one query at a time, FP32 FMAs into [BLOCK_K, BLOCK_P]
    overall scheme: S'[k] = (1 + a)·S[k] − a·S_b[k],  a = alpha or alpha·|2·clamp(S_b[k], 0, 1) − 1|
    REDUCE 0: argmax_k S[k] (lowest k on ties, across class tiles too), int64
    REDUCE 1: Σ_k foreground[k]·S[k], float32
    REDUCE 2: max_q s_q (mask-only models), float32
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK_P = 64
MAX_BLOCK_K = 128
NUM_WARPS = 4  # 2 where BLOCK_K <= 32: at 4, ptxas spilled a few bytes of the [16, 64] tiles (sm_90)
REDUCE_CODES = {"argmax": 0, "foreground": 1, "max_query": 2}


@triton.jit
def _bilinear_taps(i, in_size, scale, SAME: tl.constexpr):
    if SAME:
        i0 = i
        i1 = i
        l1 = tl.zeros(i.shape, dtype=tl.float32)
    else:
        src = scale * (i.to(tl.float32) + 0.5) - 0.5
        src = tl.maximum(src, 0.0)
        i0 = tl.minimum(src.to(tl.int32), in_size - 1)
        l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
        i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _corner(m_ptr, mb_ptr, offs, valid, alpha, DEBIAS: tl.constexpr, UNCERTAINTY: tl.constexpr):
    v = tl.load(m_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    if DEBIAS:
        vb = tl.load(mb_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        if UNCERTAINTY:
            e = tl.exp(-tl.abs(vb))
            a = alpha * (1.0 - e) / (1.0 + e)
        else:
            a = alpha
        v = (1.0 + a) * v - a * vb
    return v


@triton.jit
def _gated_sigmoid_row(m_ptr, mb_ptr, gate_ptr, pvalid, o00, o01, o10, o11, ly0, ly1, lx0, lx1, alpha,
                       HAS_GATE: tl.constexpr, DEBIAS: tl.constexpr, UNCERTAINTY: tl.constexpr):
    """``[BLOCK_P]`` gated sigmoids of one query's resized logits (``m_ptr``/``mb_ptr``: its planes)."""
    v00 = _corner(m_ptr, mb_ptr, o00, pvalid, alpha, DEBIAS, UNCERTAINTY)
    v01 = _corner(m_ptr, mb_ptr, o01, pvalid, alpha, DEBIAS, UNCERTAINTY)
    v10 = _corner(m_ptr, mb_ptr, o10, pvalid, alpha, DEBIAS, UNCERTAINTY)
    v11 = _corner(m_ptr, mb_ptr, o11, pvalid, alpha, DEBIAS, UNCERTAINTY)
    v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
    s = 1.0 / (1.0 + tl.exp(-v))
    if HAS_GATE:
        s = s * tl.load(gate_ptr)
    return s


@triton.jit
def _semantic_inference_kernel(
    mask_ptr, mask_b_ptr, probs_ptr, probs_b_ptr, gate_ptr, fg_ptr, out_ptr,
    Q, K, IN_H, IN_W, OUT_H, OUT_W, scale_h, scale_w, alpha,
    SAME_H: tl.constexpr, SAME_W: tl.constexpr, HAS_GATE: tl.constexpr, MASK_DEBIAS: tl.constexpr,
    OVERALL: tl.constexpr, UNCERTAINTY: tl.constexpr, REDUCE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(1)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixels = OUT_H * OUT_W
    pvalid = pix < pixels
    y = pix // OUT_W
    x = pix % OUT_W
    y0, y1, ly0, ly1 = _bilinear_taps(y, IN_H, scale_h, SAME_H)
    x0, x1, lx0, lx1 = _bilinear_taps(x, IN_W, scale_w, SAME_W)
    o00 = y0 * IN_W + x0
    o01 = y0 * IN_W + x1
    o10 = y1 * IN_W + x0
    o11 = y1 * IN_W + x1
    plane = IN_H * IN_W
    out_offs = b.to(tl.int64) * pixels + pix
    if REDUCE == 2:
        best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        for q in range(0, Q):
            row = (b * Q + q).to(tl.int64)
            s = _gated_sigmoid_row(mask_ptr + row * plane, mask_b_ptr + row * plane, gate_ptr + row, pvalid,
                                   o00, o01, o10, o11, ly0, ly1, lx0, lx1, alpha, HAS_GATE, MASK_DEBIAS, UNCERTAINTY)
            best = tl.maximum(best, s)
        tl.store(out_ptr + out_offs, best, mask=pvalid)
    else:
        best_val = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        best_idx = tl.zeros((BLOCK_P,), dtype=tl.int64)
        total = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kvalid = ks < K
            # [class, pixel] tiles, pixels along the fast axis, so a thread holds few pixels (and computes few
            # sigmoids) and many classes. One query at a time, an outer product probs[q, :] ⊗ s_q in FP32 FMAs
            # (what an IEEE fp32 tl.dot lowers to anyway): tl.dot's replicated 16-query-wide operands held
            # ~255 registers and spilled on sm_80/sm_90.
            acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            for q in range(0, Q):
                row = (b * Q + q).to(tl.int64)
                s = _gated_sigmoid_row(mask_ptr + row * plane, mask_b_ptr + row * plane, gate_ptr + row, pvalid,
                                       o00, o01, o10, o11, ly0, ly1, lx0, lx1, alpha, HAS_GATE, MASK_DEBIAS,
                                       UNCERTAINTY)
                pr = tl.load(probs_ptr + row * K + ks, mask=kvalid, other=0.0)
                acc += pr[:, None] * s[None, :]
                if OVERALL:
                    s_b = _gated_sigmoid_row(mask_b_ptr + row * plane, mask_b_ptr, gate_ptr + row, pvalid,
                                             o00, o01, o10, o11, ly0, ly1, lx0, lx1, alpha, HAS_GATE, False, False)
                    pr_b = tl.load(probs_b_ptr + row * K + ks, mask=kvalid, other=0.0)
                    acc_b += pr_b[:, None] * s_b[None, :]
            if OVERALL:
                if UNCERTAINTY:
                    a = alpha * tl.abs(2.0 * tl.minimum(tl.maximum(acc_b, 0.0), 1.0) - 1.0)
                else:
                    a = alpha
                acc = (1.0 + a) * acc - a * acc_b
            if REDUCE == 0:
                acc = tl.where(kvalid[:, None], acc, float("-inf"))
                chunk_val = tl.max(acc, axis=0)
                chunk_idx = tl.argmax(acc, axis=0, tie_break_left=True).to(tl.int64) + k0
                take = chunk_val > best_val  # strict: an earlier class tile keeps ties
                best_idx = tl.where(take, chunk_idx, best_idx)
                best_val = tl.where(take, chunk_val, best_val)
            else:
                fg = tl.load(fg_ptr + ks, mask=kvalid, other=0.0)
                total += tl.sum(acc * fg[:, None], axis=0)
        if REDUCE == 0:
            tl.store(out_ptr + out_offs, best_idx, mask=pvalid)
        else:
            tl.store(out_ptr + out_offs, total, mask=pvalid)


def _float32_ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` rounded to float32, as ATen computes the resize scale."""
    return float(np.float32(numerator) / np.float32(denominator))


def semantic_inference(mask, mask_biased, probs, probs_biased, gate, foreground, height: int, width: int,
                       alpha: float, uncertainty: bool, mask_debias: bool, overall: bool, reduce: str):
    """Launches the kernel; see :func:`coavs.ops.reference.semantic_inference_kernel` for the contract."""
    code = REDUCE_CODES[reduce]
    batch, queries, in_h, in_w = mask.shape
    out = torch.empty((batch, height, width), device=mask.device,
                      dtype=torch.int64 if code == 0 else torch.float32)
    if batch == 0 or height * width == 0:
        return out
    mask = mask.contiguous()
    uses_biased_mask = mask_debias or overall
    mask_biased = mask_biased.contiguous() if uses_biased_mask else mask
    placeholder = torch.zeros(1, device=mask.device, dtype=torch.float32)
    probs = probs.contiguous() if code != 2 else placeholder
    probs_biased = probs_biased.contiguous() if overall else probs
    has_gate = gate.numel() > 0
    gate = gate.contiguous() if has_gate else placeholder
    foreground = foreground.contiguous() if code == 1 else placeholder
    classes = probs.shape[-1] if code != 2 else 1
    block_k = max(16, min(MAX_BLOCK_K, triton.next_power_of_2(classes)))
    grid = (triton.cdiv(height * width, BLOCK_P), batch)
    _semantic_inference_kernel[grid](
        mask, mask_biased, probs, probs_biased, gate, foreground, out,
        queries, classes, in_h, in_w, height, width,
        _float32_ratio(in_h, height), _float32_ratio(in_w, width), float(alpha),
        SAME_H=in_h == height, SAME_W=in_w == width, HAS_GATE=has_gate, MASK_DEBIAS=bool(mask_debias),
        OVERALL=bool(overall), UNCERTAINTY=bool(uncertainty), REDUCE=code,
        BLOCK_P=BLOCK_P, BLOCK_K=block_k, num_warps=NUM_WARPS if block_k > 32 else 2,
    )
    return out
