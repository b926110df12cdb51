"""torch.compile with the default inductor backend on CPU over the model's mask packing.

The trigger found by bisecting the full model: ``pack_visibility`` of a bool visibility that had the
"no visible key -> all visible" rule applied (``visible | ~visible.any(-1)``) and a single key (the 1x1 level of the
pixel decoder), padded to the occupancy block: inductor's CPU codegen produced ``VecMask<int>`` and
``VecMask<float>`` operands for one ``?:`` (CppCompileError). The packing now pads a uint8 copy, and takes the
block occupancy with ``amax`` (``any`` of uint8 is uint8 in eager but bool under inductor).
"""

import pytest
import torch

from coavs.ops.masked_cross_attention import build_attention_mask

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("size", [(1, 1), (3, 5)])
def test_build_attention_mask_compiles_with_inductor_on_cpu(size):
    torch._dynamo.reset()
    logits = torch.randn(2, 6, 4, 4)
    logits[0, 1] = -5.0  # a query that sees no key, so the "sees every key" rule applies

    def packed(x):
        mask = build_attention_mask(x, size)
        return mask.bits, mask.occupancy

    compiled = torch.compile(packed, backend="inductor", fullgraph=True)
    bits, occupancy = compiled(logits)
    expected_bits, expected_occupancy = packed(logits)
    assert occupancy.dtype == torch.uint8 and bits.dtype == torch.int32
    assert torch.equal(bits, expected_bits) and torch.equal(occupancy, expected_occupancy)
