"""Triton kernel of ``semantic_inference``: resize, sigmoid, gate, class mixture and argmax in one pass.

Program ``(pixel block, b)`` owns ``BLOCK_P`` output pixels of batch item ``b`` and writes nothing but their
result, so no ``[B,Q,H,W]`` or ``[B,K,H,W]`` tensor exists. Per pixel (float32 arithmetic):

    bilinear tap (one axis, as F.interpolate with align_corners=False and a given size):
        scale = in / out,  src = max(scale·(i + 0.5) − 0.5, 0),  i0 = floor(src),  i1 = min(i0 + 1, in − 1),
        l1 = src − i0,  l0 = 1 − l1                            (equal sizes copy)
    m_q   = l0y·(l0x·v00 + l1x·v01) + l1y·(l0x·v10 + l1x·v11)   (ATen's order: bit-equal to F.interpolate)
            mask debias (op 4) per corner first: v' = (1 + a)·v − a·v_b,  a = alpha or alpha·tanh(|v_b|/2)
    s_q   = σ(m_q)
    S[k]  = Σ_q probs[b,q,k]·gate[b,q]·s_q
    overall scheme: S'[k] = (1 + a)·S[k] − a·S_b[k],  a = alpha or alpha·|2·clamp(S_b[k], 0, 1) − 1|
    REDUCE 0: argmax_k S[k] (lowest k on ties, across class tiles too), int64
    REDUCE 1: Σ_k foreground[k]·S[k] (foreground empty: every class weighs 1), float32
    REDUCE 2: max_q gate·s_q (mask-only models), float32

Class mixture on tensor cores: per chunk of ``BLOCK_Q`` queries the ``[BLOCK_P, BLOCK_Q]`` tile of sigmoids times
the ``[BLOCK_Q, K]`` gated probabilities, ``tl.dot`` with float32 accumulation. Both operands are split into two
float16 halves (``x = hi + lo``, ``hi = fp16(x)``, ``lo = fp16(x − hi)``) and multiplied as
``hi·hi + hi·lo + lo·hi``: about 22 bits of each operand, so the scores carry float32-level error (the float16
range holds them: sigmoids and probabilities are in [0, 1], and the gates are divided by the sample's largest
``|gate|``, which multiplies the scores afterwards). The K classes are two tiles, a power of two and the rest
rounded up to one (71 → 64 + 16), not one tile padded to 128; more classes than two tiles loop over them.
The foreground reduction without the overall scheme mixes one weight per query (plain FMAs, no matrix product).

Undefined samples (the op's non-finite policy, see ``coavs.ops.semantic_inference``): a sample whose mask logits
(``mask_lo``/``mask_hi``, per-sample minimum and maximum from one ``aminmax`` launch; the biased mask's likewise)
are not finite, or whose gates or class probabilities hold a NaN or ±inf, gets label −1 / score NaN everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

BLOCK_Q = 16
REDUCE_CODES = {"argmax": 0, "foreground": 1, "max_query": 2}
MAX_ACC_PER_THREAD = 48  # float32 accumulators a thread holds (spill-free on sm_80/sm_90)


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
def _sigmoids(m_ptr, mb_ptr, offs_q, valid, o00, o01, o10, o11, ly0, ly1, lx0, lx1, alpha,
              DEBIAS: tl.constexpr, UNCERTAINTY: tl.constexpr):
    """``σ`` of the resized logits: ``offs_q`` ``[1, BLOCK_Q]`` query plane offsets, ``o**`` ``[BLOCK_P, 1]``."""
    v00 = _corner(m_ptr, mb_ptr, offs_q + o00, valid, alpha, DEBIAS, UNCERTAINTY)
    v01 = _corner(m_ptr, mb_ptr, offs_q + o01, valid, alpha, DEBIAS, UNCERTAINTY)
    v10 = _corner(m_ptr, mb_ptr, offs_q + o10, valid, alpha, DEBIAS, UNCERTAINTY)
    v11 = _corner(m_ptr, mb_ptr, offs_q + o11, valid, alpha, DEBIAS, UNCERTAINTY)
    v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _split(x):
    """``x`` float32 → (hi, lo) float16 with ``hi + lo ≈ x`` to about 22 bits."""
    hi = x.to(tl.float16)
    lo = (x - hi.to(tl.float32)).to(tl.float16)
    return hi, lo


@triton.jit
def _mix(s_hi, s_lo, p, acc):
    """``acc + s·p`` on tensor cores (three float16 products of the split operands)."""
    p_hi, p_lo = _split(p)
    acc = tl.dot(s_hi, p_hi, acc, out_dtype=tl.float32)
    acc = tl.dot(s_hi, p_lo, acc, out_dtype=tl.float32)
    acc = tl.dot(s_lo, p_hi, acc, out_dtype=tl.float32)
    return acc


@triton.jit
def _finite(x):
    return tl.abs(x) < float("inf")  # False for NaN and ±inf


@triton.jit
def _gate_scale(gate_ptr, Q, BLOCK: tl.constexpr):
    """(max_q |gate|, every gate finite) of one sample."""
    top = tl.zeros([BLOCK], dtype=tl.float32)
    ok = tl.full([BLOCK], 1, dtype=tl.int32)
    for q0 in range(0, Q, BLOCK):
        qs = q0 + tl.arange(0, BLOCK)
        g = tl.load(gate_ptr + qs, mask=qs < Q, other=0.0)
        ok = ok & _finite(g).to(tl.int32)
        top = tl.maximum(top, tl.where(_finite(g), tl.abs(g), 0.0))
    return tl.max(top, axis=0), tl.min(ok, axis=0) > 0


@triton.jit
def _probs_tile(probs_ptr, gate_ptr, qs, qvalid, ks, K, stride_q, gate_top, HAS_GATE: tl.constexpr):
    """``[BLOCK_Q, BLOCK_K]`` probabilities of one sample times ``gate / max|gate|`` (0 outside), and whether
    they are all finite."""
    kvalid = ks < K
    p = tl.load(probs_ptr + qs[:, None] * stride_q + ks[None, :], mask=qvalid[:, None] & kvalid[None, :], other=0.0)
    if HAS_GATE:
        g = tl.load(gate_ptr + qs, mask=qvalid, other=0.0)
        p = p * (g / tl.where(gate_top > 0, gate_top, 1.0))[:, None]  # all-zero gates: p·0
    return p, tl.min(tl.min(_finite(p).to(tl.int32), axis=1), axis=0) > 0


@triton.jit
def _debias_scores(acc, acc_b, alpha, UNCERTAINTY: tl.constexpr):
    if UNCERTAINTY:
        a = alpha * tl.abs(2.0 * tl.minimum(tl.maximum(acc_b, 0.0), 1.0) - 1.0)
    else:
        a = alpha
    return (1.0 + a) * acc - a * acc_b


@triton.jit
def _semantic_inference_kernel(
    mask_ptr, mask_b_ptr, probs_ptr, probs_b_ptr, gate_ptr, fg_ptr, out_ptr,
    mask_lo_ptr, mask_hi_ptr, mask_b_lo_ptr, mask_b_hi_ptr,
    Q, K, IN_H, IN_W, OUT_H, OUT_W, scale_h, scale_w, alpha, stride_pb, stride_pq,
    SAME_H: tl.constexpr, SAME_W: tl.constexpr, HAS_GATE: tl.constexpr, MASK_DEBIAS: tl.constexpr,
    OVERALL: tl.constexpr, UNCERTAINTY: tl.constexpr, REDUCE: tl.constexpr, HAS_FG: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixels = OUT_H * OUT_W
    pvalid = pix < pixels
    y = pix // OUT_W
    x = pix % OUT_W
    y0, y1, ly0, ly1 = _bilinear_taps(y, IN_H, scale_h, SAME_H)
    x0, x1, lx0, lx1 = _bilinear_taps(x, IN_W, scale_w, SAME_W)
    o00 = (y0 * IN_W + x0)[:, None]
    o01 = (y0 * IN_W + x1)[:, None]
    o10 = (y1 * IN_W + x0)[:, None]
    o11 = (y1 * IN_W + x1)[:, None]
    ly0 = ly0[:, None]
    ly1 = ly1[:, None]
    lx0 = lx0[:, None]
    lx1 = lx1[:, None]
    plane = IN_H * IN_W
    m_ptr = mask_ptr + b * Q * plane
    mb_ptr = mask_b_ptr + b * Q * plane
    g_ptr = gate_ptr + b * Q
    out_offs = b * pixels + pix
    USES_BIASED_MASK: tl.constexpr = MASK_DEBIAS or OVERALL
    defined = _finite(tl.load(mask_lo_ptr + b)) & _finite(tl.load(mask_hi_ptr + b))
    if USES_BIASED_MASK:
        defined = defined & _finite(tl.load(mask_b_lo_ptr + b)) & _finite(tl.load(mask_b_hi_ptr + b))
    if HAS_GATE:
        gate_top, gates_ok = _gate_scale(g_ptr, Q, BLOCK_Q)
        defined = defined & gates_ok
    else:
        gate_top = 1.0

    if REDUCE == 2:  # max_q gate·σ (no classes)
        best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            qs = q0 + tl.arange(0, BLOCK_Q)
            qvalid = qs < Q
            valid = pvalid[:, None] & qvalid[None, :]
            s = _sigmoids(m_ptr, mb_ptr, (qs * plane)[None, :], valid, o00, o01, o10, o11, ly0, ly1, lx0, lx1,
                          alpha, MASK_DEBIAS, UNCERTAINTY)
            if HAS_GATE:
                s = s * tl.load(g_ptr + qs, mask=qvalid, other=0.0)[None, :]
            best = tl.maximum(best, tl.max(tl.where(qvalid[None, :], s, float("-inf")), axis=1))
        tl.store(out_ptr + out_offs, tl.where(defined, best, float("nan")), mask=pvalid)
    elif REDUCE == 1 and not OVERALL:  # Σ_q (Σ_k fg[k]·probs[q,k])·gate·σ: one weight per query, FMAs
        total = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            qs = q0 + tl.arange(0, BLOCK_Q)
            qvalid = qs < Q
            valid = pvalid[:, None] & qvalid[None, :]
            s = _sigmoids(m_ptr, mb_ptr, (qs * plane)[None, :], valid, o00, o01, o10, o11, ly0, ly1, lx0, lx1,
                          alpha, MASK_DEBIAS, UNCERTAINTY)
            w = tl.zeros((BLOCK_Q,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K1):
                ks = k0 + tl.arange(0, BLOCK_K1)
                p, ok = _probs_tile(probs_ptr + b * stride_pb, g_ptr, qs, qvalid, ks, K, stride_pq, gate_top,
                                    HAS_GATE)
                defined = defined & ok
                if HAS_FG:
                    p = p * tl.load(fg_ptr + ks, mask=ks < K, other=0.0)[None, :]
                w += tl.sum(p, axis=1)
            total += tl.sum(s * w[None, :], axis=1)
        tl.store(out_ptr + out_offs, tl.where(defined, total * gate_top, float("nan")), mask=pvalid)
    else:  # class scores on tensor cores: argmax, or the overall scheme's foreground sum
        best_val = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        best_idx = tl.zeros((BLOCK_P,), dtype=tl.int32)
        total = tl.zeros((BLOCK_P,), dtype=tl.float32)
        TWO_TILES: tl.constexpr = BLOCK_K2 > 0
        for k0 in range(0, K, BLOCK_K1 + BLOCK_K2):
            ks1 = k0 + tl.arange(0, BLOCK_K1)
            acc1 = tl.zeros((BLOCK_P, BLOCK_K1), dtype=tl.float32)
            acc1_b = tl.zeros((BLOCK_P, BLOCK_K1 if OVERALL else 16), dtype=tl.float32)
            if TWO_TILES:
                ks2 = k0 + BLOCK_K1 + tl.arange(0, BLOCK_K2)
                acc2 = tl.zeros((BLOCK_P, BLOCK_K2), dtype=tl.float32)
                acc2_b = tl.zeros((BLOCK_P, BLOCK_K2 if OVERALL else 16), dtype=tl.float32)
            for q0 in range(0, Q, BLOCK_Q):
                qs = q0 + tl.arange(0, BLOCK_Q)
                qvalid = qs < Q
                valid = pvalid[:, None] & qvalid[None, :]
                s = _sigmoids(m_ptr, mb_ptr, (qs * plane)[None, :], valid, o00, o01, o10, o11, ly0, ly1, lx0,
                              lx1, alpha, MASK_DEBIAS, UNCERTAINTY)
                s_hi, s_lo = _split(s)
                p1, ok1 = _probs_tile(probs_ptr + b * stride_pb, g_ptr, qs, qvalid, ks1, K, stride_pq, gate_top,
                                      HAS_GATE)
                defined = defined & ok1
                acc1 = _mix(s_hi, s_lo, p1, acc1)
                if TWO_TILES:
                    p2, ok2 = _probs_tile(probs_ptr + b * stride_pb, g_ptr, qs, qvalid, ks2, K, stride_pq,
                                          gate_top, HAS_GATE)
                    defined = defined & ok2
                    acc2 = _mix(s_hi, s_lo, p2, acc2)
                if OVERALL:
                    s_b = _sigmoids(mb_ptr, mb_ptr, (qs * plane)[None, :], valid, o00, o01, o10, o11, ly0, ly1,
                                    lx0, lx1, alpha, False, False)
                    sb_hi, sb_lo = _split(s_b)
                    pb1, okb1 = _probs_tile(probs_b_ptr + b * stride_pb, g_ptr, qs, qvalid, ks1, K, stride_pq,
                                            gate_top, HAS_GATE)
                    defined = defined & okb1
                    acc1_b = _mix(sb_hi, sb_lo, pb1, acc1_b)
                    if TWO_TILES:
                        pb2, okb2 = _probs_tile(probs_b_ptr + b * stride_pb, g_ptr, qs, qvalid, ks2, K, stride_pq,
                                                gate_top, HAS_GATE)
                        defined = defined & okb2
                        acc2_b = _mix(sb_hi, sb_lo, pb2, acc2_b)
            acc1 = acc1 * gate_top
            if OVERALL:
                acc1 = _debias_scores(acc1, acc1_b * gate_top, alpha, UNCERTAINTY)
            if REDUCE == 0:
                v1 = tl.where((ks1 < K)[None, :], acc1, float("-inf"))
                val1 = tl.max(v1, axis=1)
                idx1 = tl.argmax(v1, axis=1, tie_break_left=True) + k0
                take = val1 > best_val  # strict: an earlier class keeps ties
                best_idx = tl.where(take, idx1, best_idx)
                best_val = tl.where(take, val1, best_val)
            else:
                if HAS_FG:
                    f1 = tl.load(fg_ptr + ks1, mask=ks1 < K, other=0.0)
                else:
                    f1 = tl.where(ks1 < K, 1.0, 0.0)
                total += tl.sum(acc1 * f1[None, :], axis=1)
            if TWO_TILES:
                acc2 = acc2 * gate_top
                if OVERALL:
                    acc2 = _debias_scores(acc2, acc2_b * gate_top, alpha, UNCERTAINTY)
                if REDUCE == 0:
                    v2 = tl.where((ks2 < K)[None, :], acc2, float("-inf"))
                    val2 = tl.max(v2, axis=1)
                    idx2 = tl.argmax(v2, axis=1, tie_break_left=True) + k0 + BLOCK_K1
                    take = val2 > best_val
                    best_idx = tl.where(take, idx2, best_idx)
                    best_val = tl.where(take, val2, best_val)
                else:
                    if HAS_FG:
                        f2 = tl.load(fg_ptr + ks2, mask=ks2 < K, other=0.0)
                    else:
                        f2 = tl.where(ks2 < K, 1.0, 0.0)
                    total += tl.sum(acc2 * f2[None, :], axis=1)
        if REDUCE == 0:
            tl.store(out_ptr + out_offs, tl.where(defined, best_idx, -1).to(tl.int64), mask=pvalid)
        else:
            tl.store(out_ptr + out_offs, tl.where(defined, total, float("nan")), mask=pvalid)


def _float32_ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` rounded to float32, as ATen computes the resize scale."""
    return float(np.float32(numerator) / np.float32(denominator))


def launch_params(classes: int, reduce: str, overall: bool) -> dict:
    """Tile sizes and warps of one launch (a pure function of the sizes; see the module docstring).

    Classes split into ``BLOCK_K1`` (the largest power of two ≤ K, 16…128) and, when classes are left, a second
    tile ``BLOCK_K2`` (the rest rounded up to a power of two ≥ 16, at most ``BLOCK_K1``, and only while the two
    hold at most 160): 71 → 64 + 16, 5 → 16, 150 → 128 + 32, 200 → 128 twice (the sigmoids are recomputed).
    Four warps (one warpgroup: ptxas may give each thread up to 255 registers; at eight it capped them at 128 and
    spilled), eight for the overall scheme's two branches (64 pixels), and as many pixels as keep a thread at ``MAX_ACC_PER_THREAD`` float32 accumulators (two sets under
    the overall scheme); the paths without class tiles take 64 pixels (8 elements of each corner a thread)."""
    k1 = max(16, min(128, 1 << (max(classes, 1).bit_length() - 1)))
    rest = classes - k1
    k2 = 0 if rest <= 0 else max(16, min(k1, triton.next_power_of_2(rest)))
    if k1 + k2 > 160:  # 200 classes: loop over two tiles of 128 rather than hold 256 accumulators
        k2 = 0
    tensor_cores = reduce == "argmax" or (reduce == "foreground" and overall)
    warps = 4
    if not tensor_cores:
        return {"BLOCK_P": 64, "BLOCK_K1": k1, "BLOCK_K2": k2, "num_warps": warps, "num_stages": 1,
                "tensor_cores": False}
    width = (k1 + k2) * (2 if overall else 1)
    block_p = 128
    if overall:  # two branches' sigmoid tiles too: 128 pixels, or 64 on 4 warps, spilled a few bytes on sm_80
        block_p, warps = 64, 8
    while block_p * width > MAX_ACC_PER_THREAD * 32 * warps and block_p > 16:
        block_p //= 2
    return {"BLOCK_P": block_p, "BLOCK_K1": k1, "BLOCK_K2": k2, "num_warps": warps, "num_stages": 1,
            "tensor_cores": True}


def semantic_inference(mask, mask_biased, probs, probs_biased, gate, foreground, height: int, width: int,
                       alpha: float, uncertainty: bool, mask_debias: bool, overall: bool, reduce: str):
    """Launches the kernel; see :func:`coavs.ops.reference.semantic_inference_kernel` for the contract.

    One ``aminmax`` per mask tensor (the undefined-sample check), then one kernel launch. ``probs`` may be a
    strided view (its last dimension contiguous), e.g. the first K columns of a softmax over K+1."""
    code = REDUCE_CODES[reduce]
    batch, queries, in_h, in_w = mask.shape
    out = torch.empty((batch, height, width), device=mask.device,
                      dtype=torch.int64 if code == 0 else torch.float32)
    if batch == 0 or height * width == 0:
        return out
    mask = mask.contiguous()
    uses_biased_mask = mask_debias or overall
    mask_biased = mask_biased.contiguous() if uses_biased_mask else mask
    lo, hi = torch.aminmax(mask.view(batch, -1), dim=1)
    lo_b, hi_b = torch.aminmax(mask_biased.view(batch, -1), dim=1) if uses_biased_mask else (lo, hi)
    if code != 2:
        if probs.stride(-1) != 1:
            probs = probs.contiguous()
        if overall and probs_biased.stride() != probs.stride():
            probs_biased = torch.empty_like(probs).copy_(probs_biased)
    probs = probs if code != 2 else out
    probs_biased = probs_biased if overall else probs
    has_gate = gate.numel() > 0
    gate = gate.contiguous() if has_gate else out
    has_fg = code == 1 and foreground.numel() > 0
    foreground = foreground.contiguous() if has_fg else out
    classes = probs.shape[-1] if code != 2 else 1
    params = launch_params(classes, reduce, overall)
    grid = (triton.cdiv(height * width, params["BLOCK_P"]), batch)
    launcher(_semantic_inference_kernel, out)[grid](
        mask, mask_biased, probs, probs_biased, gate, foreground, out, lo, hi, lo_b, hi_b,
        queries, classes, in_h, in_w, height, width,
        _float32_ratio(in_h, height), _float32_ratio(in_w, width), float(alpha),
        probs.stride(0) if code != 2 else 0, probs.stride(1) if code != 2 else 0,
        SAME_H=in_h == height, SAME_W=in_w == width, HAS_GATE=has_gate, MASK_DEBIAS=bool(mask_debias),
        OVERALL=bool(overall), UNCERTAINTY=bool(uncertainty), REDUCE=code, HAS_FG=has_fg,
        BLOCK_P=params["BLOCK_P"], BLOCK_Q=BLOCK_Q, BLOCK_K1=params["BLOCK_K1"], BLOCK_K2=params["BLOCK_K2"],
        num_warps=params["num_warps"], num_stages=params["num_stages"],
    )
    return out
