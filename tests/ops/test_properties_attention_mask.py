"""Property tests of ``build_attention_mask`` (shape and visibility rules only; the attention itself is tested
in test_masked_cross_attention.py): random B and Q including 0, random layouts, extreme and non-finite logits."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from coavs.ops.masked_cross_attention import BITS_PER_WORD, OCCUPANCY_BLOCK, build_attention_mask, unpack_bits
from tests.support.strategies import sizes, tensors


@st.composite
def problems(draw, special=False):
    batch, queries = draw(sizes(3)), draw(sizes(5))
    in_h, in_w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    size = (draw(st.integers(1, 9)), draw(st.integers(1, 40)))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    extra = {"special": (math.nan, math.inf, -math.inf), "special_fraction": 0.1} if special else {}
    logits = draw(tensors((batch, queries, in_h, in_w), dtype, scale=st.sampled_from([1.0, 1e3]), **extra))
    if draw(st.booleans()):
        logits = logits - 1e3  # mostly invisible rows: the "sees nothing → sees everything" rule
    return logits, size


def expected_visibility(logits, size):
    """Written independently of the library: resize a contiguous copy, threshold in the logits' dtype."""
    batch, queries = logits.shape[:2]
    keys = size[0] * size[1]
    if batch * queries == 0:
        return torch.zeros(batch, queries, keys, dtype=torch.bool)
    resized = F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)
    visible = resized.sigmoid().ge(0.5).reshape(batch, queries, keys)
    none = ~visible.any(-1, keepdim=True)
    return visible | none


@given(args=problems())
def test_shapes_and_visibility(args):
    logits, size = args
    batch, queries = logits.shape[:2]
    keys = size[0] * size[1]
    mask = build_attention_mask(logits, size)
    assert mask.num_keys == keys
    assert mask.bits.shape == (batch, queries, -(-keys // BITS_PER_WORD)) and mask.bits.dtype == torch.int32
    assert mask.occupancy.shape == (batch, queries, -(-keys // OCCUPANCY_BLOCK))
    visible = unpack_bits(mask.bits, keys)
    assert torch.equal(visible, expected_visibility(logits, size))
    assert bool(visible.any(-1).all()), "every query sees at least one key"
    blocks = F.pad(visible, (0, mask.occupancy.shape[-1] * OCCUPANCY_BLOCK - keys))
    occupied = blocks.reshape(batch, queries, mask.occupancy.shape[-1], OCCUPANCY_BLOCK).any(-1)
    assert torch.equal(mask.occupancy.bool(), occupied)


@given(args=problems(special=True))
def test_nonfinite_logits(args):
    """NaN hides a key (sigmoid(NaN) >= 0.5 is false), +inf shows it, −inf hides it; the fallback still holds."""
    logits, size = args
    mask = build_attention_mask(logits, size)
    assert torch.equal(unpack_bits(mask.bits, mask.num_keys), expected_visibility(logits, size))


def test_no_query_gives_an_empty_mask():
    """Issue 13: Q = 0 (and B = 0) raised F.interpolate's internal 'Non-empty 4D data tensor expected'."""
    for shape in ((2, 0, 3, 3), (0, 4, 3, 3)):
        mask = build_attention_mask(torch.randn(shape), (5, 7))
        assert mask.bits.shape == (*shape[:2], 2) and mask.occupancy.shape == (*shape[:2], 1)
        assert mask.num_keys == 35
