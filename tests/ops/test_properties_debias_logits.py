"""Property tests of ``debias_logits``: every backend against the reference, forward and backward, on random
shapes (0 and 1 in every dimension), random memory layouts, extreme values and NaN/±inf.

Non-finite policy (the reference's, identical on every backend): elementwise IEEE arithmetic of
``(1 + a)·x − a·x_b`` in float32 (float64), so a NaN propagates to its own element only, inf − inf is NaN, and a
finite result that overflows the input dtype is ±inf. Under the uncertainty strategy a mask confidence of a NaN
logit is NaN (its element only), and a class row whose softmax is undefined (a NaN or +inf biased logit) has
confidence 1 (the entropy's ``nan_to_num``), so only the non-finite elements themselves become non-finite.

Gradients follow the same rule (tested with NaN/±inf in the inputs and in the upstream gradient): elementwise
``dx = (1 + a)·g`` and ``dx_b = −a·g`` with the forward's strength ``a`` (no gradient through it), so a NaN or ±inf
upstream gradient, or a NaN strength (uncertainty, NaN biased mask logit), makes its own element non-finite only,
on every backend alike; an upstream gradient of 0 against an infinite strength cannot occur (``a`` is finite
unless NaN).
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

BACKENDS = backends_for("debias_logits", "cpu")
FAST = [b for b in BACKENDS if b not in ("triton", "reference")]
SPECIAL = (math.nan, math.inf, -math.inf)


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), special=False,
             max_size=6):
    dtype = draw(st.sampled_from(dtypes))
    mask_shape = draw(st.lists(sizes(max_size), min_size=1, max_size=4))
    cls_shape = [draw(sizes(3)), draw(sizes(max_size)), draw(st.integers(1, 6))]
    big = {torch.float16: 1e4, torch.bfloat16: 1e30}.get(dtype, 1e30)  # near the top of the dtype's range
    scale = st.sampled_from([1.0, 30.0, big])
    extra = {"special": SPECIAL, "special_fraction": 0.1} if special else {}
    mask, mask_b = (draw(tensors(mask_shape, dtype, scale=scale, **extra)) for _ in range(2))
    cls, cls_b = (draw(tensors(cls_shape, dtype, scale=scale, **extra)) for _ in range(2))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    scheme = draw(st.sampled_from(["separate", "mask", "class"]))
    strategy = draw(st.sampled_from(["fixed", "uncertainty"]))
    return mask, cls, mask_b, cls_b, alpha, scheme, strategy


def forward_backward(backend, args, seed=0):
    mask, cls, mask_b, cls_b, alpha, scheme, strategy = args
    leaves = [t.detach().clone().requires_grad_(True) for t in (mask, cls, mask_b, cls_b)]
    with ops.use_backend(backend):
        out = ops.debias_logits(*leaves, alpha=alpha, scheme=scheme, strategy=strategy)
        gen = torch.Generator().manual_seed(seed)
        loss = sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in out)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [o.detach() for o in out], grads


def check(backend, args):
    out, grads = forward_backward(backend, args)
    ref_out, ref_grads = forward_backward("reference", args)
    dtype = args[0].dtype
    for name, got, expected in zip(("mask", "cls"), out, ref_out):
        assert_same(got, expected, dtype, what=f"{backend} {name}")
    for name, got, expected in zip(("d_mask", "d_cls", "d_mask_biased", "d_cls_biased"), grads, ref_grads):
        assert_same(got, expected, dtype, what=f"{backend} {name}")


def check_against_formula(args):
    """The reference itself against the formula in float64 (finite, moderate values)."""
    mask, cls, mask_b, cls_b, alpha, scheme, strategy = args
    out = reference.debias_logits(mask, cls, mask_b, cls_b, alpha, strategy == "uncertainty")
    a_mask = alpha * reference.mask_confidence(mask_b).double() if strategy == "uncertainty" else alpha
    expected = ((1 + a_mask) * mask.double() - a_mask * mask_b.double()).to(mask.dtype)
    assert_same(out[0], expected, mask.dtype, scale=2, what="reference vs float64")


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


@given(args=problems(dtypes=(torch.float32,)))
def test_reference_matches_float64(args):
    mask, *rest = args
    if mask.numel() == 0 or mask.abs().max() < 1e6:  # the float32 formula is exact enough away from overflow
        check_against_formula(args)


@given(args=problems(dtypes=(torch.float32, torch.float16)))
def test_meta_tensors_give_the_shape(args):
    mask, cls, mask_b, cls_b, alpha, scheme, strategy = args
    out = ops.debias_logits(*(t.to("meta") for t in (mask, cls, mask_b, cls_b)), alpha=alpha, scheme=scheme,
                            strategy=strategy)
    assert out.mask.shape == mask.shape and out.cls.shape == cls.shape
    assert out.mask.dtype == mask.dtype and out.cls.dtype == cls.dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_confidence_is_float64(backend):
    """The reference computed the uncertainty confidence in float32 for float64 inputs (1e-8 off the native)."""
    gen = torch.Generator().manual_seed(0)
    mask, mask_b = (torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    cls, cls_b = (torch.randn(2, 3, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    with ops.use_backend(backend):
        out = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=0.7, strategy="uncertainty")
    a_mask = 0.7 * (2 * torch.sigmoid(mask_b) - 1).abs()
    p = torch.softmax(cls_b, -1)
    a_cls = 0.7 * (1 + (p * p.log()).sum(-1, keepdim=True) / math.log(6))
    torch.testing.assert_close(out.mask, (1 + a_mask) * mask - a_mask * mask_b, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.cls, (1 + a_cls) * cls - a_cls * cls_b, atol=1e-12, rtol=1e-12)


@st.composite
def gradient_problems(draw, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64)):
    """Inputs and upstream gradients, both with NaN/±inf sprinkled in."""
    args = draw(problems(dtypes=dtypes, special=True))
    mask, cls = args[0], args[1]
    special = {"special": SPECIAL, "special_fraction": 0.15}
    grads = (draw(tensors(mask.shape, mask.dtype, **special)), draw(tensors(cls.shape, cls.dtype, **special)))
    return args, grads


def gradients(backend, args, grads):
    mask, cls, mask_b, cls_b, alpha, scheme, strategy = args
    leaves = [t.detach().clone().requires_grad_(True) for t in (mask, cls, mask_b, cls_b)]
    with ops.use_backend(backend):
        out = ops.debias_logits(*leaves, alpha=alpha, scheme=scheme, strategy=strategy)
        pairs = [(o, g) for o, g, used in zip(out, grads, (scheme != "class", scheme != "mask")) if used]
        return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True,
                                   materialize_grads=True)


@pytest.mark.parametrize("backend", FAST)
@given(problem=gradient_problems())
def test_gradient_nonfinite_policy(backend, problem):
    """NaN/±inf in the inputs and in the upstream gradients: the reference's gradients, NaN for NaN."""
    args, grads = problem
    for name, got, expected in zip(("d_mask", "d_cls", "d_mask_biased", "d_cls_biased"), gradients(backend, *problem),
                                   gradients("reference", *problem)):
        assert_same(got, expected, args[0].dtype, what=f"{backend} {name}")


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=6)
@given(problem=gradient_problems(dtypes=(torch.float32, torch.float16)))
def test_triton_gradient_nonfinite_policy(problem):
    args, grads = problem
    for name, got, expected in zip(("d_mask", "d_cls", "d_mask_biased", "d_cls_biased"), gradients("triton", *problem),
                                   gradients("reference", *problem)):
        assert_same(got, expected, args[0].dtype, what=f"triton {name}")
