"""``masked_cross_attention``: Mask2Former masked attention over active queries only (docs/design.md, op 3).

``build_attention_mask`` turns the previous layer's mask logits into an :class:`AttentionMask` (one bit per
query and key, shared by all heads, plus per-block occupancy); ``masked_cross_attention`` attends each active
query to its visible keys. No backend materialises a ``[B,h,Q,N]`` tensor except ``reference``, the definition.

Backends:
  reference  dense PyTorch (materialises ``[B,h,Q,N]``; the definition the others are tested against)
  native     CPU, the coavs C++ kernel (csrc/cpu/masked_attention_cpu.cpp): at::parallel_for over (b, h); each
             active row walks only the 64-key blocks it sees, online softmax in float32 (float64 for float64),
             vectorised (AVX-512 / AVX2 / baseline chosen at run time), value and gradient updates over the
             visible keys' bits only; the backward recomputes the probabilities from the saved log-sum-exp.
             Reads q, k, v with any strides. benchmarks/bench_attention.py measures it against SDPA and eager.
  triton     Triton kernels over compacted active rows with empty-block skipping (kernels/masked_cross_attention.py:
             forward with the key range split over programs plus a combine, and one backward kernel per key
             block giving dk, dv and, by atomic adds, dq); float64 inputs, which Triton's dot does not take,
             run a key-chunked pure-PyTorch path (``_chunked_forward``) on the same device instead
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference

BITS_PER_WORD = 32
OCCUPANCY_BLOCK = 64  # keys per occupancy flag; the Triton kernels' key block
CHUNK_ELEMENTS = 1 << 20  # the key-chunked path keeps one sample's score chunk [h,Q_active,C] under this size


class AttentionMask(NamedTuple):
    """Which keys each query may attend to, shared by every head.

    ``bits``: ``[B,Q,ceil(N/32)] int32``, bit ``n % 32`` of word ``n // 32`` set when key ``n`` is visible (bits
    past ``N`` are zero). ``occupancy``: ``[B,Q,ceil(N/64)] uint8``, 1 when block ``n // 64`` has a visible key.
    ``num_keys``: ``N``. From :func:`build_attention_mask` every row has a visible key (a row that saw none
    sees all); a hand-packed row without one (:func:`pack_visibility`) gives a zero output row.
    """

    bits: Tensor
    occupancy: Tensor
    num_keys: int


# ---------------------------------------------------------------------------------------------- mask packing
def pack_visibility(visible: Tensor) -> AttentionMask:
    """Packs a boolean ``visible [B,Q,N]`` into an :class:`AttentionMask` (plain, traceable PyTorch ops).

    Rows are taken as given: apply the "no visible key → all visible" rule before packing if you want it.
    """
    if not isinstance(visible, Tensor) or visible.dtype != torch.bool or visible.dim() != 3:
        raise TypeError("visible must be a bool tensor [B,Q,N]")
    batch, queries, keys = visible.shape
    words = -(-keys // BITS_PER_WORD)
    blocks = -(-keys // OCCUPANCY_BLOCK)
    # Padded as uint8, not bool: inductor's CPU codegen fails (CppCompileError, VecMask<int> vs VecMask<float> in
    # the pad's masked load) on a padded bool that fuses with `visible | ~any` when a row has one key.
    padded = F.pad(visible.to(torch.uint8), (0, blocks * OCCUPANCY_BLOCK - keys))
    weights = torch.bitwise_left_shift(
        torch.ones((), dtype=torch.int64, device=visible.device),
        torch.arange(BITS_PER_WORD, dtype=torch.int64, device=visible.device))
    as_words = padded[..., : words * BITS_PER_WORD].reshape(batch, queries, words, BITS_PER_WORD)
    unsigned = (as_words.to(torch.int64) * weights).sum(-1)
    bits = torch.where(unsigned >= 2**31, unsigned - 2**32, unsigned).to(torch.int32)
    # amax, not any: any() of a uint8 tensor is uint8 in eager but bool under inductor.
    occupancy = padded.reshape(batch, queries, blocks, OCCUPANCY_BLOCK).amax(-1)
    return AttentionMask(bits, occupancy, keys)


def unpack_bits(bits: Tensor, num_keys: int) -> Tensor:
    """``[B,Q,W] int32`` words → ``[B,Q,num_keys]`` bool (the inverse of :func:`pack_visibility`)."""
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=bits.device)
    expanded = torch.bitwise_and(torch.bitwise_right_shift(bits[..., None], shifts), 1).bool()
    return expanded.flatten(-2)[..., :num_keys]


def build_attention_mask(mask_logits: Tensor, size: tuple[int, int]) -> AttentionMask:
    """The attention mask of Mask2Former's masked attention, bit-packed.

    Args:
        mask_logits: ``[B,Q,h',w']`` floating-point mask logits of the previous decoder layer.
        size: ``(H, W)`` of the key feature map (``N = H·W`` keys, row-major as ``flatten(2)``).

    The logits are resized as ``F.interpolate(mode="bilinear", align_corners=False)``; key ``n`` is visible to
    query ``q`` iff ``sigmoid(resized) >= 0.5`` (both in the logits' dtype, exactly as Mask2Former); a query
    with no visible key sees every key. No gradient flows to ``mask_logits``.
    """
    if not isinstance(mask_logits, Tensor):
        raise TypeError(f"mask_logits must be a Tensor, got {type(mask_logits).__name__}")
    if mask_logits.dim() != 4:
        raise ValueError(f"mask_logits must be [B,Q,h',w'], got shape {tuple(mask_logits.shape)}")
    if not mask_logits.is_floating_point():
        raise TypeError(f"mask_logits must be floating-point, got {mask_logits.dtype}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) for s in size)):
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    if mask_logits.shape[2] < 1 or mask_logits.shape[3] < 1:
        raise ValueError(f"mask_logits must have a non-empty spatial size, got {tuple(mask_logits.shape)}")
    if mask_logits.shape[0] == 0 or mask_logits.shape[1] == 0:  # no query (F.interpolate rejects B or Q = 0)
        keys = int(size[0]) * int(size[1])
        return pack_visibility(torch.zeros(*mask_logits.shape[:2], keys, dtype=torch.bool, device=mask_logits.device))
    with torch.no_grad():
        visible = reference.attention_visibility(mask_logits.detach(), (int(size[0]), int(size[1])))
        return pack_visibility(visible)


def all_visible_mask(batch: int, queries: int, num_keys: int, device) -> AttentionMask:
    """A mask in which every query sees every key."""
    return pack_visibility(torch.ones(batch, queries, num_keys, dtype=torch.bool, device=device))


# ------------------------------------------------------------------------------------------------ backends
def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _working_visibility(bits, keys, active):
    """``(seen [B,Q,N], works [B,Q])``: a row without a visible key sees every key in ``seen`` (finite softmax)
    and does no work (zero output and gradient), like a dormant row."""
    visible = unpack_bits(bits, keys)
    any_key = visible.any(-1)
    return visible | ~any_key[..., None], any_key & active


def _reference_forward(q, k, v, bits, occupancy, active, scale):
    visible = unpack_bits(bits, k.shape[2])
    out = reference.masked_cross_attention(q, k, v, visible, active, scale)
    acc = _accumulation_dtype(q.dtype)
    seen, works = _working_visibility(bits, k.shape[2], active)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    lse = scores.masked_fill(~seen[:, None], float("-inf")).logsumexp(-1)
    lse = torch.where(works[:, None, :], lse, torch.zeros((), dtype=acc, device=q.device))
    return out, lse


def _reference_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale):
    """Dense gradients: ``dv = Pᵀ·g``, ``dS = P∘(g·vᵀ − rowsum(g∘o))``, ``dq = s·dS·k``, ``dk = s·dSᵀ·q``."""
    acc = _accumulation_dtype(q.dtype)
    seen, works = _working_visibility(bits, k.shape[2], active)
    q32, k32, v32 = q.to(acc), k.to(acc), v.to(acc)
    scores = torch.matmul(q32, k32.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~seen[:, None], float("-inf")), dim=-1)
    g = torch.where(works[:, None, :, None], grad_out.to(acc), torch.zeros((), dtype=acc, device=q.device))
    dv = torch.matmul(probs.transpose(-1, -2), g)
    dp = torch.matmul(g, v32.transpose(-1, -2))
    ds = probs * (dp - (dp * probs).sum(-1, keepdim=True))
    dq = torch.matmul(ds, k32) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q32) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _key_chunks(num_keys: int, occupied_blocks: list[bool], rows: int, heads: int):
    """Key ranges ``[start, stop)`` (starts multiple of 64) of at most ``CHUNK_ELEMENTS / (heads·rows)`` keys,
    leaving out those in which no row has a visible key (``occupied_blocks``: one flag per block of 64)."""
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, heads * rows * OCCUPANCY_BLOCK))
    chunk = per_chunk * OCCUPANCY_BLOCK
    for start in range(0, num_keys, chunk):
        stop = min(start + chunk, num_keys)
        if any(occupied_blocks[start // OCCUPANCY_BLOCK: -(-stop // OCCUPANCY_BLOCK)]):
            yield start, stop


def _sample_rows(bits: Tensor, occupancy: Tensor, active: Tensor, b: int):
    """The rows of sample ``b`` that do work: active queries with a visible key (a hand-packed mask may have a
    row without one; its output is zero). Returns their indices, their mask words, and which key blocks any
    of them sees (one flag per block of 64)."""
    row_blocks = occupancy[b].bool()
    index = torch.nonzero(active[b] & row_blocks.any(-1)).flatten()
    occupied = row_blocks.index_select(0, index).any(0).tolist() if index.numel() else []
    return index, bits[b].index_select(0, index), occupied


def _native_forward(q, k, v, bits, occupancy, active, scale):
    return tuple(torch.ops.coavs_C.masked_cross_attention(q, k, v, bits, occupancy, active, scale))


def _native_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale):
    return tuple(torch.ops.coavs_C.masked_cross_attention_backward(grad_out, q, k, v, out, lse, bits, occupancy,
                                                                   active, scale))


def _chunk_scores(q_rows: Tensor, k_sample: Tensor, bits_rows: Tensor, start: int, stop: int) -> Tensor:
    """Masked scores ``[h, rows, stop − start]`` of (pre-scaled) rows ``q_rows [h, rows, dh]`` against keys
    ``[start, stop)`` of ``k_sample [h, N, dh]``; invisible keys get −inf."""
    scores = torch.matmul(q_rows, k_sample[:, start:stop].to(q_rows.dtype).transpose(-1, -2))
    words = bits_rows[:, start // BITS_PER_WORD: -(-stop // BITS_PER_WORD)]
    visible = unpack_bits(words, stop - start)
    return scores.masked_fill_(~visible, float("-inf"))


def _chunked_forward(q, k, v, bits, occupancy, active, scale):
    """Per sample, its active rows only, over key chunks with an online softmax; memory ``O(h·Q·chunk)``."""
    batch, heads, queries, _ = q.shape
    acc = _accumulation_dtype(q.dtype)
    out = torch.zeros(q.shape[:3] + (v.shape[3],), dtype=q.dtype, device=q.device)
    lse = torch.zeros(q.shape[:3], dtype=acc, device=q.device)
    for b in range(batch):
        index, bits_rows, occupied = _sample_rows(bits, occupancy, active, b)
        if index.numel() == 0:
            continue
        q_rows = q[b].index_select(1, index).to(acc) * scale
        row_max = torch.full(q_rows.shape[:2], float("-inf"), dtype=acc, device=q.device)
        row_sum = torch.zeros(q_rows.shape[:2], dtype=acc, device=q.device)
        out_rows = torch.zeros(q_rows.shape[:2] + (v.shape[3],), dtype=acc, device=q.device)
        for start, stop in _key_chunks(k.shape[2], occupied, index.numel(), heads):
            probs = _chunk_scores(q_rows, k[b], bits_rows, start, stop)
            new_max = torch.maximum(row_max, probs.amax(-1))
            shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            probs = probs.sub_(shift[..., None]).exp_()
            correction = torch.exp(row_max - shift)
            row_sum = row_sum * correction + probs.sum(-1)
            out_rows = out_rows * correction[..., None] + torch.matmul(probs, v[b, :, start:stop].to(acc))
            row_max = new_max
        # every row sees a key (the all-masked rule), so row_sum > 0 for rows built by build_attention_mask
        seen = row_sum > 0
        safe_sum = torch.where(seen, row_sum, torch.ones_like(row_sum))
        out[b, :, index] = (out_rows / safe_sum[..., None]).to(q.dtype)
        lse[b, :, index] = torch.where(seen, row_max + torch.log(safe_sum), torch.zeros_like(row_sum))
    return out, lse


def _chunked_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale):
    """Gradients per sample and key chunk, recomputing the probabilities from the saved log-sum-exp."""
    batch, heads, queries, _ = q.shape
    acc = _accumulation_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    for b in range(batch):
        index, bits_rows, occupied = _sample_rows(bits, occupancy, active, b)
        if index.numel() == 0:
            continue
        q_rows = q[b].index_select(1, index).to(acc)
        q_scaled = q_rows * scale
        g_rows = grad_out[b].index_select(1, index).to(acc)
        delta = (g_rows * out[b].index_select(1, index).to(acc)).sum(-1, keepdim=True)
        lse_rows = lse[b].index_select(1, index).to(acc)[..., None]
        dq_rows = torch.zeros_like(q_rows)
        for start, stop in _key_chunks(k.shape[2], occupied, index.numel(), heads):
            probs = _chunk_scores(q_scaled, k[b], bits_rows, start, stop).sub_(lse_rows).exp_()
            v_chunk = v[b, :, start:stop].to(acc)
            k_chunk = k[b, :, start:stop].to(acc)
            dv[b, :, start:stop] = torch.matmul(probs.transpose(-1, -2), g_rows).to(v.dtype)
            ds = probs.mul_(torch.matmul(g_rows, v_chunk.transpose(-1, -2)).sub_(delta))
            dq_rows += torch.matmul(ds, k_chunk)
            dk[b, :, start:stop] = (torch.matmul(ds.transpose(-1, -2), q_rows) * scale).to(k.dtype)
        dq[b, :, index] = (dq_rows * scale).to(q.dtype)
    return dq, dk, dv


def _triton_forward(q, k, v, bits, occupancy, active, scale):
    if q.dtype == torch.float64:
        return _chunked_forward(q, k, v, bits, occupancy, active, scale)
    from coavs.kernels import masked_cross_attention as kernels

    return kernels.masked_cross_attention_forward(q, k, v, bits, occupancy, active, scale)


def _triton_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale):
    if q.dtype == torch.float64:
        return _chunked_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale)
    from coavs.kernels import masked_cross_attention as kernels

    return kernels.masked_cross_attention_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale)


_NOTE = ("CPU: coavs C++ kernel over the active rows and the key blocks each row sees "
         "(csrc/cpu/masked_attention_cpu.cpp); GPU: Triton")
_FORWARD = _dispatch.register(
    _dispatch.OpSpec(
        name="masked_cross_attention",
        impls={"reference": _reference_forward, "native": _native_forward, "triton": _triton_forward},
        gpu_order=("triton", "reference"),
        native_op="masked_cross_attention",
        note=_NOTE,
    )
)
_BACKWARD = _dispatch.register(
    _dispatch.OpSpec(
        name="masked_cross_attention_backward",
        impls={"reference": _reference_backward, "native": _native_backward, "triton": _triton_backward},
        gpu_order=("triton", "reference"),
        native_op="masked_cross_attention_backward",
        note=_NOTE,
    )
)


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("coavs::masked_cross_attention", mutates_args=())
def masked_cross_attention_op(
    q: Tensor, k: Tensor, v: Tensor, mask_bits: Tensor, block_occupancy: Tensor, active: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """``(out [B,h,Q,dh], lse [B,h,Q])``; ``lse`` is the log-sum-exp of each active row's scores (0 when dormant),
    float32 (float64 for float64 inputs). See :func:`masked_cross_attention`."""
    return _dispatch.run("masked_cross_attention", q.device, q, k, v, mask_bits, block_occupancy, active, scale)


@masked_cross_attention_op.register_fake
def _fake_forward(q, k, v, mask_bits, block_occupancy, active, scale):
    out = q.new_empty(q.shape[:3] + (v.shape[3],))
    return out, q.new_empty(q.shape[:3], dtype=_accumulation_dtype(q.dtype))


@torch.library.custom_op("coavs::masked_cross_attention_backward", mutates_args=())
def masked_cross_attention_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask_bits: Tensor,
    block_occupancy: Tensor, active: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``; rows of dormant queries get zero ``dq`` and contribute nothing to ``dk``, ``dv``."""
    return _dispatch.run("masked_cross_attention_backward", q.device, grad_out, q, k, v, out, lse, mask_bits,
                         block_occupancy, active, scale)


@masked_cross_attention_backward_op.register_fake
def _fake_backward(grad_out, q, k, v, out, lse, mask_bits, block_occupancy, active, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, mask_bits, block_occupancy, active, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, out, lse, mask_bits, block_occupancy, active)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, mask_bits, block_occupancy, active = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = masked_cross_attention_backward_op(grad_out, q, k, v, out, lse, mask_bits, block_occupancy,
                                                    active, ctx.scale)
    return dq, dk, dv, None, None, None, None


masked_cross_attention_op.register_autograd(_backward, setup_context=_setup_context)

if _native.has_op("masked_cross_attention"):
    # fake kernels of the C++ ops, so that they trace and pass opcheck on their own
    torch.library.register_fake("coavs_C::masked_cross_attention")(_fake_forward)
    torch.library.register_fake("coavs_C::masked_cross_attention_backward")(_fake_backward)


# ---------------------------------------------------------------------------------------------- public API
def _validate(q, k, v, attn_mask, active, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ([B,h,Q,dh] for q, [B,h,N,dh] for k and v), got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q: {t.dtype} vs {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q: {t.device} vs {q.device}")
    if k.shape != v.shape:
        raise ValueError(f"v must have the shape of k [B,h,N,dh]: {tuple(v.shape)} vs {tuple(k.shape)}")
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k [B,h,N,dh] must share B, h and dh with q [B,h,Q,dh]: {tuple(k.shape)} vs "
                         f"{tuple(q.shape)} (no broadcasting)")
    batch, _, queries, head_dim = q.shape
    keys = k.shape[2]
    if head_dim < 1:
        raise ValueError(f"q must have a head dimension dh >= 1, got shape {tuple(q.shape)}")
    if keys < 1:
        raise ValueError(f"k must have at least one key (N >= 1), got shape {tuple(k.shape)}")
    if attn_mask is not None:
        if not isinstance(attn_mask, AttentionMask):
            raise TypeError(f"attn_mask must be an AttentionMask from build_attention_mask, or None, got "
                            f"{type(attn_mask).__name__}")
        if attn_mask.num_keys != keys:
            raise ValueError(f"attn_mask was built for {attn_mask.num_keys} keys but k has N={keys}; build it "
                             "with size = the (H, W) of the keys")
        expected_bits = (batch, queries, -(-keys // BITS_PER_WORD))
        if attn_mask.bits.dtype != torch.int32 or tuple(attn_mask.bits.shape) != expected_bits:
            raise ValueError(f"attn_mask.bits must be int32 {expected_bits} for q {tuple(q.shape)}, got "
                             f"{attn_mask.bits.dtype} {tuple(attn_mask.bits.shape)}")
        expected_blocks = (batch, queries, -(-keys // OCCUPANCY_BLOCK))
        if attn_mask.occupancy.dtype != torch.uint8 or tuple(attn_mask.occupancy.shape) != expected_blocks:
            raise ValueError(f"attn_mask.occupancy must be uint8 {expected_blocks}, got "
                             f"{attn_mask.occupancy.dtype} {tuple(attn_mask.occupancy.shape)}")
        if attn_mask.bits.device != q.device or attn_mask.occupancy.device != q.device:
            raise ValueError(f"attn_mask must be on the device of q ({q.device}), got {attn_mask.bits.device}")
    if active is not None:
        if not isinstance(active, Tensor) or active.dtype != torch.bool:
            raise TypeError(f"active must be a bool tensor [B,Q] or None, got "
                            f"{getattr(active, 'dtype', type(active).__name__)}")
        if tuple(active.shape) != (batch, queries):
            raise ValueError(f"active must be [B,Q] = {(batch, queries)}, got {tuple(active.shape)}")
        if active.device != q.device:
            raise ValueError(f"active must be on the device of q: {active.device} vs {q.device}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be finite and > 0, got {scale}")


def masked_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: AttentionMask | None,
    active: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Mask2Former masked cross-attention of the active queries, ``[B,h,Q,dh]``.

    Args:
        q: queries ``[B,h,Q,dh]``; k, v: keys and values ``[B,h,N,dh]`` (same dtype and device; any strides).
        attn_mask: from :func:`build_attention_mask` (``N`` keys, shared by the heads), or None (all visible).
        active: ``[B,Q]`` bool; dormant queries' rows are zero, get zero gradient and cost no work. None: all.
        scale: score scale, default ``dh ** -0.5``.

    ``out[b,:,q] = softmax(scale·q·kᵀ over visible keys)·v`` for active ``q``; gradients to q, k, v (none to
    the mask or ``active``). Float16/bfloat16/float32 (float64 for checks), float32 accumulation. Never
    materialises ``[B,h,Q,N]`` (except the ``reference`` backend).
    """
    _validate(q, k, v, attn_mask, active, scale)
    batch, _, queries, head_dim = q.shape
    if attn_mask is None:
        attn_mask = all_visible_mask(batch, queries, k.shape[2], q.device)
    if active is None:
        active = torch.ones(batch, queries, dtype=torch.bool, device=q.device)
    scale = float(head_dim ** -0.5 if scale is None else scale)
    out, _ = masked_cross_attention_op(q, k, v, attn_mask.bits, attn_mask.occupancy, active, scale)
    return out
