"""Triton kernels of ``assign_queries``: one launch for the whole batch each way.

Marker of query q          s = q // d for q < S·d, else −1 (dormant)
Presence                   score[b,s] ≥ threshold, or, when no marker of row b reaches it, s = argmax_s score[b,s]
                           (first index on ties)
Gate                       gate[b,q] = 1 (soft: score[b,s]) when s is present, else dormant_gate
Forward                    queries[b,q,:] = query_feat[q,:] + gate[b,q]·audio[b,:]
Backward                   d_query_feat[q] = Σ_b g[b,q];   d_audio[b] = Σ_q gate[b,q]·g[b,q]
                           d_scores[b,s] = Σ_{q of s, active} (⟨g[b,q], audio[b]⟩ + g_gate[b,q])   (soft; else 0)

Forward grid: (query tiles, B); each program reduces its sample's scores (``BLOCK_S`` ≥ S) and writes
``BLOCK_Q`` rows. Backward: programs ``[0, feat_programs)`` reduce over the batch, the next ``audio_programs``
over the queries (``BLOCK`` = 64 outputs each, ``BLOCK_CHUNK`` = 16 samples or queries a step), the rest take
``BLOCK_R`` (sample, marker) pairs each.
``threshold`` and ``dormant_gate`` reach the kernel as float32 scalars (float64 scores are compared against
the float32-rounded threshold; the reference and C++ kernels compare in float64).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

MAX_MARKERS = 1 << 14


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _assign_queries_kernel(
    scores_ptr, audio_ptr, feat_ptr, out_ptr, gate_ptr, active_ptr,
    num_markers, num_queries, width, dilation, threshold, dormant_gate,
    SOFT: tl.constexpr, ACC: tl.constexpr, SCORE_ACC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    marker_ids = tl.arange(0, BLOCK_S)
    row = tl.load(scores_ptr + b * num_markers + marker_ids, mask=marker_ids < num_markers,
                  other=float("-inf")).to(SCORE_ACC)
    any_present = tl.max(tl.where((marker_ids < num_markers) & (row >= threshold), 1, 0), axis=0)
    top = tl.argmax(row, axis=0, tie_break_left=True)
    fallback = tl.where(any_present > 0, -1, top)

    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = q < num_queries
    marker = tl.where(q < num_markers * dilation, q // dilation, -1)
    owned = q_valid & (marker >= 0)
    score = tl.load(scores_ptr + b * num_markers + marker, mask=owned, other=0.0)
    score_acc = score.to(SCORE_ACC)
    on = owned & ((score_acc >= threshold) | (marker == fallback))
    dormant = tl.zeros([BLOCK_Q], dtype=tl.float32) + dormant_gate
    if SOFT:
        gate = tl.where(on, score, dormant.to(gate_ptr.dtype.element_ty))
    else:
        gate = tl.where(on, 1.0, dormant).to(gate_ptr.dtype.element_ty)
    tl.store(gate_ptr + b * num_queries + q, gate, mask=q_valid)
    tl.store(active_ptr + b * num_queries + q, on.to(tl.uint8), mask=q_valid)

    g = gate.to(SCORE_ACC).to(ACC)
    for d0 in range(0, width, BLOCK_D):
        j = d0 + tl.arange(0, BLOCK_D)
        j_valid = j < width
        tile = q_valid[:, None] & j_valid[None, :]
        feat = tl.load(feat_ptr + q[:, None] * width + j[None, :], mask=tile, other=0.0).to(ACC)
        a = tl.load(audio_ptr + b * width + j, mask=j_valid, other=0.0).to(ACC)
        out = feat + g[:, None] * a[None, :]
        tl.store(out_ptr + (b * num_queries + q[:, None]) * width + j[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _d_query_feat_block(grad_ptr, d_feat_ptr, batch, num_queries, width, block_id,
                        ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_CHUNK: tl.constexpr):
    """d_query_feat[q, j] = Σ_b g[b, q, j]: BLOCK elements of [Q, D], BLOCK_CHUNK samples at a time."""
    chunk = tl.arange(0, BLOCK_CHUNK)
    i = block_id.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < num_queries * width
    total = tl.zeros([BLOCK], dtype=ACC)
    for b0 in range(0, batch, BLOCK_CHUNK):
        bb = (b0 + chunk).to(tl.int64)
        tile = (bb < batch)[:, None] & valid[None, :]
        g = tl.load(grad_ptr + bb[:, None] * num_queries * width + i[None, :], mask=tile, other=0.0)
        total += tl.sum(g.to(ACC), axis=0)
    tl.store(d_feat_ptr + i, total.to(d_feat_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _d_audio_block(grad_ptr, gate_ptr, d_audio_ptr, batch, num_queries, width, block_id,
                   ACC: tl.constexpr, SCORE_ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_CHUNK: tl.constexpr):
    """d_audio[b, j] = Σ_q gate[b, q]·g[b, q, j]: BLOCK elements of [B, D], BLOCK_CHUNK queries at a time."""
    chunk = tl.arange(0, BLOCK_CHUNK)
    i = block_id.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < batch * width
    b = i // width
    j = i % width
    total = tl.zeros([BLOCK], dtype=ACC)
    for q0 in range(0, num_queries, BLOCK_CHUNK):
        qq = (q0 + chunk).to(tl.int64)
        tile = (qq < num_queries)[:, None] & valid[None, :]
        row = b[None, :] * num_queries + qq[:, None]
        gate = tl.load(gate_ptr + row, mask=tile, other=0.0).to(SCORE_ACC).to(ACC)
        g = tl.load(grad_ptr + row * width + j[None, :], mask=tile, other=0.0).to(ACC)
        total += tl.sum(gate * g, axis=0)
    tl.store(d_audio_ptr + i, total.to(d_audio_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _d_scores_block(grad_ptr, grad_gate_ptr, audio_ptr, active_ptr, d_scores_ptr,
                    batch, num_queries, width, num_markers, dilation, block_id,
                    SOFT: tl.constexpr, ACC: tl.constexpr, SCORE_ACC: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    """d_scores[b, s] for BLOCK_R (sample, marker) pairs (zero unless SOFT)."""
    pair = block_id.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = pair < batch * num_markers
    b = pair // num_markers
    s = pair % num_markers
    total = tl.zeros([BLOCK_R], dtype=ACC)
    if SOFT:
        for k in range(0, dilation):
            r = b * num_queries + s * dilation + k
            on = valid & (tl.load(active_ptr + r, mask=valid, other=0) != 0)
            dot = tl.zeros([BLOCK_R], dtype=ACC)
            for d0 in range(0, width, BLOCK_E):
                j = d0 + tl.arange(0, BLOCK_E)
                tile = on[:, None] & (j < width)[None, :]
                g = tl.load(grad_ptr + r[:, None] * width + j[None, :], mask=tile, other=0.0).to(ACC)
                a = tl.load(audio_ptr + b[:, None] * width + j[None, :], mask=tile, other=0.0).to(ACC)
                dot += tl.sum(g * a, axis=1)
            gate_grad = tl.load(grad_gate_ptr + r, mask=on, other=0.0).to(SCORE_ACC).to(ACC)
            total += tl.where(on, dot + gate_grad, 0.0)
    tl.store(d_scores_ptr + pair, total.to(d_scores_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _assign_queries_backward_kernel(
    grad_ptr, grad_gate_ptr, audio_ptr, gate_ptr, active_ptr, d_feat_ptr, d_audio_ptr, d_scores_ptr,
    batch, num_queries, width, num_markers, dilation, feat_programs, audio_programs,
    SOFT: tl.constexpr, ACC: tl.constexpr, SCORE_ACC: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # One function per branch: the compiler requires a variable assigned in several branches of a runtime
    # ``if`` to keep one type, and the branches' tiles differ in shape.
    pid = tl.program_id(0)
    if pid < feat_programs:
        _d_query_feat_block(grad_ptr, d_feat_ptr, batch, num_queries, width, pid, ACC, BLOCK, BLOCK_CHUNK)
    elif pid < feat_programs + audio_programs:
        _d_audio_block(grad_ptr, gate_ptr, d_audio_ptr, batch, num_queries, width, pid - feat_programs,
                       ACC, SCORE_ACC, BLOCK, BLOCK_CHUNK)
    else:
        _d_scores_block(grad_ptr, grad_gate_ptr, audio_ptr, active_ptr, d_scores_ptr,
                        batch, num_queries, width, num_markers, dilation, pid - feat_programs - audio_programs,
                        SOFT, ACC, SCORE_ACC, BLOCK_R, BLOCK_E)


def _representable(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded (to nearest even) to ``dtype`` on the host, so that the kernel's own conversion to it is
    exact. No tensor is made: on a GPU that would be a copy from the host, which synchronises."""
    if dtype == torch.float64:
        return float(value)
    if dtype == torch.float16:
        with np.errstate(over="ignore"):
            return float(np.float16(value))
    single = np.float32(value)
    if dtype == torch.float32 or not np.isfinite(single):
        return float(single)
    bits = int(single.view(np.uint32))  # bfloat16: the upper 16 bits of float32, rounded to nearest even
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return float(np.uint32(bits).view(np.float32))


def assign_queries_forward(scores, audio, query_feat, dilation: int, threshold: float, dormant_gate: float,
                           soft: bool):
    """Returns (queries [B,Q,D], gate [B,Q] in the scores dtype, active [B,Q] bool); inputs made contiguous."""
    scores, audio, query_feat = scores.contiguous(), audio.contiguous(), query_feat.contiguous()
    batch, num_markers = scores.shape
    num_queries, width = query_feat.shape
    if num_markers > MAX_MARKERS:
        raise ValueError(f"scores has {num_markers} markers; the Triton kernel supports at most {MAX_MARKERS}")
    queries = torch.empty(batch, num_queries, width, dtype=query_feat.dtype, device=query_feat.device)
    gate = torch.empty(batch, num_queries, dtype=scores.dtype, device=scores.device)
    active = torch.empty(batch, num_queries, dtype=torch.bool, device=scores.device)
    if batch == 0:
        return queries, gate, active
    # Blocks of at least 16 lanes: tiny sizes are masked, never a degenerate 1-wide block.
    block_q = 16
    block_d = min(256, max(16, triton.next_power_of_2(width)))
    grid = (triton.cdiv(num_queries, block_q), batch)
    launcher(_assign_queries_kernel, query_feat)[grid](
        scores, audio, query_feat, queries, gate, active.view(torch.uint8),
        num_markers, num_queries, width, dilation, float(threshold), _representable(dormant_gate, scores.dtype),
        SOFT=bool(soft), ACC=_acc(query_feat.dtype), SCORE_ACC=_acc(scores.dtype),
        BLOCK_S=max(16, triton.next_power_of_2(num_markers)), BLOCK_Q=block_q, BLOCK_D=block_d,
    )
    return queries, gate, active


def assign_queries_backward(grad_queries, grad_gate, audio, gate, active, num_markers: int, dilation: int,
                            soft: bool):
    """Returns (d_scores [B,S], d_audio [B,D], d_query_feat [Q,D])."""
    grad_queries, grad_gate, audio = grad_queries.contiguous(), grad_gate.contiguous(), audio.contiguous()
    gate, active = gate.contiguous(), active.contiguous()
    batch, num_queries, width = grad_queries.shape
    d_query_feat = torch.empty(num_queries, width, dtype=grad_queries.dtype, device=grad_queries.device)
    d_audio = torch.empty(batch, width, dtype=audio.dtype, device=audio.device)
    d_scores = torch.empty(batch, num_markers, dtype=gate.dtype, device=gate.device)
    # 64 elements a program (a [16, 64] tile a step, 8 elements a thread): at B=20, Q=100, D=256 that is 400
    # programs for d_query_feat and 80 for d_audio (256-element blocks gave 100 and 20: idle multiprocessors).
    block, block_r = 64, 16
    feat_programs = triton.cdiv(num_queries * width, block)
    audio_programs = triton.cdiv(batch * width, block)
    programs = feat_programs + audio_programs + triton.cdiv(batch * num_markers, block_r)
    if programs == 0:
        return d_scores, d_audio, d_query_feat
    launcher(_assign_queries_backward_kernel, grad_queries)[(programs,)](
        grad_queries, grad_gate, audio, gate, active.view(torch.uint8), d_query_feat, d_audio, d_scores,
        batch, num_queries, width, num_markers, dilation, feat_programs, audio_programs,
        SOFT=bool(soft), ACC=_acc(grad_queries.dtype), SCORE_ACC=_acc(gate.dtype),
        # 16x64 chunk tiles: 8 elements a thread. d_scores' [16, BLOCK_E] products: float64 spilled 8 bytes on
        # sm_90 at BLOCK_E = 64 (and 8 warps spilled on sm_80), so float64 takes 32 columns a step.
        BLOCK=block, BLOCK_CHUNK=16, BLOCK_R=block_r,
        BLOCK_E=min(32 if torch.float64 in (grad_queries.dtype, gate.dtype) else 128,
                    max(16, triton.next_power_of_2(width))),
        num_warps=4,
    )
    return d_scores, d_audio, d_query_feat
