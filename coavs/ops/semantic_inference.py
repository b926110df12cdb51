"""``semantic_inference``: fused post-processing of mask-classification outputs (docs/design.md, op 5).

Resize the mask logits to the output size (bilinear, ``align_corners=False``, as ``F.interpolate``), sigmoid,
gate, mix with the class probabilities ``S[k] = Σ_q softmax(c_q)[k]·σ(m_q)``, optionally debias (op 4), and
reduce every pixel to its label (semantic) or foreground score (binary), without ever holding ``[B,Q,H,W]`` or
``[B,K,H,W]``: the extra memory is the output plus a bounded tile.

Backends: reference (materialises; the definition), native (C++ CPU: tiles of pixels, one GEMM per tile),
triton (GPU; CPU tensors under ``TRITON_INTERPRET=1``). No CUDA kernel: Triton serves CUDA tensors.
The class side (softmax of ``[B,Q,K+1]``, the class debias of op 4) is tiny and runs in plain PyTorch before the
kernel, through ``coavs.ops.debias_logits`` itself, so its arithmetic is that op's.
Inference only: the outputs carry no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference
from coavs.ops.debias_logits import SCHEMES, STRATEGIES, debias_logits

MODES = ("semantic", "binary")
REDUCES = ("argmax", "foreground", "max_query")
_REDUCE_CODES = {name: code for code, name in enumerate(REDUCES)}  # the C++ kernel's `reduce` argument
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Debias:
    """How ``semantic_inference`` debiases with the biased branch: the arguments of ``coavs.ops.debias_logits``."""

    alpha: float = 1.0
    scheme: str = "separate"
    strategy: str = "fixed"


# --------------------------------------------------------------------------------------------- backends
def _triton_forward(*args):
    from coavs.kernels import semantic_inference as k

    return k.semantic_inference(*args)


def _native_forward(mask, mask_biased, probs, probs_biased, gate, foreground, height, width, alpha, uncertainty,
                    mask_debias, overall, reduce):
    return torch.ops.coavs_C.semantic_inference(mask, mask_biased, probs, probs_biased, gate, foreground, height,
                                                width, alpha, uncertainty, mask_debias, overall,
                                                _REDUCE_CODES[reduce])


_dispatch.register(
    _dispatch.OpSpec(
        name="semantic_inference",
        impls={"reference": reference.semantic_inference_kernel, "native": _native_forward,
               "triton": _triton_forward},
        gpu_order=("triton", "reference"),
        native_op="semantic_inference",
        note="no CUDA kernel: Triton serves CUDA tensors; the CPU kernel tiles pixels and runs one GEMM per tile",
    )
)


# ------------------------------------------------------------------------------------------- custom op
def _semantic_inference(
    mask: Tensor, mask_biased: Tensor, probs: Tensor, probs_biased: Tensor, gate: Tensor, foreground: Tensor,
    height: int, width: int, alpha: float, uncertainty: bool, mask_debias: bool, overall: bool, reduce: str,
) -> Tensor:
    """The fused kernel; see :func:`coavs.ops.reference.semantic_inference_kernel` for the contract."""
    return _dispatch.run("semantic_inference", mask.device, mask, mask_biased, probs, probs_biased, gate, foreground,
                         height, width, alpha, uncertainty, mask_debias, overall, reduce)


semantic_inference_op = _dispatch.define_op("coavs::semantic_inference", _semantic_inference)


def _fake_output(mask: Tensor, height: int, width: int, reduce: str) -> Tensor:
    dtype = torch.int64 if reduce == "argmax" else torch.float32
    return mask.new_empty((mask.shape[0], height, width), dtype=dtype)


@semantic_inference_op.register_fake
def _(mask, mask_biased, probs, probs_biased, gate, foreground, height, width, alpha, uncertainty, mask_debias,
      overall, reduce):
    torch._check(mask.dim() == 4, lambda: f"mask must be [B,Q,h,w], got {tuple(mask.shape)}")
    torch._check(reduce in REDUCES, lambda: f"reduce must be one of {REDUCES}, got {reduce!r}")
    return _fake_output(mask, height, width, reduce)


if _native.load_error() is None and _native.has_op("semantic_inference"):
    torch.library.register_fake("coavs_C::semantic_inference")(
        lambda mask, mb, p, pb, g, fg, height, width, alpha, u, md, ov, reduce: _fake_output(
            mask, height, width, REDUCES[reduce]))


# ------------------------------------------------------------------------------------------- public API
def _check_float(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def _check_size(size) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _check_debias(debias: Debias) -> None:
    if not isinstance(debias, Debias):
        raise TypeError(f"debias must be a coavs.ops.Debias, got {type(debias).__name__}")
    if debias.scheme not in SCHEMES:
        raise ValueError(f"debias.scheme must be one of {SCHEMES}, got {debias.scheme!r}")
    if debias.strategy not in STRATEGIES:
        raise ValueError(f"debias.strategy must be one of {STRATEGIES}, got {debias.strategy!r}")
    alpha = debias.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"debias.alpha must be a float, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"debias.alpha must be finite and >= 0, got {alpha}")


def _validate(mask_logits, cls_logits, gate, biased, debias, mode, background):
    _check_float(mask_logits, "mask_logits")
    if mask_logits.dim() != 4:
        raise ValueError(f"mask_logits must be [B,Q,h',w'], got shape {tuple(mask_logits.shape)}")
    batch, queries, in_h, in_w = mask_logits.shape
    if queries < 1 or in_h < 1 or in_w < 1:
        raise ValueError(f"mask_logits needs Q >= 1 and h', w' >= 1, got shape {tuple(mask_logits.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if cls_logits is not None:
        _check_float(cls_logits, "cls_logits")
        if cls_logits.dim() != 3 or tuple(cls_logits.shape[:2]) != (batch, queries) or cls_logits.shape[2] < 2:
            raise ValueError(f"cls_logits must be [B,Q,K+1] with B={batch}, Q={queries} and K >= 1, got shape "
                             f"{tuple(cls_logits.shape)}")
        if cls_logits.device != mask_logits.device:
            raise ValueError(f"cls_logits must be on the device of mask_logits: {cls_logits.device} vs "
                             f"{mask_logits.device}")
    elif mode == "semantic":
        raise ValueError("mode 'semantic' needs cls_logits (labels come from the class probabilities); a mask-only "
                         "model is evaluated with mode='binary'")
    if background is not None:
        if cls_logits is None:
            raise ValueError("background names a class, but there are no cls_logits")
        classes = cls_logits.shape[2] - 1
        if isinstance(background, bool) or not isinstance(background, int) or not 0 <= background < classes:
            raise ValueError(f"background must be a class index in [0, {classes}), got {background!r}")
        if mode == "binary" and classes == 1:
            raise ValueError("background is the only class: no foreground class is left to score")
    if gate is not None:
        if not isinstance(gate, Tensor):
            raise TypeError(f"gate must be a Tensor or None, got {type(gate).__name__}")
        if not (gate.is_floating_point() or gate.dtype == torch.bool):
            raise TypeError(f"gate must be a floating-point or bool tensor, got {gate.dtype}")
        if tuple(gate.shape) != (batch, queries):
            raise ValueError(f"gate must be [B,Q] = {(batch, queries)}, got shape {tuple(gate.shape)} "
                             "(no broadcasting)")
        if gate.device != mask_logits.device:
            raise ValueError(f"gate must be on the device of mask_logits: {gate.device} vs {mask_logits.device}")
    if biased is None:
        if debias is not None:
            raise ValueError("debias options were given without biased logits; pass biased=(mask_b, cls_b)")
        return
    if not isinstance(biased, (tuple, list)) or len(biased) != 2:
        raise TypeError("biased must be a pair (mask_logits_biased, cls_logits_biased or None)")
    mask_b, cls_b = biased
    _check_float(mask_b, "biased mask logits")
    if mask_b.shape != mask_logits.shape or mask_b.dtype != mask_logits.dtype or mask_b.device != mask_logits.device:
        raise ValueError(f"biased mask logits must match mask_logits in shape, dtype and device: "
                         f"{tuple(mask_b.shape)} {mask_b.dtype} {mask_b.device} vs {tuple(mask_logits.shape)} "
                         f"{mask_logits.dtype} {mask_logits.device}")
    if (cls_b is None) != (cls_logits is None):
        raise ValueError("biased class logits must be given exactly when cls_logits is given")
    if cls_b is not None:
        _check_float(cls_b, "biased class logits")
        if cls_b.shape != cls_logits.shape or cls_b.device != cls_logits.device:
            raise ValueError(f"biased class logits must match cls_logits in shape and device: "
                             f"{tuple(cls_b.shape)} vs {tuple(cls_logits.shape)}")
    debias = Debias() if debias is None else debias
    _check_debias(debias)
    if cls_logits is None and debias.scheme != "mask":
        raise ValueError(f"a mask-only model (cls_logits=None) can only be debiased with scheme 'mask', got "
                         f"{debias.scheme!r}")


def semantic_inference(
    mask_logits: Tensor,
    cls_logits: Tensor | None,
    size: tuple[int, int],
    gate: Tensor | None = None,
    biased: tuple[Tensor, Tensor | None] | None = None,
    debias: Debias | None = None,
    mode: str = "semantic",
    background: int | None = None,
) -> Tensor:
    """Per-pixel labels or foreground scores at ``size = (H, W)`` from mask-classification outputs.

    Args:
        mask_logits: ``[B,Q,h',w']`` float32/16/bfloat16.
        cls_logits: ``[B,Q,K+1]`` (last = "no object"), or None for a mask-only model (``mode="binary"``).
        size: output ``(H, W)``; resizing is bilinear with ``align_corners=False``, as ``F.interpolate``.
        gate: optional ``[B,Q]`` query gate (``assign_queries``' gate, or its bool ``active``), multiplied into
            every query's sigmoid (of both branches under the ``overall`` scheme).
        biased: optional ``(mask_logits_b, cls_logits_b)`` of the biased (audio-free) branch, same shapes.
        debias: :class:`Debias` (alpha, scheme, strategy) as in ``coavs.ops.debias_logits``; default
            ``Debias()`` when ``biased`` is given. ``separate``/``mask``/``class`` debias the logits (the mask
            logits at their own resolution, before resizing); ``overall`` debiases the per-pixel scores.
        mode: ``semantic`` → labels ``[B,H,W]`` int64, ``argmax_k S[k]`` (lowest class on ties, as
            ``torch.argmax``); ``binary`` → foreground score ``[B,H,W]`` float32:
            with class logits, ``Σ_{k ≠ background} S[k] = Σ_q P(q is a foreground class)·s_q`` (for the binary
            S4/MS3 model, K = 1 "sounding" class and no background: ``S[0]``); without class logits,
            ``max_q s_q``, the union of the (gated) query masks. Compare it with 0.5 for a mask, or feed it to
            ``coavs.eval.metrics.BinaryAVSMetrics(scores="probabilities")``.
        background: class index of "background" among the K classes (AVSS: 0), excluded from the binary score.

    Non-finite values (every backend alike, without reading anything back to the host): a sample whose mask
    logits (or, where the debias uses them, biased mask logits) hold a NaN or ±inf, whose gate does, or whose
    class probabilities are undefined (a class row with a NaN or +inf logit, or all −inf, after any class
    debias) is *undefined*: every pixel of it gets label −1 (semantic) or score NaN (binary). Other samples are
    unaffected.

    Returns ``[B,H,W]`` labels (int64) or scores (float32). Extra memory: the output plus a bounded tile.
    Launches on a GPU: the class softmax, one ``aminmax`` per mask tensor (the undefined-sample check) and one
    kernel, plus the class debias when the scheme has one (docs/performance.md lists every op's launches).
    """
    _validate(mask_logits, cls_logits, gate, biased, debias, mode, background)
    height, width = _check_size(size)
    mask = mask_logits.detach()
    device = mask.device
    empty_mask = mask.new_empty((0,))
    empty_f32 = mask.new_empty((0,), dtype=torch.float32)
    gate_f32 = empty_f32 if gate is None else gate.detach().to(torch.float32).contiguous()

    debias = (Debias() if debias is None else debias) if biased is not None else None
    mask_b = biased[0].detach() if biased is not None else None
    cls_b = biased[1].detach() if biased is not None and biased[1] is not None else None
    scheme = debias.scheme if debias is not None else None
    alpha = float(debias.alpha) if debias is not None else 0.0
    uncertainty = debias is not None and debias.strategy == "uncertainty"
    mask_debias = scheme in ("separate", "mask")
    overall = scheme == "overall"

    if cls_logits is None:
        return semantic_inference_op(mask, mask_b if mask_debias else empty_mask, empty_f32, empty_f32, gate_f32,
                                     empty_f32, height, width, alpha, uncertainty, mask_debias, False, "max_query")

    cls = cls_logits.detach()
    if scheme in ("separate", "class"):
        cls = debias_logits(None, cls.float(), None, cls_b.float(), alpha=alpha, scheme="class",
                            strategy=debias.strategy).cls
    classes = cls.shape[-1] - 1
    # Views of the first K columns (no copy): the kernels read them with the row stride of K+1.
    probs_all = torch.softmax(cls, dim=-1, dtype=torch.float32)
    probs = probs_all[..., :classes]
    probs_b = torch.softmax(cls_b, dim=-1, dtype=torch.float32)[..., :classes] if overall else empty_f32
    mask_arg = mask_b if (mask_debias or overall) else empty_mask
    if mode == "semantic":
        return semantic_inference_op(mask, mask_arg, probs, probs_b, gate_f32, empty_f32, height, width, alpha,
                                     uncertainty, mask_debias, overall, "argmax")
    if overall:  # per-class scores are debiased before the foreground sum: one weight per class
        foreground = empty_f32
        if background is not None:
            foreground = torch.ones(classes, dtype=torch.float32, device=device)
            foreground[background].fill_(0.0)
        return semantic_inference_op(mask, mask_arg, probs, probs_b, gate_f32, foreground, height, width, alpha,
                                     uncertainty, mask_debias, overall, "foreground")
    # The foreground score is linear in the probabilities: mix one weight per query, Σ_{k≠background} p_k,
    # summed over slices (no cancellation from subtracting the background's share).
    parts = [(0, classes)] if background is None else [(0, background), (background + 1, classes)]
    weight = None
    for lo, hi in parts:
        if hi > lo:
            piece = probs_all[..., lo:hi].sum(-1, keepdim=True)
            weight = piece if weight is None else weight + piece
    return semantic_inference_op(mask, mask_arg, weight, empty_f32, gate_f32, empty_f32, height, width, alpha,
                                 uncertainty, mask_debias, overall, "foreground")
