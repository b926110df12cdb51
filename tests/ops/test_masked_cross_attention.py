import importlib
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.masked_cross_attention import attention_plan, masked_cross_attention_op, pack_visibility, unpack_bits
from tests.support.attention import assert_attention_close, reference_with_grads, same_precision_eager
from tests.support.helpers import FLOAT_DTYPES, backends_for

mca = importlib.import_module("coavs.ops.masked_cross_attention")  # the module (the package exports the function)
CPU_BACKENDS = backends_for("masked_cross_attention", "cpu")
# (H, W) of the key map for each N of the grid
KEY_MAPS = {1: (1, 1), 7: (1, 7), 49: (7, 7), 196: (14, 14), 784: (28, 28), 1000: (25, 40), 4096: (64, 64)}
MASK_KINDS = ("random", "all", "none", "one")
FRACTIONS = (0.0, 0.1, 0.5, 1.0)


# ------------------------------------------------------------------------------------------------- inputs
def make_mask(kind: str, batch: int, queries: int, key_map, device="cpu"):
    """(AttentionMask, visible [B,Q,N]) of one of the test's mask kinds."""
    keys = key_map[0] * key_map[1]
    if kind == "one":  # exactly one visible key per query
        chosen = torch.randint(keys, (batch, queries), device=device)
        visible = F.one_hot(chosen, keys).bool()
        return pack_visibility(visible, tuple(key_map)), visible
    logits = {
        "random": torch.randn(batch, queries, 5, 6, device=device) * 2,  # blobs after bilinear resizing
        "all": torch.ones(batch, queries, 3, 3, device=device),
        "none": -torch.ones(batch, queries, 3, 3, device=device),  # all-masked rows: every key visible
    }[kind]
    return ops.build_attention_mask(logits, key_map), reference.attention_visibility(logits, key_map)


def make_active(batch: int, queries: int, fraction: float, device="cpu"):
    """About ``fraction`` of the queries active, a different number per sample (exact for 0 and 1)."""
    if fraction in (0.0, 1.0):
        return torch.full((batch, queries), fraction == 1.0, device=device)
    return torch.rand(batch, queries, device=device) < fraction


def make_qkv(batch, heads, queries, keys, head_dim, dtype, device="cpu"):
    q = torch.randn(batch, heads, queries, head_dim, device=device).to(dtype)
    k = torch.randn(batch, heads, keys, head_dim, device=device).to(dtype)
    v = torch.randn(batch, heads, keys, head_dim, device=device).to(dtype)
    return q, k, v


def run_op(backend, q, k, v, mask, active, scale, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    with ops.use_backend(backend):
        out = ops.masked_cross_attention(*leaves, mask, active, scale)
        grads = torch.autograd.grad(out, leaves, grad)
    return out.detach(), grads


def check_case(backend, batch, heads, queries, key_map, head_dim, dtype, fraction, kind, device="cpu",
               compare_eager=None):
    keys = key_map[0] * key_map[1]
    mask, visible = make_mask(kind, batch, queries, key_map, device)
    active = make_active(batch, queries, fraction, device)
    q, k, v = make_qkv(batch, heads, queries, keys, head_dim, dtype, device)
    grad = torch.randn(q.shape, device=device).to(dtype)
    scale = head_dim ** -0.5
    out, grads = run_op(backend, q, k, v, mask, active, scale, grad)
    exact_out, exact_grads = reference_with_grads(q, k, v, visible, active, scale, grad, torch.float64)
    if compare_eager is None:
        compare_eager = dtype in (torch.float16, torch.bfloat16)
    eager_out, eager_grads = (same_precision_eager(q, k, v, visible, active, scale, grad) if compare_eager
                              else (None, (None, None, None)))
    label = f"{backend} B={batch} h={heads} Q={queries} N={keys} dh={head_dim} {dtype} active={fraction} {kind}"
    assert out.dtype == dtype
    assert_attention_close(out, exact_out, eager_out, f"{label} out")
    for name, g, e, eg in zip(("dq", "dk", "dv"), grads, exact_grads, eager_grads):
        assert g.dtype == dtype
        assert_attention_close(g, e, eg, f"{label} {name}")
    dormant = ~active
    assert (out[dormant[:, None, :].expand(-1, heads, -1)] == 0).all(), f"{label}: dormant rows must be zero"
    assert (grads[0][dormant[:, None, :].expand(-1, heads, -1)] == 0).all(), f"{label}: dormant dq must be zero"


# --------------------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("key_map", [(1, 1), (1, 7), (7, 7), (14, 14), (25, 40), (9, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_build_attention_mask_packs_mask2former_visibility(key_map, dtype):
    logits = (torch.randn(3, 5, 4, 6) * 2).to(dtype)
    logits[0, 0] = -1.0  # an all-masked row: sees every key
    logits[0, 1] = 1.0
    mask = ops.build_attention_mask(logits, key_map)
    keys = key_map[0] * key_map[1]
    # Mask2Former: interpolate, sigmoid < 0.5 is masked, all-masked rows are unmasked
    resized = F.interpolate(logits, size=key_map, mode="bilinear", align_corners=False)
    masked = resized.sigmoid().flatten(2) < 0.5
    masked[torch.where(masked.sum(-1) == masked.shape[-1])] = False
    expected = ~masked
    assert mask.num_keys == keys
    assert mask.bits.dtype == torch.int32 and mask.bits.shape == (3, 5, math.ceil(keys / 32))
    assert mask.occupancy.dtype == torch.uint8 and mask.occupancy.shape == (3, 5, math.ceil(keys / 64))
    assert torch.equal(unpack_bits(mask.bits, keys), expected)
    assert torch.equal(reference.attention_visibility(logits, key_map), expected)
    assert expected[0, 0].all() and expected[0, 1].all()
    # bits past N are zero; occupancy is "any visible key in the block of 64"
    assert not unpack_bits(mask.bits, mask.bits.shape[2] * 32)[..., keys:].any()
    padded = F.pad(expected, (0, mask.occupancy.shape[2] * 64 - keys))
    assert torch.equal(mask.occupancy.bool(), padded.reshape(3, 5, -1, 64).any(-1))


def test_visibility_threshold_is_logit_zero_inclusive():
    logits = torch.tensor([0.0, -1e-3, 1e-3, -5.0]).reshape(1, 1, 1, 4)
    visible = unpack_bits(ops.build_attention_mask(logits, (1, 4)).bits, 4)
    assert visible.tolist() == [[[True, False, True, False]]]


def test_bit_31_and_word_boundaries_round_trip():
    visible = torch.zeros(1, 3, 97, dtype=torch.bool)
    visible[0, 0, 31] = visible[0, 0, 32] = visible[0, 0, 96] = True
    visible[0, 1] = True
    visible[0, 2, 63] = visible[0, 2, 64] = True
    mask = pack_visibility(visible)
    assert mask.bits[0, 0, 0].item() == -2**31  # bit 31 is the sign bit of the int32 word
    assert torch.equal(unpack_bits(mask.bits, 97), visible)
    assert mask.occupancy[0].tolist() == [[1, 1], [1, 1], [1, 1]]
    assert mask.occupancy[0, 0].tolist() == [1, 1] and pack_visibility(visible[:, :, :64]).occupancy[0, 0].tolist() \
        == [1]


def test_build_attention_mask_takes_no_gradient_and_non_contiguous_logits():
    logits = torch.randn(2, 4, 6, 5).transpose(-1, -2).requires_grad_()
    mask = ops.build_attention_mask(logits, (8, 8))
    assert not mask.bits.requires_grad
    assert torch.equal(unpack_bits(mask.bits, 64), reference.attention_visibility(logits.detach(), (8, 8)))


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((torch.randn(2, 3, 4), (4, 4)), ValueError, "mask_logits must be"),
        ((torch.zeros(2, 3, 4, 4, dtype=torch.long), (4, 4)), TypeError, "floating-point"),
        ((torch.randn(2, 3, 4, 4), (4,)), TypeError, "size must be a pair"),
        ((torch.randn(2, 3, 4, 4), (0, 4)), ValueError, "size must be positive"),
        ((torch.randn(2, 3, 4, 4), (4.0, 4)), TypeError, "size must be a pair"),
        (([[0.0]], (4, 4)), TypeError, "mask_logits must be a Tensor"),
    ],
)
def test_build_attention_mask_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        ops.build_attention_mask(*args)


# ------------------------------------------------------------------------------ CPU backends vs reference
def test_cpu_backends():
    assert "reference" in CPU_BACKENDS and "native" in CPU_BACKENDS
    if not torch.cuda.is_available():
        assert "triton" in CPU_BACKENDS
    assert ops.select("masked_cross_attention", torch.device("cpu")) == "native"


@pytest.mark.parametrize("queries", [1, 100])
@pytest.mark.parametrize("keys", [1, 7, 49, 196, 784, 1000])
def test_native_grid_forward_and_gradients(queries, keys):
    """The issue's grid: every N, Q, active fraction and mask kind, forward and every gradient (float32)."""
    for fraction in FRACTIONS:
        for kind in MASK_KINDS:
            check_case("native", 2, 2, queries, KEY_MAPS[keys], 32, torch.float32, fraction, kind)


@pytest.mark.parametrize("queries", [1, 100])
@pytest.mark.parametrize("keys", [1, 49, 1000])
def test_reference_backend_backward_formula(queries, keys):
    """The reference backend's explicit backward against autograd of the definition."""
    for fraction in (0.0, 0.5, 1.0):
        for kind in ("random", "one"):
            check_case("reference", 2, 2, queries, KEY_MAPS[keys], 32, torch.float32, fraction, kind)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_native_dtypes_and_head_dims(dtype, head_dim):
    for kind in ("random", "one"):
        check_case("native", 2, 3, 30, (13, 15), head_dim, dtype, 0.5, kind)


@pytest.mark.parametrize("key_map", [(2, 600), (1, 1100), (12, 150)])
def test_native_maps_wider_than_one_packed_chunk(key_map):
    """The C++ kernels pack at most 8 blocks of a patch row at a time (1x64 strips: 18 blocks in a row; 2x600:
    19; 12x150 with 4x16 patches: 10 with a ragged edge): every chunk, a short last one and edge lanes."""
    for kind in ("random", "one", "none"):
        check_case("native", 2, 2, 24, key_map, 32, torch.float32, 0.7, kind)


def test_native_non_finite_key_in_a_later_chunk_poisons_only_its_viewers():
    key_map, keys = (1, 1100), 1100
    mask, visible = make_mask("random", 1, 12, key_map)
    active = make_active(1, 12, 1.0)
    q, k, v = make_qkv(1, 2, 12, keys, 16, torch.float32)
    k[0, 0, 1000, 3] = float("inf")  # block 15: the second chunk of 8
    with ops.use_backend("native"):
        out = ops.masked_cross_attention(q, k, v, mask, active)
    viewers = visible[0, :, 1000] & visible[0].any(-1)
    assert torch.equal(torch.isnan(out[0, 0]).any(-1), viewers)
    assert not torch.isnan(out[0, 1]).any()


def test_native_gradients_of_unseen_keys_and_idle_samples_are_zero():
    """dk and dv are allocated uninitialised and written key by key: a sample without working rows, and the keys
    no row sees, must still read exactly 0 (memory recycled from a NaN tensor first, so garbage would show)."""
    batch, heads, queries, key_map = 3, 2, 10, (12, 20)
    mask, visible = make_mask("random", batch, queries, key_map)
    active = make_active(batch, queries, 0.8)
    active[1] = False
    q, k, v = make_qkv(batch, heads, queries, 240, 16, torch.float32)
    garbage = [torch.full((batch, heads, 240, 16), float("nan")) for _ in range(4)]
    del garbage
    out, (dq, dk, dv) = run_op("native", q, k, v, mask, active, 0.3, torch.randn(q.shape))
    unseen = ~(visible & active[..., None]).any(1)  # [B,N]
    for g in (dk, dv):
        assert not g[1].any()
        assert not g.transpose(1, 2)[unseen].any()
        assert torch.isfinite(g).all()


def test_native_gradients_larger_than_16_mb_equal_the_reference():
    """dk and dv of 21 MB each: the backward (csrc/cpu/masked_attention_cpu.cpp, advise_huge_pages) asks for huge
    pages for them before writing; the values must not change, the unseen keys' zeros included."""
    key_map, head_dim = (128, 128), 160
    mask, visible = make_mask("random", 1, 5, key_map)
    active = make_active(1, 5, 1.0)
    q, k, v = make_qkv(1, 2, 5, key_map[0] * key_map[1], head_dim, torch.float32)
    assert k.nbytes > 16 * 2**20
    grad = torch.randn(q.shape)
    _, grads = run_op("native", q, k, v, mask, active, 0.3, grad)
    _, exact = reference_with_grads(q, k, v, visible, active, 0.3, grad, torch.float64)
    for name, got, expected in zip("qkv", grads, exact):
        assert_attention_close(got, expected, what=f"d{name}")


def test_native_odd_head_dim_and_scale():
    mask, visible = make_mask("random", 2, 9, (6, 11))
    active = make_active(2, 9, 0.5)
    q, k, v = make_qkv(2, 3, 9, 66, 20, torch.float32)
    with ops.use_backend("native"):
        got = ops.masked_cross_attention(q, k, v, mask, active, scale=0.37)
    assert_attention_close(got, reference.masked_cross_attention(q.double(), k.double(), v.double(), visible,
                                                                 active, 0.37))


# -------------------------------------------------------------------------------- Triton under interpreter
TRITON_CASES = [
    # (B, h, Q, key map, dh, dtype, fraction, kind)
    (1, 1, 1, (1, 1), 32, torch.float32, 1.0, "all"),
    (2, 2, 20, (1, 7), 32, torch.float16, 0.5, "random"),
    (2, 2, 20, (7, 7), 64, torch.bfloat16, 0.5, "random"),
    (2, 1, 1, (7, 7), 32, torch.float32, 0.0, "random"),
    (2, 2, 20, (14, 14), 32, torch.float32, 0.1, "one"),
    (2, 1, 20, (14, 14), 128, torch.float16, 1.0, "none"),
    (1, 2, 17, (10, 10), 32, torch.bfloat16, 1.0, "one"),
    (2, 1, 33, (9, 15), 24, torch.float32, 0.5, "random"),
    (2, 2, 12, (8, 17), 64, torch.float32, 1.0, "random"),
]


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: f"B{c[0]}h{c[1]}Q{c[2]}N{c[3][0] * c[3][1]}dh{c[4]}"
                                                            f"-{str(c[5])[6:]}-a{c[6]}-{c[7]}")
def test_triton_interpreter_forward_and_gradients(case):
    batch, heads, queries, key_map, head_dim, dtype, fraction, kind = case
    check_case("triton", batch, heads, queries, key_map, head_dim, dtype, fraction, kind)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
@pytest.mark.parametrize("multiprocessors", [1, 64])
def test_triton_interpreter_head_groups(monkeypatch, multiprocessors):
    """All heads in one program (1 SM: the grid already fills it), or one head per program (64 SMs: the heads are
    split so that the grid reaches twice the SMs), forward and backward."""
    from coavs.kernels import masked_cross_attention as kernels

    monkeypatch.setattr(kernels, "_multiprocessors", lambda device: multiprocessors)
    assert kernels.head_groups(4, 3, multiprocessors) == ((1, 3) if multiprocessors == 1 else (3, 1))
    check_case("triton", 2, 3, 20, (14, 14), 32, torch.float16, 0.5, "random")


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
def test_triton_interpreter_dq_pass_in_two_halves(monkeypatch):
    """float32 from dh=64 on sm_90 runs the dq loop over two halves of the head dimension; here under the
    interpreter, with the architecture faked, and an odd head dim so that the upper half is partly masked."""
    from coavs.kernels import masked_cross_attention as kernels

    monkeypatch.setattr(kernels, "_arch", lambda: 90)
    check_case("triton", 2, 2, 20, (7, 9), 48, torch.float32, 0.6, "random")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    """q, k, v as a model makes them: ``[B,L,h,dh]`` projections viewed as ``[B,h,L,dh]``."""
    batch, heads, queries, keys, head_dim = 2, 2, 9, 70, 16
    mask, visible = make_mask("random", batch, queries, (7, 10))
    active = make_active(batch, queries, 0.5)
    q = torch.randn(batch, queries, heads, head_dim).transpose(1, 2)
    k = torch.randn(batch, keys, heads, head_dim).transpose(1, 2)
    v = torch.randn(batch, keys, 2 * heads * head_dim)[..., ::2].reshape(batch, keys, heads, head_dim)
    v = v.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    grad = torch.randn(batch, heads, queries, head_dim).transpose(-1, -2).contiguous().transpose(-1, -2)
    out, grads = run_op(backend, q, k, v, mask, active, 0.25, grad)
    exact_out, exact_grads = reference_with_grads(q, k, v, visible, active, 0.25, grad, torch.float64)
    assert_attention_close(out, exact_out, what="out")
    for g, e, name in zip(grads, exact_grads, "qkv"):
        assert g.shape == e.shape
        assert_attention_close(g, e, what=f"d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dormant_rows_cost_nothing_and_leak_nothing(backend):
    """Dormant queries' q and grad_out values must not reach any output or gradient."""
    batch, heads, queries = 2, 2, 10
    mask, _ = make_mask("random", batch, queries, (5, 6))
    active = make_active(batch, queries, 0.5)
    active[0, 0], active[0, 1] = True, False
    q, k, v = make_qkv(batch, heads, queries, 30, 16, torch.float32)
    grad = torch.randn(q.shape)
    out, grads = run_op(backend, q, k, v, mask, active, 0.25, grad)
    dormant = ~active[:, None, :, None]
    q2 = torch.where(dormant, torch.full_like(q, 1e4), q)
    grad2 = torch.where(dormant, torch.full_like(grad, -3e3), grad)
    out2, grads2 = run_op(backend, q2, k, v, mask, active, 0.25, grad2)
    torch.testing.assert_close(out2, out)
    for g2, g in zip(grads2, grads):
        torch.testing.assert_close(g2, g)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch_and_queries(backend):
    for batch, queries in ((0, 4), (2, 0)):
        q, k, v = make_qkv(batch, 2, queries, 10, 16, torch.float32)
        mask = mca.all_visible_mask(batch, queries, 10, "cpu")
        out, grads = run_op(backend, q, k, v, mask, None, 0.25, torch.randn(q.shape))
        assert out.shape == q.shape and grads[1].shape == k.shape
        assert not grads[1].any() and not grads[2].any()


def test_mask_none_means_all_visible_and_active_none_means_all_active():
    q, k, v = make_qkv(2, 2, 5, 12, 8, torch.float32)
    got = ops.masked_cross_attention(q, k, v, None)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_without_visible_keys_are_zero(backend):
    """Only a hand-packed mask can have such a row (build_attention_mask unmasks it): it is zero and gets zero
    gradient, like a dormant row, in every backend (the reference gave NaN)."""
    visible = torch.rand(2, 5, 40) < 0.5
    visible[0, 2] = False
    visible[1] = False
    visible[1, 4, 7] = True
    active = torch.ones(2, 5, dtype=torch.bool)
    q, k, v = make_qkv(2, 2, 5, 40, 16, torch.float32)
    grad = torch.randn(q.shape)
    out, grads = run_op(backend, q, k, v, pack_visibility(visible), active, 0.25, grad)
    seen = visible.any(-1)
    exact_out, exact_grads = reference_with_grads(q, k, v, visible | ~seen[..., None], seen, 0.25, grad,
                                                  torch.float64)
    assert not out[0, :, 2].any() and not out[1, :, :4].any() and not grads[0][1, :, :4].any()
    assert_attention_close(out, exact_out, what="out")
    for g, e, name in zip(grads, exact_grads, "qkv"):
        assert_attention_close(g, e, what=f"d{name}")


def test_reference_definition_is_zero_not_nan_for_a_row_without_keys():
    visible = torch.ones(1, 3, 9, dtype=torch.bool)
    visible[0, 1] = False
    q, k, v = [t.double().requires_grad_() for t in make_qkv(1, 2, 3, 9, 4, torch.float32)]
    for active in (None, torch.ones(1, 3, dtype=torch.bool)):
        out = reference.masked_cross_attention(q, k, v, visible, active, 0.5)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        assert torch.isfinite(out).all() and not out[0, :, 1].any()
        assert all(torch.isfinite(g).all() for g in grads) and not grads[0][0, :, 1].any()


# ------------------------------------------------------------------------------------- any stride of q, k, v
def strided_view(t: torch.Tensor, pattern: str) -> torch.Tensor:
    """A view of ``pattern``'s strides holding ``t``'s values (``expanded*``: a view repeating a slice of ``t``;
    the caller compares against the view's own values)."""
    batch, heads, length, dim = t.shape
    if pattern == "contiguous":
        return t
    if pattern == "sliced":  # the middle of a wider last dimension
        wide = torch.randn(batch, heads, length, dim + 5, dtype=t.dtype)
        wide[..., 2:2 + dim] = t
        return wide[..., 2:2 + dim]
    if pattern == "stepped":  # every other element of the last dimension
        wide = torch.randn(batch, heads, length, 2 * dim, dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if pattern == "transposed":  # the last two dimensions stored transposed
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if pattern == "permuted":  # [B,L,h,dh] projections viewed as [B,h,L,dh]
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if pattern == "expanded_heads":
        return t[:, :1].expand(batch, heads, length, dim)
    if pattern == "expanded_rows":
        return t[:, :, :1].expand(batch, heads, length, dim)
    if pattern == "expanded_dim":  # stride 0 in the last dimension
        return t[..., :1].expand(batch, heads, length, dim)
    raise ValueError(pattern)


STRIDE_PATTERNS = ("sliced", "stepped", "transposed", "permuted", "expanded_heads", "expanded_rows",
                   "expanded_dim")


@pytest.mark.parametrize("pattern", STRIDE_PATTERNS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_any_strides_of_k_and_v(backend, pattern):
    """k, v (and q, grad) not contiguous in the last dimension: the native kernel read them as contiguous
    (max error 0.5-3.1 forward, gradients wrong)."""
    batch, heads, queries, key_map, dim = 2, 3, 11, (7, 10), 16
    mask, visible = make_mask("random", batch, queries, key_map)
    active = make_active(batch, queries, 0.7)
    q, k, v = make_qkv(batch, heads, queries, 70, dim, torch.float32)
    q, k, v = strided_view(q, pattern), strided_view(k, pattern), strided_view(v, "stepped" if pattern ==
                                                                                "sliced" else pattern)
    grad = strided_view(torch.randn(batch, heads, queries, dim), "transposed")
    out, grads = run_op(backend, q, k, v, mask, active, 0.3, grad)
    exact_out, exact_grads = reference_with_grads(q, k, v, visible, active, 0.3, grad, torch.float64)
    assert_attention_close(out, exact_out, what=f"{pattern} out")
    for g, e, name in zip(grads, exact_grads, "qkv"):
        assert g.shape == e.shape and g.is_contiguous()
        assert_attention_close(g, e, what=f"{pattern} d{name}")


_ZERO_HEADS = """
import torch, coavs.ops as ops
for backend in {backends!r}:
    q, k, v = [torch.randn(2, 0, n, 8, requires_grad=True) for n in (5, 70, 70)]
    mask = ops.build_attention_mask(torch.randn(2, 5, 3, 3), (7, 10))
    with ops.use_backend(backend):
        out = ops.masked_cross_attention(q, k, v, mask, torch.ones(2, 5, dtype=torch.bool))
        out.sum().backward()
    assert out.shape == (2, 0, 5, 8) and k.grad.shape == (2, 0, 70, 8), backend
print("ok")
"""


def test_zero_heads_in_a_subprocess():
    """h = 0 ended the process with SIGFPE inside PyTorch's CPU flash kernel: run it where that cannot kill
    pytest."""
    code = _ZERO_HEADS.format(backends=CPU_BACKENDS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, f"rc {result.returncode}: {result.stderr[-2000:]}"


@pytest.mark.parametrize("shape", [(2, 0, 3, 3), (0, 4, 3, 3), (0, 0, 2, 2)])
def test_build_attention_mask_without_queries(shape):
    """B or Q = 0 raised an internal error from F.interpolate; the mask is empty and attention works."""
    mask = ops.build_attention_mask(torch.randn(shape), (5, 6))
    assert mask.bits.shape == (shape[0], shape[1], 1) and mask.occupancy.shape == (shape[0], shape[1], 1)
    assert mask.num_keys == 30
    q, k, v = make_qkv(shape[0], 2, shape[1], 30, 8, torch.float32)
    for backend in CPU_BACKENDS:
        with ops.use_backend(backend):
            assert ops.masked_cross_attention(q, k, v, mask).shape == q.shape


def _plan_args(mask, active):
    """The plan tensors and the trailing ints of the attention ops for ``mask`` (a (3, 5) key map)."""
    return tuple(attention_plan(mask, active)), (mask.size[0], mask.size[1], 16)


@pytest.mark.skipif("native" not in CPU_BACKENDS, reason="coavs._C not built")
def test_native_cpp_ops_opcheck():
    """The C++ ops on their own (schemas, fake kernels), with non-contiguous k and v."""
    q, k, v, mask, _, active = _small_case(torch.float32)
    k, v = strided_view(k.detach(), "stepped"), strided_view(v.detach(), "transposed")
    plan, ints = _plan_args(mask, active)
    torch.library.opcheck(torch.ops.coavs_C.masked_attention_plan.default, (mask.bits, active, *ints))
    args = (q.detach(), k, v, *plan, 0.4, *ints)
    torch.library.opcheck(torch.ops.coavs_C.masked_cross_attention.default, args)
    out, lse = torch.ops.coavs_C.masked_cross_attention(*args)
    torch.library.opcheck(torch.ops.coavs_C.masked_cross_attention_backward.default,
                          (torch.randn_like(out), q.detach(), k, v, out, lse, *plan, 0.4, *ints))


@pytest.mark.skipif("native" not in CPU_BACKENDS, reason="coavs._C not built")
def test_native_cpp_ops_reject_bad_plans():
    """The C++ ops check every plan index they use: a plan that did not come from masked_attention_plan is an
    error, never a read or write outside a tensor."""
    q, k, v, mask, _, active = _small_case(torch.float32)
    plan, ints = _plan_args(mask, active)

    def run(index, value):
        bad = [t.clone() for t in plan]
        bad[index] = value(bad[index])
        return torch.ops.coavs_C.masked_cross_attention(q.detach(), k.detach(), v.detach(), *bad, 0.4, *ints)

    with pytest.raises(RuntimeError, match="plan block_bits must be int64"):
        run(0, lambda t: t.int())
    with pytest.raises(RuntimeError, match="row_order must be a permutation"):
        run(1, lambda t: t.fill_(0))
    with pytest.raises(RuntimeError, match="row_order must be a permutation"):
        run(1, lambda t: t + 100)
    with pytest.raises(RuntimeError, match="row_count out of range"):
        run(2, lambda t: t.fill_(5))
    with pytest.raises(RuntimeError, match="block_counts out of range"):
        run(5, lambda t: t.fill_(1000))
    with pytest.raises(RuntimeError, match="block_tiles out of range"):
        run(6, lambda t: t.fill_(-7))
    with pytest.raises(RuntimeError, match="plan tile_blocks must be int32"):
        run(4, lambda t: t.repeat(1, 1, 2))
    with pytest.raises(RuntimeError, match="the key map 5 x 3 must hold|key map"):
        torch.ops.coavs_C.masked_cross_attention(q.detach(), k.detach(), v.detach(), *plan, 0.4, 5, 4, 16)
    with pytest.raises(RuntimeError, match="mask bits must be int32"):
        torch.ops.coavs_C.masked_attention_plan(mask.bits[:, :, :0], active, *ints)
    with pytest.raises(RuntimeError, match="active must be bool"):
        torch.ops.coavs_C.masked_attention_plan(mask.bits, active.float(), *ints)


# ----------------------------------------------------------------------------------------- gradcheck/opcheck
def _small_case(dtype=torch.float64):
    mask, visible = make_mask("random", 2, 4, (3, 5))
    active = torch.tensor([[True, False, True, True], [False, True, False, False]])
    q, k, v = [t.requires_grad_() for t in make_qkv(2, 2, 4, 15, 8, dtype)]
    return q, k, v, mask, visible, active


def test_float64_gradcheck_reference():
    q, k, v, _, visible, active = _small_case()
    assert torch.autograd.gradcheck(lambda *x: reference.masked_cross_attention(*x, visible, active, 0.4),
                                    (q, k, v), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_gradcheck_op(backend):
    q, k, v, mask, _, active = _small_case()
    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *x: ops.masked_cross_attention(*x, mask, active, 0.4), (q, k, v),
                                        fast_mode=True)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend, contiguous):
    q, k, v, mask, _, active = _small_case(torch.float32)
    if not contiguous:  # as a model passes them: [B,L,h,dh] viewed as [B,h,L,dh]
        q, k, v = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    with ops.use_backend(backend):
        plan, ints = _plan_args(mask, active)
        torch.library.opcheck(torch.ops.coavs.masked_attention_plan.default, (mask.bits, active, *ints))
        args = (q, k, v, *plan, 0.4, *ints)
        torch.library.opcheck(masked_cross_attention_op, args)
        out, lse = masked_cross_attention_op(*[t.detach() if isinstance(t, torch.Tensor) else t for t in args])
        backward_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *plan, 0.4, *ints)
        torch.library.opcheck(torch.ops.coavs.masked_cross_attention_backward.default, backward_args)
        # outputs are contiguous whatever the input strides, as the fake kernels promise (inductor relies on it)
        grads = torch.ops.coavs.masked_cross_attention_backward(*backward_args)
    assert out.is_contiguous() and lse.is_contiguous() and all(g.is_contiguous() for g in grads)


# ----------------------------------------------------------------------------------- a decoder layer
class DecoderLayer(torch.nn.Module):
    """Mask2Former's decoder layer: masked cross-attention to the pixel features, self-attention, FFN, and the
    mask prediction that gives the next layer its attention mask."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(dim, dim) for _ in range(4))
        self.self_attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim))
        self.mask_embed = torch.nn.Linear(dim, dim)

    def forward(self, queries, pixels, prev_mask_logits, active):
        batch, num_queries, dim = queries.shape
        size = pixels.shape[-2:]
        memory = pixels.flatten(2).transpose(1, 2)  # [B,N,D]
        attn_mask = ops.build_attention_mask(prev_mask_logits, (size[0], size[1]))

        def heads(x):
            return x.view(batch, -1, self.heads, dim // self.heads).transpose(1, 2)

        attended = ops.masked_cross_attention(heads(self.q_proj(queries)), heads(self.k_proj(memory)),
                                              heads(self.v_proj(memory)), attn_mask, active)
        x = queries + self.o_proj(attended.transpose(1, 2).reshape(batch, num_queries, dim))
        x = x + self.self_attn(x, x, x, need_weights=False)[0]
        x = x + self.ffn(x)
        mask_logits = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(x), pixels)
        return x, mask_logits


def _decoder_inputs(device="cpu"):
    queries = torch.randn(2, 10, 32, device=device, requires_grad=True)
    pixels = torch.randn(2, 32, 9, 11, device=device, requires_grad=True)
    prev = torch.randn(2, 10, 5, 6, device=device)
    active = make_active(2, 10, 0.5, device)
    return queries, pixels, prev, active


def _loss_and_grads(layer, fn, inputs):
    x, mask_logits = fn(*inputs)
    loss = x.square().mean() + mask_logits.sigmoid().mean()
    params = [inputs[0], inputs[1], *layer.parameters()]
    return loss.detach(), torch.autograd.grad(loss, params)


def test_torch_compile_fullgraph_through_a_decoder_layer():
    layer = DecoderLayer()
    inputs = _decoder_inputs()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    loss_c, grads_c = _loss_and_grads(layer, compiled, inputs)
    loss_e, grads_e = _loss_and_grads(layer, layer, inputs)
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- bad input
def _good_args():
    q, k, v = make_qkv(2, 2, 4, 12, 8, torch.float32)
    mask, _ = make_mask("random", 2, 4, (3, 4))
    return dict(q=q, k=k, v=v, attn_mask=mask, active=torch.ones(2, 4, dtype=torch.bool), scale=None)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.update(q=a["q"][0]), ValueError, "q must be 4-D"),
        (lambda a: a.update(k=a["k"].half()), TypeError, "k must have the dtype of q"),
        (lambda a: a.update(q=a["q"].long(), k=a["k"].long(), v=a["v"].long()), TypeError, "q must be float16"),
        (lambda a: a.update(v=a["v"][:, :, :-1]), ValueError, "v must have the shape of k"),
        (lambda a: a.update(k=a["k"][:1], v=a["v"][:1]), ValueError, "must share B, h and dh"),
        (lambda a: a.update(k=a["k"][..., :4], v=a["v"][..., :4]), ValueError, "must share B, h and dh"),
        (lambda a: a.update(k=a["k"][:, :, :0], v=a["v"][:, :, :0]), ValueError, "at least one key"),
        (lambda a: a.update(v=a["v"].to("meta")), ValueError, "v must be on the device of q"),
        (lambda a: a.update(k=a["k"][:, :, :11], v=a["v"][:, :, :11]), ValueError, "built for 12 keys"),
        (lambda a: a.update(attn_mask=torch.ones(2, 4, 12, dtype=torch.bool)), TypeError, "AttentionMask"),
        (lambda a: a.update(attn_mask=a["attn_mask"]._replace(bits=a["attn_mask"].bits[:1])), ValueError,
         "attn_mask.bits must be int32"),
        (lambda a: a.update(attn_mask=a["attn_mask"]._replace(occupancy=a["attn_mask"].occupancy.bool())),
         ValueError, "attn_mask.occupancy must be uint8"),
        (lambda a: a.update(active=a["active"].float()), TypeError, "active must be a bool tensor"),
        (lambda a: a.update(active=a["active"][:, :3]), ValueError, r"active must be \[B,Q\]"),
        (lambda a: a.update(scale=-1.0), ValueError, "scale must be finite and > 0"),
        (lambda a: a.update(scale=float("nan")), ValueError, "scale must be finite"),
        (lambda a: a.update(scale=torch.tensor(0.5)), TypeError, "scale must be a float"),
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    args = _good_args()
    change(args)
    with pytest.raises(error, match=message):
        ops.masked_cross_attention(**args)


def test_forced_unavailable_backend_is_an_error():
    args = _good_args()
    with ops.use_backend("cuda"):
        with pytest.raises(ops.BackendUnavailable, match="masked_attention_plan|masked_cross_attention"):
            ops.masked_cross_attention(**args)


# --------------------------------------------------------------------------------------------------- GPU
@pytest.fixture
def fixed_triton_config(monkeypatch):
    """One kernel config: the grid checks correctness over many shapes without autotuning each one."""
    monkeypatch.setenv("COAVS_TRITON_AUTOTUNE", "0")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("queries", [1, 100])
@pytest.mark.parametrize("keys", [1, 7, 49, 196, 784, 1000, 4096])
def test_gpu_grid_forward_and_gradients(fixed_triton_config, keys, queries, head_dim, dtype):
    for fraction in FRACTIONS:
        for kind in MASK_KINDS:
            check_case("triton", 2, 2, queries, KEY_MAPS[keys], head_dim, dtype, fraction, kind, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, head_dim", [(torch.float16, 32), (torch.bfloat16, 64), (torch.float32, 128)])
def test_gpu_autotuned_configs_at_the_benchmark_shape(dtype, head_dim):
    """Every autotune config compiles (or is skipped by the autotuner for lack of resources) and the chosen one
    is right at B=20, Q=100, h=8, N=1024 (two key splits)."""
    for fraction, kind in ((0.2, "random"), (1.0, "one")):
        check_case("triton", 20, 8, 100, (32, 32), head_dim, dtype, fraction, kind, device="cuda")


@pytest.mark.gpu
def test_gpu_non_contiguous_and_odd_head_dim(fixed_triton_config):
    q = torch.randn(3, 77, 4, 48, device="cuda").transpose(1, 2)
    kv = torch.randn(3, 300, 2, 4, 48, device="cuda")
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    mask, visible = make_mask("random", 3, 77, (15, 20), "cuda")
    active = make_active(3, 77, 0.3, "cuda")
    grad = torch.randn(q.shape, device="cuda")
    out, grads = run_op("triton", q, k, v, mask, active, 0.2, grad)
    exact_out, exact_grads = reference_with_grads(q, k, v, visible, active, 0.2, grad, torch.float64)
    assert_attention_close(out, exact_out, what="out")
    for g, e, name in zip(grads, exact_grads, "qkv"):
        assert_attention_close(g, e, what=f"d{name}")


@pytest.mark.gpu
def test_gpu_float64_runs_the_triton_kernels(fixed_triton_config):
    check_case("triton", 2, 2, 20, (10, 10), 32, torch.float64, 0.5, "random", device="cuda")


@pytest.mark.gpu
def test_gpu_opcheck(fixed_triton_config):
    mask, _ = make_mask("random", 2, 6, (8, 9), "cuda")
    active = make_active(2, 6, 0.5, "cuda")
    q, k, v = [t.requires_grad_() for t in make_qkv(2, 2, 6, 72, 32, torch.float32, "cuda")]
    with ops.use_backend("triton"):
        plan = tuple(attention_plan(mask, active))
        torch.library.opcheck(masked_cross_attention_op, (q, k, v, *plan, 0.3, 8, 9, 16))


@pytest.mark.gpu
def test_gpu_torch_compile_inductor_through_a_decoder_layer():
    torch.manual_seed(0)
    layer = DecoderLayer().cuda()
    inputs = _decoder_inputs("cuda")
    compiled = torch.compile(layer, fullgraph=True)
    loss_c, grads_c = _loss_and_grads(layer, compiled, inputs)
    loss_e, grads_e = _loss_and_grads(layer, layer, inputs)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-4)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_key_map_decides_the_blocks_not_the_answer(backend):
    """The same visibility blocked as a (1, N) strip, as the (H, W) image and as a wrong but valid (W, H) map gives
    the same output and gradients."""
    batch, heads, queries, key_map = 2, 2, 20, (9, 14)
    keys = key_map[0] * key_map[1]
    visible = ops.build_attention_mask(torch.randn(batch, queries, 4, 5) * 2, key_map)
    active = make_active(batch, queries, 0.6)
    q, k, v = make_qkv(batch, heads, queries, keys, 16, torch.float32)
    grad = torch.randn(q.shape)
    results = [run_op(backend, q, k, v, visible._replace(size=size), active, 0.25, grad)
               for size in (None, key_map, key_map[::-1])]
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], atol=1e-5, rtol=1e-5)
        for g, e in zip(grads, results[0][1]):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
