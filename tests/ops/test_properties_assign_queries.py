"""Property tests of ``assign_queries``: every backend against the reference, forward and backward, on random
shapes (0 and 1 where the op allows them), random memory layouts, extreme values and NaN/±inf.

Non-finite policy (the reference's, identical on every backend): a NaN score is never ``>= threshold`` but is
the row's top score for the fallback (``torch.argmax`` ranks NaN highest); gate and queries follow IEEE
arithmetic of ``query_feat + gate·audio`` elementwise.

Gradients (tested with NaN/±inf in the inputs and in the upstream gradients): ``d_query_feat[q] = Σ_b g[b,q]``,
``d_audio[b] = Σ_q gate[b,q]·g[b,q]`` (every query, dormant ones too: a dormant gate of 0 times an infinite
gradient is NaN) and, soft, ``d_scores[b,s] = Σ_{active q of s} (⟨g[b,q], audio[b]⟩ + g_gate[b,q])`` (inactive
queries are left out, whatever their values). Each sum is NaN when a term is NaN or when +inf and −inf terms meet,
±inf when only infinite terms of one sign are, whatever the order of summation: the same NaN/±inf positions on
every backend.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import coavs.ops as ops
from coavs.ops import reference
from tests.support.helpers import backends_for
from tests.support.compare import assert_same
from tests.support.strategies import sizes, tensors

BACKENDS = backends_for("assign_queries", "cpu")
FAST = [b for b in BACKENDS if b not in ("triton", "reference")]
SPECIAL = (math.nan, math.inf, -math.inf)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@st.composite
def problems(draw, dtypes=DTYPES, special=False, max_size=5):
    batch, markers, dilation = draw(sizes(3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    queries, width = markers * dilation + draw(st.integers(0, 2)), draw(sizes(max_size))
    dtype, score_dtype = draw(st.sampled_from(dtypes)), draw(st.sampled_from(dtypes))
    extra = {"special": SPECIAL, "special_fraction": 0.1} if special else {}
    score_extra = {"special": (math.nan, math.inf, -math.inf), "special_fraction": 0.1} if special else {}
    scores = draw(tensors((batch, markers), score_dtype, scale=0.5, **score_extra)) + 0.3
    if draw(st.booleans()):  # one-hot cluster ids: ties everywhere
        scores = (scores > 0.6).to(score_dtype)
    big = 1e4 if dtype == torch.float16 else 1e30
    audio = draw(tensors((batch, width), dtype, scale=st.sampled_from([1.0, big]), **extra))
    query_feat = draw(tensors((queries, width), dtype, scale=st.sampled_from([1.0, big]), **extra))
    threshold = draw(st.sampled_from([0.0, 0.4, 0.5, 1.0]))
    dormant_gate = draw(st.sampled_from([0.0, 0.1, 1.0]))
    soft = draw(st.booleans())
    return scores, audio, query_feat, dilation, threshold, dormant_gate, soft


def forward_backward(backend, args, seed=0):
    scores, audio, query_feat, *options = args
    leaves = [t.detach().clone().requires_grad_(True) for t in (scores, audio, query_feat)]
    with ops.use_backend(backend):
        out = ops.assign_queries(*leaves, *options)
        gen = torch.Generator().manual_seed(seed)
        loss = (out.queries.float() * torch.randn(out.queries.shape, generator=gen)).sum()
        loss = loss + (out.gate.float() * torch.randn(out.gate.shape, generator=gen)).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return out, grads


def check(backend, args):
    out, grads = forward_backward(backend, args)
    ref, ref_grads = forward_backward("reference", args)
    dtype = args[2].dtype
    assert_same(out.queries, ref.queries, dtype, what=f"{backend} queries")
    assert_same(out.gate, ref.gate, args[0].dtype, what=f"{backend} gate")
    assert_same(out.active, ref.active, what=f"{backend} active")
    assert_same(out.query_marker, ref.query_marker, what=f"{backend} query_marker")
    # d_scores is computed in the queries' arithmetic (float32 unless float64) and stored in the scores' dtype.
    arithmetic = torch.float64 if dtype == torch.float64 and args[0].dtype == torch.float64 else torch.float32
    score_tol = arithmetic if args[0].dtype in (torch.float64, torch.float32) else args[0].dtype
    for name, got, expected, dt in zip(("d_scores", "d_audio", "d_query_feat"), grads, ref_grads,
                                       (score_tol, dtype, dtype)):
        assert_same(got, expected, dt, scale=4, what=f"{backend} {name}")


@pytest.mark.parametrize("backend", FAST)
@given(args=problems())
def test_matches_reference(backend, args):
    check(backend, args)


@pytest.mark.parametrize("backend", FAST)
@given(args=problems(special=True))
def test_nonfinite_policy(backend, args):
    check(backend, args)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=6)
@given(args=problems(dtypes=(torch.float32, torch.float16), special=True, max_size=3))
def test_triton_matches_reference(args):
    check("triton", args)


@given(args=problems(dtypes=(torch.float64,)))
def test_reference_backward_matches_autograd(args):
    """The registered reference backward against autograd through the plain reference (float64)."""
    _, grads = forward_backward("reference", args)
    scores, audio, query_feat, *options = args
    leaves = [t.detach().clone().requires_grad_(True) for t in (scores, audio, query_feat)]
    queries, gate, _ = reference.assign_queries(*leaves, *options)
    gen = torch.Generator().manual_seed(0)
    loss = (queries.float() * torch.randn(queries.shape, generator=gen)).sum()
    loss = loss + (gate.float() * torch.randn(gate.shape, generator=gen)).sum()
    expected = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    for name, got, want in zip(("d_scores", "d_audio", "d_query_feat"), grads, expected):
        assert_same(got, want, torch.float64, scale=1e5, what=name)  # float32 randn weights: 1e-5


@given(args=problems(dtypes=(torch.float32, torch.float16)))
def test_meta_tensors_give_the_shape(args):
    scores, audio, query_feat, *options = args
    out = ops.assign_queries(scores.to("meta"), audio.to("meta"), query_feat.to("meta"), *options)
    assert out.queries.shape == (scores.shape[0], *query_feat.shape) and out.queries.dtype == query_feat.dtype
    assert out.gate.shape == out.active.shape == (scores.shape[0], query_feat.shape[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_score_ranks_highest(backend):
    """Policy: a NaN score is never >= threshold but is the top marker of the fallback, as torch.argmax ranks it."""
    scores = torch.tensor([[0.1, math.nan, 0.2], [math.nan, 0.1, 0.2]])
    with ops.use_backend(backend):
        out = ops.assign_queries(scores, torch.randn(2, 4), torch.randn(3, 4), 1, 0.5, 0.0, True)
    assert out.active.tolist() == [[False, True, False], [True, False, False]]


@st.composite
def gradient_problems(draw, dtypes=DTYPES):
    """Inputs and upstream gradients (queries and gate), both with NaN/±inf sprinkled in (moderate magnitudes:
    sums of large finite terms may overflow in one summation order and not another)."""
    scores, audio, query_feat, *options = draw(problems(dtypes=dtypes, special=True))
    audio = torch.where(audio.abs() < 1e4, audio, audio.sign() * math.inf).to(audio.dtype)
    query_feat = torch.where(query_feat.abs() < 1e4, query_feat, query_feat.sign() * math.inf).to(query_feat.dtype)
    args = (scores, audio, query_feat, *options)
    special = {"special": SPECIAL, "special_fraction": 0.15}
    batch, queries, width = audio.shape[0], query_feat.shape[0], audio.shape[1]
    grads = (draw(tensors((batch, queries, width), query_feat.dtype, **special)),
             draw(tensors((batch, queries), scores.dtype, **special)))
    return args, grads


def gradients(backend, args, grads):
    scores, audio, query_feat, *options = args
    leaves = [t.detach().clone().requires_grad_(True) for t in (scores, audio, query_feat)]
    with ops.use_backend(backend):
        out = ops.assign_queries(*leaves, *options)
        return torch.autograd.grad([out.queries, out.gate], leaves, list(grads), allow_unused=True,
                                   materialize_grads=True)


def check_gradients(backend, args, grads):
    got, expected = gradients(backend, args, grads), gradients("reference", args, grads)
    dtype = args[2].dtype
    arithmetic = torch.float64 if dtype == torch.float64 and args[0].dtype == torch.float64 else torch.float32
    score_tol = arithmetic if args[0].dtype in (torch.float64, torch.float32) else args[0].dtype
    for name, g, e, dt in zip(("d_scores", "d_audio", "d_query_feat"), got, expected, (score_tol, dtype, dtype)):
        assert_same(g, e, dt, scale=4, what=f"{backend} {name}")


@pytest.mark.parametrize("backend", FAST)
@given(problem=gradient_problems())
def test_gradient_nonfinite_policy(backend, problem):
    check_gradients(backend, *problem)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=6)
@given(problem=gradient_problems(dtypes=(torch.float32, torch.float16)))
def test_triton_gradient_nonfinite_policy(problem):
    check_gradients("triton", *problem)
