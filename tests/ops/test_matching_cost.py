import math

import pytest
import torch

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.matching_cost import matching_cost_op
from tests.support.helpers import FLOAT_DTYPES, backends_for, non_contiguous
from tests.support.matching import mask2former_cost

# The Triton interpreter converts loop bounds with a NumPy call that NumPy deprecates; not our code.

# (B, Q, P, G, K+1): odd sizes, one ground truth, one point, empty batch, no ground truth, tiles of Q > 32.
SHAPES = [(1, 5, 17, 2, 3), (2, 12, 40, 4, 6), (3, 20, 70, 1, 72), (2, 37, 1, 3, 2), (0, 4, 8, 2, 3), (1, 3, 5, 2, 1),
          (2, 6, 9, 0, 4), (1, 40, 65, 17, 5)]
CPU_BACKENDS = backends_for("matching_cost", "cpu")
# Costs are sums of three terms of order 1..10; kernels sum in float32 in a different order than the reference.
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def make_inputs(shape, dtype=torch.float32, device="cpu", allowed_fraction=0.7):
    batch, num_queries, num_points, num_gt, num_classes = shape
    mask_logits = (torch.randn(batch, num_queries, num_points, device=device) * 4).to(dtype)
    # Bilinearly sampled binary masks take fractional values at edges.
    target = (torch.rand(batch, num_gt, num_points, device=device) > 0.5).float()
    target[..., ::5] = 0.25
    class_logits = (torch.randn(batch, num_queries, num_classes, device=device) * 2).to(dtype)
    labels = torch.randint(0, num_classes, (batch, num_gt), device=device)
    allowed = torch.rand(batch, num_queries, num_gt, device=device) < allowed_fraction
    counts = torch.randint(0, num_gt + 1, (batch,), device=device) if num_gt else torch.zeros(batch, dtype=torch.long,
                                                                                             device=device)
    if batch:
        counts[0] = num_gt
    labels = torch.where(torch.arange(num_gt, device=device) < counts[:, None], labels, -1)  # padding: any value
    return mask_logits, target, class_logits, labels, allowed, counts


def exact_cost(mask_logits, target, class_logits, labels, allowed, counts, w=(2.0, 5.0, 5.0)):
    """Float64 reference on the given (possibly low-precision) values."""
    return reference.matching_cost(mask_logits.double(), target.double(), class_logits.double(), labels, allowed,
                                   counts, *w)


def assert_cost_close(got, expected, tol):
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(got), finite), "+inf exactly where not allowed or padding"
    assert (got[~finite] == math.inf).all()
    torch.testing.assert_close(got[finite].double(), expected[finite], atol=tol * 10, rtol=tol)


def test_reference_equals_mask2former_definitions():
    mask_logits, target, class_logits, _, _, _ = make_inputs((2, 7, 30, 3, 5))
    labels = torch.randint(0, 5, (2, 3))
    allowed = torch.ones(2, 7, 3, dtype=torch.bool)
    counts = torch.tensor([3, 3])
    got = reference.matching_cost(mask_logits.double(), target.double(), class_logits.double(), labels, allowed,
                                  counts, 2.0, 5.0, 5.0)
    for b in range(2):
        torch.testing.assert_close(got[b], mask2former_cost(mask_logits[b], target[b], class_logits[b], labels[b]))


def test_cpu_backends():
    assert {"reference", "native"} <= set(CPU_BACKENDS)
    if not torch.cuda.is_available():
        assert "triton" in CPU_BACKENDS


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, dtype, shape):
    inputs = make_inputs(shape, dtype)
    with ops.use_backend(backend):
        got = ops.matching_cost(*inputs)
    assert got.shape == shape[:2] + (shape[3],) and got.dtype == torch.float32
    assert_cost_close(got, exact_cost(*inputs), TOL[dtype])


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_float64(backend):
    inputs = make_inputs((2, 12, 40, 4, 6), torch.float64)
    with ops.use_backend(backend):
        got = ops.matching_cost(*inputs)
    assert got.dtype == torch.float64
    assert_cost_close(got, exact_cost(*inputs), TOL[torch.float64])


def test_triton_rejects_float64():
    if "triton" not in CPU_BACKENDS:
        pytest.skip("no Triton here")
    with ops.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        ops.matching_cost(*make_inputs((1, 4, 8, 2, 3), torch.float64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_extreme_logits_and_weights(backend):
    mask_logits, target, class_logits, labels, allowed, counts = make_inputs((2, 16, 33, 3, 4))
    mask_logits[0, 0] = 60.0
    mask_logits[0, 1] = -60.0
    class_logits[1, 2] = torch.tensor([30.0, -30.0, 0.0, 5.0])
    inputs = (mask_logits, target, class_logits, labels, allowed, counts)
    with ops.use_backend(backend):
        got = ops.matching_cost(*inputs, cost_class=1.0, cost_mask=0.5, cost_dice=3.0)
    assert_cost_close(got, exact_cost(*inputs, w=(1.0, 0.5, 3.0)), 5e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bool_targets_and_non_contiguous(backend):
    mask_logits, target, class_logits, labels, allowed, counts = make_inputs((2, 12, 40, 4, 6))
    bool_target = target > 0.5
    mask_logits, class_logits = non_contiguous(mask_logits), non_contiguous(class_logits)
    allowed = allowed.transpose(1, 2).contiguous().transpose(1, 2)
    assert not mask_logits.is_contiguous() and not allowed.is_contiguous()
    with ops.use_backend(backend):
        got = ops.matching_cost(mask_logits, bool_target, class_logits, labels, allowed, counts)
    assert_cost_close(got, exact_cost(mask_logits, bool_target.float(), class_logits, labels, allowed, counts), 2e-5)


def test_num_targets_default_is_all_columns():
    mask_logits, target, class_logits, labels, allowed, _ = make_inputs((2, 6, 9, 3, 4))
    labels = labels.clamp(min=0)
    got = ops.matching_cost(mask_logits, target, class_logits, labels, allowed)
    full = torch.full((2,), 3, dtype=torch.long)
    assert_cost_close(got, exact_cost(mask_logits, target, class_logits, labels, allowed, full), 2e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    inputs = make_inputs((2, 12, 20, 3, 5))
    with ops.use_backend(backend):
        torch.library.opcheck(matching_cost_op, (*inputs, 2.0, 5.0, 5.0))


def test_opcheck_native_kernel_directly():
    inputs = make_inputs((2, 12, 20, 3, 5))
    torch.library.opcheck(torch.ops.coavs_C.matching_cost.default, (*inputs, 2.0, 5.0, 5.0))


def test_torch_compile_fullgraph():
    inputs = make_inputs((2, 12, 20, 3, 5))
    compiled = torch.compile(lambda *xs: ops.matching_cost(*xs).clamp(max=100.0).sum(), fullgraph=True,
                             backend="aot_eager")
    expected = exact_cost(*inputs).clamp(max=100.0).sum()
    torch.testing.assert_close(compiled(*inputs).double(), expected, atol=1e-3, rtol=1e-5)


def test_no_gradient_and_inputs_detached():
    mask_logits, target, class_logits, labels, allowed, counts = make_inputs((1, 5, 17, 2, 3))
    mask_logits.requires_grad_()
    assert not ops.matching_cost(mask_logits, target, class_logits, labels, allowed, counts).requires_grad


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.update(mask_logits=a["mask_logits"][0]), ValueError, r"mask_logits must be \[B,Q,P\]"),
        (lambda a: a.update(target_masks=a["target_masks"][..., :-1]), ValueError, "the same points"),
        (lambda a: a.update(class_logits=a["class_logits"][:, :-1]), ValueError, r"class_logits must be \[B,Q,K\+1\]"),
        (lambda a: a.update(target_labels=a["target_labels"].int()), ValueError, "target_labels must be a long"),
        (lambda a: a.update(allowed=a["allowed"].float()), ValueError, "allowed must be a bool"),
        (lambda a: a.update(allowed=a["allowed"][:, :, :1]), ValueError, r"allowed must be a bool \[B,Q,G\]"),
        (lambda a: a.update(num_targets=a["num_targets"][:1]), ValueError, r"num_targets must be a long \[B\]"),
        (lambda a: a.update(mask_logits=a["mask_logits"].long()), TypeError, "mask_logits must be a floating"),
        (lambda a: a.update(allowed=a["allowed"].to("meta")), ValueError, "allowed must be on the device"),
        (lambda a: a.update(cost_dice=math.inf), ValueError, "cost_dice must be finite"),
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    mask_logits, target, class_logits, labels, allowed, counts = make_inputs((2, 12, 40, 4, 6))
    args = dict(mask_logits=mask_logits, target_masks=target, class_logits=class_logits, target_labels=labels,
                allowed=allowed, num_targets=counts)
    change(args)
    with pytest.raises(error, match=message):
        ops.matching_cost(**args)


def test_native_kernel_checks_its_arguments():
    mask_logits, target, class_logits, labels, allowed, counts = make_inputs((2, 12, 40, 4, 6))
    labels[0, 0] = 99  # a bad value is the NaN policy's business, not an error (the GPU cannot raise on it)
    cost = torch.ops.coavs_C.matching_cost(mask_logits, target, class_logits, labels, allowed, counts, 2.0, 5.0, 5.0)
    assert torch.equal(cost[0, :, 0].isnan(), allowed[0, :, 0])
    with pytest.raises(RuntimeError, match="allowed must be a bool"):
        torch.ops.coavs_C.matching_cost(mask_logits, target, class_logits, labels, allowed.int(), counts, 2.0, 5.0,
                                        5.0)


def test_default_backends():
    assert ops.select("matching_cost", torch.device("cpu")) == "native"


# ------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(20, 100, 12544, 10, 72), (20, 100, 12544, 3, 2), (3, 37, 1000, 17, 5), (0, 4, 8, 2, 3),
              (2, 6, 9, 0, 4), (1, 1, 1, 1, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_triton_matches_reference(dtype, shape):
    inputs = make_inputs(shape, dtype, device="cuda")
    with ops.use_backend("triton"):
        got = ops.matching_cost(*inputs)
    # Long float32 sums over P = 12544 points: compare with a float64 reference at a matching tolerance.
    assert_cost_close(got, exact_cost(*inputs), 1e-4)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    inputs = make_inputs((4, 20, 100, 3, 5), device="cuda")
    with ops.use_backend("triton"):
        torch.library.opcheck(matching_cost_op, (*inputs, 2.0, 5.0, 5.0))
        compiled = torch.compile(lambda *xs: ops.matching_cost(*xs), fullgraph=True)
        assert_cost_close(compiled(*inputs), exact_cost(*inputs), 1e-4)
