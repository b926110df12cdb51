"""Triton kernels of ``masked_cross_attention``: forward and backward over the active query rows only.

Active rows are compacted per sample without a host sync: ``order[b]`` lists the active queries of sample ``b``
(a prefix sum over ``active[b]``) and ``count[b]`` says how many there are. A row-block program for
``(b, j)`` takes rows ``order[b, j·BLOCK_M : j·BLOCK_M + BLOCK_M] ∩ [0, count[b])`` and exits at once when that
range is empty, so the work scales with the number of active rows. A key block of ``BLOCK_N = 64`` keys is
skipped when none of the block's rows has a visible key in it (``occupancy``); inside a block the bit mask
decides per (row, key).

With ``s = scale·q·kᵀ`` restricted to visible keys (−inf elsewhere), ``P = softmax(s)``, ``o = P·v``,
``lse = log Σ exp(s)`` per row (exponentials in base 2 with ``log2(e)`` folded into the scale):

Forward   online softmax over key blocks: ``m ← max(m, max s)``, ``l ← l·e^(m_old − m) + Σ e^(s − m)``,
          ``acc ← acc·e^(m_old − m) + e^(s − m)·v``; ``o = acc / l``, ``lse = m + log l``.
          Long key ranges are split over ``S`` programs per row block (few active rows would otherwise leave
          the GPU idle); each writes its ``(o_s, lse_s)`` and a combine kernel merges them:
          ``lse = log Σ_s e^(lse_s)``, ``o = Σ_s e^(lse_s − lse)·o_s``.
Backward  probabilities recomputed from ``lse`` (none stored): ``P = exp(s − lse)``, ``Δ = rowsum(dO ∘ o)``
          (a row-block kernel), ``dS = P ∘ (dO·vᵀ − Δ)``, ``dk = scale·dSᵀ·q``, ``dv = Pᵀ·dO`` per key block,
          looping over the row blocks of its sample, and ``dq += scale·dS·k`` by float32 atomic adds from the
          same program. Dormant rows get ``dq = 0`` and add nothing to dk, dv.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


BLOCK_N = 64  # keys per block; equals the mask's occupancy block
LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)  # constants the kernels read
_LOG2E = tl.constexpr(LOG2E)
MAX_SPLITS = 8  # forward key splits per row block
MIN_BLOCKS_PER_SPLIT = 8  # a split gets at least this many key blocks
COMBINE_BLOCK_M = 32


def _configs(pairs):
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s) for m, w, s in pairs]


_ROW_CONFIGS = _configs([(16, 2, 2), (16, 4, 3), (32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 8, 3)])
_KEY_CONFIGS = _configs([(16, 4, 2), (16, 2, 3), (32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 8, 2)])
_INTERPRETER_BLOCK_M = 16
# Sizes that vary from call to call are not specialised on (fewer compiled variants); strides and head_dim are.
_SIZES = ["batch", "queries", "num_keys", "words", "key_blocks", "heads", "blocks_per_split", "splits"]


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``a·b`` with float32 accumulation; ``UPCAST`` multiplies in float32 (the interpreter's bfloat16 dot is
    wrong in triton 3.6; the operands are already rounded to bfloat16, so the product is the same)."""
    if UPCAST:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        product = tl.dot(a, b, input_precision=PRECISION)
    return product


@triton.jit
def _visible(bits_ptr, mask_rows, words, keys, valid):
    """``[BLOCK_M, BLOCK_N]`` bool: bit ``key`` of row ``mask_row`` is set (False where not ``valid``)."""
    word = tl.load(bits_ptr + mask_rows[:, None] * words + (keys // 32)[None, :], mask=valid, other=0)
    return (((word >> (keys % 32)[None, :]) & 1) != 0) & valid


@triton.jit(do_not_specialize=_SIZES)
def _compact_kernel(active_ptr, order_ptr, count_ptr, queries, BLOCK_Q: tl.constexpr):
    """Per sample: ``order[b, :count[b]]`` = its active query indices, ascending (entries past the count are
    not written); one launch instead of a sort."""
    b = tl.program_id(0).to(tl.int64)
    index = tl.arange(0, BLOCK_Q)
    in_range = index < queries
    flag = tl.load(active_ptr + b * queries + index, mask=in_range, other=0).to(tl.int32)
    position = tl.cumsum(flag, axis=0) - 1
    tl.store(order_ptr + b * queries + position, index, mask=in_range & (flag != 0))
    tl.store(count_ptr + b, tl.sum(flag, axis=0))


@triton.jit(do_not_specialize=_SIZES)
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, bits_ptr, occ_ptr, order_ptr, count_ptr,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
    batch, queries, num_keys, head_dim, words, key_blocks, heads, blocks_per_split, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    row_blocks = tl.cdiv(queries, BLOCK_M)
    b = (tl.program_id(0) // row_blocks).to(tl.int64)
    start = (tl.program_id(0) % row_blocks) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    count = tl.load(count_ptr + b)
    if start < count:
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < count
        qidx = tl.load(order_ptr + b * queries + rows, mask=row_ok, other=0).to(tl.int64)
        mask_rows = b * queries + qidx
        dims = tl.arange(0, BLOCK_D)
        dim_ok = dims < head_dim
        tile_ok = row_ok[:, None] & dim_ok[None, :]
        q = tl.load(q_ptr + b * sqb + head * sqh + qidx[:, None] * sqm + dims[None, :] * sqd, mask=tile_ok,
                    other=0.0)
        k_base = k_ptr + b * skb + head * skh
        v_base = v_ptr + b * svb + head * svh
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        first_block = split * blocks_per_split
        last_block = tl.minimum(first_block + blocks_per_split, key_blocks)
        for kb in range(first_block, last_block):
            occupied = tl.load(occ_ptr + mask_rows * key_blocks + kb, mask=row_ok, other=0).to(tl.int32)
            if tl.max(occupied, axis=0) > 0:
                keys = kb * BLOCK_N + tl.arange(0, BLOCK_N)
                key_ok = keys < num_keys
                k_t = tl.load(k_base + keys[None, :] * skn + dims[:, None] * skd,
                              mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
                s = _dot(q, k_t, PRECISION, UPCAST) * scale_log2
                visible = _visible(bits_ptr, mask_rows, words, keys, row_ok[:, None] & key_ok[None, :])
                s = tl.where(visible, s, float("-inf"))
                new_max = tl.maximum(row_max, tl.max(s, axis=1))
                shift = tl.where(new_max == float("-inf"), 0.0, new_max)
                p = tl.exp2(s - shift[:, None])
                correction = tl.exp2(row_max - shift)
                row_sum = row_sum * correction + tl.sum(p, axis=1)
                v = tl.load(v_base + keys[:, None] * svn + dims[None, :] * svd,
                            mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
                acc = acc * correction[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
                row_max = new_max
        seen = row_sum > 0
        safe_sum = tl.where(seen, row_sum, 1.0)
        out = acc / safe_sum[:, None]
        if SPLIT:
            # float32 partial results [S,B,h,Q,dh] and their lse in log2 units (−inf: nothing seen)
            part = ((split * batch + b) * heads + head) * queries + qidx
            tl.store(o_part_ptr + part[:, None] * head_dim + dims[None, :], out, mask=tile_ok)
            tl.store(lse_part_ptr + part, tl.where(seen, row_max + tl.log2(safe_sum), float("-inf")), mask=row_ok)
        else:
            lse = tl.where(seen, (row_max + tl.log2(safe_sum)) * _LN2, 0.0)
            tl.store(out_ptr + b * sob + head * soh + qidx[:, None] * som + dims[None, :] * sod,
                     out.to(out_ptr.dtype.element_ty), mask=tile_ok)
            tl.store(lse_ptr + (b * heads + head) * queries + qidx, lse, mask=row_ok)


@triton.jit(do_not_specialize=_SIZES)
def _combine_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, order_ptr, count_ptr, sob, soh, som, sod,
    batch, queries, head_dim, heads, splits,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row_blocks = tl.cdiv(queries, BLOCK_M)
    b = (tl.program_id(0) // row_blocks).to(tl.int64)
    start = (tl.program_id(0) % row_blocks) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    count = tl.load(count_ptr + b)
    if start < count:
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < count
        qidx = tl.load(order_ptr + b * queries + rows, mask=row_ok, other=0).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (dims < head_dim)[None, :]
        stat = (b * heads + head) * queries + qidx
        split_stride = batch * heads * queries
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for split in range(0, splits):
            part = split * split_stride + stat
            lse_split = tl.load(lse_part_ptr + part, mask=row_ok, other=float("-inf"))
            o_split = tl.load(o_part_ptr + part[:, None] * head_dim + dims[None, :], mask=tile_ok, other=0.0)
            new_max = tl.maximum(row_max, lse_split)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            correction = tl.exp2(row_max - shift)
            weight = tl.exp2(lse_split - shift)
            total = total * correction + weight
            acc = acc * correction[:, None] + weight[:, None] * o_split
            row_max = new_max
        seen = total > 0
        safe_total = tl.where(seen, total, 1.0)
        tl.store(out_ptr + b * sob + head * soh + qidx[:, None] * som + dims[None, :] * sod,
                 (acc / safe_total[:, None]).to(out_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(lse_ptr + stat, tl.where(seen, (row_max + tl.log2(safe_total)) * _LN2, 0.0),
                 mask=row_ok)


@triton.jit(do_not_specialize=_SIZES)
def _delta_kernel(
    out_ptr, do_ptr, delta_ptr, order_ptr, count_ptr, sob, soh, som, sod, sgb, sgh, sgm, sgd,
    queries, head_dim, heads,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``Δ = rowsum(dO ∘ o)`` in float32 for the active rows."""
    row_blocks = tl.cdiv(queries, BLOCK_M)
    b = (tl.program_id(0) // row_blocks).to(tl.int64)
    start = (tl.program_id(0) % row_blocks) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    count = tl.load(count_ptr + b)
    if start < count:
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < count
        qidx = tl.load(order_ptr + b * queries + rows, mask=row_ok, other=0).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (dims < head_dim)[None, :]
        out = tl.load(out_ptr + b * sob + head * soh + qidx[:, None] * som + dims[None, :] * sod, mask=tile_ok,
                      other=0.0)
        d_out = tl.load(do_ptr + b * sgb + head * sgh + qidx[:, None] * sgm + dims[None, :] * sgd, mask=tile_ok,
                        other=0.0)
        delta = tl.sum(d_out.to(tl.float32) * out.to(tl.float32), axis=1)
        tl.store(delta_ptr + (b * heads + head) * queries + qidx, delta, mask=row_ok)


@triton.jit(do_not_specialize=_SIZES)
def _backward_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr, bits_ptr, occ_ptr, order_ptr,
    count_ptr, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sgb, sgh, sgm, sgd,
    queries, num_keys, head_dim, words, key_blocks, heads, scale, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = (tl.program_id(0) // key_blocks).to(tl.int64)
    kb = tl.program_id(0) % key_blocks
    head = tl.program_id(1).to(tl.int64)
    keys = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < num_keys
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    kv_ok = key_ok[:, None] & dim_ok[None, :]
    k = tl.load(k_ptr + b * skb + head * skh + keys[:, None] * skn + dims[None, :] * skd, mask=kv_ok, other=0.0)
    v = tl.load(v_ptr + b * svb + head * svh + keys[:, None] * svn + dims[None, :] * svd, mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    count = tl.load(count_ptr + b)
    for start in range(0, count, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < count
        qidx = tl.load(order_ptr + b * queries + rows, mask=row_ok, other=0).to(tl.int64)
        mask_rows = b * queries + qidx
        occupied = tl.load(occ_ptr + mask_rows * key_blocks + kb, mask=row_ok, other=0).to(tl.int32)
        if tl.max(occupied, axis=0) > 0:
            tile_ok = row_ok[:, None] & dim_ok[None, :]
            q = tl.load(q_ptr + b * sqb + head * sqh + qidx[:, None] * sqm + dims[None, :] * sqd, mask=tile_ok,
                        other=0.0)
            d_out = tl.load(do_ptr + b * sgb + head * sgh + qidx[:, None] * sgm + dims[None, :] * sgd,
                            mask=tile_ok, other=0.0)
            stat = (b * heads + head) * queries + qidx
            lse_log2 = tl.load(lse_ptr + stat, mask=row_ok, other=0.0) * _LOG2E
            delta = tl.load(delta_ptr + stat, mask=row_ok, other=0.0)
            s = _dot(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
            visible = _visible(bits_ptr, mask_rows, words, keys, row_ok[:, None] & key_ok[None, :])
            p = tl.where(visible, tl.exp2(s - lse_log2[:, None]), 0.0)
            dv += _dot(tl.trans(p.to(d_out.dtype)), d_out, PRECISION, UPCAST)
            dp = _dot(d_out, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)
            dq = _dot(ds.to(k.dtype), k, PRECISION, UPCAST) * scale
            # dq is a zeroed float32 [B,h,Q,dh] accumulator shared by the key blocks of this sample
            tl.atomic_add(dq_ptr + stat[:, None] * head_dim + dims[None, :], dq, mask=tile_ok)
    # dk, dv are fresh contiguous [B,h,N,dh] tensors; every key of the block is written (zero when unseen)
    offsets = ((b * heads + head) * num_keys + keys[:, None]) * head_dim + dims[None, :]
    tl.store(dk_ptr + offsets, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_ok)
    tl.store(dv_ptr + offsets, dv.to(dv_ptr.dtype.element_ty), mask=kv_ok)


_TUNED = {}


class SharedMemoryPrune:
    """``early_config_prune`` of the autotuned kernels (and the check of the default config): drops the configs
    whose shared memory would exceed what one block may use on the current device (A100 163 KiB, H100 227 KiB),
    so none fails at launch; raises a clear error when none fits.

    Upper bound (bytes), fitted to and checked against the compiled kernels (``benchmarks/compile_check.py``
    compares it with every compiled config's shared memory), counting 4 bytes an element whatever the dtype:
    forward  ``(BLOCK_N + BLOCK_M)·BLOCK_D·4 + BLOCK_M·BLOCK_N·4 + 1024·num_stages``
             (the key tile, the row tile / accumulator and the probabilities pass through shared memory)
    backward ``2·(BLOCK_N + BLOCK_M)·BLOCK_D·4 + 2·BLOCK_M·BLOCK_N·4 + 1024·num_stages`` (k, v, q, dO; p, dS)."""

    def __init__(self, kernel: str):
        self.kernel = kernel

    def estimate(self, config, nargs: dict, kwargs: dict) -> int:
        block_m, block_n, block_d = config.kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_D"]
        tiles = (block_n + block_m) * block_d * 4 + block_m * block_n * 4
        return (tiles if self.kernel == "forward" else 2 * tiles) + 1024 * config.num_stages

    def __call__(self, configs, nargs, **kwargs):
        device = nargs["q_ptr"].device
        properties = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)
        limit = properties["max_shared_mem"]
        kept = [config for config in configs if self.estimate(config, nargs, kwargs) <= limit]
        if not kept:
            raise ValueError(f"masked_cross_attention: no {self.kernel} block size fits this GPU's {limit} bytes of "
                             f"shared memory at head dim {nargs.get('head_dim')} (BLOCK_D={kwargs['BLOCK_D']})")
        return kept


# The default (non-autotuned) config per kernel and whether q is float32, chosen so that no default launch spills
# registers on sm_80/sm_90 (benchmarks/compile_check.py). float32 dots run in IEEE precision, i.e. as FMAs whose
# operands each thread holds whole along the reduced axis: at BLOCK_M=32 and 4 warps they spilled (up to ~1.2 KB in
# the backward at dh=64), so the forward takes 8 warps and the backward BLOCK_M=16 with 8 warps. ``maxnreg=255``
# (the hardware limit, no real cap): without an explicit limit ptxas held these 8-warp kernels at 128 (backward,
# sm_80) or 80 (forward, sm_90) registers and spilled 8-20 bytes; with it they take what they need and spill nothing.
_DEFAULT_CONFIGS = {
    ("forward", False): triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=2),
    ("forward", True): triton.Config({"BLOCK_M": 32}, num_warps=8, num_stages=2, maxnreg=255),
    ("backward", False): triton.Config({"BLOCK_M": 16}, num_warps=8, num_stages=2, maxnreg=255),
    ("backward", True): triton.Config({"BLOCK_M": 16}, num_warps=8, num_stages=2, maxnreg=255),
}


def _interpreting() -> bool:
    """Triton runs under its CPU interpreter (as ``coavs.ops._dispatch`` decides; kernels/ does not import coavs)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel(name, kernel, configs, interpreting, q, constants, reset_to_zero=None):
    """The kernel and its fixed launch options: under the interpreter one small config; on the GPU an autotuned
    wrapper, or one default config when ``COAVS_TRITON_AUTOTUNE=0`` (tests over many shapes): ``_DEFAULT_CONFIGS``,
    or where that exceeds the device's shared memory the first autotune config that fits."""
    if interpreting:
        return kernel, {"BLOCK_M": _INTERPRETER_BLOCK_M}
    if os.environ.get("COAVS_TRITON_AUTOTUNE", "1") == "0":
        default = _DEFAULT_CONFIGS[name, q.dtype == torch.float32]
        config = SharedMemoryPrune(name)([default, *configs], {"q_ptr": q, "head_dim": q.shape[3]},
                                         **constants)[0]
        fixed = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
        if config.maxnreg is not None:
            fixed["maxnreg"] = config.maxnreg
        return kernel, fixed
    if name not in _TUNED:
        _TUNED[name] = triton.autotune(configs, key=["queries", "num_keys", "head_dim"],
                                       prune_configs_by={"early_config_prune": SharedMemoryPrune(name)},
                                       reset_to_zero=reset_to_zero)(kernel)
    return _TUNED[name], {}


def _row_block(interpreting: bool) -> int:
    return _INTERPRETER_BLOCK_M if interpreting else COMBINE_BLOCK_M


def _common(q, k, active):
    batch, queries = active.shape
    order = torch.empty((batch, queries), dtype=torch.int32, device=q.device)
    count = torch.empty((batch,), dtype=torch.int32, device=q.device)
    _compact_kernel[(batch,)](active.contiguous().view(torch.uint8), order, count, queries,
                              BLOCK_Q=triton.next_power_of_2(queries))
    block_d = max(16, triton.next_power_of_2(q.shape[3]))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    upcast = q.dtype == torch.bfloat16 and _interpreting()
    return order, count, block_d, dict(BLOCK_N=BLOCK_N, BLOCK_D=block_d, PRECISION=precision, UPCAST=upcast)


def _check(q, k, v, bits, occupancy):
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the Triton masked_cross_attention takes float16, bfloat16 or float32, got {q.dtype}")
    if q.shape[3] > 256:
        raise ValueError(f"the Triton masked_cross_attention supports dh <= 256, got {q.shape[3]}")
    if occupancy.shape[2] != triton.cdiv(k.shape[2], BLOCK_N):
        raise ValueError(f"occupancy must have one flag per {BLOCK_N} keys, got {occupancy.shape[2]} for "
                         f"N={k.shape[2]}")


def key_splits(key_blocks: int) -> tuple[int, int]:
    """``(splits, blocks_per_split)`` of the forward's key range: at least ``MIN_BLOCKS_PER_SPLIT`` blocks per
    split, at most ``MAX_SPLITS`` splits."""
    splits = max(1, min(MAX_SPLITS, key_blocks // MIN_BLOCKS_PER_SPLIT))
    per_split = triton.cdiv(key_blocks, splits)
    return triton.cdiv(key_blocks, per_split), per_split


def masked_cross_attention_forward(q, k, v, bits, occupancy, active, scale: float):
    """Returns ``(out [B,h,Q,dh], lse [B,h,Q] float32)``; dormant rows are 0 in both. Any input strides."""
    _check(q, k, v, bits, occupancy)
    batch, heads, queries, head_dim = q.shape
    num_keys, key_blocks = k.shape[2], occupancy.shape[2]
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    order, count, block_d, constants = _common(q, k, active)
    bits, occupancy = bits.contiguous(), occupancy.contiguous()
    interpreting = _interpreting()
    splits, per_split = key_splits(key_blocks)
    if splits > 1:
        o_part = torch.empty((splits, batch, heads, queries, head_dim), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((splits, batch, heads, queries), dtype=torch.float32, device=q.device)
    else:
        o_part, lse_part = out, lse  # not written
    kernel, fixed = _kernel("forward", _forward_kernel, _ROW_CONFIGS, interpreting, q, constants)

    def grid(meta):
        return (batch * triton.cdiv(queries, meta["BLOCK_M"]), heads, splits)

    kernel[grid](
        q, k, v, out, lse, o_part, lse_part, bits, occupancy, order, count,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        batch, queries, num_keys, head_dim, bits.shape[2], key_blocks, heads, per_split, scale * LOG2E,
        SPLIT=splits > 1, **constants, **fixed,
    )
    if splits > 1:
        block_m = _row_block(interpreting)
        _combine_kernel[(batch * triton.cdiv(queries, block_m), heads)](
            o_part, lse_part, out, lse, order, count, *out.stride(), batch, queries, head_dim, heads, splits,
            BLOCK_M=block_m, BLOCK_D=block_d,
        )
    return out, lse


def masked_cross_attention_backward(grad_out, q, k, v, out, lse, bits, occupancy, active, scale: float):
    """Returns ``(dq, dk, dv)``, contiguous, in the input dtypes."""
    _check(q, k, v, bits, occupancy)
    batch, heads, queries, head_dim = q.shape
    num_keys, key_blocks = k.shape[2], occupancy.shape[2]
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.to(q.dtype), torch.zeros_like(k), torch.zeros_like(v)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # every key block is written
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    order, count, block_d, constants = _common(q, k, active)
    bits, occupancy, lse = bits.contiguous(), occupancy.contiguous(), lse.contiguous()
    interpreting = _interpreting()
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)  # read only where written
    block_m = _row_block(interpreting)
    _delta_kernel[(batch * triton.cdiv(queries, block_m), heads)](
        out, grad_out, delta, order, count, *out.stride(), *grad_out.stride(), queries, head_dim, heads,
        BLOCK_M=block_m, BLOCK_D=block_d,
    )
    kernel, fixed = _kernel("backward", _backward_kernel, _KEY_CONFIGS, interpreting, q, constants,
                            reset_to_zero=["dq_ptr"])
    kernel[(batch * key_blocks, heads)](
        q, k, v, grad_out, lse, delta, dq, dk, dv, bits, occupancy, order, count,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
        queries, num_keys, head_dim, bits.shape[2], key_blocks, heads, scale, scale * LOG2E,
        **constants, **fixed,
    )
    return dq.to(q.dtype), dk, dv
