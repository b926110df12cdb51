"""Triton kernels of ``masked_cross_attention`` on the block-sparse plan (``coavs/ops/attention_plan.py``; built
by ``kernels/masked_cross_attention_plan.py``): one forward launch, two backward launches, no host sync.

A key block is a 64-key spatial patch; lane ``j`` of block ``kb`` is key ``y·W + x`` (``lane_geometry``), read
by gathered loads (a lane past the map's edge is never read). A tile is ``R = 16`` rows of ``row_order``. Every
product puts the 64 keys of a block on the MMA's M side, so the tensor-core shapes are ``64 × R`` whatever the
number of rows (``wgmma`` on sm_90 for float16/bfloat16 needs M = 64), and the tiles stay small enough for the
plan to skip most blocks. With ``s = scale·q·kᵀ`` over the visible keys, ``P = softmax(s)``, ``o = P·v``,
``lse = log Σ e^s`` (base-2 exponentials, ``log2(e)`` folded into the scale):

Forward  ``_forward_kernel``, grid ``(B·T, head groups)``: per head of the group, the tile's visited blocks
         from its list (full ones first: no bit test, then partial ones with the rows' 64-bit lanes),
         ``sᵀ = k·qᵀ`` ``[64, R]``, online softmax over the blocks, ``oᵀ += vᵀ·Pᵀ``. Rows of the tile past
         ``row_count`` (they do no work) get 0, so every row is written and nothing is zero-filled first.
Backward ``_backward_dq_kernel``, grid ``(B·T, head groups)``: ``Δ = rowsum(dO∘o)`` (stored for the next pass;
         NaN marks a poisoned row), ``P`` from ``lse``, ``dSᵀ = Pᵀ∘(v·dOᵀ − Δ)``, ``dqᵀ += kᵀ·dSᵀ``; then
         ``_backward_dkv_kernel``, grid ``(B·KB, head groups)``: per block the tiles that visit it (the plan's
         transposed list), ``dv += Pᵀ·dO``, ``dk += dSᵀ·q`` (FA2's split: no atomics, every key written once).
Non-finite inputs follow ``coavs.ops.reference.masked_attention_forward``/``_backward``: q, k, v tiles are read
with non-finite elements as 0, and the rows that see one (or whose visible scores or output are non-finite, or
in the backward whose dO or o is) are NaN in out, lse and dq, and NaN-poison dk, dv of the keys they see.
Head groups: all heads in one program (the plan is shared by the heads) unless ``B·T`` programs would leave the
GPU idle (fewer than twice its SMs): then the heads are split over programs, which needs no combine. The key
range is never split: with head groups the grid reaches 2×SMs except for one-frame calls.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

from .masked_cross_attention_plan import lane_geometry, patch_shape

BLOCK_KEYS = 64
LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)
_SIZES = ["queries", "heads", "head_dim", "blocks", "tiles", "height", "width", "patches_x"]


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``a·b`` accumulated in float32 (float64 for float64); ``UPCAST`` multiplies in float32 (the interpreter's
    bfloat16 dot is wrong in triton 3.6; the operands are already rounded to bfloat16, so the product is the
    same)."""
    if UPCAST:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        product = tl.dot(a, b, input_precision=PRECISION)
    return product


@triton.jit
def _finite(x):
    return (x == x) & (tl.abs(x) < float("inf"))


@triton.jit
def _block(kb, dy, dx, height, width, patches_x, PH: tl.constexpr):
    """``(key, valid)`` ``[64]`` of block ``kb`` (``key`` 0 where not valid)."""
    y = (kb // patches_x) * PH + dy
    x = (kb % patches_x) * (64 // PH) + dx
    valid = (y < height) & (x < width)
    return tl.where(valid, y * width + x, 0).to(tl.int64), valid


@triton.jit
def _load_keys(base, key, valid, stride_n, stride_d, dims, dim_ok):
    """A ``[64, D]`` tile of keys (or values) with non-finite elements as 0, and which lanes had one."""
    tile = tl.load(base + key[:, None] * stride_n + dims[None, :] * stride_d, mask=valid[:, None] & dim_ok[None, :],
                   other=0.0)
    ok = _finite(tile)
    bad = tl.max((~ok).to(tl.int32), axis=1) > 0
    return tl.where(ok, tile, 0.0), bad


@triton.jit
def _lanes_seen(lanes, valid):
    """``[64, R]``: lane ``j`` of row ``r``'s 64-bit mask, on valid lanes."""
    lane = tl.arange(0, 64).to(tl.int64)
    return (((lanes[None, :] >> lane[:, None]) & 1) != 0) & valid[:, None]


@triton.jit
def _tile_rows(row_order_ptr, row_count_ptr, b, t, queries, R: tl.constexpr):
    """Rows of tile ``t`` (clamped into range), which are in range, and which do work (position < count)."""
    position = t * R + tl.arange(0, R)
    count = tl.load(row_count_ptr + b)
    rows = tl.load(row_order_ptr + b * queries + position, mask=position < queries, other=0).to(tl.int64)
    in_range = (position < queries) & (rows >= 0) & (rows < queries)
    rows = tl.where(in_range, rows, 0)
    return rows, in_range, in_range & (position < count)


@triton.jit
def _list_bounds(counts_ptr, limit):
    full = tl.load(counts_ptr)
    total = tl.minimum(tl.maximum(tl.load(counts_ptr + 1), 0), limit)
    return tl.minimum(tl.maximum(full, 0), total), total


@triton.jit
def _softmax_step(s_t, seen, bad, v, m, l, acc_t, poisoned, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    ok = seen & _finite(s_t)
    poisoned |= tl.max((seen & (~_finite(s_t) | bad[:, None])).to(tl.int32), axis=0) > 0
    s_t = tl.where(ok, s_t, float("-inf"))
    new_m = tl.maximum(m, tl.max(s_t, axis=0))
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    p_t = tl.exp2(s_t - shift[None, :])
    correction = tl.exp2(m - shift)
    l = l * correction + tl.sum(p_t, axis=0)
    acc_t = acc_t * correction[None, :] + _dot(tl.trans(v), p_t.to(v.dtype), PRECISION, UPCAST)
    return new_m, l, acc_t, poisoned


@triton.jit(do_not_specialize=_SIZES)
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, block_bits_ptr, row_order_ptr, row_count_ptr, tile_counts_ptr,
    tile_blocks_ptr, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    queries, heads, head_dim, blocks, tiles, height, width, patches_x, scale_log2,
    PH: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, HG: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    b = (tl.program_id(0) // tiles).to(tl.int64)
    t = tl.program_id(0) % tiles
    rows, in_range, member = _tile_rows(row_order_ptr, row_count_ptr, b, t, queries, R)
    n_full, n_total = _list_bounds(tile_counts_ptr + (b * tiles + t) * 2, blocks)
    list_base = tile_blocks_ptr + (b * tiles + t) * blocks
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    dy, dx = lane_geometry(PH)
    for hh in range(0, HG):
        head = tl.program_id(1) * HG + hh
        if head < heads:
            q = tl.load(q_ptr + b * sqb + head * sqh + rows[:, None] * sqm + dims[None, :] * sqd,
                        mask=member[:, None] & dim_ok[None, :], other=0.0)
            poisoned = tl.max((~_finite(q)).to(tl.int32), axis=1) > 0
            q = tl.where(_finite(q), q, 0.0)
            k_base = k_ptr + b * skb + head * skh
            v_base = v_ptr + b * svb + head * svh
            m = tl.full([R], float("-inf"), ACC)
            l = tl.zeros([R], ACC)
            acc_t = tl.zeros([BLOCK_D, R], ACC)
            for i in range(0, n_full):  # every working row sees every valid lane
                kb = tl.minimum(tl.maximum(tl.load(list_base + i), 0), blocks - 1)
                key, valid = _block(kb, dy, dx, height, width, patches_x, PH)
                k, k_bad = _load_keys(k_base, key, valid, skn, skd, dims, dim_ok)
                v, v_bad = _load_keys(v_base, key, valid, svn, svd, dims, dim_ok)
                s_t = (_dot(k, tl.trans(q), PRECISION, UPCAST) * scale_log2).to(ACC)
                seen = valid[:, None] & member[None, :]
                m, l, acc_t, poisoned = _softmax_step(s_t, seen, k_bad | v_bad, v, m, l, acc_t, poisoned, PRECISION,
                                                      UPCAST)
            for i in range(n_full, n_total):
                kb = tl.minimum(tl.maximum(tl.load(list_base + i), 0), blocks - 1)
                key, valid = _block(kb, dy, dx, height, width, patches_x, PH)
                lanes = tl.load(block_bits_ptr + (b * queries + rows) * blocks + kb, mask=member, other=0)
                k, k_bad = _load_keys(k_base, key, valid, skn, skd, dims, dim_ok)
                v, v_bad = _load_keys(v_base, key, valid, svn, svd, dims, dim_ok)
                s_t = (_dot(k, tl.trans(q), PRECISION, UPCAST) * scale_log2).to(ACC)
                seen = _lanes_seen(lanes, valid)
                m, l, acc_t, poisoned = _softmax_step(s_t, seen, k_bad | v_bad, v, m, l, acc_t, poisoned, PRECISION,
                                                      UPCAST)
            safe = tl.where(l > 0, l, 1.0)
            out_t = acc_t / safe[None, :]
            ok = member & ~poisoned & (l > 0) & (tl.min(_finite(out_t).to(tl.int32), axis=0) > 0)
            out_t = tl.where(ok[None, :], out_t, float("nan"))
            out_t = tl.where(member[None, :], out_t, 0.0)
            lse = tl.where(ok, (m + tl.log2(safe)) * _LN2, float("nan"))
            lse = tl.where(member, lse, 0.0)
            row = (b * heads + head) * queries + rows
            tl.store(out_ptr + row[:, None] * head_dim + dims[None, :], tl.trans(out_t).to(out_ptr.dtype.element_ty),
                     mask=in_range[:, None] & dim_ok[None, :])
            tl.store(lse_ptr + row, lse, mask=in_range)


@triton.jit
def _grad_step(k, v, q, d_out, lse2, delta, seen, scale_log2, ACC: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    """``(Pᵀ, dSᵀ)`` ``[64, R]`` of one block (0 where not ``seen``)."""
    s_t = (_dot(k, tl.trans(q), PRECISION, UPCAST) * scale_log2).to(ACC)
    p_t = tl.where(seen, tl.exp2(s_t - lse2[None, :]), 0.0)
    dp_t = _dot(v, tl.trans(d_out), PRECISION, UPCAST).to(ACC)
    return p_t, tl.where(seen, p_t * (dp_t - delta[None, :]), 0.0)


@triton.jit
def _row_grad_inputs(q_ptr, do_ptr, out_ptr, lse_ptr, b, head, rows, good_rows, dims, dim_ok, sqb, sqh, sqm, sqd,
                     sgb, sgh, sgm, sgd, queries, heads, head_dim, ACC: tl.constexpr):
    """q, dO (non-finite as 0), lse·log2(e) of the rows, and ``Δ = rowsum(dO∘o)`` (NaN: poisoned)."""
    tile_ok = good_rows[:, None] & dim_ok[None, :]
    q = tl.load(q_ptr + b * sqb + head * sqh + rows[:, None] * sqm + dims[None, :] * sqd, mask=tile_ok, other=0.0)
    d_out = tl.load(do_ptr + b * sgb + head * sgh + rows[:, None] * sgm + dims[None, :] * sgd, mask=tile_ok,
                    other=0.0)
    row = (b * heads + head) * queries + rows
    out = tl.load(out_ptr + row[:, None] * head_dim + dims[None, :], mask=tile_ok, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + row, mask=good_rows, other=0.0)
    ok = _finite(lse) & (tl.min((_finite(d_out) & _finite(out)).to(tl.int32), axis=1) > 0)
    delta = tl.sum(tl.where(_finite(d_out) & _finite(out), d_out.to(ACC) * out, 0.0), axis=1)
    delta = tl.where(ok, delta, float("nan"))
    return (tl.where(_finite(q), q, 0.0), tl.where(_finite(d_out), d_out, 0.0),
            tl.where(ok, lse, 0.0) * _LOG2E, delta)


@triton.jit(do_not_specialize=_SIZES)
def _backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, out_ptr, lse_ptr, delta_ptr, dq_ptr, block_bits_ptr, row_order_ptr, row_count_ptr,
    tile_counts_ptr, tile_blocks_ptr, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sgb, sgh, sgm, sgd, queries, heads, head_dim, blocks, tiles, height, width, patches_x, scale, scale_log2,
    PH: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, HG: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    b = (tl.program_id(0) // tiles).to(tl.int64)
    t = tl.program_id(0) % tiles
    rows, in_range, member = _tile_rows(row_order_ptr, row_count_ptr, b, t, queries, R)
    n_full, n_total = _list_bounds(tile_counts_ptr + (b * tiles + t) * 2, blocks)
    list_base = tile_blocks_ptr + (b * tiles + t) * blocks
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    dy, dx = lane_geometry(PH)
    for hh in range(0, HG):
        head = tl.program_id(1) * HG + hh
        if head < heads:
            q, d_out, lse2, delta = _row_grad_inputs(q_ptr, do_ptr, out_ptr, lse_ptr, b, head, rows, member, dims,
                                                     dim_ok, sqb, sqh, sqm, sqd, sgb, sgh, sgm, sgd, queries, heads,
                                                     head_dim, ACC)
            row = (b * heads + head) * queries + rows
            tl.store(delta_ptr + row, delta, mask=member)
            good = member & _finite(delta)
            delta = tl.where(good, delta, 0.0)
            k_base = k_ptr + b * skb + head * skh
            v_base = v_ptr + b * svb + head * svh
            if SPLIT:
                _dq_halves(q_ptr, do_ptr, dq_ptr, block_bits_ptr, k_base, v_base, list_base, b, head, rows, in_range,
                           member, good, lse2, delta, n_full, n_total, dy, dx, sqb, sqh, sqm, sqd, skn, skd, svn, svd,
                           sgb, sgh, sgm, sgd, queries, heads, head_dim, blocks, height, width, patches_x, scale,
                           scale_log2, PH, R, BLOCK_D // 2, ACC, PRECISION, UPCAST)
            else:
                dq = tl.zeros([R, BLOCK_D], ACC)
                for i in range(0, n_total):
                    kb = tl.minimum(tl.maximum(tl.load(list_base + i), 0), blocks - 1)
                    key, valid = _block(kb, dy, dx, height, width, patches_x, PH)
                    lanes = tl.load(block_bits_ptr + (b * queries + rows) * blocks + kb, mask=good & (i >= n_full),
                                    other=-1)
                    seen = _lanes_seen(lanes, valid) & good[None, :]
                    # v first and done with before k: fewer tiles live at once
                    v, v_bad = _load_keys(v_base, key, valid, svn, svd, dims, dim_ok)
                    dp_t = _dot(v, tl.trans(d_out), PRECISION, UPCAST).to(ACC)
                    k, k_bad = _load_keys(k_base, key, valid, skn, skd, dims, dim_ok)
                    s_t = (_dot(k, tl.trans(q), PRECISION, UPCAST) * scale_log2).to(ACC)
                    p_t = tl.where(seen, tl.exp2(s_t - lse2[None, :]), 0.0)
                    ds_t = tl.where(seen, p_t * (dp_t - delta[None, :]), 0.0)
                    dq += _dot(tl.trans(ds_t.to(k.dtype)), k, PRECISION, UPCAST).to(ACC)
                _store_dq(dq_ptr, dq, (b * heads + head) * queries + rows, dims, dim_ok, good, member, in_range,
                          head_dim, scale)


@triton.jit
def _store_dq(dq_ptr, dq, row, dims, dim_ok, good, member, in_range, head_dim, scale):
    dq = tl.where(good[:, None], dq * scale, float("nan"))
    dq = tl.where(member[:, None], dq, 0.0)
    tl.store(dq_ptr + row[:, None] * head_dim + dims[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=in_range[:, None] & dim_ok[None, :])


@triton.jit
def _dq_halves(q_ptr, do_ptr, dq_ptr, block_bits_ptr, k_base, v_base, list_base, b, head, rows, in_range, member,
               good, lse2, delta, n_full, n_total, dy, dx, sqb, sqh, sqm, sqd, skn, skd, svn, svd, sgb, sgh, sgm, sgd,
               queries, heads, head_dim, blocks, height, width, patches_x, scale, scale_log2, PH: tl.constexpr,
               R: tl.constexpr, HALF: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    """The dq pass's loop with the head dimension in two halves (float32 at dh > 32: IEEE products hold each
    operand whole per thread, and the whole-width tiles spilled registers on sm_90)."""
    lo = tl.arange(0, HALF)
    hi = HALF + tl.arange(0, HALF)
    lo_ok = lo < head_dim
    hi_ok = hi < head_dim
    q_rows = q_ptr + b * sqb + head * sqh + rows[:, None] * sqm
    g_rows = do_ptr + b * sgb + head * sgh + rows[:, None] * sgm
    q_lo = tl.load(q_rows + lo[None, :] * sqd, mask=good[:, None] & lo_ok[None, :], other=0.0)
    q_hi = tl.load(q_rows + hi[None, :] * sqd, mask=good[:, None] & hi_ok[None, :], other=0.0)
    g_lo = tl.load(g_rows + lo[None, :] * sgd, mask=good[:, None] & lo_ok[None, :], other=0.0)
    g_hi = tl.load(g_rows + hi[None, :] * sgd, mask=good[:, None] & hi_ok[None, :], other=0.0)
    dq_lo = tl.zeros([R, HALF], ACC)
    dq_hi = tl.zeros([R, HALF], ACC)
    for i in range(0, n_total):
        kb = tl.minimum(tl.maximum(tl.load(list_base + i), 0), blocks - 1)
        key, valid = _block(kb, dy, dx, height, width, patches_x, PH)
        lanes = tl.load(block_bits_ptr + (b * queries + rows) * blocks + kb, mask=good & (i >= n_full), other=-1)
        seen = _lanes_seen(lanes, valid) & good[None, :]
        v_lo, v_bad = _load_keys(v_base, key, valid, svn, svd, lo, lo_ok)
        dp_t = _dot(v_lo, tl.trans(g_lo), PRECISION, UPCAST).to(ACC)
        v_hi, v_bad = _load_keys(v_base, key, valid, svn, svd, hi, hi_ok)
        dp_t += _dot(v_hi, tl.trans(g_hi), PRECISION, UPCAST).to(ACC)
        k_lo, k_bad = _load_keys(k_base, key, valid, skn, skd, lo, lo_ok)
        k_hi, k_bad = _load_keys(k_base, key, valid, skn, skd, hi, hi_ok)
        s_t = _dot(k_lo, tl.trans(q_lo), PRECISION, UPCAST).to(ACC)
        s_t = (s_t + _dot(k_hi, tl.trans(q_hi), PRECISION, UPCAST).to(ACC)) * scale_log2
        p_t = tl.where(seen, tl.exp2(s_t - lse2[None, :]), 0.0)
        ds = tl.trans(tl.where(seen, p_t * (dp_t - delta[None, :]), 0.0)).to(k_lo.dtype)
        dq_lo += _dot(ds, k_lo, PRECISION, UPCAST).to(ACC)
        dq_hi += _dot(ds, k_hi, PRECISION, UPCAST).to(ACC)
    row = (b * heads + head) * queries + rows
    _store_dq(dq_ptr, dq_lo, row, lo, lo_ok, good, member, in_range, head_dim, scale)
    _store_dq(dq_ptr, dq_hi, row, hi, hi_ok, good, member, in_range, head_dim, scale)


@triton.jit(do_not_specialize=_SIZES)
def _backward_dkv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, block_bits_ptr, row_order_ptr, row_count_ptr,
    block_counts_ptr, block_tiles_ptr, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sgb, sgh, sgm, sgd, queries, heads, head_dim, blocks, tiles, height, width, patches_x, scale, scale_log2,
    PH: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, HG: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    b = (tl.program_id(0) // blocks).to(tl.int64)
    kb = tl.program_id(0) % blocks
    n_full, n_total = _list_bounds(block_counts_ptr + (b * blocks + kb) * 2, tiles)
    list_base = block_tiles_ptr + (b * blocks + kb) * tiles
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    dy, dx = lane_geometry(PH)
    key, valid = _block(kb, dy, dx, height, width, patches_x, PH)
    for hh in range(0, HG):
        head = tl.program_id(1) * HG + hh
        if head < heads:
            k, k_bad = _load_keys(k_ptr + b * skb + head * skh, key, valid, skn, skd, dims, dim_ok)
            v, v_bad = _load_keys(v_ptr + b * svb + head * svh, key, valid, svn, svd, dims, dim_ok)
            dk = tl.zeros([64, BLOCK_D], ACC)
            dv = tl.zeros([64, BLOCK_D], ACC)
            key_poisoned = tl.zeros([64], tl.int32)
            for i in range(0, n_total):
                t = tl.minimum(tl.maximum(tl.load(list_base + i), 0), tiles - 1)
                rows, in_range, member = _tile_rows(row_order_ptr, row_count_ptr, b, t, queries, R)
                row = (b * heads + head) * queries + rows
                delta = tl.load(delta_ptr + row, mask=member, other=0.0)
                bad = member & ~_finite(delta)
                good = member & ~bad
                lanes = tl.load(block_bits_ptr + (b * queries + rows) * blocks + kb, mask=member & (i >= n_full),
                                other=-1)
                seen = _lanes_seen(lanes, valid) & member[None, :]
                key_poisoned |= tl.max((seen & bad[None, :]).to(tl.int32), axis=1)
                seen = seen & good[None, :]
                tile_ok = good[:, None] & dim_ok[None, :]
                q = tl.load(q_ptr + b * sqb + head * sqh + rows[:, None] * sqm + dims[None, :] * sqd, mask=tile_ok,
                            other=0.0)
                d_out = tl.load(do_ptr + b * sgb + head * sgh + rows[:, None] * sgm + dims[None, :] * sgd,
                                mask=tile_ok, other=0.0)
                lse2 = tl.load(lse_ptr + row, mask=good, other=0.0) * _LOG2E
                q = tl.where(_finite(q), q, 0.0)
                d_out = tl.where(_finite(d_out), d_out, 0.0)
                p_t, ds_t = _grad_step(k, v, q, d_out, lse2, tl.where(good, delta, 0.0), seen, scale_log2, ACC,
                                       PRECISION, UPCAST)
                dv += _dot(p_t.to(d_out.dtype), d_out, PRECISION, UPCAST).to(ACC)
                dk += _dot(ds_t.to(q.dtype), q, PRECISION, UPCAST).to(ACC)
            poisoned = (key_poisoned > 0)[:, None]
            offsets = ((b * heads + head) * (height * width) + key[:, None]) * head_dim + dims[None, :]
            write = valid[:, None] & dim_ok[None, :]
            tl.store(dk_ptr + offsets, tl.where(poisoned, float("nan"), dk * scale).to(dk_ptr.dtype.element_ty),
                     mask=write)
            tl.store(dv_ptr + offsets, tl.where(poisoned, float("nan"), dv).to(dv_ptr.dtype.element_ty), mask=write)


# ----------------------------------------------------------------------------------------------- launching
def _interpreting() -> bool:
    """Triton runs under its CPU interpreter (as ``coavs.ops._dispatch`` decides; kernels/ does not import coavs)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(pairs):
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs]


CONFIGS = _configs([(4, 1), (4, 2), (4, 3), (8, 2), (8, 3)])
KEY = ["BLOCK_D", "HG", "PH"]  # with the tensors' dtypes: a new B, Q or N never re-benchmarks
_TUNERS: dict = {}
BEST: dict = {}  # (kernel, key) -> the autotuned config, for launches during CUDA-graph capture


def default_config(name: str, dtype: torch.dtype, block_d: int) -> dict:
    """The launch options when not autotuning, chosen so that no default launch spills on sm_80/sm_90
    (benchmarks/compile_check.py): float16/bfloat16 products run on tensor cores with 4 warps (8 from a head
    dimension of 64 up, and there the dk/dv pass unpipelined on sm_80, where it spilled 8 B; below 64 the bfloat16
    dq pass on sm_80 on 8 warps unpipelined: 4 warps spilled 8-56 B there, pipelined or not); float32 ones are IEEE FMAs whose operands each thread
    holds whole: 8 warps, no software pipelining (its buffers spilled up to 60 B at dh=64), and ``maxnreg=255``
    (the hardware limit) so that ptxas does not cap them lower."""
    if dtype in (torch.float16, torch.bfloat16):
        if block_d < 64:
            if name == "backward_dq" and dtype == torch.bfloat16 and _arch() < 90:
                return {"num_warps": 8, "num_stages": 1}
            return {"num_warps": 4, "num_stages": 2}
        return {"num_warps": 8, "num_stages": 1 if name == "backward_dkv" and _arch() < 90 else 2}
    return {"num_warps": 8, "num_stages": 1, "maxnreg": 255}


class SharedMemoryPrune:
    """``early_config_prune`` (and the check of the default config): drops the configs whose shared memory would
    exceed one block's limit on this device, raising a clear error when none fits. Upper bound in bytes, fitted
    to and checked against every compiled config by ``benchmarks/compile_check.py`` (it hardly depends on the
    stages: the pipelined tiles are small next to the layout conversions of the ``[64, R]`` and ``[64, D]`` tiles):
    ``4·D·(64 + R)·element size + 1024·num_stages + 4096``."""

    def __init__(self, kernel: str):
        self.kernel = kernel

    @staticmethod
    def estimate(config, nargs: dict, kwargs: dict) -> int:
        element = nargs["q_ptr"].element_size()
        return 4 * kwargs["BLOCK_D"] * (64 + kwargs["R"]) * element + 1024 * max(1, config.num_stages) + 4096

    def __call__(self, configs, nargs, **kwargs):
        device = nargs["q_ptr"].device
        limit = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
        kept = [c for c in configs if self.estimate(c, nargs, kwargs) <= limit]
        if not kept:
            raise ValueError(f"masked_cross_attention: the {self.kernel} kernel needs more than this GPU's {limit} "
                             f"bytes of shared memory at head dim {nargs['head_dim']} in {nargs['q_ptr'].dtype}; "
                             "use float16/bfloat16 or a smaller head dim")
        return kept


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _launch(name, kernel, grid, args, constants):
    """Under the interpreter: as is. On a GPU: autotuned over ``CONFIGS`` once per ``KEY`` (and dtypes), never
    while a CUDA graph is being captured or the call is being traced by ``torch.compile`` (then the tuned config
    if there is one, else :func:`default_config`, launched through ``kernels/_launch.launcher`` so that the graph
    holds the kernel); ``COAVS_TRITON_AUTOTUNE=0``: :func:`default_config` always."""
    if _interpreting():
        kernel[grid](*args, **constants)
        return
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    run = launcher(kernel, *tensors)
    traced = run is not kernel
    key = (name,) + tuple(constants[k] for k in KEY) + (str(args[0].dtype),)
    if os.environ.get("COAVS_TRITON_AUTOTUNE", "1") == "0" or traced or _capturing():
        config = BEST.get(key) or default_config(name, args[0].dtype, constants["BLOCK_D"])
        if not traced:  # the device's shared memory is known at run time only
            SharedMemoryPrune(name)([triton.Config({}, num_warps=config["num_warps"],
                                                   num_stages=config["num_stages"])],
                                    {"q_ptr": args[0], "head_dim": args[0].shape[3]}, **constants)
        run[grid](*args, **constants, **config)
        return
    if name not in _TUNERS:
        _TUNERS[name] = triton.autotune(CONFIGS, key=KEY,
                                        prune_configs_by={"early_config_prune": SharedMemoryPrune(name)})(kernel)
    tuner = _TUNERS[name]
    tuner[grid](*args, **constants)
    best = getattr(tuner, "best_config", None)
    if best is not None:
        BEST[key] = {"num_warps": best.num_warps, "num_stages": best.num_stages}


def _multiprocessors(device) -> int:
    if _interpreting() or device.type == "cpu":
        return 1
    try:
        index = device.index if device.index is not None else 0
        return int(triton.runtime.driver.active.utils.get_device_properties(index)["multiprocessor_count"])
    except Exception:  # noqa: BLE001 - a driver without the property: assume an H100
        return 132


def _arch() -> int:
    """The compile target's architecture (90 for sm_90); 0 under the interpreter."""
    if _interpreting():
        return 0
    try:
        return int(triton.runtime.driver.active.get_current_target().arch)
    except Exception:  # noqa: BLE001 - no driver (traced on fake tensors without a GPU): assume an H100
        return 90


def head_groups(programs: int, heads: int, multiprocessors: int) -> tuple[int, int]:
    """``(groups, heads per program)``: all heads in one program unless ``programs`` is under twice the SMs."""
    wanted = max(1, min(heads, -(-2 * multiprocessors // max(1, programs))))
    per_program = -(-heads // wanted)
    return -(-heads // per_program), per_program


def _constants(q, height, width, rows_per_tile):
    ph, _ = patch_shape(height, width)
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    upcast = q.dtype == torch.bfloat16 and _interpreting()
    return dict(PH=ph, R=rows_per_tile, BLOCK_D=max(16, triton.next_power_of_2(q.shape[3])), ACC=acc,
                PRECISION=precision, UPCAST=upcast)


def _geometry(height, width):
    ph, pw = patch_shape(height, width)
    patches_x = -(-width // pw)
    return -(-height // ph) * patches_x, patches_x


def masked_cross_attention_forward(q, k, v, block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts,
                                   block_tiles, scale, height, width, rows_per_tile):
    """``(out [B,h,Q,dh], lse [B,h,Q])``, contiguous; one launch. Any strides of q, k, v."""
    batch, heads, queries, head_dim = q.shape
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=acc_dtype, device=q.device)
    tiles = tile_counts.shape[1]
    if out.numel() == 0 or tiles == 0:
        return out.zero_(), lse.zero_()
    blocks, patches_x = _geometry(height, width)
    groups, per_program = head_groups(batch * tiles, heads, _multiprocessors(q.device))
    constants = dict(_constants(q, height, width, rows_per_tile), HG=per_program)
    args = (q, k, v, out, lse, block_bits, row_order, row_count, tile_counts, tile_blocks, *q.stride(), *k.stride(),
            *v.stride(), queries, heads, head_dim, blocks, tiles, height, width, patches_x, scale * LOG2E)
    _launch("forward", _forward_kernel, (batch * tiles, groups), args, constants)
    return out, lse


def masked_cross_attention_backward(grad_out, q, k, v, out, lse, block_bits, row_order, row_count, tile_counts,
                                    tile_blocks, block_counts, block_tiles, scale, height, width, rows_per_tile):
    """``(dq, dk, dv)``, contiguous, in the input dtypes; two launches. ``out`` and ``lse`` are the forward's."""
    batch, heads, queries, head_dim = q.shape
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    tiles = tile_counts.shape[1]
    if q.numel() == 0 or tiles == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    out, lse = out.contiguous(), lse.contiguous()
    blocks, patches_x = _geometry(height, width)
    multiprocessors = _multiprocessors(q.device)
    delta = torch.empty(lse.shape, dtype=lse.dtype, device=q.device)
    common = (block_bits, row_order, row_count)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    sizes = (queries, heads, head_dim, blocks, tiles, height, width, patches_x, scale, scale * LOG2E)
    groups, per_program = head_groups(batch * tiles, heads, multiprocessors)
    constants = dict(_constants(q, height, width, rows_per_tile), HG=per_program)
    # float32 from dh=64 on sm_90: the dq loop in two halves of the head dimension (whole, it spilled 16-28 B; on
    # sm_80 the halves spill and the whole does not)
    split = q.dtype == torch.float32 and constants["BLOCK_D"] >= 64 and _arch() >= 90
    _launch("backward_dq", _backward_dq_kernel, (batch * tiles, groups),
            (q, k, v, grad_out, out, lse, delta, dq, *common, tile_counts, tile_blocks, *strides, *sizes),
            dict(constants, SPLIT=split))
    groups, per_program = head_groups(batch * blocks, heads, multiprocessors)
    constants = dict(constants, HG=per_program)  # SPLIT is the dq pass's only
    _launch("backward_dkv", _backward_dkv_kernel, (batch * blocks, groups),
            (q, k, v, grad_out, lse, delta, dk, dv, *common, block_counts, block_tiles, *strides, *sizes), constants)
    return dq, dk, dv
