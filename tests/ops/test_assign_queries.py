import pytest
import torch

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.assign_queries import assign_queries_backward_op, assign_queries_op
from tests.support.helpers import FLOAT_DTYPES, assert_close, backends_for, non_contiguous

# The Triton interpreter converts loop bounds with a NumPy call that NumPy deprecates; not our code.

# (B, S, d, Q, D): S·d = Q and S·d < Q, d in {1, 2, 5, 10}, B = 1, empty batch, size 1.
SHAPES = [
    (1, 4, 2, 8, 5),
    (3, 3, 2, 10, 7),
    (2, 5, 1, 5, 3),
    (2, 2, 5, 12, 4),
    (2, 1, 10, 10, 6),
    (0, 3, 2, 6, 4),
    (1, 1, 1, 1, 1),
]
CPU_BACKENDS = backends_for("assign_queries", "cpu")


def make_scores(batch, num_markers, dtype=torch.float32, device="cpu"):
    """Random scores with the cases that matter: a row with no marker over 0.4 (fallback), a row whose top score
    is tied (first wins), and scores exactly at the threshold."""
    scores = torch.rand(batch, num_markers, device=device)
    if batch >= 2:
        scores[1] = torch.rand(num_markers, device=device) * 0.35
        if num_markers >= 3:
            scores[1, 1] = scores[1, 2] = 0.39  # tied top below the threshold: marker 1 is the fallback
    if batch >= 3 and num_markers >= 2:
        scores[2, 0] = 0.4  # exactly at the threshold: present (>=)
    return scores.to(dtype)


def make_inputs(shape, dtype=torch.float32, device="cpu", score_dtype=None):
    batch, num_markers, dilation, num_queries, width = shape
    scores = make_scores(batch, num_markers, score_dtype or dtype, device)
    audio = torch.randn(batch, width, device=device).to(dtype)
    query_feat = torch.randn(num_queries, width, device=device).to(dtype)
    return scores, audio, query_feat, dilation


def reference_float32(scores, audio, query_feat, dilation, threshold, dormant_gate, soft):
    """Reference in float32 on the (possibly low-precision) inputs; the gate and active flags are exact."""
    queries, gate, active = reference.assign_queries(scores, audio.float(), query_feat.float(), dilation, threshold,
                                                     dormant_gate, soft)
    return queries.to(query_feat.dtype), gate, active


def test_cpu_backends():
    assert {"reference", "native"} <= set(CPU_BACKENDS)
    if not torch.cuda.is_available():
        assert "triton" in CPU_BACKENDS


def test_semantics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.3]])
    audio = torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    query_feat = torch.arange(14.0).reshape(7, 2)
    out = ops.assign_queries(scores, audio, query_feat, dilation=2, threshold=0.4, dormant_gate=0.25)
    # Row 0: markers 0 and 2 present. Row 1: none reaches 0.4, markers 1 and 2 tie at the top: 1 (first) wins.
    expected_active = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(out.active, expected_active)
    assert torch.equal(out.query_marker, torch.tensor([0, 0, 1, 1, 2, 2, -1]))
    expected_gate = torch.where(expected_active, 1.0, 0.25)
    assert torch.equal(out.gate, expected_gate)
    assert_close(out.queries, query_feat + expected_gate[..., None] * audio[:, None, :])
    soft = ops.assign_queries(scores, audio, query_feat, dilation=2, soft=True)
    assert torch.equal(soft.gate[0], torch.tensor([0.9, 0.9, 0, 0, 0.5, 0.5, 0]))
    assert torch.equal(soft.gate[1], torch.tensor([0, 0, 0.3, 0.3, 0, 0, 0]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(backend, dtype, soft, shape):
    scores, audio, query_feat, dilation = make_inputs(shape, dtype)
    expected = reference_float32(scores, audio, query_feat, dilation, 0.4, 0.1, soft)
    with ops.use_backend(backend):
        got = ops.assign_queries(scores, audio, query_feat, dilation, 0.4, 0.1, soft)
    assert got.queries.shape == (shape[0], shape[3], shape[4]) and got.queries.dtype == dtype
    assert got.gate.dtype == scores.dtype and got.active.dtype == torch.bool
    assert torch.equal(got.active, expected[2]), f"{backend} active"
    assert torch.equal(got.gate, expected[1]), f"{backend} gate"
    assert_close(got.queries, expected[0], dtype, what=f"{backend} queries")
    if shape[0]:
        assert got.active.any(1).all(), "every sample has active queries"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixed_score_dtype(backend):
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7), torch.bfloat16, score_dtype=torch.float32)
    expected = reference_float32(scores, audio, query_feat, dilation, 0.4, 0.0, True)
    with ops.use_backend(backend):
        got = ops.assign_queries(scores, audio, query_feat, dilation, soft=True)
    assert got.gate.dtype == torch.float32 and got.queries.dtype == torch.bfloat16
    assert torch.equal(got.gate, expected[1])
    assert_close(got.queries, expected[0], torch.bfloat16)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_backward_matches_reference_autograd(backend, dtype, soft):
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7), dtype)
    leaves = [t.clone().requires_grad_() for t in (scores, audio, query_feat)]
    ref_leaves = [t.float().clone().requires_grad_() for t in (scores, audio, query_feat)]
    grad_q = torch.randn(3, 10, 7).to(dtype)
    grad_gate = torch.randn(3, 10).to(dtype)
    with ops.use_backend(backend):
        out = ops.assign_queries(leaves[0], leaves[1], leaves[2], dilation, 0.4, 0.1, soft)
    torch.autograd.backward([out.queries, out.gate], [grad_q, grad_gate], inputs=leaves if soft else leaves[1:])
    ref_q, ref_gate, _ = reference.assign_queries(*ref_leaves, dilation, 0.4, 0.1, soft)
    if soft:
        torch.autograd.backward([ref_q, ref_gate], [grad_q.float(), grad_gate.float()], inputs=ref_leaves)
    else:  # the hard gate is a constant
        torch.autograd.backward([ref_q], [grad_q.float()], inputs=ref_leaves[1:])
    names = ("scores", "audio", "query_feat")
    for leaf, ref_leaf, name in zip(leaves, ref_leaves, names):
        if name == "scores" and not soft:
            assert leaf.grad is None
            continue
        assert_close(leaf.grad, ref_leaf.grad.to(dtype), dtype, scale=4, what=f"{backend} d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[5]])
def test_backward_op_matches_reference(backend, shape):
    scores, audio, query_feat, dilation = make_inputs(shape)
    _, gate, active = reference.assign_queries(scores, audio, query_feat, dilation, 0.4, 0.0, True)
    grad_q = torch.randn(shape[0], shape[3], shape[4])
    grad_gate = torch.randn(shape[0], shape[3])
    for soft in (False, True):
        expected = reference.assign_queries_backward(grad_q, grad_gate, audio, gate, active, shape[1], dilation, soft)
        with ops.use_backend(backend):
            got = assign_queries_backward_op(grad_q, grad_gate, audio, gate, active, shape[1], dilation, soft)
        for g, e, name in zip(got, expected, ("d_scores", "d_audio", "d_query_feat")):
            assert g.shape == e.shape
            assert_close(g, e, what=f"{backend} {name} soft={soft}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7))
    scores, audio, query_feat = (non_contiguous(t) for t in (scores, audio, query_feat))
    assert not audio.is_contiguous()
    expected = reference.assign_queries(scores.contiguous(), audio.contiguous(), query_feat.contiguous(), dilation,
                                        0.4, 0.0, True)
    with ops.use_backend(backend):
        got = ops.assign_queries(scores, audio, query_feat, dilation, soft=True)
    assert torch.equal(got.active, expected[2])
    assert_close(got.queries, expected[0])


def _gradcheck_inputs():
    scores, audio, query_feat, dilation = make_inputs((2, 3, 2, 7, 3), torch.float64)
    scores = scores.clamp(0.05, 0.95)  # away from the threshold: presence must not flip under perturbation
    scores = torch.where((scores - 0.4).abs() < 0.05, scores + 0.1, scores)
    return [t.requires_grad_() for t in (scores, audio, query_feat)], dilation


@pytest.mark.parametrize("soft", [False, True])
def test_float64_gradcheck_on_reference(soft):
    (scores, audio, query_feat), dilation = _gradcheck_inputs()
    leaves = (scores, audio, query_feat) if soft else (audio, query_feat)

    def fn(*xs):
        s, a, q = xs if soft else (scores.detach(), *xs)
        return reference.assign_queries(s, a, q, dilation, 0.4, 0.1, soft)[:2]

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("soft", [False, True])
def test_float64_gradcheck_on_op(backend, soft):
    (scores, audio, query_feat), dilation = _gradcheck_inputs()
    leaves = (scores, audio, query_feat) if soft else (audio, query_feat)

    def fn(*xs):
        s, a, q = xs if soft else (scores.detach(), *xs)
        out = ops.assign_queries(s, a, q, dilation, 0.4, 0.1, soft)
        return out.queries, out.gate

    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7))
    args = [t.requires_grad_() for t in (scores, audio, query_feat)]
    with ops.use_backend(backend):
        torch.library.opcheck(assign_queries_op, (*args, dilation, 0.4, 0.1, True))
        _, gate, active = assign_queries_op(*[t.detach() for t in args], dilation, 0.4, 0.1, True)
        torch.library.opcheck(assign_queries_backward_op,
                              (torch.randn(3, 10, 7), torch.randn(3, 10), audio.detach(), gate, active, 3, dilation,
                               True))


def test_opcheck_native_kernels_directly():
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7))
    torch.library.opcheck(torch.ops.coavs_C.assign_queries.default, (scores, audio, query_feat, dilation, 0.4, 0.0,
                                                                      False))
    _, gate, active = torch.ops.coavs_C.assign_queries(scores, audio, query_feat, dilation, 0.4, 0.0, True)
    torch.library.opcheck(torch.ops.coavs_C.assign_queries_backward.default,
                          (torch.randn(3, 10, 7), torch.randn(3, 10), audio, gate, active, 3, dilation, True))


def test_torch_compile_fullgraph():
    scores, audio, query_feat, dilation = make_inputs((3, 3, 2, 10, 7))
    leaves = [t.requires_grad_() for t in (scores, audio, query_feat)]

    def loss_fn(s, a, q):
        out = ops.assign_queries(s, a, q, dilation, soft=True)
        return (out.queries.tanh() * out.active[..., None]).sum() + out.gate.square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves)
    loss.backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    expected = loss_fn(*leaves)
    expected.backward()
    assert_close(loss, expected)
    for g, t in zip(grads, leaves):
        assert_close(g, t.grad)


def test_query_markers():
    assert torch.equal(ops.query_markers(7, 3, 2), torch.tensor([0, 0, 1, 1, 2, 2, -1]))
    assert torch.equal(ops.query_markers(3, 3, 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="exceeds the number of queries"):
        ops.query_markers(5, 3, 2)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.update(dilation=3), ValueError, r"S·d = 3·3 = 9 exceeds the number of queries Q = 8"),
        (lambda a: a.update(dilation=0), ValueError, "dilation must be >= 1"),
        (lambda a: a.update(dilation=2.0), TypeError, "dilation must be an int"),
        (lambda a: a.update(scores=a["scores"][:, :0]), ValueError, "at least one marker"),
        (lambda a: a.update(scores=a["scores"][0]), ValueError, r"scores must be \[B,S\]"),
        (lambda a: a.update(audio=a["audio"][:1]), ValueError, "audio must have the batch size of scores"),
        (lambda a: a.update(audio=a["audio"][:, :3]), ValueError, "audio must have the width D of query_feat"),
        (lambda a: a.update(audio=a["audio"].double()), ValueError, "audio must have the dtype of query_feat"),
        (lambda a: a.update(query_feat=a["query_feat"][None]), ValueError, r"query_feat must be \[Q,D\]"),
        (lambda a: a.update(scores=a["scores"].to("meta")), ValueError, "scores must be on the device"),
        (lambda a: a.update(scores=(a["scores"] > 0.5)), TypeError, "scores must be a floating-point"),
        (lambda a: a.update(threshold=float("nan")), ValueError, "threshold must be finite"),
        (lambda a: a.update(dormant_gate="0"), TypeError, "dormant_gate must be a float"),
        (lambda a: a.update(soft=1), TypeError, "soft must be a bool"),
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    scores, audio, query_feat, _ = make_inputs((2, 3, 2, 8, 4))
    args = dict(scores=scores, audio=audio, query_feat=query_feat, dilation=2, threshold=0.4, dormant_gate=0.0,
                soft=False)
    change(args)
    with pytest.raises(error, match=message):
        ops.assign_queries(**args)


def test_native_kernel_checks_its_arguments():
    scores, audio, query_feat, _ = make_inputs((2, 3, 2, 8, 4))
    with pytest.raises(RuntimeError, match="exceeds the number of queries"):
        torch.ops.coavs_C.assign_queries(scores, audio, query_feat, 3, 0.4, 0.0, False)
    with pytest.raises(RuntimeError, match="audio must have the batch size of scores"):
        torch.ops.coavs_C.assign_queries(scores, audio[:1], query_feat, 2, 0.4, 0.0, False)


def test_default_backend_on_cpu_is_native():
    assert ops.select("assign_queries", torch.device("cpu")) == "native"


# ------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(20, 20, 5, 100, 256), (20, 10, 10, 100, 256), (1, 71, 1, 100, 256), (0, 3, 2, 6, 4), (7, 3, 2, 9, 33)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_forward_backward_match_reference(backend, dtype, soft, shape):
    scores, audio, query_feat, dilation = make_inputs(shape, dtype, device="cuda")
    expected = reference_float32(scores, audio, query_feat, dilation, 0.4, 0.1, soft)
    with ops.use_backend(backend):
        got = assign_queries_op(scores, audio, query_feat, dilation, 0.4, 0.1, soft)
    assert torch.equal(got[2], expected[2]) and torch.equal(got[1], expected[1])
    assert_close(got[0], expected[0], dtype)
    grad_q = torch.randn(shape[0], shape[3], shape[4], device="cuda").to(dtype)
    grad_gate = torch.randn(shape[0], shape[3], device="cuda").to(dtype)
    ref = reference.assign_queries_backward(grad_q.float(), grad_gate.float(), audio.float(), expected[1].float(),
                                            expected[2], shape[1], dilation, soft)
    with ops.use_backend(backend):
        d_got = assign_queries_backward_op(grad_q, grad_gate, audio, got[1], got[2], shape[1], dilation, soft)
    for g, e in zip(d_got, ref):
        assert_close(g, e.to(dtype), dtype, scale=4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_opcheck_and_compile(backend):
    scores, audio, query_feat, dilation = make_inputs((4, 3, 2, 10, 32), device="cuda")
    args = [t.requires_grad_() for t in (scores, audio, query_feat)]
    with ops.use_backend(backend):
        torch.library.opcheck(assign_queries_op, (*args, dilation, 0.4, 0.1, True))
        for t in args:
            t.grad = None
        compiled = torch.compile(lambda s, a, q: ops.assign_queries(s, a, q, dilation, soft=True).queries.sum(),
                                 fullgraph=True)
        compiled(*args).backward()
    ref_leaves = [t.detach().clone().requires_grad_() for t in args]
    reference.assign_queries(*ref_leaves, dilation, 0.4, 0.0, True)[0].sum().backward()
    for t, r in zip(args, ref_leaves):
        assert_close(t.grad, r.grad, scale=4)
