"""Triton kernel of ``debias_logits``: mask elements and class rows in one launch.

Programs ``[0, mask_programs)`` each take ``BLOCK`` mask elements; the others take ``BLOCK_ROWS`` class rows.

Forward   x' = (1 + a)·x − a·x_b
Backward  dx = (1 + a)·g,  dx_b = −a·g          (no gradient through a)
a = alpha                                        fixed
a = alpha·tanh(|m_b| / 2)                        uncertainty, mask element  (= |2σ(m_b) − 1|)
a = alpha·(1 − H(softmax(c_b)) / log(K+1))       uncertainty, class row
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from coavs.kernels._launch import launcher

MASK_BLOCK = 1024
CLASS_TILE = 2048
MAX_CLASS_WIDTH = 1 << 13  # one class row per program: 32 warps x 8 elements


@triton.jit
def _debias_mask_block(
    mask_ptr, mask_b_ptr, mask_out_ptr, mask_out_b_ptr, mask_numel, pid, alpha,
    UNCERTAINTY: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """``BLOCK`` mask elements of program ``pid``."""
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < mask_numel
    x = tl.load(mask_ptr + offs, mask=valid, other=0.0).to(ACC)
    if UNCERTAINTY or not BACKWARD:  # the fixed strategy's gradient never reads the biased logits (may be empty)
        xb = tl.load(mask_b_ptr + offs, mask=valid, other=0.0).to(ACC)
    if UNCERTAINTY:
        e = tl.exp(-tl.abs(xb))
        a = alpha * (1.0 - e) / (1.0 + e)
    else:
        a = tl.zeros_like(x) + alpha
    if BACKWARD:
        tl.store(mask_out_ptr + offs, ((1.0 + a) * x).to(mask_out_ptr.dtype.element_ty), mask=valid)
        tl.store(mask_out_b_ptr + offs, (-a * x).to(mask_out_b_ptr.dtype.element_ty), mask=valid)
    else:
        tl.store(mask_out_ptr + offs, ((1.0 + a) * x - a * xb).to(mask_out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _debias_class_rows(
    cls_ptr, cls_b_ptr, cls_out_ptr, cls_out_b_ptr, rows, width, inv_log_width, block_id, alpha,
    UNCERTAINTY: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``BLOCK_ROWS`` class rows of row block ``block_id``."""
    row = block_id.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = tl.arange(0, BLOCK_K)
    valid = (row[:, None] < rows) & (col[None, :] < width)
    offs = row[:, None] * width + col[None, :]
    if UNCERTAINTY or not BACKWARD:  # the fixed strategy's gradient never reads the biased logits (may be empty)
        xb = tl.load(cls_b_ptr + offs, mask=valid, other=0.0).to(ACC)
    if UNCERTAINTY:
        xb_masked = tl.where(valid, xb, float("-inf"))
        row_max = tl.max(xb_masked, axis=1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        shifted = xb_masked - row_max[:, None]
        e = tl.where(valid, tl.exp(shifted), 0.0)
        z = tl.sum(e, axis=1)
        t = tl.sum(e * tl.where(e > 0, shifted, 0.0), axis=1)  # exp(-inf) * -inf counts as 0
        entropy = tl.where(z > 0, tl.log(tl.where(z > 0, z, 1.0)) - t / tl.where(z > 0, z, 1.0), 0.0)
        conf = 1.0 - entropy * inv_log_width  # a one-class row has entropy 0: confidence 1
        conf = tl.minimum(tl.maximum(conf, 0.0), 1.0)
        a = (alpha * conf)[:, None]
    else:
        a = tl.zeros([BLOCK_ROWS, BLOCK_K], dtype=ACC) + alpha
    # x is loaded only now, after the row statistics: a float64 row of 8192 classes (32 warps, so 64 registers
    # a thread) spilled with x, xb and the softmax temporaries all live at once.
    x = tl.load(cls_ptr + offs, mask=valid, other=0.0).to(ACC)
    if BACKWARD:
        tl.store(cls_out_ptr + offs, ((1.0 + a) * x).to(cls_out_ptr.dtype.element_ty), mask=valid)
        tl.store(cls_out_b_ptr + offs, (-a * x).to(cls_out_b_ptr.dtype.element_ty), mask=valid)
    else:
        tl.store(cls_out_ptr + offs, ((1.0 + a) * x - a * xb).to(cls_out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _debias_logits_kernel(
    mask_ptr, mask_b_ptr, mask_out_ptr, mask_out_b_ptr, mask_numel, mask_programs,
    cls_ptr, cls_b_ptr, cls_out_ptr, cls_out_b_ptr, rows, width, inv_log_width,
    alpha,
    UNCERTAINTY: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # The two branches live in separate functions: the compiler (unlike the interpreter) requires every
    # variable assigned in both branches of a runtime ``if`` to have one type, and their tiles differ in shape.
    pid = tl.program_id(0)
    if pid < mask_programs:
        _debias_mask_block(mask_ptr, mask_b_ptr, mask_out_ptr, mask_out_b_ptr, mask_numel, pid, alpha,
                           UNCERTAINTY, BACKWARD, ACC, BLOCK)
    else:
        _debias_class_rows(cls_ptr, cls_b_ptr, cls_out_ptr, cls_out_b_ptr, rows, width, inv_log_width,
                           pid - mask_programs, alpha, UNCERTAINTY, BACKWARD, ACC, BLOCK_ROWS, BLOCK_K)


def launch_params(mask_numel: int, rows: int, width: int) -> dict:
    """Grid split and block sizes of one launch (a pure function of the sizes).

    A class tile holds ``BLOCK_ROWS·BLOCK_K ≤ max(CLASS_TILE, BLOCK_K)`` elements; the warps grow with it so
    that a thread holds at most 8 elements of a tile (float64 uncertainty rows spill registers beyond that)."""
    block_k = triton.next_power_of_2(width)
    block_rows = max(1, min(64, CLASS_TILE // block_k))
    mask_programs = triton.cdiv(mask_numel, MASK_BLOCK)
    num_warps = max(MASK_BLOCK, block_rows * block_k) // (8 * 32)
    return {"mask_programs": mask_programs, "programs": mask_programs + triton.cdiv(rows, block_rows),
            "BLOCK": MASK_BLOCK, "BLOCK_ROWS": block_rows, "BLOCK_K": block_k, "num_warps": num_warps}


def _launch(mask, mask_b, mask_out, mask_out_b, cls, cls_b, cls_out, cls_out_b, alpha, uncertainty, backward):
    mask_numel = mask.numel()
    rows = cls.numel() // cls.shape[-1] if cls.numel() else 0
    width = cls.shape[-1] if rows else 1
    if width > MAX_CLASS_WIDTH:
        raise ValueError(f"cls has {width} classes; the Triton kernel supports at most {MAX_CLASS_WIDTH}")
    params = launch_params(mask_numel, rows, width)
    if params["programs"] == 0:
        return
    acc = tl.float64 if mask.dtype == torch.float64 else tl.float32
    # Unused pointer slots get a valid tensor of the right dtype.
    mask_out_b = mask_out if mask_out_b is None else mask_out_b
    cls_out_b = cls_out if cls_out_b is None else cls_out_b
    launcher(_debias_logits_kernel, mask, cls)[(params["programs"],)](
        mask, mask_b, mask_out, mask_out_b, mask_numel, params["mask_programs"],
        cls, cls_b, cls_out, cls_out_b, rows, width, 1.0 / math.log(width) if width > 1 else 0.0,
        float(alpha),
        UNCERTAINTY=bool(uncertainty), BACKWARD=bool(backward), ACC=acc,
        BLOCK=params["BLOCK"], BLOCK_ROWS=params["BLOCK_ROWS"], BLOCK_K=params["BLOCK_K"],
        num_warps=params["num_warps"],
    )


def debias_logits_forward(mask, cls, mask_biased, cls_biased, alpha: float, uncertainty: bool):
    """Returns (mask', cls'); inputs are made contiguous."""
    mask, mask_biased = mask.contiguous(), mask_biased.contiguous()
    cls, cls_biased = cls.contiguous(), cls_biased.contiguous()
    mask_out, cls_out = torch.empty_like(mask), torch.empty_like(cls)
    _launch(mask, mask_biased, mask_out, None, cls, cls_biased, cls_out, None, alpha, uncertainty, backward=False)
    return mask_out, cls_out


def debias_logits_backward(grad_mask, grad_cls, mask_biased, cls_biased, alpha: float, uncertainty: bool):
    """Returns (d_mask, d_mask_biased, d_cls, d_cls_biased)."""
    grad_mask, mask_biased = grad_mask.contiguous(), mask_biased.contiguous()
    grad_cls, cls_biased = grad_cls.contiguous(), cls_biased.contiguous()
    d_mask, d_mask_b = torch.empty_like(grad_mask), torch.empty_like(grad_mask)
    d_cls, d_cls_b = torch.empty_like(grad_cls), torch.empty_like(grad_cls)
    _launch(grad_mask, mask_biased, d_mask, d_mask_b, grad_cls, cls_biased, d_cls, d_cls_b, alpha, uncertainty, True)
    return d_mask, d_mask_b, d_cls, d_cls_b
