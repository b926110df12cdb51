"""Property tests of ``masked_cross_attention``: every CPU implementation against the float64 definition on
random shapes (0 and 1 in every dimension, odd sizes, key counts across the 64-key blocks), random memory
layouts of q, k, v and the upstream gradient, masks from empty rows to all-visible, and dormant rows; forward
and every gradient. Bounded by the shared ``coavs`` hypothesis profile (derandomized, no deadline)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import coavs.ops as ops
from coavs.ops.masked_cross_attention import pack_visibility
from tests.support.helpers import backends_for
from tests.support.attention import assert_attention_close, reference_with_grads, same_precision_eager
from tests.support.strategies import describe, sizes, tensors

CPU_BACKENDS = backends_for("masked_cross_attention", "cpu")
KEY_COUNTS = (1, 2, 5, 31, 63, 64, 65, 97, 130)
HEAD_DIMS = (1, 3, 8, 17, 32)


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16), max_rows=6):
    """(q, k, v, visible, active, scale, grad): random sizes and layouts; visibility per row from none to all."""
    batch, heads, queries = draw(sizes(2)), draw(sizes(3)), draw(sizes(max_rows))
    keys, dim = draw(st.sampled_from(KEY_COUNTS)), draw(st.sampled_from(HEAD_DIMS))
    dtype = draw(st.sampled_from(dtypes))
    q = draw(tensors((batch, heads, queries, dim), dtype))
    k = draw(tensors((batch, heads, keys, dim), dtype))
    v = draw(tensors((batch, heads, keys, dim), dtype))
    grad = draw(tensors((batch, heads, queries, dim), dtype))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # per row a density: no visible key (a hand-built row: zero output), one block's worth, sparse, or all
    density = torch.tensor([0.0, 0.05, 0.3, 1.0])[torch.randint(0, 4, (batch, queries, 1), generator=gen)]
    visible = torch.rand(batch, queries, keys, generator=gen) < density
    active = torch.rand(batch, queries, generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    scale = draw(st.sampled_from([None, 0.1, 1.0]))
    return q, k, v, visible, active, (dim ** -0.5 if scale is None else scale), grad


def check(backend, problem):
    q, k, v, visible, active, scale, grad = problem
    keys = visible.shape[-1]
    width = next((w for w in (8, 5, 4, 3) if keys % w == 0), keys)  # a 2-D key map where N allows one
    mask = pack_visibility(visible, (keys // width, width))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with ops.use_backend(backend):
        out = ops.masked_cross_attention(*leaves, mask, active, scale)
        grads = torch.autograd.grad(out, leaves, grad) if out.numel() else [torch.zeros_like(t) for t in leaves]
    exact_out, exact_grads = reference_with_grads(q, k, v, visible, active, scale, grad, torch.float64)
    eager_out, eager_grads = (None, (None, None, None))
    if q.dtype in (torch.float16, torch.bfloat16) and out.numel():
        seen = visible | ~visible.any(-1, keepdim=True)  # the eager softmax needs a key per row
        eager_out, eager_grads = same_precision_eager(q, k, v, seen, active & visible.any(-1), scale, grad)
    what = f"{backend} q {describe(q)} k {describe(k)} v {describe(v)} {q.dtype}"
    assert out.dtype == q.dtype and out.is_contiguous()
    assert_attention_close(out, exact_out, eager_out, f"{what} out")
    for name, g, e, eg in zip(("dq", "dk", "dv"), grads, exact_grads, eager_grads):
        assert g.shape == e.shape and g.dtype == q.dtype
        assert_attention_close(g, e, eg, f"{what} {name}")
    quiet = ~(active & visible.any(-1))[:, None, :].expand(-1, q.shape[1], -1)
    assert not out[quiet].any() and not grads[0][quiet].any(), f"{what}: dormant or keyless rows must be zero"


@pytest.mark.skipif("native" not in CPU_BACKENDS, reason="coavs._C not built")
@settings(max_examples=60)
@given(problem=problems())
def test_native_matches_the_definition(problem):
    check("native", problem)


@settings(max_examples=25)
@given(problem=problems())
def test_reference_backend_matches_the_definition(problem):
    check("reference", problem)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
@settings(max_examples=12)
@given(problem=problems(dtypes=(torch.float32, torch.float16, torch.bfloat16), max_rows=5))
def test_triton_interpreter_matches_the_definition(problem):
    check("triton", problem)
