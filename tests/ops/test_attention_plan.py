"""The block-sparse plan of masked_cross_attention (coavs/ops/attention_plan.py): its geometry, its invariants
(checked from first principles, independently of reference_plan), and the equality of its three
implementations (PyTorch reference, C++, Triton under the interpreter)."""

from __future__ import annotations

import pytest
import torch

from coavs.ops import attention_plan as ap
from coavs.ops.masked_cross_attention import pack_visibility, unpack_bits
from tests.support.helpers import backends_for

PLAN_BACKENDS = backends_for("masked_attention_plan", "cpu")
# (B, Q, H, W): one key, one row, the benchmark's maps, maps not divisible by the patch, strips, odd tile counts
SHAPES = [(1, 1, 1, 1), (2, 5, 1, 1), (3, 37, 7, 7), (2, 100, 32, 32), (1, 20, 25, 40), (2, 17, 3, 70),
          (2, 3, 1, 130), (2, 16, 9, 9), (1, 33, 2, 50), (1, 8, 100, 3)]


def random_case(batch, queries, height, width, density=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    keys = height * width
    visible = torch.rand(batch, queries, keys, generator=generator) < density
    if batch and queries:
        visible[0, 0] = True  # a full row
        visible[-1, -1] = False  # a row without keys: never works
    active = torch.rand(batch, queries, generator=generator) < 0.7
    return visible, active


@pytest.mark.parametrize("height, width", [(1, 1), (7, 7), (14, 14), (28, 28), (32, 32), (25, 40), (3, 70),
                                           (1, 130), (2, 50), (100, 3), (64, 64)])
def test_patches_cover_every_key_once(height, width):
    lanes = ap.lane_keys(height, width)
    keys = lanes[lanes >= 0]
    assert torch.equal(keys.sort().values, torch.arange(height * width))
    ph, pw = ap.patch_shape(height, width)
    assert ph * pw == 64 and lanes.shape == (ap.num_blocks(height, width), 64)
    # each block is a patch: its keys lie in a ph x pw window
    for block in lanes:
        inside = block[block >= 0]
        y, x = inside // width, inside % width
        assert y.max() - y.min() < ph and x.max() - x.min() < pw
        assert int(y.min()) % ph == 0 and int(x.min()) % pw == 0
    # the 16-lane sub-patches are compact too (the C++ kernel skips them)
    sub_h = min(4, ph)
    for block in lanes:
        for sub in block.view(4, 16):
            inside = sub[sub >= 0]
            if inside.numel():
                assert (inside // width).max() - (inside // width).min() < sub_h


def test_row_major_blocks_without_a_size():
    """A (1, N) map gives the row-major blocks of 64 keys (what a mask without a size used to mean)."""
    assert ap.patch_shape(1, 1000) == (1, 64)
    assert torch.equal(ap.lane_keys(1, 130)[:2].flatten(), torch.arange(128))
    assert ap.patch_shape(32, 32) == (8, 8) and ap.patch_shape(28, 28) == (4, 16)


def check_invariants(plan: ap.AttentionPlan, visible, active, height, width, rows_per_tile=ap.ROWS_PER_TILE):
    """Everything the kernels rely on, from the definition of each tensor."""
    batch, queries, keys = visible.shape
    lanes = ap.lane_keys(height, width)
    blocks, tiles = lanes.shape[0], -(-queries // rows_per_tile)
    padded = torch.nn.functional.pad(visible, (0, 1))
    expected_bits = ap._pack_lanes(padded[:, :, torch.where(lanes >= 0, lanes, keys)])
    assert torch.equal(plan.block_bits, expected_bits)
    valid = ap.valid_lanes(height, width)
    working = active & visible.any(-1)
    for b in range(batch):
        order, count = plan.row_order[b].long(), int(plan.row_count[b])
        assert torch.equal(order.sort().values, torch.arange(queries)), "row_order is a permutation"
        assert count == int(working[b].sum())
        assert working[b, order[:count]].all() and not working[b, order[count:]].any()
        assert torch.equal(order[count:], order[count:].sort().values), "idle rows ascending"
        membership = torch.zeros(tiles, blocks, dtype=torch.int64)
        for t in range(tiles):
            members = order[t * rows_per_tile: min((t + 1) * rows_per_tile, count)]
            bits = plan.block_bits[b, members]  # [rows, KB]
            visits = (bits != 0).any(0)
            full = (bits == valid).all(0) & (len(members) > 0)
            full_n, total = plan.tile_counts[b, t].tolist()
            listed = plan.tile_blocks[b, t].long()
            assert torch.equal(listed.sort().values, torch.arange(blocks)), "tile_blocks is a permutation"
            assert total == int(visits.sum()) and full_n == int((visits & full).sum())
            assert full[listed[:full_n]].all() and not full[listed[full_n:total]].any()
            assert visits[listed[:total]].all()
            for part in (listed[:full_n], listed[full_n:total], listed[total:]):
                assert torch.equal(part, part.sort().values), "each class ascending"
            membership[t] = visits.long() + (visits & full).long()
        for kb in range(blocks):
            full_n, total = plan.block_counts[b, kb].tolist()
            listed = plan.block_tiles[b, kb].long()
            assert torch.equal(listed.sort().values, torch.arange(tiles))
            assert full_n == int((membership[:, kb] == 2).sum()) and total == int((membership[:, kb] > 0).sum())
            assert (membership[listed[:full_n], kb] == 2).all() and (membership[listed[full_n:total], kb] == 1).all()
        # every visible (working row, key) is covered by a listed block of the row's tile
        for position in range(count):
            row, t = int(order[position]), position // rows_per_tile
            covered = set(plan.tile_blocks[b, t, : int(plan.tile_counts[b, t, 1])].tolist())
            seen_blocks = {int(kb) for kb in torch.nonzero(plan.block_bits[b, row] != 0).flatten()}
            assert seen_blocks <= covered


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}Q{}H{}W{}".format(*s))
def test_reference_plan_invariants(shape):
    visible, active = random_case(*shape)
    height, width = shape[2:]
    check_invariants(ap.reference_plan(pack_visibility(visible).bits, active, height, width), visible, active,
                     height, width)


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES[:6] + [(0, 4, 3, 3), (2, 0, 3, 3)], ids=lambda s: "B{}Q{}H{}W{}".format(*s))
def test_every_backend_gives_the_reference_plan(backend, shape):
    visible, active = random_case(*shape)
    height, width = shape[2:]
    bits = pack_visibility(visible).bits
    expected = ap.reference_plan(bits, active, height, width)
    with ap._dispatch.use_backend(backend):
        got = ap.build_plan(bits, active, height, width)
    for name, a, e in zip(ap.AttentionPlan._fields, got, expected):
        assert a.dtype == e.dtype and a.shape == e.shape and torch.equal(a, e), f"{backend}: {name}"


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_bits_past_the_keys_never_count(backend):
    """A hand-built mask with every bit set past N (or all bits inverted) plans as its first N bits."""
    visible, active = random_case(2, 9, 5, 7)
    mask = pack_visibility(visible)
    garbage = mask.bits | torch.tensor(-(1 << 3), dtype=torch.int32)  # bits 3..31 of every word
    inverted = ~mask.bits
    with ap._dispatch.use_backend(backend):
        for bits, vis in ((garbage, unpack_bits(garbage, 35)), (inverted, unpack_bits(inverted, 35))):
            plan = ap.build_plan(bits, active, 5, 7)
            check_invariants(plan, vis, active, 5, 7)


def test_rows_are_ordered_by_their_masks():
    """Rows whose masks sit in the same place share a tile: two clusters of 16 rows, interleaved by index."""
    height = width = 16
    visible = torch.zeros(1, 32, height * width, dtype=torch.bool)
    grid = torch.arange(height * width)
    top_left = ((grid // width) < 8) & ((grid % width) < 8)
    visible[0, 0::2] = top_left
    visible[0, 1::2] = ~top_left
    plan = ap.reference_plan(pack_visibility(visible).bits, torch.ones(1, 32, dtype=torch.bool), height, width)
    first_tile = plan.row_order[0, :16].long()
    assert (first_tile % 2 == first_tile[0] % 2).all()
    assert int(plan.tile_counts[0, 0, 1]) == 1 and int(plan.tile_counts[0, 0, 0]) == 1  # one full 8x8 block


def test_plan_statistics_count_work():
    visible = torch.zeros(1, 16, 64, dtype=torch.bool)
    visible[0, :, [0, 1, 2, 3, 8, 9, 10, 11]] = True  # every row: the top half of the first 4x4 sub-patch of an 8x8 block
    plan = ap.reference_plan(pack_visibility(visible).bits, torch.ones(1, 16, dtype=torch.bool), 8, 8)
    stats = ap.plan_statistics(plan, 8, 8)
    assert stats["visible_scores"] == 16 * 8
    assert stats["tile_scores"] == 16 * 64 and stats["cpu_scores"] == 16 * 8  # one 8-lane vector (2x4 keys)
    assert stats["tile_ratio"] == 8 and stats["cpu_ratio"] == 1
    assert ap.plan_statistics(plan, 8, 8, vector_lanes=16)["cpu_ratio"] == 2  # 16-lane vectors: a 4x4 sub-patch
    assert stats["mma_bound_scores"] == 16 * 8 and stats["mma_bound"] == 1  # 16 rows share each visible key


def test_cpu_groups_rows_that_see_the_same_vectors():
    """8 rows of one 8x8 block, alternately seeing 8-lane vectors {0, 7} and {3, 4} (the same centroid, so the
    plan keeps index order): in plan order every group of 4 would compute 4 vectors per row; grouped by the
    (first, last) vector they see, 2 — exactly the visible keys."""
    keys = torch.arange(64).view(8, 8)
    first = torch.cat([keys[0:2, 0:4].flatten(), keys[6:8, 4:8].flatten()])  # lanes 0-7 and 56-63
    second = torch.cat([keys[2:4, 4:8].flatten(), keys[4:6, 0:4].flatten()])  # lanes 24-31 and 32-39
    visible = torch.zeros(1, 8, 64, dtype=torch.bool)
    visible[0, 0::2, first] = True
    visible[0, 1::2, second] = True
    plan = ap.reference_plan(pack_visibility(visible).bits, torch.ones(1, 8, dtype=torch.bool), 8, 8)
    assert plan.row_order[0].tolist() == list(range(8))
    stats = ap.plan_statistics(plan, 8, 8)
    assert stats["visible_scores"] == 8 * 16 and stats["cpu_scores"] == 8 * 16 and stats["cpu_ratio"] == 1


def test_mma_bound_counts_at_least_a_tile_of_rows_per_seen_key():
    """Key 0 seen by 3 rows, key 5 by 20 rows, nothing else: 16 + 20 scores at least, of 23 visible."""
    visible = torch.zeros(1, 24, 64, dtype=torch.bool)
    visible[0, :3, 0] = True
    visible[0, 4:, 5] = True
    active = torch.ones(1, 24, dtype=torch.bool)
    plan = ap.reference_plan(pack_visibility(visible).bits, active, 8, 8)
    stats = ap.plan_statistics(plan, 8, 8)
    assert stats["visible_scores"] == 23 and stats["mma_bound_scores"] == 16 + 20
    assert stats["tile_scores"] >= stats["mma_bound_scores"]
    assert ap.plan_statistics(plan, 8, 8, mma_rows=8)["mma_bound_scores"] == 8 + 20
    assert ap.mma_bound_scores(plan, 8, 8, 8) == 8 + 20
