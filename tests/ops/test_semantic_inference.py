import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.semantic_inference import semantic_inference_op
from tests.support.helpers import FLOAT_DTYPES, backends_for, non_contiguous

CPU_BACKENDS = backends_for("semantic_inference", "cpu")
ROOT = Path(__file__).resolve().parents[2]

# (B, Q, h', w', K, H, W): odd up/down-sampling, Q = 1, K = 1, more queries than a Triton tile, 1x1 sources,
# equal sizes, an empty batch.
CASES = [
    (2, 5, 7, 9, 6, 13, 11),
    (1, 1, 3, 3, 1, 3, 3),
    (2, 19, 5, 4, 71, 17, 15),
    (2, 3, 9, 8, 4, 5, 3),
    (1, 2, 1, 1, 2, 7, 1),
    (0, 3, 4, 4, 2, 5, 5),
]
DEBIAS = [
    None,
    ops.Debias(1.0, "separate", "fixed"),
    ops.Debias(0.7, "separate", "uncertainty"),
    ops.Debias(0.5, "mask", "uncertainty"),
    ops.Debias(1.3, "class", "uncertainty"),
    ops.Debias(0.8, "overall", "fixed"),
    ops.Debias(0.6, "overall", "uncertainty"),
]


def make_inputs(b, q, h, w, k, dtype=torch.float32, scale=3.0):
    mask = (torch.randn(b, q, h, w) * scale).to(dtype)
    cls = (torch.randn(b, q, k + 1) * scale).to(dtype)
    mask_b = (torch.randn(b, q, h, w) * scale).to(dtype)
    cls_b = (torch.randn(b, q, k + 1) * scale).to(dtype)
    gate = (torch.rand(b, q) > 0.3).float() * torch.rand(b, q)
    return mask, cls, mask_b, cls_b, gate


def reference_args(debias, mask_b, cls_b, gate):
    kwargs = dict(gate=gate)
    if debias is not None:
        kwargs.update(mask_biased=mask_b, cls_biased=cls_b, alpha=debias.alpha, scheme=debias.scheme,
                      uncertainty=debias.strategy == "uncertainty")
    return kwargs


def assert_labels_match(labels, scores, atol=2e-5):
    """Each label's reference score is the maximum (ties within ``atol``, where rounding may pick either)."""
    assert labels.dtype == torch.int64 and labels.shape == scores.shape[:1] + scores.shape[2:]
    chosen = scores.gather(1, labels[:, None]).squeeze(1)
    best = scores.max(1).values
    gap = (best - chosen).max().item() if labels.numel() else 0.0
    assert gap <= atol * max(1.0, best.abs().max().item() if labels.numel() else 1.0), f"label off by {gap}"
    exact = (labels == scores.argmax(1)).float().mean().item() if labels.numel() else 1.0
    assert exact > 0.99, f"only {exact:.3f} of labels equal the reference argmax"


def test_cpu_has_reference_native_and_triton_under_interpreter():
    assert "reference" in CPU_BACKENDS
    assert "native" in CPU_BACKENDS, "the C++ extension should be built for the tests"
    if not torch.cuda.is_available():
        assert "triton" in CPU_BACKENDS
    assert "cuda" not in backends_for("semantic_inference", "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_semantic_labels_match_reference(backend, case):
    b, q, h, w, k, out_h, out_w = case
    mask, cls, mask_b, cls_b, gate = make_inputs(b, q, h, w, k)
    for debias, use_gate in [(None, False), (None, True), (DEBIAS[2], True), (DEBIAS[6], False)]:
        g = gate if use_gate else None
        biased = (mask_b, cls_b) if debias else None
        with ops.use_backend(backend):
            labels = ops.semantic_inference(mask, cls, (out_h, out_w), gate=g, biased=biased, debias=debias)
        scores = reference.semantic_scores(mask, cls, (out_h, out_w), **reference_args(debias, mask_b, cls_b, g))
        assert_labels_match(labels, scores)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("debias", DEBIAS, ids=lambda d: "plain" if d is None else f"{d.scheme}-{d.strategy}")
def test_every_debias_scheme_matches_reference(backend, debias):
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 6, 5, 7, 5)
    biased = (mask_b, cls_b) if debias else None
    kwargs = reference_args(debias, mask_b, cls_b, gate)
    with ops.use_backend(backend):
        labels = ops.semantic_inference(mask, cls, (11, 9), gate=gate, biased=biased, debias=debias)
        fg = ops.semantic_inference(mask, cls, (11, 9), gate=gate, biased=biased, debias=debias, mode="binary",
                                    background=0)
    assert_labels_match(labels, reference.semantic_scores(mask, cls, (11, 9), **kwargs))
    expected = reference.semantic_inference(mask, cls, (11, 9), mode="binary", background=0, **kwargs)
    assert fg.dtype == torch.float32
    torch.testing.assert_close(fg, expected, atol=1e-5, rtol=1e-5)


def test_debias_inside_equals_debias_logits_then_inference():
    """The fused debias is op 4's arithmetic: debias_logits first, then plain inference, gives the same."""
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 4, 6, 5, 3)
    for strategy in ("fixed", "uncertainty"):
        fused = ops.semantic_inference(mask, cls, (9, 8), gate=gate, biased=(mask_b, cls_b),
                                       debias=ops.Debias(0.9, "separate", strategy), mode="binary")
        debiased = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=0.9, scheme="separate", strategy=strategy)
        two_step = ops.semantic_inference(debiased.mask, debiased.cls, (9, 8), gate=gate, mode="binary")
        torch.testing.assert_close(fused, two_step, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_low_precision_inputs(backend, dtype):
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 7, 6, 5, 9, dtype)
    with ops.use_backend(backend):
        labels = ops.semantic_inference(mask, cls, (13, 10), gate=gate, biased=(mask_b, cls_b))
        fg = ops.semantic_inference(mask, None, (13, 10), mode="binary")
    # The reference upcasts the same (rounded) inputs, so float32 tolerances apply.
    assert_labels_match(labels, reference.semantic_scores(mask, cls, (13, 10), gate=gate, mask_biased=mask_b,
                                                          cls_biased=cls_b))
    torch.testing.assert_close(fg, reference.semantic_inference(mask, None, (13, 10), mode="binary"),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_binary_scores_match_reference(backend, case):
    b, q, h, w, k, out_h, out_w = case
    mask, cls, mask_b, cls_b, gate = make_inputs(b, q, h, w, k)
    background = 0 if k > 1 else None
    with ops.use_backend(backend):
        with_classes = ops.semantic_inference(mask, cls, (out_h, out_w), gate=gate, mode="binary",
                                              background=background)
        mask_only = ops.semantic_inference(mask, None, (out_h, out_w), gate=gate, biased=(mask_b, None),
                                           debias=ops.Debias(0.5, "mask", "uncertainty"), mode="binary")
    torch.testing.assert_close(with_classes, reference.semantic_inference(
        mask, cls, (out_h, out_w), gate=gate, mode="binary", background=background), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mask_only, reference.semantic_inference(
        mask, None, (out_h, out_w), gate=gate, mask_biased=mask_b, alpha=0.5, uncertainty=True, mode="binary"),
        atol=1e-6, rtol=1e-5)
    assert with_classes.shape == mask_only.shape == (b, out_h, out_w)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("sizes", [((5, 7), (13, 11)), ((9, 8), (4, 3)), ((6, 6), (6, 6)), ((3, 10), (12, 4)),
                                   ((1, 1), (5, 2)), ((7, 5), (7, 16))])
def test_resize_is_f_interpolate(backend, sizes):
    """One query, no classes, no gate: the binary score is σ(F.interpolate(m)), bit for bit within fp32."""
    (h, w), size = sizes
    mask = torch.randn(3, 1, h, w) * 4
    with ops.use_backend(backend):
        got = ops.semantic_inference(mask, None, size, mode="binary")
    expected = torch.sigmoid(F.interpolate(mask, size=size, mode="bilinear", align_corners=False))[:, 0]
    torch.testing.assert_close(got, expected, atol=2e-7, rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_break_toward_the_lower_class(backend):
    # One query: S[k] = p_k·σ(m) is computed identically for equal class logits, so the tie is exact.
    cls = torch.tensor([[[0.5, 2.0, -1.0, 2.0, 2.0, 0.0]]])
    mask = torch.randn(1, 1, 3, 4)
    with ops.use_backend(backend):
        labels = ops.semantic_inference(mask, cls, (5, 6))
    assert torch.equal(labels, torch.full((1, 5, 6), 1))
    assert torch.equal(labels, reference.semantic_inference(mask, cls, (5, 6)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_across_class_tiles(backend):
    # 200 classes: the Triton kernel reduces them in tiles of 128; the tie at 3 and 150 must pick 3.
    cls = torch.full((1, 1, 201), -5.0)
    cls[0, 0, 3] = cls[0, 0, 150] = 4.0
    with ops.use_backend(backend):
        labels = ops.semantic_inference(torch.randn(1, 1, 2, 2), cls, (3, 3))
    assert torch.equal(labels, torch.full((1, 3, 3), 3))
    cls[0, 0, 150] = 4.5
    with ops.use_backend(backend):
        labels = ops.semantic_inference(torch.randn(1, 1, 2, 2), cls, (3, 3))
    assert torch.equal(labels, torch.full((1, 3, 3), 150))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 4, 6, 7, 5)
    nc = [non_contiguous(t) for t in (mask, cls, mask_b, cls_b, gate)]
    assert not nc[0].is_contiguous()
    with ops.use_backend(backend):
        got = ops.semantic_inference(nc[0], nc[1], (9, 10), gate=nc[4], biased=(nc[2], nc[3]), mode="binary")
    expected = reference.semantic_inference(mask, cls, (9, 10), gate=gate, mask_biased=mask_b, cls_biased=cls_b,
                                            mode="binary")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bool_gate_is_the_active_mask(backend):
    mask, cls, _, _, _ = make_inputs(2, 5, 4, 4, 3)
    active = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    with ops.use_backend(backend):
        gated = ops.semantic_inference(mask, cls, (6, 6), gate=active, mode="binary")
    # Dormant queries contribute nothing: the same as dropping them.
    dropped = torch.stack([
        reference.semantic_inference(mask[i:i + 1, active[i]], cls[i:i + 1, active[i]], (6, 6), mode="binary")[0]
        for i in range(2)])
    torch.testing.assert_close(gated, dropped, atol=1e-6, rtol=1e-5)


def test_binary_model_with_one_class_scores_its_class():
    """S4/MS3 binary model: K = 1 sounding class, no background; the score is S[0]."""
    mask, cls, _, _, _ = make_inputs(2, 3, 4, 4, 1)
    fg = ops.semantic_inference(mask, cls, (8, 8), mode="binary")
    scores = reference.semantic_scores(mask, cls, (8, 8))
    torch.testing.assert_close(fg, scores[:, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 3, 4, 5, 4)
    probs = torch.softmax(cls, -1)[..., :-1].contiguous()
    probs_b = torch.softmax(cls_b, -1)[..., :-1].contiguous()
    empty = torch.empty(0)
    with ops.use_backend(backend):
        torch.library.opcheck(semantic_inference_op,
                              (mask, mask_b, probs, probs_b, gate, empty, 6, 7, 0.5, True, False, True, "argmax"))
        torch.library.opcheck(semantic_inference_op,
                              (mask, mask_b, probs[..., :1].contiguous(), empty, empty, torch.ones(1), 6, 7, 1.0,
                               False, True, False, "foreground"))
        torch.library.opcheck(semantic_inference_op,
                              (mask, empty, empty, empty, gate, empty, 3, 2, 0.0, False, False, False, "max_query"))


def test_opcheck_native_kernel_directly():
    mask, cls, mask_b, _, gate = make_inputs(2, 3, 4, 5, 4)
    probs = torch.softmax(cls, -1)[..., :-1].contiguous()
    empty = torch.empty(0)
    torch.library.opcheck(torch.ops.coavs_C.semantic_inference.default,
                          (mask, mask_b, probs, empty, gate, empty, 6, 7, 0.5, True, True, False, 0))


def test_torch_compile_fullgraph():
    mask, cls, mask_b, cls_b, gate = make_inputs(2, 3, 5, 5, 4)

    def post(mask, cls, mask_b, cls_b, gate):
        labels = ops.semantic_inference(mask, cls, (8, 8), gate=gate, biased=(mask_b, cls_b),
                                        debias=ops.Debias(1.0, "separate", "uncertainty"))
        fg = ops.semantic_inference(mask, cls, (8, 8), mode="binary", background=0)
        return labels, fg

    compiled = torch.compile(post, fullgraph=True, backend="aot_eager")
    got = compiled(mask, cls, mask_b, cls_b, gate)
    expected = post(mask, cls, mask_b, cls_b, gate)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_outputs_carry_no_gradient():
    mask, cls, _, _, _ = make_inputs(1, 2, 3, 3, 2)
    out = ops.semantic_inference(mask.requires_grad_(), cls.requires_grad_(), (4, 4), mode="binary")
    assert not out.requires_grad


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.update(mask_logits=a["mask_logits"][0]), ValueError, r"mask_logits must be \[B,Q,h',w'\]"),
        (lambda a: a.update(mask_logits=a["mask_logits"].double()), TypeError, "mask_logits must be float32"),
        (lambda a: a.update(mask_logits=a["mask_logits"][:, :0]), ValueError, "Q >= 1"),
        (lambda a: a.update(cls_logits=a["cls_logits"][:, :2]), ValueError, r"cls_logits must be \[B,Q,K\+1\]"),
        (lambda a: a.update(cls_logits=a["cls_logits"][..., :1]), ValueError, "K >= 1"),
        (lambda a: a.update(cls_logits=None), ValueError, "mode 'semantic' needs cls_logits"),
        (lambda a: a.update(size=(4,)), TypeError, "size must be a pair"),
        (lambda a: a.update(size=(4.0, 4)), TypeError, "size must be a pair"),
        (lambda a: a.update(size=(0, 4)), ValueError, "size must be positive"),
        (lambda a: a.update(gate=torch.ones(2, 1)), ValueError, r"gate must be \[B,Q\]"),
        (lambda a: a.update(gate=torch.ones(2, 3, dtype=torch.long)), TypeError, "gate must be a floating-point"),
        (lambda a: a.update(gate=torch.ones(2, 3, device="meta")), ValueError, "gate must be on the device"),
        (lambda a: a.update(mode="instance"), ValueError, "mode must be one of"),
        (lambda a: a.update(background=4), ValueError, r"background must be a class index in \[0, 4\)"),
        (lambda a: a.update(debias=ops.Debias()), ValueError, "debias options were given without biased"),
        (lambda a: a.update(biased=(a["mask_logits"][:, :, :1], a["cls_logits"])), ValueError,
         "biased mask logits must match"),
        (lambda a: a.update(biased=(a["mask_logits"], None)), ValueError, "biased class logits must be given"),
        (lambda a: a.update(biased=(a["mask_logits"], a["cls_logits"]), debias=ops.Debias(scheme="both")),
         ValueError, "debias.scheme must be one of"),
        (lambda a: a.update(biased=(a["mask_logits"], a["cls_logits"]), debias=ops.Debias(strategy="x")),
         ValueError, "debias.strategy must be one of"),
        (lambda a: a.update(biased=(a["mask_logits"], a["cls_logits"]), debias=ops.Debias(alpha=-1.0)),
         ValueError, "debias.alpha must be finite and >= 0"),
        (lambda a: a.update(biased=(a["mask_logits"], a["cls_logits"]), debias={"alpha": 1.0}), TypeError,
         "debias must be a coavs.ops.Debias"),
        (lambda a: a.update(cls_logits=None, mode="binary", biased=(a["mask_logits"], None)), ValueError,
         "can only be debiased with scheme 'mask'"),
        (lambda a: a.update(cls_logits=None, mode="binary", background=0), ValueError, "no cls_logits"),
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    mask, cls, _, _, _ = make_inputs(2, 3, 4, 4, 4)
    args = dict(mask_logits=mask, cls_logits=cls, size=(5, 5))
    change(args)
    with pytest.raises(error, match=message):
        ops.semantic_inference(**args)


def test_native_kernel_checks_its_arguments():
    mask, cls, _, _, _ = make_inputs(2, 3, 4, 4, 4)
    probs = torch.softmax(cls, -1)[..., :-1].contiguous()
    empty = torch.empty(0)
    with pytest.raises(RuntimeError, match="probs must be a float32"):
        torch.ops.coavs_C.semantic_inference(mask, empty, probs[:1], empty, empty, empty, 5, 5, 0.0, False, False,
                                             False, 0)
    with pytest.raises(RuntimeError, match="mask_biased must have the shape of mask"):
        torch.ops.coavs_C.semantic_inference(mask, mask[:1], probs, empty, empty, empty, 5, 5, 1.0, False, True,
                                             False, 0)
    with pytest.raises(RuntimeError, match="foreground must be a float32"):  # empty means: every class weighs 1
        torch.ops.coavs_C.semantic_inference(mask, empty, probs, empty, empty, torch.ones(2), 5, 5, 1.0, False, False,
                                             False, 1)


def test_default_backend_on_cpu_is_native():
    assert ops.select("semantic_inference", torch.device("cpu")) == "native"


# ----------------------------------------------------------------------------------------------- memory
_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    import coavs.ops as ops
    from coavs.ops import reference

    budget_mb = int(sys.argv[1])
    B, Q, K, h, H = 1, 100, 71, 64, 1024
    torch.manual_seed(0)
    mask = torch.randn(B, Q, h, h)
    cls = torch.randn(B, Q, K + 1)
    # Warm up at a small size first, so threads, allocator arenas and libraries exist before the limit.
    ops.semantic_inference(mask[:, :, :8, :8], cls, (32, 32))
    reference.semantic_inference(mask[:, :, :8, :8], cls, (32, 32))
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + budget_mb * 2**20, resource.RLIM_INFINITY))
    for name, run in (("fused", ops.semantic_inference), ("reference", reference.semantic_inference)):
        try:
            labels = run(mask, cls, (H, H))
            print(name, "fits", tuple(labels.shape))
        except (MemoryError, RuntimeError) as exc:
            print(name, "out of memory:", str(exc)[:100])
""")


def test_fused_fits_a_budget_the_reference_cannot():
    """Q=100, K=71, 64x64 -> 1024x1024: [B,Q,H,W] alone is 400 MiB in float32 and [B,K,H,W] 284 MiB; the labels
    are 8 MiB. Under RLIMIT_AS = the address space after warm-up + 256 MiB, the fused op (output + bounded tiles)
    fits and the reference, which materialises both, does not: the check tells the two apart.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, "256"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fused fits (1, 1024, 1024)" in run.stdout, run.stdout + run.stderr
    assert "reference out of memory" in run.stdout, (
        "the reference fit the budget, so the check cannot tell a fused op from one that materialises:\n"
        + run.stdout)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b == "native"])
@pytest.mark.parametrize("shape", [(1, 100, 16, 16, 71, 64, 512), (2, 100, 150, 40, 71, 61, 500)])
def test_many_tiles_match_reference(backend, shape):
    """Outputs large enough for the CPU kernel to split them into several row tiles (up- and down-sampling)."""
    b, q, h, w, k, out_h, out_w = shape
    mask, cls, mask_b, cls_b, gate = make_inputs(b, q, h, w, k)
    with ops.use_backend(backend):
        labels = ops.semantic_inference(mask, cls, (out_h, out_w), gate=gate, biased=(mask_b, cls_b),
                                        debias=DEBIAS[6])
        union = ops.semantic_inference(mask, None, (out_h, out_w), mode="binary")
    scores = reference.semantic_scores(mask, cls, (out_h, out_w), **reference_args(DEBIAS[6], mask_b, cls_b, gate))
    assert_labels_match(labels, scores)
    torch.testing.assert_close(union, reference.semantic_inference(mask, None, (out_h, out_w), mode="binary"),
                               atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(20, 100, 56, 56, 71, 224, 224), (3, 7, 33, 31, 5, 129, 131),
                                   (2, 1, 4, 4, 1, 16, 16), (4, 20, 16, 16, 200, 64, 48)])
@pytest.mark.parametrize("debias", [None, DEBIAS[2], DEBIAS[6]],
                         ids=lambda d: "plain" if d is None else f"{d.scheme}-{d.strategy}")
def test_gpu_triton_matches_reference(dtype, shape, debias):
    b, q, h, w, k, out_h, out_w = shape
    mask, cls, mask_b, cls_b, gate = [t.cuda() for t in make_inputs(b, q, h, w, k, dtype)]
    biased = (mask_b, cls_b) if debias else None
    kwargs = reference_args(debias, mask_b, cls_b, gate)
    with ops.use_backend("triton"):
        labels = ops.semantic_inference(mask, cls, (out_h, out_w), gate=gate, biased=biased, debias=debias)
        fg = ops.semantic_inference(mask, cls, (out_h, out_w), gate=gate, biased=biased, debias=debias,
                                    mode="binary", background=0 if k > 1 else None)
        union = ops.semantic_inference(mask, None, (out_h, out_w), gate=gate, mode="binary")
    assert_labels_match(labels, reference.semantic_scores(mask, cls, (out_h, out_w), **kwargs), atol=1e-4)
    torch.testing.assert_close(fg, reference.semantic_inference(
        mask, cls, (out_h, out_w), mode="binary", background=0 if k > 1 else None, **kwargs), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(union, reference.semantic_inference(mask, None, (out_h, out_w), gate=gate,
                                                                   mode="binary"), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_gpu_peak_memory_is_the_output():
    b, q, k, h, size = 4, 100, 71, 128, 1024
    mask, cls = torch.randn(b, q, h, h, device="cuda"), torch.randn(b, q, k + 1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    labels = ops.semantic_inference(mask, cls, (size, size))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    output = labels.numel() * labels.element_size()
    assert extra <= output + 8 * 2**20, f"peak extra {extra / 2**20:.0f} MiB for a {output / 2**20:.0f} MiB output"


@pytest.mark.gpu
def test_gpu_opcheck():
    mask, cls, mask_b, cls_b, gate = [t.cuda() for t in make_inputs(2, 3, 4, 5, 4)]
    probs = torch.softmax(cls, -1)[..., :-1].contiguous()
    empty = torch.empty(0, device="cuda")
    with ops.use_backend("triton"):
        torch.library.opcheck(semantic_inference_op,
                              (mask, mask_b, probs, probs, gate, empty, 6, 7, 0.5, True, True, True, "argmax"))
