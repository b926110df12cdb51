"""Property tests of ``matching_cost``: every backend against a float64 evaluation of the reference, on random
shapes (0 and 1 in every dimension), random memory layouts, class logits up to 1e5 (with ties), the non-finite
policy, and meta tensors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import coavs.ops as ops
from coavs.ops import reference
from tests.support.helpers import backends_for
from tests.support.strategies import layouts, sizes, tensors, with_layout

BACKENDS = backends_for("matching_cost", "cpu")
FAST = [b for b in BACKENDS if b != "triton"]
WEIGHTS = (2.0, 5.0, 5.0)


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), special=(),
             class_scales=(1.0, 100.0, 1e4, 1e5)):
    batch, queries, gts = draw(sizes(3)), draw(sizes(6)), draw(sizes(4))
    points, classes = draw(sizes(9, min_size=1)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(dtypes))
    fraction = 0.15 if special else 0.0
    mask_logits = draw(tensors((batch, queries, points), dtype, scale=st.sampled_from([1.0, 4.0]), special=special,
                               special_fraction=fraction))
    # Bilinearly sampled binary masks: mostly 0/1, fractional at edges.
    target = draw(tensors((batch, gts, points), torch.float32, special=special, special_fraction=fraction))
    target = torch.where(target.isfinite(), (target > 0).float() * 0.75 + (target > 1).float() * 0.25, target)
    target = with_layout(target, draw(layouts(3)))
    # Class logits: scale·(integer + small noise) makes near-ties, where a rounded log-sum-exp loses the most.
    scale = draw(st.sampled_from(class_scales if dtype in (torch.float32, torch.float64) else (1.0, 100.0)))
    base = draw(tensors((batch, queries, classes), torch.float64, special=special, special_fraction=fraction))
    class_logits = with_layout((base.round() + base * 1e-3) * scale, draw(layouts(3))).to(dtype)
    counts = draw(tensors((batch,), torch.long, low=0, high=gts + 1))
    labels = draw(tensors((batch, gts), torch.long, low=0, high=classes))
    labels = torch.where(torch.arange(gts) < counts[:, None], labels, -7)  # padding entries hold any value
    labels = with_layout(labels, draw(layouts(2, allow_expand=False)))  # expanding would copy padding
    allowed = draw(tensors((batch, queries, gts), torch.bool))
    return mask_logits, target, class_logits, labels, allowed, counts


CLASS_ONLY = (1.0, 0.0, 0.0)  # the class term alone, −softmax ∈ [−1, 0]: where the precision question lives


def run(backend, args, weights=WEIGHTS):
    with ops.use_backend(backend):
        return ops.matching_cost(*args, *weights)


def float64_cost(args, weights=WEIGHTS):
    x, t, c, labels, allowed, counts = args
    return reference.matching_cost(x.double(), t.double(), c.double(), labels, allowed, counts, *weights)


def assert_same_policy(got, expected, atol=2e-5, rtol=1e-5):
    """Same NaN and ±inf positions; finite values close to float64."""
    assert torch.equal(got.isnan(), expected.isnan()), f"NaN positions differ:\n{got}\n{expected}"
    assert torch.equal(got.isposinf(), expected.isposinf()), f"+inf positions differ:\n{got}\n{expected}"
    assert not got.isneginf().any(), "no cost is -inf"
    finite = expected.isfinite()
    err = (got.double()[finite] - expected[finite]).abs()
    bound = atol + rtol * expected[finite].abs()
    assert bool((err <= bound).all()), f"max error {err.max()} (bound {bound.min()})"


@pytest.mark.parametrize("backend", FAST)
@given(args=problems())
def test_matches_float64(backend, args):
    assert_same_policy(run(backend, args), float64_cost(args))


@pytest.mark.parametrize("backend", FAST)
@given(args=problems(dtypes=(torch.float32, torch.float64)))
def test_class_term_precision(backend, args):
    """Issue 13: a float32 softmax through a rounded log-sum-exp lost |max|·eps (1e-3 at logits of 1e5)."""
    expected = float64_cost(args, CLASS_ONLY)
    assert_same_policy(run(backend, args, CLASS_ONLY), expected, atol=1e-6, rtol=0)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=8)
@given(args=problems(dtypes=(torch.float32,)), class_only=st.booleans())
def test_triton_matches_float64(args, class_only):
    weights = CLASS_ONLY if class_only else WEIGHTS
    atol = 1e-6 if class_only else 2e-5
    assert_same_policy(run("triton", args, weights), float64_cost(args, weights), atol=atol)


@pytest.mark.parametrize("backend", FAST)
@given(args=problems(special=(math.nan, math.inf, -math.inf)))
def test_nonfinite_policy(backend, args):
    """NaN/±inf anywhere: the policy of reference.matching_cost, identical on every backend (and in float64)."""
    expected = float64_cost(args)
    x, t, c, labels, allowed, counts = args
    real = torch.arange(t.shape[1])[None, None, :] < counts[:, None, None]
    undefined = reference.matching_cost_undefined(x, t, c) & allowed & real
    assert torch.equal(expected.isnan(), undefined), "the float64 reference follows the policy"
    assert_same_policy(run(backend, args), expected)
    assert_same_policy(run("reference", args), expected)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=6)
@given(args=problems(dtypes=(torch.float32,), special=(math.nan, math.inf, -math.inf)))
def test_triton_nonfinite_policy(args):
    assert_same_policy(run("triton", args), float64_cost(args))


@given(args=problems(dtypes=(torch.float32, torch.float64)))
def test_meta_tensors_give_the_shape(args):
    meta = [a.to("meta") for a in args]
    out = ops.matching_cost(*meta)
    assert out.device.type == "meta"
    assert out.shape == args[4].shape
    assert out.dtype == (torch.float64 if args[0].dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_large_logits_softmax_exactly_half(backend):
    """Issue 13: [1e4, 1e4, −1e4] gave −0.49989 instead of −0.5 (log-sum-exp rounded at the scale 1e4)."""
    args = (torch.zeros(1, 1, 3), torch.ones(1, 1, 3), torch.tensor([[[1e4, 1e4, -1e4]]]), torch.zeros(1, 1,
            dtype=torch.long), torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.long))
    assert run(backend, args, (1.0, 0.0, 0.0)).item() == pytest.approx(-0.5, abs=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_class_logit_is_nan(backend, bad):
    """Issue 13: a NaN (or +inf) class logit gave −inf on the native and Triton backends."""
    args = (torch.zeros(1, 1, 3), torch.ones(1, 1, 3), torch.tensor([[[bad, 1.0, 2.0]]]), torch.zeros(1, 1,
            dtype=torch.long), torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.long))
    assert run(backend, args).isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_labels_and_counts_are_nan_not_out_of_bounds_reads(backend):
    """Values the op cannot check without reading them back to the host: a real ground truth's label outside
    [0, K+1) costs NaN for its allowed pairs (padding labels are ignored); a count outside [0, G] makes every
    column real and every allowed pair NaN. Identical on every backend; nothing is read out of bounds."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 10, generator=gen)
    t = (torch.rand(3, 2, 10, generator=gen) > 0.5).float()
    c = torch.randn(3, 4, 5, generator=gen)
    labels = torch.tensor([[0, 7], [-3, 99], [1, 2]])  # sample 0: label 7 real; sample 1: only padding is bad
    allowed = torch.rand(3, 4, 2, generator=gen) > 0.3
    allowed[:, 0] = True
    counts = torch.tensor([2, 0, 5])  # sample 2: more than G = 2
    got = run(backend, (x, t, c, labels, allowed, counts))
    assert torch.equal(got[0, :, 1].isnan(), allowed[0, :, 1]) and not got[0, :, 0].isnan().any()
    assert (got[1] == math.inf).all()
    assert torch.equal(got[2].isnan(), allowed[2]) and (got[2][~allowed[2]] == math.inf).all()
    assert_same_policy(got, float64_cost((x, t, c, labels, allowed, counts)))
    counts[2] = -1
    got = run(backend, (x, t, c, labels, allowed, counts))
    assert torch.equal(got[2].isnan(), allowed[2])


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=5)
@given(args=problems(dtypes=(torch.float32,), special=(math.nan, math.inf, -math.inf)), splits=st.integers(2, 4))
def test_triton_split_over_points_matches(args, splits):
    """The two-launch path (points split over programs, partial sums added in a fixed order)."""
    from coavs.kernels import matching_cost as kernel

    x, t, c, labels, allowed, counts = args
    got = kernel.matching_cost(x, t, c, labels, allowed, counts, *WEIGHTS, splits=splits)
    assert_same_policy(got, float64_cost(args))
