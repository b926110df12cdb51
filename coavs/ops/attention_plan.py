"""The block-sparse plan of ``masked_cross_attention``: which key blocks each tile of rows visits, built once per
call from the mask and ``active`` and shared by the forward and the backward (as FlexAttention's ``BlockMask``).

Key blocks are spatial patches. The ``N = H·W`` keys of an ``(H, W)`` map are cut into patches of
``ph × pw = 64`` keys (:func:`patch_shape`), numbered row-major over the patch grid; the 64 lanes of a patch
are four 16-lane sub-patches of ``min(4, ph) × 16/min(4, ph)`` keys, row-major in the patch. A mask blob then
touches few blocks (a row-major block of 64 keys is a thin strip that a blob crosses many times), and the
16-lane sub-patches are what the CPU kernel skips inside a block. Lanes past the map's edge are invalid.
A ``(1, N)`` map (a mask built without a size) gives 1×64 patches: the row-major blocks of 64 keys.

The plan, for ``B`` samples, ``Q`` queries, ``KB`` blocks, ``R = ROWS_PER_TILE`` and ``T = ceil(Q / R)``:

  block_bits   [B,Q,KB] int64  lane ``j`` of block ``kb`` set iff that key is valid and visible to the row
                               (read from the mask's bits of keys ``< N`` only: bits past ``N`` never count)
  row_order    [B,Q]    int32  a permutation of the rows: first the ``row_count[b]`` *working* rows (active,
                               with a visible key) ordered by the centroid of their mask (a Morton code on a
                               32×32 grid, then the row index), then the other rows in ascending order
  row_count    [B]      int32
  tile_counts  [B,T,2]  int32  tile ``t`` holds rows ``row_order[b, tR : tR + R]`` that are working (those at
                               positions ``< row_count[b]``); per tile ``(full, total)`` visited blocks
  tile_blocks  [B,T,KB] int32  the visited blocks, full ones first (every working row of the tile sees every
                               valid lane: no bit test), then partial ones, each ascending; then the rest
  block_counts [B,KB,2] int32  the transposed lists, for the backward's key-block pass:
  block_tiles  [B,KB,T] int32  per block the tiles that visit it (full first, then partial, then the rest)

Every list is a full permutation (FlexAttention's ordered form), so three implementations give identical
tensors: :func:`reference_plan` (PyTorch, the definition), the C++ one (``coavs_C::masked_attention_plan``) and
the Triton one (``kernels/masked_cross_attention_plan.py``, two launches, no host sync).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch

BITS_PER_WORD = 32  # mask bits per int32 word of AttentionMask.bits
BLOCK_KEYS = 64  # lanes of a key block
SUB_KEYS = 16  # lanes of a sub-patch
ROWS_PER_TILE = 16  # R
PATCH_HEIGHTS = (8, 4, 16, 2, 1)  # candidates of ph, in order of preference on ties
CENTROID_GRID_BITS = 5  # the centroid is quantised to a 32 x 32 grid
NOT_WORKING = 1 << 48  # sort key offset of the rows that do no work (above every working key)


class AttentionPlan(NamedTuple):
    """See the module docstring."""

    block_bits: Tensor
    row_order: Tensor
    row_count: Tensor
    tile_counts: Tensor
    tile_blocks: Tensor
    block_counts: Tensor
    block_tiles: Tensor


# -------------------------------------------------------------------------------------------- geometry
def patch_shape(height: int, width: int) -> tuple[int, int]:
    """``(ph, pw)`` with ``ph·pw = 64``: the fewest patches covering ``height × width``; ties go to the squarest."""
    best = None
    for ph in PATCH_HEIGHTS:
        pw = BLOCK_KEYS // ph
        blocks = -(-height // ph) * -(-width // pw)
        if best is None or blocks < best[0]:
            best = (blocks, ph, pw)
    return best[1], best[2]


def num_blocks(height: int, width: int) -> int:
    ph, pw = patch_shape(height, width)
    return -(-height // ph) * -(-width // pw)


def _lane_grid(height: int, width: int, device) -> tuple[Tensor, Tensor]:
    """``(y, x)`` ``[KB, 64]`` int64 of each lane of each block (device arithmetic: no host data copied)."""
    ph, pw = patch_shape(height, width)
    sub_h = min(4, ph)
    sub_w = SUB_KEYS // sub_h
    per_row = pw // sub_w
    lane = torch.arange(BLOCK_KEYS, dtype=torch.int64, device=device)
    sub, inner = lane // SUB_KEYS, lane % SUB_KEYS
    dy = (sub // per_row) * sub_h + inner // sub_w
    dx = (sub % per_row) * sub_w + inner % sub_w
    patches_x = -(-width // pw)
    kb = torch.arange(num_blocks(height, width), dtype=torch.int64, device=device)[:, None]
    return (kb // patches_x) * ph + dy, (kb % patches_x) * pw + dx


def lane_keys(height: int, width: int, device=None) -> Tensor:
    """``[KB, 64]`` int64: the key of each lane of each block, −1 for lanes past the map's edge."""
    y, x = _lane_grid(height, width, device)
    return torch.where((y < height) & (x < width), y * width + x, -1)


def key_slots(height: int, width: int, device=None) -> Tensor:
    """``[N]`` int64: ``kb·64 + j`` for the lane ``j`` of block ``kb`` that holds key ``n`` (the inverse of
    :func:`lane_keys` over the valid lanes)."""
    ph, pw = patch_shape(height, width)
    sub_h = min(4, ph)
    sub_w = SUB_KEYS // sub_h
    per_row = pw // sub_w
    key = torch.arange(height * width, dtype=torch.int64, device=device)
    y, x = key // width, key % width
    py, px = y % ph, x % pw
    block = (y // ph) * -(-width // pw) + x // pw
    lane = ((py // sub_h) * per_row + px // sub_w) * SUB_KEYS + (py % sub_h) * sub_w + px % sub_w
    return block * BLOCK_KEYS + lane


def valid_lanes(height: int, width: int, device=None) -> Tensor:
    """``[KB]`` int64: the mask of the valid lanes of each block."""
    return _pack_lanes(lane_keys(height, width, device) >= 0)


def _pack_lanes(flags: Tensor) -> Tensor:
    """``[..., 64]`` bool → ``[...]`` int64 with bit ``j`` = lane ``j`` (bit 63 is the sign bit)."""
    weights = torch.bitwise_left_shift(torch.ones((), dtype=torch.int64, device=flags.device),
                                       torch.arange(BLOCK_KEYS, dtype=torch.int64, device=flags.device))
    return (flags.to(torch.int64) * weights).sum(-1)


def unpack_bits(bits: Tensor, num_keys: int) -> Tensor:
    """``[B,Q,W] int32`` mask words → ``[B,Q,num_keys]`` bool (bit ``n % 32`` of word ``n // 32`` is key ``n``;
    the inverse of ``coavs.ops.masked_cross_attention.pack_visibility``)."""
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=bits.device)
    expanded = torch.bitwise_and(torch.bitwise_right_shift(bits[..., None], shifts), 1).bool()
    return expanded.flatten(-2)[..., :num_keys]


def unpack_lanes(block_bits: Tensor) -> Tensor:
    """``[...]`` int64 → ``[..., 64]`` bool (the inverse of the packing of ``block_bits``)."""
    shifts = torch.arange(BLOCK_KEYS, dtype=torch.int64, device=block_bits.device)
    return torch.bitwise_and(torch.bitwise_right_shift(block_bits[..., None], shifts), 1).bool()


def morton(gy: Tensor, gx: Tensor) -> Tensor:
    """Interleaves the ``CENTROID_GRID_BITS`` low bits of ``gy`` (odd positions) and ``gx`` (even positions)."""
    code = torch.zeros_like(gy)
    for bit in range(CENTROID_GRID_BITS):
        code |= ((gy >> bit) & 1) << (2 * bit + 1)
        code |= ((gx >> bit) & 1) << (2 * bit)
    return code


def centre_twice(height: int, width: int, device=None) -> tuple[Tensor, Tensor]:
    """``[KB]`` int64: twice the centre ``(y, x)`` of each patch (integers), which the row order weights."""
    ph, pw = patch_shape(height, width)
    patches_x = -(-width // pw)
    kb = torch.arange(num_blocks(height, width), dtype=torch.int64, device=device)
    return 2 * (kb // patches_x) * ph + ph, 2 * (kb % patches_x) * pw + pw


# --------------------------------------------------------------------------------------- the definition
def reference_plan(bits: Tensor, active: Tensor, height: int, width: int,
                   rows_per_tile: int = ROWS_PER_TILE) -> AttentionPlan:
    """The plan in plain PyTorch (dense intermediates ``[B,Q,KB,64]``): the definition the kernels match."""
    batch, queries = active.shape
    keys = height * width
    device = bits.device
    lanes = lane_keys(height, width, device)  # [KB, 64]
    blocks = lanes.shape[0]
    tiles = -(-queries // rows_per_tile)
    visible = torch.nn.functional.pad(unpack_bits(bits, keys), (0, 1))  # key N: invisible
    lane_visible = visible[:, :, torch.where(lanes >= 0, lanes, keys)]  # [B,Q,KB,64]
    block_bits = _pack_lanes(lane_visible)
    counts = lane_visible.sum(-1)  # [B,Q,KB]
    seen = counts.sum(-1)
    centre_y, centre_x = centre_twice(height, width, device)
    safe = seen.clamp(min=1)
    top = (1 << CENTROID_GRID_BITS) - 1
    grid_y = ((counts * centre_y).sum(-1) << CENTROID_GRID_BITS).div(2 * safe * height, rounding_mode="floor")
    grid_x = ((counts * centre_x).sum(-1) << CENTROID_GRID_BITS).div(2 * safe * width, rounding_mode="floor")
    code = morton(grid_y.clamp(max=top), grid_x.clamp(max=top))
    index = torch.arange(queries, dtype=torch.int64, device=device).expand(batch, queries)
    working = active & (seen > 0)
    sort_key = torch.where(working, (code << 32) | index, NOT_WORKING | index)
    row_order = torch.argsort(sort_key, dim=-1)
    row_count = working.sum(-1)

    # tiles: R consecutive positions of row_order; positions >= row_count hold no working row
    padded = torch.nn.functional.pad(row_order, (0, tiles * rows_per_tile - queries))
    position = torch.arange(tiles * rows_per_tile, device=device)
    in_tile = (position[None] < row_count[:, None]).view(batch, tiles, rows_per_tile)
    tile_bits = block_bits.gather(1, padded[..., None].expand(-1, -1, blocks)).view(batch, tiles, rows_per_tile,
                                                                                     blocks)
    visits = ((tile_bits != 0) & in_tile[..., None]).any(2)
    full = ((tile_bits == valid_lanes(height, width, device)) | ~in_tile[..., None]).all(2) & in_tile.any(2)[..., None]
    klass = visits.to(torch.int64) + full.to(torch.int64)  # 2 full, 1 partial, 0 not visited
    tile_blocks = torch.argsort((2 - klass) * blocks + torch.arange(blocks, device=device), dim=-1)
    tile_counts = torch.stack([(klass == 2).sum(-1), (klass > 0).sum(-1)], -1)
    transposed = klass.transpose(1, 2)  # [B,KB,T]
    block_tiles = torch.argsort((2 - transposed) * tiles + torch.arange(tiles, device=device), dim=-1)
    block_counts = torch.stack([(transposed == 2).sum(-1), (transposed > 0).sum(-1)], -1)
    i32 = torch.int32
    return AttentionPlan(block_bits, row_order.to(i32), row_count.to(i32), tile_counts.to(i32),
                         tile_blocks.to(i32), block_counts.to(i32), block_tiles.to(i32))


def empty_plan(batch: int, queries: int, height: int, width: int, device,
               rows_per_tile: int = ROWS_PER_TILE) -> AttentionPlan:
    """Uninitialised plan tensors of the right shapes and dtypes (the fake kernel's answer)."""
    blocks, tiles = num_blocks(height, width), -(-queries // rows_per_tile)
    i32 = dict(dtype=torch.int32, device=device)
    return AttentionPlan(torch.empty(batch, queries, blocks, dtype=torch.int64, device=device),
                         torch.empty(batch, queries, **i32), torch.empty(batch, **i32),
                         torch.empty(batch, tiles, 2, **i32), torch.empty(batch, tiles, blocks, **i32),
                         torch.empty(batch, blocks, 2, **i32), torch.empty(batch, blocks, tiles, **i32))


# ---------------------------------------------------------------------------------------------- backends
def _reference(bits, active, height, width, rows_per_tile):
    return tuple(reference_plan(bits, active, height, width, rows_per_tile))


def _native_plan(bits, active, height, width, rows_per_tile):
    return tuple(torch.ops.coavs_C.masked_attention_plan(bits, active, height, width, rows_per_tile))


def _triton_plan(bits, active, height, width, rows_per_tile):
    from coavs.kernels import masked_cross_attention_plan as kernels

    return kernels.attention_plan(bits, active, height, width, rows_per_tile)


_dispatch.register(_dispatch.OpSpec(
    name="masked_attention_plan",
    impls={"reference": _reference, "native": _native_plan, "triton": _triton_plan},
    gpu_order=("triton", "reference"),
    native_op="masked_attention_plan",
    note="the block-sparse plan of masked_cross_attention; CPU: C++, GPU: Triton (2 launches)",
))


def _masked_attention_plan(bits: Tensor, active: Tensor, height: int, width: int,
                           rows_per_tile: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The plan's tensors (:class:`AttentionPlan`) for mask ``bits [B,Q,ceil(N/32)] int32`` and ``active [B,Q]``
    over an ``(height, width)`` key map."""
    return _dispatch.run("masked_attention_plan", bits.device, bits, active, height, width, rows_per_tile)


masked_attention_plan_op = _dispatch.define_op("coavs::masked_attention_plan", _masked_attention_plan)


@masked_attention_plan_op.register_fake
def _fake_plan(bits, active, height, width, rows_per_tile):
    return tuple(empty_plan(active.shape[0], active.shape[1], height, width, bits.device, rows_per_tile))


if _native.has_op("masked_attention_plan"):
    torch.library.register_fake("coavs_C::masked_attention_plan")(_fake_plan)


def build_plan(bits: Tensor, active: Tensor, height: int, width: int,
               rows_per_tile: int = ROWS_PER_TILE) -> AttentionPlan:
    """The plan of one call (no host sync on any device)."""
    return AttentionPlan(*masked_attention_plan_op(bits, active, height, width, rows_per_tile))


# ------------------------------------------------------------------------------------------- statistics
def plan_statistics(plan: AttentionPlan, height: int, width: int, rows_per_tile: int = ROWS_PER_TILE,
                    group: int = 4, vector_lanes: int = 8, mma_rows: int = 16) -> dict:
    """Work the kernels do under ``plan``, in scores (one query against one key), against the visible scores:

    ``tile_ratio``  the Triton kernels: every working row of a tile against every lane of each visited block
    ``cpu_ratio``   the C++ forward, as it walks: per block, the rows of its tiles that see it (full tiles, then
                    partial ones, sorted stably by the first and then the last 8-lane vector they see), in groups
                    of ``group``, each group against the vectors of ``vector_lanes`` lanes (8 with AVX-512 or
                    AVX2: 2×4 keys; the backward on AVX-512: 16, a 4×4 sub-patch) any of its rows sees
    ``mma_bound``   a lower bound for any kernel whose matrix-multiply tiles hold at least ``mma_rows`` rows of
                    one sample (``tl.dot`` needs 16): a key seen by ``v`` working rows costs at least
                    ``max(v, mma_rows)`` scores, however rows and keys are tiled or ordered
    All ÷ the visible (row, key) pairs of the working rows. Host-side (reads the plan): for benchmarks only.
    """
    bits = plan.block_bits.cpu()
    order, count = plan.row_order.cpu().long(), plan.row_count.cpu().long()
    block_counts, block_tiles = plan.block_counts.cpu().tolist(), plan.block_tiles.cpu().tolist()
    valid = [int(v) & ((1 << 64) - 1) for v in valid_lanes(height, width).tolist()]
    vector_masks = [((1 << vector_lanes) - 1) << (vector_lanes * i) for i in range(BLOCK_KEYS // vector_lanes)]
    batch, _, blocks = bits.shape
    visible = tile = cpu = 0
    for b in range(batch):
        rows = order[b, : int(count[b])]
        row_bits = [[int(x) & ((1 << 64) - 1) for x in line] for line in bits[b, rows].tolist()]
        visible += sum(bin(x & valid[kb]).count("1") for line in row_bits for kb, x in enumerate(line))
        for t in range(-(-len(row_bits) // rows_per_tile)):
            members = row_bits[t * rows_per_tile: (t + 1) * rows_per_tile]
            visited = sum(any(line[kb] & valid[kb] for line in members) for kb in range(blocks))
            tile += len(members) * visited * BLOCK_KEYS
        for kb in range(blocks):
            full, total = block_counts[b][kb]
            lanes = []
            for i, t in enumerate(block_tiles[b][kb][:total]):
                for at in range(t * rows_per_tile, min((t + 1) * rows_per_tile, len(row_bits))):
                    seen = valid[kb] if i < full else row_bits[at][kb] & valid[kb]
                    if seen:
                        lanes.append(seen)
            lanes.sort(key=lambda x: ((x & -x).bit_length() - 1) // 8 * 8 + (x.bit_length() - 1) // 8)
            for start in range(0, len(lanes), group):
                members = lanes[start: start + group]
                union = 0
                for x in members:
                    union |= x
                cpu += len(members) * vector_lanes * sum(bool(union & m) for m in vector_masks)
    bound = mma_bound_scores(plan, height, width, mma_rows)
    return {"visible_scores": visible, "tile_scores": tile, "cpu_scores": cpu, "mma_bound_scores": bound,
            "tile_ratio": tile / max(1, visible), "cpu_ratio": cpu / max(1, visible),
            "mma_bound": bound / max(1, visible)}


def mma_bound_scores(plan: AttentionPlan, height: int, width: int, mma_rows: int = 16) -> int:
    """The fewest scores any kernel can compute under ``plan`` whose matrix-multiply tiles hold at least
    ``mma_rows`` rows of one sample: a key that ``v`` working rows of a sample see costs ``max(v, mma_rows)``."""
    bits = plan.block_bits.cpu()
    order, count = plan.row_order.cpu().long(), plan.row_count.cpu().long()
    lane_is_key = unpack_lanes(valid_lanes(height, width))
    bound = 0
    for b in range(bits.shape[0]):
        viewers = (unpack_lanes(bits[b, order[b, : int(count[b])]]) & lane_is_key).sum(0)
        bound += int(torch.where(viewers > 0, viewers.clamp(min=mma_rows), 0).sum())
    return bound
