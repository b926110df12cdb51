"""Triton kernels of the block-sparse plan of ``masked_cross_attention`` (the layout and its definition, the
PyTorch ``reference_plan``, are in ``coavs/ops/attention_plan.py``; the tensors here are equal to it, bit for
bit). Two launches, no host sync:

``_plan_rows_kernel``   grid ``(B, ceil(Q/16))``: per row and key block the 64 lane bits (key ``y·W + x`` of lane
                        ``j`` read from word ``key >> 5`` of the mask; lanes past the map's edge are 0, so bits
                        past ``N`` never count), and the row's sort key: working rows (active, a visible key) by
                        the Morton code of their centroid on a 32×32 grid (patch centres weighted by the lane
                        counts), then their index; the others after every working row.
``_plan_lists_kernel``  grid ``(B,)``: sorts the keys (``tl.sort``) into ``row_order``/``row_count``; per tile of
                        ``R`` rows the class of every block (2 full: every working row of the tile sees every valid
                        lane; 1 partial; 0 not visited) into a scratch ``[B,T,KB] int8``, then the ordered lists
                        (full, partial, rest; each ascending) of blocks per tile and of tiles per block, by prefix
                        sums. Everything a program reads back (the order, the classes) it wrote itself, after a
                        barrier.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

BLOCK_KEYS = 64
ROW_BLOCK = 16  # rows per program of the rows kernel
BLOCK_CHUNK = 64  # key blocks per step of the lists kernel
NOT_WORKING = 1 << 48  # coavs.ops.attention_plan.NOT_WORKING
_NOT_WORKING = tl.constexpr(NOT_WORKING)  # the same, for the kernels
PATCH_HEIGHTS = (8, 4, 16, 2, 1)  # coavs.ops.attention_plan.PATCH_HEIGHTS
_SIZES = ["queries", "words", "height", "width", "patches_x", "blocks", "tiles"]


def patch_shape(height: int, width: int) -> tuple[int, int]:
    """The same choice as ``coavs.ops.attention_plan.patch_shape`` (kernels/ does not import coavs)."""
    best = None
    for ph in PATCH_HEIGHTS:
        pw = BLOCK_KEYS // ph
        blocks = -(-height // ph) * -(-width // pw)
        if best is None or blocks < best[0]:
            best = (blocks, ph, pw)
    return best[1], best[2]


@triton.jit
def lane_geometry(PH: tl.constexpr):
    """``(dy, dx)`` ``[64]`` int32: each lane's offset inside a ``PH × 64/PH`` patch (four 16-lane sub-patches)."""
    PW: tl.constexpr = 64 // PH
    SUB_H: tl.constexpr = 4 if PH >= 4 else PH
    SUB_W: tl.constexpr = 16 // SUB_H
    PER_ROW: tl.constexpr = PW // SUB_W
    lane = tl.arange(0, 64)
    sub = lane // 16
    inner = lane % 16
    return (sub // PER_ROW) * SUB_H + inner // SUB_W, (sub % PER_ROW) * SUB_W + inner % SUB_W


@triton.jit
def block_keys(kb, dy, dx, height, width, patches_x, PH: tl.constexpr):
    """``(key, valid)`` of the 64 lanes of block ``kb`` (``key`` is 0 where not valid)."""
    y = (kb // patches_x) * PH + dy
    x = (kb % patches_x) * (64 // PH) + dx
    valid = (y < height) & (x < width)
    return tl.where(valid, y * width + x, 0), valid


@triton.jit
def _or(a, b):
    return a | b


@triton.jit(do_not_specialize=_SIZES)
def _plan_rows_kernel(bits_ptr, active_ptr, block_bits_ptr, sort_key_ptr, queries, words, height, width,
                      patches_x, blocks, PH: tl.constexpr, ROWS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < queries
    mask_rows = b * queries + rows
    dy, dx = lane_geometry(PH)
    lane = tl.arange(0, 64).to(tl.int64)
    seen = tl.zeros([ROWS], tl.int64)
    sum_y = tl.zeros([ROWS], tl.int64)
    sum_x = tl.zeros([ROWS], tl.int64)
    for kb in range(0, blocks):
        key, valid = block_keys(kb, dy, dx, height, width, patches_x, PH)
        word = tl.load(bits_ptr + mask_rows[:, None] * words + (key >> 5)[None, :],
                       mask=row_ok[:, None] & valid[None, :], other=0)
        bit = ((word >> (key & 31)[None, :]) & 1).to(tl.int64)
        tl.store(block_bits_ptr + mask_rows * blocks + kb, tl.sum(bit << lane[None, :], axis=1), mask=row_ok)
        count = tl.sum(bit, axis=1)
        seen += count
        sum_y += count * (2 * (kb // patches_x) * PH + PH)
        sum_x += count * (2 * (kb % patches_x) * (64 // PH) + (64 // PH))
    active = tl.load(active_ptr + mask_rows, mask=row_ok, other=0) != 0
    working = active & (seen > 0)
    safe = tl.maximum(seen, 1)
    grid_y = tl.minimum((sum_y << 5) // (2 * safe * height), 31)
    grid_x = tl.minimum((sum_x << 5) // (2 * safe * width), 31)
    code = tl.zeros([ROWS], tl.int64)
    for bit_index in tl.static_range(5):
        code |= ((grid_y >> bit_index) & 1) << (2 * bit_index + 1)
        code |= ((grid_x >> bit_index) & 1) << (2 * bit_index)
    index = rows.to(tl.int64)
    sort_key = tl.where(working, (code << 32) | index, _NOT_WORKING | index)
    tl.store(sort_key_ptr + mask_rows, sort_key, mask=row_ok)


@triton.jit
def _positions(klass, offset_full, offset_partial, offset_rest, AXIS: tl.constexpr):
    """Where each entry goes in an ordered list (full, partial, rest): running offsets plus prefix sums."""
    is_full = (klass == 2).to(tl.int32)
    is_partial = (klass == 1).to(tl.int32)
    is_rest = (klass == 0).to(tl.int32)
    return tl.where(klass == 2, offset_full + tl.cumsum(is_full, axis=AXIS) - 1,
                    tl.where(klass == 1, offset_partial + tl.cumsum(is_partial, axis=AXIS) - 1,
                             offset_rest + tl.cumsum(is_rest, axis=AXIS) - 1))


@triton.jit(do_not_specialize=_SIZES)
def _plan_lists_kernel(sort_key_ptr, block_bits_ptr, klass_ptr, row_order_ptr, row_count_ptr, tile_counts_ptr,
                       tile_blocks_ptr, block_counts_ptr, block_tiles_ptr, queries, height, width, patches_x, blocks,
                       tiles, PH: tl.constexpr, R: tl.constexpr, Q_PAD: tl.constexpr, T_PAD: tl.constexpr,
                       CHUNK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    index = tl.arange(0, Q_PAD)
    keys = tl.load(sort_key_ptr + b * queries + index, mask=index < queries, other=_NOT_WORKING * 2)
    ordered = tl.sort(keys)
    tl.store(row_order_ptr + b * queries + index, (ordered & 0xFFFFFFFF).to(tl.int32), mask=index < queries)
    count = tl.sum((ordered < _NOT_WORKING).to(tl.int32), axis=0)
    tl.store(row_count_ptr + b, count)
    tl.debug_barrier()
    dy, dx = lane_geometry(PH)
    lane = tl.arange(0, 64).to(tl.int64)
    chunk = tl.arange(0, CHUNK)
    for t in range(0, tiles):
        position = t * R + tl.arange(0, R)
        member = position < count
        rows = tl.load(row_order_ptr + b * queries + position, mask=member, other=0).to(tl.int64)
        any_member = tl.max(member.to(tl.int32), axis=0) > 0
        n_full = 0
        n_total = 0
        for first in range(0, blocks, CHUNK):
            kb = first + chunk
            kb_ok = kb < blocks
            # valid lanes of each block: [CHUNK, 64] -> [CHUNK]
            lane_y = (kb // patches_x)[:, None] * PH + dy[None, :]
            lane_x = (kb % patches_x)[:, None] * (64 // PH) + dx[None, :]
            lane_ok = (lane_y < height) & (lane_x < width)
            valid = tl.sum(lane_ok.to(tl.int64) << lane[None, :], axis=1)
            lanes = tl.load(block_bits_ptr + (b * queries + rows)[:, None] * blocks + kb[None, :],
                            mask=member[:, None] & kb_ok[None, :], other=0)
            visits = tl.max(((lanes != 0) & member[:, None]).to(tl.int32), axis=0)
            full = tl.min(((lanes == valid[None, :]) | ~member[:, None]).to(tl.int32), axis=0)
            klass = tl.where(any_member, visits + full * visits, 0)
            tl.store(klass_ptr + (b * tiles + t) * blocks + kb, klass.to(tl.int8), mask=kb_ok)
            n_full += tl.sum(((klass == 2) & kb_ok).to(tl.int32), axis=0)
            n_total += tl.sum(((klass > 0) & kb_ok).to(tl.int32), axis=0)
        tl.store(tile_counts_ptr + (b * tiles + t) * 2, n_full)
        tl.store(tile_counts_ptr + (b * tiles + t) * 2 + 1, n_total)
        tl.debug_barrier()
        seen_full = 0
        seen_partial = 0
        seen_rest = 0
        for first in range(0, blocks, CHUNK):
            kb = first + chunk
            kb_ok = kb < blocks
            klass = tl.load(klass_ptr + (b * tiles + t) * blocks + kb, mask=kb_ok, other=-1).to(tl.int32)
            where = _positions(klass, seen_full, n_full + seen_partial, n_total + seen_rest, 0)
            tl.store(tile_blocks_ptr + (b * tiles + t) * blocks + where, kb.to(tl.int32), mask=kb_ok)
            seen_full += tl.sum((klass == 2).to(tl.int32), axis=0)
            seen_partial += tl.sum((klass == 1).to(tl.int32), axis=0)
            seen_rest += tl.sum((klass == 0).to(tl.int32), axis=0)
    tl.debug_barrier()
    tile = tl.arange(0, T_PAD)
    tile_ok = tile < tiles
    for first in range(0, blocks, CHUNK):
        kb = first + chunk
        kb_ok = kb < blocks
        both = tile_ok[:, None] & kb_ok[None, :]
        klass = tl.load(klass_ptr + (b * tiles + tile[:, None]) * blocks + kb[None, :], mask=both,
                        other=-1).to(tl.int32)
        n_full = tl.sum((klass == 2).to(tl.int32), axis=0)
        n_total = tl.sum((klass > 0).to(tl.int32), axis=0)
        where = _positions(klass, 0, n_full[None, :], n_total[None, :], 0)
        tl.store(block_tiles_ptr + (b * blocks + kb[None, :]) * tiles + where, (tile[:, None] + 0 * kb[None, :]),
                 mask=both)
        tl.store(block_counts_ptr + (b * blocks + kb) * 2, n_full, mask=kb_ok)
        tl.store(block_counts_ptr + (b * blocks + kb) * 2 + 1, n_total, mask=kb_ok)


def attention_plan(bits: torch.Tensor, active: torch.Tensor, height: int, width: int, rows_per_tile: int):
    """The plan's seven tensors (``coavs.ops.attention_plan.AttentionPlan``) in two launches."""
    batch, queries = active.shape
    ph, pw = patch_shape(height, width)
    patches_x = -(-width // pw)
    blocks = -(-height // ph) * patches_x
    tiles = -(-queries // rows_per_tile)
    device = bits.device
    i32 = dict(dtype=torch.int32, device=device)
    block_bits = torch.empty(batch, queries, blocks, dtype=torch.int64, device=device)
    row_order = torch.empty(batch, queries, **i32)
    tile_counts = torch.empty(batch, tiles, 2, **i32)
    tile_blocks = torch.empty(batch, tiles, blocks, **i32)
    block_counts = torch.empty(batch, blocks, 2, **i32)
    block_tiles = torch.empty(batch, blocks, tiles, **i32)
    if batch == 0 or queries == 0:
        block_counts.zero_()
        return (block_bits, row_order, torch.zeros(batch, **i32), tile_counts, tile_blocks, block_counts,
                block_tiles)
    row_count = torch.empty(batch, **i32)
    sort_key = torch.empty(batch, queries, dtype=torch.int64, device=device)
    klass = torch.empty(batch, tiles, blocks, dtype=torch.int8, device=device)
    bits = bits.contiguous()
    launcher(_plan_rows_kernel, bits, block_bits)[(batch, triton.cdiv(queries, ROW_BLOCK))](
        bits, active.contiguous().view(torch.uint8), block_bits, sort_key, queries, bits.shape[2], height, width,
        patches_x, blocks, PH=ph, ROWS=ROW_BLOCK)
    launcher(_plan_lists_kernel, sort_key, block_bits)[(batch,)](
        sort_key, block_bits, klass, row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles,
        queries, height, width, patches_x, blocks, tiles, PH=ph, R=rows_per_tile,
        Q_PAD=triton.next_power_of_2(queries), T_PAD=triton.next_power_of_2(tiles), CHUNK=BLOCK_CHUNK)
    return block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles
