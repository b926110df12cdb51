import math

import pytest
import torch

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.debias_logits import debias_logits_op
from tests.support.helpers import FLOAT_DTYPES, assert_close, backends_for, non_contiguous

MASK_SHAPES = [(0, 3, 4, 4), (1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 17, 13), (1, 2, 33, 31)]
CLS_WIDTHS = [1, 2, 7, 72]
CPU_BACKENDS = backends_for("debias_logits", "cpu")


def make_inputs(mask_shape, width, dtype=torch.float32, device="cpu", scale=3.0):
    b, q = mask_shape[:2]
    mask = torch.randn(mask_shape, device=device) * scale
    cls = torch.randn(b, q, width, device=device) * scale
    mask_b = torch.randn(mask_shape, device=device) * scale
    cls_b = torch.randn(b, q, width, device=device) * scale
    return [t.to(dtype) for t in (mask, cls, mask_b, cls_b)]


def reference_float32(inputs, alpha, uncertainty):
    """Reference evaluated in float32 on the (possibly low-precision) inputs, cast back."""
    outs = reference.debias_logits(*[t.float() for t in inputs], alpha, uncertainty)
    return [o.to(inputs[0].dtype) for o in outs]


def test_cpu_has_reference_native_and_triton_under_interpreter():
    assert "reference" in CPU_BACKENDS
    assert "native" in CPU_BACKENDS, "the C++ extension should be built for the tests"
    if not torch.cuda.is_available():
        assert "triton" in CPU_BACKENDS


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("uncertainty", [False, True])
@pytest.mark.parametrize("shape_index", range(len(MASK_SHAPES)))
def test_forward_matches_reference(backend, dtype, uncertainty, shape_index):
    shape = MASK_SHAPES[shape_index]
    width = CLS_WIDTHS[shape_index % len(CLS_WIDTHS)]
    inputs = make_inputs(shape, width, dtype)
    expected = reference_float32(inputs, 0.7, uncertainty)
    with ops.use_backend(backend):
        got = debias_logits_op(*inputs, 0.7, uncertainty)
    for g, e, name in zip(got, expected, ("mask", "cls")):
        assert g.dtype == dtype and g.shape == e.shape
        assert_close(g, e, dtype, what=f"{backend} {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("uncertainty", [False, True])
def test_backward_matches_reference_autograd(backend, dtype, uncertainty):
    inputs = make_inputs((2, 3, 6, 5), 9, dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref_leaves = [t.float().clone().requires_grad_() for t in inputs]
    grads = [torch.randn_like(inputs[0].float()).to(dtype), torch.randn_like(inputs[1].float()).to(dtype)]
    with ops.use_backend(backend):
        out = ops.debias_logits(*leaves, alpha=1.3, strategy="uncertainty" if uncertainty else "fixed")
    torch.autograd.backward([out.mask, out.cls], grads)
    ref = reference.debias_logits(*ref_leaves, 1.3, uncertainty)
    torch.autograd.backward(list(ref), [g.float() for g in grads])
    order = ("mask", "cls", "mask_biased", "cls_biased")
    for leaf, ref_leaf, name in zip(leaves, ref_leaves, order):
        assert_close(leaf.grad, ref_leaf.grad.to(dtype), dtype, scale=2, what=f"{backend} d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    inputs = [non_contiguous(t) for t in make_inputs((2, 3, 7, 5), 6)]
    assert not inputs[0].is_contiguous()
    expected = reference_float32([t.contiguous() for t in inputs], 1.0, True)
    with ops.use_backend(backend):
        got = debias_logits_op(*inputs, 1.0, True)
    for g, e in zip(got, expected):
        assert_close(g, e)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_extreme_logits_stay_finite(backend):
    mask = torch.tensor([[[[-1e4, 0.0, 1e4, 88.0]]]])
    cls = torch.tensor([[[-1e4, 0.0, 1e4], [-float("inf"), 2.0, 2.0]]])
    inputs = [mask, cls, mask.flip(-1), cls.flip(-1)]
    expected = reference.debias_logits(*inputs, 1.0, True)
    with ops.use_backend(backend):
        got = debias_logits_op(*inputs, 1.0, True)
    assert_close(got[0], expected[0])
    assert_close(got[1], expected[1])


def _gradcheck_args(uncertainty):
    """Float64 leaves and the function to check. Under uncertainty the confidence of x_b carries no gradient by
    definition, so only x varies there (numerical differences in x_b would see the confidence move)."""
    mask, cls, mask_b, cls_b = [t.double().requires_grad_() for t in make_inputs((1, 2, 3, 3), 4, scale=1.0)]
    if uncertainty:
        return (mask, cls), lambda m, c, f: tuple(f(m, c, mask_b.detach(), cls_b.detach(), 0.8, True))
    return (mask, cls, mask_b, cls_b), lambda m, c, mb, cb, f: tuple(f(m, c, mb, cb, 0.8, False))


@pytest.mark.parametrize("uncertainty", [False, True])
def test_float64_gradcheck_on_reference(uncertainty):
    leaves, fn = _gradcheck_args(uncertainty)
    assert torch.autograd.gradcheck(lambda *xs: fn(*xs, reference.debias_logits), leaves)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("uncertainty", [False, True])
def test_float64_gradcheck_on_op(backend, uncertainty):
    leaves, fn = _gradcheck_args(uncertainty)
    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *xs: fn(*xs, debias_logits_op), leaves)


def test_uncertainty_gradient_treats_confidence_as_constant():
    mask, cls, mask_b, cls_b = [t.double() for t in make_inputs((1, 2, 3, 3), 5)]
    leaves = [t.clone().requires_grad_() for t in (mask, cls, mask_b, cls_b)]
    out = ops.debias_logits(*leaves, alpha=0.5, strategy="uncertainty")
    (out.mask.sum() + out.cls.sum()).backward()
    a_mask = 0.5 * (2 * torch.sigmoid(mask_b) - 1).abs()
    p = torch.softmax(cls_b, -1)
    a_cls = 0.5 * (1 - (-(p * p.log()).sum(-1, keepdim=True)) / math.log(5))
    torch.testing.assert_close(leaves[0].grad, 1 + a_mask)
    torch.testing.assert_close(leaves[2].grad, -a_mask)
    torch.testing.assert_close(leaves[1].grad, (1 + a_cls).expand_as(cls))
    torch.testing.assert_close(leaves[3].grad, (-a_cls).expand_as(cls))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    inputs = [t.requires_grad_() for t in make_inputs((2, 3, 4, 5), 6)]
    with ops.use_backend(backend):
        for uncertainty in (False, True):
            torch.library.opcheck(debias_logits_op, (*inputs, 0.9, uncertainty))
        torch.library.opcheck(torch.ops.coavs.debias_logits_backward.default,
                              (inputs[0].detach(), inputs[1].detach(), inputs[2].detach(), inputs[3].detach(), 0.9,
                               True))


def test_opcheck_native_kernels_directly():
    inputs = make_inputs((2, 3, 4, 5), 6)
    torch.library.opcheck(torch.ops.coavs_C.debias_logits.default, (*inputs, 0.5, True))
    torch.library.opcheck(torch.ops.coavs_C.debias_logits_backward.default, (*inputs, 0.5, True))


def test_torch_compile_fullgraph():
    inputs = [t.requires_grad_() for t in make_inputs((2, 3, 8, 8), 5)]

    def loss_fn(mask, cls, mask_b, cls_b):
        out = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=1.0, strategy="uncertainty")
        return out.mask.sigmoid().mean() + out.cls.logsumexp(-1).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(*inputs)
    loss.backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    loss_fn(*inputs).backward()
    assert_close(loss, loss_fn(*inputs))
    for g, t in zip(grads, inputs):
        assert_close(g, t.grad)


@pytest.mark.parametrize("scheme", ["mask", "class", "separate"])
def test_schemes_leave_the_other_part_alone(scheme):
    mask, cls, mask_b, cls_b = make_inputs((2, 3, 4, 4), 5)
    out = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=1.0, scheme=scheme)
    ref_mask, ref_cls = reference.debias_logits(mask, cls, mask_b, cls_b, 1.0, False)
    assert_close(out.mask, ref_mask if scheme != "class" else mask)
    assert_close(out.cls, ref_cls if scheme != "mask" else cls)
    if scheme == "mask":
        assert out.cls is cls
    if scheme == "class":
        assert out.mask is mask


def test_binary_mask_scheme_without_class_logits():
    mask, _, mask_b, _ = make_inputs((2, 1, 5, 5), 2)
    out = ops.debias_logits(mask, None, mask_b, None, alpha=1.0, scheme="mask")
    assert out.cls is None
    assert_close(out.mask, 2 * mask - mask_b)


@pytest.mark.parametrize("strategy", ["fixed", "uncertainty"])
def test_overall_scheme(strategy):
    mask, cls, mask_b, cls_b = make_inputs((2, 3, 4, 4), 5)
    out = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=0.5, scheme="overall", strategy=strategy)
    s = reference.overall_scores(mask, cls)
    sb = reference.overall_scores(mask_b, cls_b)
    a = 0.5 * (2 * sb.clamp(0, 1) - 1).abs() if strategy == "uncertainty" else 0.5
    assert out.mask.shape == (2, 4, 4, 4)
    assert_close(out.mask, (1 + a) * s - a * sb)


def test_alpha_one_fixed_is_two_x_minus_xb():
    mask, cls, mask_b, cls_b = make_inputs((1, 2, 3, 3), 4)
    out = ops.debias_logits(mask, cls, mask_b, cls_b)
    assert_close(out.mask, 2 * mask - mask_b)
    assert_close(out.cls, 2 * cls - cls_b)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(mask_biased=a["mask_biased"][:, :, :-1]), "mask_biased must have the shape of mask"),
        (lambda a: a.update(cls_biased=a["cls_biased"][:1].expand(2, -1, -1)), None),
        (lambda a: a.update(cls_biased=a["cls_biased"].double()), "cls_biased must have the dtype of cls"),
        (lambda a: a.update(cls=a["cls"].double(), cls_biased=a["cls_biased"].double()), "must share a dtype"),
        (lambda a: a.update(mask_biased=a["mask_biased"].to("meta")), "mask_biased must be on the device of mask"),
        (lambda a: a.update(scheme="both"), "scheme must be one of"),
        (lambda a: a.update(strategy="adaptive"), "strategy must be one of"),
        (lambda a: a.update(alpha=float("nan")), "alpha must be finite"),
        (lambda a: a.update(alpha=float("inf")), "alpha must be finite"),
        (lambda a: a.update(alpha=-0.5), "alpha must be finite and >= 0"),
        (lambda a: a.update(cls=None), "cls and cls_biased must both be given"),
        (lambda a: a.update(mask=a["mask"].long(), mask_biased=a["mask_biased"].long()), "floating-point"),
        (lambda a: a.update(cls_biased=None, cls=None, scheme="class"), "needs cls"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    mask, cls, mask_b, cls_b = make_inputs((2, 3, 4, 4), 5)
    args = dict(mask=mask, cls=cls, mask_biased=mask_b, cls_biased=cls_b, alpha=1.0, scheme="separate",
                strategy="fixed")
    change(args)
    if message is None:  # a broadcastable but different shape must not be silently broadcast
        args["cls_biased"] = args["cls_biased"][:, :1]
        message = "cls_biased must have the shape of cls"
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        ops.debias_logits(**args)


def test_native_kernel_checks_its_arguments():
    mask, cls, mask_b, cls_b = make_inputs((2, 3, 4, 4), 5)
    with pytest.raises(RuntimeError, match="mask_biased must have the shape of mask"):
        torch.ops.coavs_C.debias_logits(mask, cls, mask_b[:1], cls_b, 1.0, False)
    with pytest.raises(RuntimeError, match="alpha must be finite"):
        torch.ops.coavs_C.debias_logits(mask, cls, mask_b, cls_b, -1.0, False)


def test_forced_unavailable_backend_is_an_error(monkeypatch):
    mask, cls, mask_b, cls_b = make_inputs((1, 1, 2, 2), 3)
    with ops.use_backend("cuda"):
        with pytest.raises(ops.BackendUnavailable, match="backend 'cuda' was forced for coavs.debias_logits"):
            ops.debias_logits(mask, cls, mask_b, cls_b)
    monkeypatch.setenv("COAVS_BACKEND", "fastest")
    with pytest.raises(ops.BackendUnavailable, match="not a backend"):
        ops.debias_logits(mask, cls, mask_b, cls_b)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from coavs.ops import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, reason = _dispatch.availability(_dispatch.REGISTRY["debias_logits"], "triton", "cpu")
    assert not ok and "TRITON_INTERPRET=1" in reason


def test_default_backend_on_cpu_is_native():
    assert ops.select("debias_logits", torch.device("cpu")) == "native"


# ------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(0, 3, 4, 4), (1, 1, 1, 1), (2, 3, 5, 7), (20, 100, 64, 64), (3, 7, 129, 131)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("uncertainty", [False, True])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("width", [1, 72, 1000])
def test_gpu_forward_backward_match_reference(backend, dtype, uncertainty, shape, width):
    inputs = make_inputs(shape, width, dtype, device="cuda")
    expected = reference_float32(inputs, 1.0, uncertainty)
    grads = [torch.randn_like(t) for t in inputs[:2]]
    with ops.use_backend(backend):
        got = debias_logits_op(*inputs, 1.0, uncertainty)
        d_got = torch.ops.coavs.debias_logits_backward(*grads, inputs[2], inputs[3], 1.0, uncertainty)
    for g, e in zip(got, expected):
        assert_close(g, e, dtype)
    d_ref = reference.debias_logits_backward(*[t.float() for t in (*grads, inputs[2], inputs[3])], 1.0, uncertainty)
    for g, e in zip(d_got, d_ref):
        assert_close(g, e.to(dtype), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_opcheck(backend):
    inputs = [t.requires_grad_() for t in make_inputs((2, 3, 4, 5), 6, device="cuda")]
    with ops.use_backend(backend):
        torch.library.opcheck(debias_logits_op, (*inputs, 0.9, True))
