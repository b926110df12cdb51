"""``masked_cross_attention``: Mask2Former masked attention over active queries only (docs/design.md, op 3).

``build_attention_mask`` turns the previous layer's mask logits into an :class:`AttentionMask` (one bit per
query and key, shared by all heads, and the ``(H, W)`` of the key map); ``masked_cross_attention`` attends each
active query to its visible keys. Every call first builds a block-sparse plan from the mask bits and ``active``
(:mod:`coavs.ops.attention_plan`: key blocks are 8×8 spatial patches, rows in tiles of 16 ordered by their
mask) that the forward and the backward share. No backend materialises ``[B,h,Q,N]`` except ``reference``.

Backends (the plan's and the attention's alike):
  reference  dense PyTorch (coavs/ops/reference.py: the definition, and the non-finite policy)
  native     CPU, the coavs C++ kernels (csrc/cpu/masked_attention_plan_cpu.cpp, masked_attention_cpu.cpp):
             per (b, h) key blocks outermost, their rows four at a time through vectorised micro-kernels
             (AVX-512 / AVX2 / baseline at run time), each group against the 16-key sub-patches it sees
  triton     Triton kernels (kernels/masked_cross_attention_plan.py, kernels/masked_cross_attention.py): plan in
             2 launches, forward 1 launch (one program per (sample, row tile, head group)), backward 2 launches
             (a dq pass over row tiles, then a dk/dv pass over key blocks); float64 on a GPU runs the dense
             reference on the plan (its compiled tiles spill), under the interpreter the kernels

Launches per call on a GPU (triton): forward 3 (plan rows, plan lists, attention), backward 2; no host sync in
either (the grids depend on shapes only; empty tiles exit at once).

Non-finite inputs: see :func:`coavs.ops.reference.masked_attention_forward` (a NaN or Inf in q, k or v, or an
overflow, makes the rows that see it NaN in the output and in every gradient they reach, and nothing else).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference
# unpack_bits is also public here: the inverse of pack_visibility
from coavs.ops.attention_plan import (BITS_PER_WORD, AttentionPlan, ROWS_PER_TILE, build_plan, key_slots, unpack_bits,
                                     unpack_lanes)

OCCUPANCY_BLOCK = 64  # keys per occupancy flag (row-major blocks of the key index)


class AttentionMask(NamedTuple):
    """Which keys each query may attend to, shared by every head.

    ``bits``: ``[B,Q,ceil(N/32)] int32``, bit ``n % 32`` of word ``n // 32`` set when key ``n`` is visible.
    ``occupancy``: ``[B,Q,ceil(N/64)] uint8``, 1 when the row-major block ``n // 64`` has a visible key (for
    inspection; the kernels derive what they need from ``bits``). ``num_keys``: ``N``. ``size``: the ``(H, W)``
    of the key map (``H·W = N``, key ``n = y·W + x``), or None for ``(1, N)``; it only decides how keys are
    grouped into blocks, never the result. Bits past ``N`` are ignored. From :func:`build_attention_mask`
    every row has a visible key (a row that saw none sees all); a hand-packed row without one
    (:func:`pack_visibility`) gives a zero output row.
    """

    bits: Tensor
    occupancy: Tensor
    num_keys: int
    size: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------- mask packing
def pack_visibility(visible: Tensor, size: tuple[int, int] | None = None) -> AttentionMask:
    """Packs a boolean ``visible [B,Q,N]`` into an :class:`AttentionMask` (plain, traceable PyTorch ops).

    Rows are taken as given: apply the "no visible key → all visible" rule before packing if you want it.
    ``size``: the ``(H, W)`` of the key map, if the keys are one (better blocks; same result).
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
    return AttentionMask(bits, occupancy, keys, _checked_size(size, keys))


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
    key_map = (int(size[0]), int(size[1]))
    if mask_logits.shape[0] == 0 or mask_logits.shape[1] == 0:  # no query (F.interpolate rejects B or Q = 0)
        empty = torch.zeros(*mask_logits.shape[:2], key_map[0] * key_map[1], dtype=torch.bool,
                            device=mask_logits.device)
        return pack_visibility(empty, key_map)
    with torch.no_grad():
        visible = reference.attention_visibility(mask_logits.detach(), key_map)
        return pack_visibility(visible, key_map)


def all_visible_mask(batch: int, queries: int, num_keys: int, device, size=None) -> AttentionMask:
    """A mask in which every query sees every key (every bit set: bits past ``N`` are ignored)."""
    words, blocks = -(-num_keys // BITS_PER_WORD), -(-num_keys // OCCUPANCY_BLOCK)
    return AttentionMask(torch.full((batch, queries, words), -1, dtype=torch.int32, device=device),
                         torch.ones(batch, queries, blocks, dtype=torch.uint8, device=device), num_keys,
                         _checked_size(size, num_keys))


def _checked_size(size, keys: int) -> tuple[int, int] | None:
    if size is None:
        return None
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise TypeError(f"size must be None or a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1 or size[0] * size[1] != keys:
        raise ValueError(f"size {tuple(size)} must be positive with H·W = N = {keys}")
    return int(size[0]), int(size[1])


def key_map(mask: AttentionMask) -> tuple[int, int]:
    """The ``(H, W)`` the mask's keys are blocked by: its ``size``, or ``(1, N)``."""
    return mask.size if mask.size is not None else (1, mask.num_keys)


# ------------------------------------------------------------------------------------------------ backends
def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def plan_visibility(block_bits: Tensor, row_order: Tensor, row_count: Tensor, height: int,
                    width: int) -> tuple[Tensor, Tensor]:
    """``(visible [B,Q,N], works [B,Q])`` as the plan holds them (the reference backend reads nothing else)."""
    visible = unpack_lanes(block_bits).flatten(-2)[..., key_slots(height, width, block_bits.device)]
    batch, queries = row_order.shape
    position = torch.arange(queries, device=row_order.device).expand(batch, queries)
    works = torch.zeros(batch, queries, dtype=torch.bool, device=row_order.device)
    works = works.scatter(1, row_order.long(), position < row_count[:, None].long())
    return visible, works


def _reference_forward(q, k, v, block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts,
                       block_tiles, scale, height, width, rows_per_tile):
    visible, works = plan_visibility(block_bits, row_order, row_count, height, width)
    return reference.masked_attention_forward(q, k, v, visible, works, scale)


def _reference_backward(grad_out, q, k, v, out, lse, block_bits, row_order, row_count, tile_counts, tile_blocks,
                        block_counts, block_tiles, scale, height, width, rows_per_tile):
    visible, works = plan_visibility(block_bits, row_order, row_count, height, width)
    return reference.masked_attention_backward(grad_out, q, k, v, out, lse, visible, works, scale)


def _native_forward(*args):
    return tuple(torch.ops.coavs_C.masked_cross_attention(*args))


def _native_backward(*args):
    return tuple(torch.ops.coavs_C.masked_cross_attention_backward(*args))


# float64 on a GPU (a checking dtype: gradcheck, references) runs the dense reference on the plan: the Triton
# kernels compute it right (the interpreter tests them in float64), but compiled for sm_80/sm_90 their float64
# tiles spill registers (24-950 B) in every configuration that can launch.
def _triton_forward(*args):
    if args[0].dtype == torch.float64 and not _dispatch.triton_interpreting():
        return _reference_forward(*args)
    from coavs.kernels import masked_cross_attention as kernels

    return kernels.masked_cross_attention_forward(*args)


def _triton_backward(*args):
    if args[1].dtype == torch.float64 and not _dispatch.triton_interpreting():
        return _reference_backward(*args)
    from coavs.kernels import masked_cross_attention as kernels

    return kernels.masked_cross_attention_backward(*args)



_NOTE = ("CPU: coavs C++ kernels on the block-sparse plan (csrc/cpu/masked_attention_*.cpp); GPU: Triton "
         "(3 launches forward with the plan, 2 backward)")
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
def _masked_cross_attention(
    q: Tensor, k: Tensor, v: Tensor, block_bits: Tensor, row_order: Tensor, row_count: Tensor, tile_counts: Tensor,
    tile_blocks: Tensor, block_counts: Tensor, block_tiles: Tensor, scale: float, height: int, width: int,
    rows_per_tile: int,
) -> tuple[Tensor, Tensor]:
    """``(out [B,h,Q,dh], lse [B,h,Q])`` under an :class:`~coavs.ops.attention_plan.AttentionPlan` of an
    ``(height, width)`` key map; ``lse`` is the log-sum-exp of each working row's scores (0 for the other rows,
    NaN for poisoned ones), float32 (float64 for float64 inputs). See :func:`masked_cross_attention`."""
    return _dispatch.run("masked_cross_attention", q.device, q, k, v, block_bits, row_order, row_count, tile_counts,
                         tile_blocks, block_counts, block_tiles, scale, height, width, rows_per_tile)


masked_cross_attention_op = _dispatch.define_op("coavs::masked_cross_attention", _masked_cross_attention)


@masked_cross_attention_op.register_fake
def _fake_forward(q, k, v, block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles,
                  scale, height, width, rows_per_tile):
    out = q.new_empty(q.shape[:3] + (v.shape[3],))
    return out, q.new_empty(q.shape[:3], dtype=_accumulation_dtype(q.dtype))


def _masked_cross_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, block_bits: Tensor,
    row_order: Tensor, row_count: Tensor, tile_counts: Tensor, tile_blocks: Tensor, block_counts: Tensor,
    block_tiles: Tensor, scale: float, height: int, width: int, rows_per_tile: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``; rows that do not work get zero ``dq`` and contribute nothing to ``dk``, ``dv``."""
    return _dispatch.run("masked_cross_attention_backward", q.device, grad_out, q, k, v, out, lse, block_bits,
                         row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles, scale, height,
                         width, rows_per_tile)


masked_cross_attention_backward_op = _dispatch.define_op("coavs::masked_cross_attention_backward",
                                                         _masked_cross_attention_backward)


@masked_cross_attention_backward_op.register_fake
def _fake_backward(grad_out, q, k, v, out, lse, *rest):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, *plan = inputs[:10]
    ctx.scale, ctx.height, ctx.width, ctx.rows_per_tile = inputs[10:]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *plan)
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # lse has no gradient: no zero-filled tensor for it


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, *plan = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = masked_cross_attention_backward_op(grad_out, q, k, v, out, lse, *plan, ctx.scale, ctx.height,
                                                    ctx.width, ctx.rows_per_tile)
    return (dq, dk, dv) + (None,) * 11


masked_cross_attention_op.register_autograd(_backward, setup_context=_setup_context)

if _native.has_op("masked_cross_attention"):
    # fake kernels of the C++ ops, so that they trace and pass opcheck on their own
    torch.library.register_fake("coavs_C::masked_cross_attention")(_fake_forward)
    torch.library.register_fake("coavs_C::masked_cross_attention_backward")(_fake_backward)


# ---------------------------------------------------------------------------------------------- public API
def _check_tensor(name, t, dtype, shape, device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"attn_mask.{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"attn_mask.{name} must be {str(dtype).replace('torch.', '')} {shape}, got "
                         f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"attn_mask.{name} must be on the device of q ({device}), got {t.device}")


def _validate_mask(attn_mask, batch: int, queries: int, keys: int, device) -> None:
    """Everything a hand-built mask could get wrong that would change memory accesses; its bit *values* are free
    (bits past N are ignored, occupancy is not read)."""
    if not isinstance(attn_mask, AttentionMask):
        raise TypeError(f"attn_mask must be an AttentionMask from build_attention_mask, or None, got "
                        f"{type(attn_mask).__name__}")
    if isinstance(attn_mask.num_keys, bool) or not isinstance(attn_mask.num_keys, int):
        raise TypeError(f"attn_mask.num_keys must be an int, got {type(attn_mask.num_keys).__name__}")
    if attn_mask.num_keys != keys:
        raise ValueError(f"attn_mask was built for {attn_mask.num_keys} keys but k has N={keys}; build it "
                         "with size = the (H, W) of the keys")
    _checked_size(attn_mask.size, keys)
    _check_tensor("bits", attn_mask.bits, torch.int32, (batch, queries, -(-keys // BITS_PER_WORD)), device)
    _check_tensor("occupancy", attn_mask.occupancy, torch.uint8, (batch, queries, -(-keys // OCCUPANCY_BLOCK)),
                  device)


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
        _validate_mask(attn_mask, batch, queries, keys, q.device)
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


def attention_plan(attn_mask: AttentionMask, active: Tensor) -> AttentionPlan:
    """The block-sparse plan of ``attn_mask`` and ``active [B,Q]`` (what :func:`masked_cross_attention` builds)."""
    height, width = key_map(attn_mask)
    return build_plan(attn_mask.bits, active, height, width, ROWS_PER_TILE)


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
    materialises ``[B,h,Q,N]`` (except the ``reference`` backend). Non-finite inputs poison exactly the rows
    that see them (NaN output and gradients; see :func:`coavs.ops.reference.masked_attention_forward`).
    No host synchronisation; on a GPU 3 kernel launches forward (plan and attention) and 2 backward.
    """
    _validate(q, k, v, attn_mask, active, scale)
    batch, _, queries, head_dim = q.shape
    if attn_mask is None:
        attn_mask = all_visible_mask(batch, queries, k.shape[2], q.device)
    if active is None:
        active = torch.ones(batch, queries, dtype=torch.bool, device=q.device)
    scale = float(head_dim ** -0.5 if scale is None else scale)
    height, width = key_map(attn_mask)
    plan = build_plan(attn_mask.bits, active, height, width, ROWS_PER_TILE)
    out, _ = masked_cross_attention_op(q, k, v, *plan, scale, height, width, ROWS_PER_TILE)
    return out
