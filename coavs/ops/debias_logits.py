"""``debias_logits``: subtract the biased branch's logits from the vanilla logits (docs/design.md, op 4).

Backends: reference, native (C++ CPU), cuda, triton. On CUDA tensors the CUDA kernel runs first, then Triton.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference

SCHEMES = ("separate", "mask", "class", "overall")
STRATEGIES = ("fixed", "uncertainty")


class DebiasedLogits(NamedTuple):
    """``mask``: debiased mask logits ``[B,Q,H,W]`` (or, for scheme ``overall``, debiased per-pixel scores
    ``[B,K,H,W]``); ``cls``: class logits ``[B,Q,K+1]`` (debiased where the scheme says so), or None."""

    mask: Tensor
    cls: Tensor | None


# --------------------------------------------------------------------------------------------- backends
def _triton_forward(*args):
    from coavs.kernels import debias_logits as k

    return k.debias_logits_forward(*args)


def _triton_backward(*args):
    from coavs.kernels import debias_logits as k

    return k.debias_logits_backward(*args)


def _native_forward(*args):
    return tuple(torch.ops.coavs_C.debias_logits(*args))


def _native_backward(*args):
    return tuple(torch.ops.coavs_C.debias_logits_backward(*args))


_FORWARD = _dispatch.register(
    _dispatch.OpSpec(
        name="debias_logits",
        impls={"reference": reference.debias_logits, "native": _native_forward, "cuda": _native_forward,
               "triton": _triton_forward},
        native_op="debias_logits",
    )
)
_BACKWARD = _dispatch.register(
    _dispatch.OpSpec(
        name="debias_logits_backward",
        impls={"reference": reference.debias_logits_backward, "native": _native_backward, "cuda": _native_backward,
               "triton": _triton_backward},
        native_op="debias_logits_backward",
    )
)


# ------------------------------------------------------------------------------------------- custom ops
def _debias_logits(
    mask: Tensor, cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor]:
    """Both pairs in one launch; either pair may be empty. See :func:`coavs.ops.reference.debias_logits`."""
    return _dispatch.run("debias_logits", mask.device, mask, cls, mask_biased, cls_biased, alpha, uncertainty)


debias_logits_op = _dispatch.define_op("coavs::debias_logits", _debias_logits)


@debias_logits_op.register_fake
def _(mask, cls, mask_biased, cls_biased, alpha, uncertainty):
    _check_pair(mask, mask_biased, "mask", "mask_biased")
    _check_pair(cls, cls_biased, "cls", "cls_biased")
    return torch.empty_like(mask, memory_format=torch.contiguous_format), torch.empty_like(
        cls, memory_format=torch.contiguous_format)


def _debias_logits_backward(
    grad_mask: Tensor, grad_cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(d_mask, d_mask_biased, d_cls, d_cls_biased)."""
    return _dispatch.run(
        "debias_logits_backward", grad_mask.device, grad_mask, grad_cls, mask_biased, cls_biased, alpha, uncertainty
    )


debias_logits_backward_op = _dispatch.define_op("coavs::debias_logits_backward", _debias_logits_backward)


@debias_logits_backward_op.register_fake
def _(grad_mask, grad_cls, mask_biased, cls_biased, alpha, uncertainty):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    return like(grad_mask), like(grad_mask), like(grad_cls), like(grad_cls)


def _setup_context(ctx, inputs, output):
    mask, cls, mask_biased, cls_biased, alpha, uncertainty = inputs
    ctx.alpha, ctx.uncertainty = alpha, uncertainty
    # The fixed strategy needs only alpha; keep the biased logits only when the confidence needs them.
    if uncertainty:
        ctx.save_for_backward(mask_biased, cls_biased)
    ctx.mask_meta = torch.empty_like(mask, device="meta")
    ctx.cls_meta = torch.empty_like(cls, device="meta")
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as a filled zero tensor


def _backward(ctx, grad_mask, grad_cls):
    if grad_mask is None and grad_cls is None:
        return None, None, None, None, None, None
    like = grad_mask if grad_mask is not None else grad_cls
    # A pair without an upstream gradient (or empty) takes no work: an empty gradient gives empty results.
    use_mask = grad_mask is not None and ctx.mask_meta.numel() > 0
    use_cls = grad_cls is not None and ctx.cls_meta.numel() > 0
    empty = like.new_empty((0,))
    if ctx.uncertainty:
        mask_biased, cls_biased = ctx.saved_tensors
    else:
        mask_biased = cls_biased = empty  # the fixed strategy's gradient does not read the biased logits
    d_mask, d_mask_b, d_cls, d_cls_b = debias_logits_backward_op(
        grad_mask if use_mask else empty, grad_cls if use_cls else empty,
        mask_biased if use_mask else empty, cls_biased if use_cls else empty, ctx.alpha, ctx.uncertainty
    )
    if not use_mask:
        d_mask = d_mask_b = None
    if not use_cls:
        d_cls = d_cls_b = None
    return d_mask, d_cls, d_mask_b, d_cls_b, None, None


debias_logits_op.register_autograd(_backward, setup_context=_setup_context)

if _native.load_error() is None:
    # Fake kernels of the C++ ops, so they trace and pass opcheck on their own.
    torch.library.register_fake("coavs_C::debias_logits")(lambda m, c, mb, cb, a, u: (torch.empty_like(m),
                                                                                      torch.empty_like(c)))
    torch.library.register_fake("coavs_C::debias_logits_backward")(
        lambda gm, gc, mb, cb, a, u: (torch.empty_like(gm), torch.empty_like(gm), torch.empty_like(gc),
                                      torch.empty_like(gc)))


# ------------------------------------------------------------------------------------------- public API
def _check_pair(x: Tensor, xb: Tensor, name: str, name_b: str) -> None:
    if x.shape != xb.shape:
        raise ValueError(f"{name_b} must have the shape of {name}: {tuple(xb.shape)} vs {tuple(x.shape)} "
                         "(no broadcasting)")
    if x.dtype != xb.dtype:
        raise ValueError(f"{name_b} must have the dtype of {name}: {xb.dtype} vs {x.dtype}")
    if x.device != xb.device:
        raise ValueError(f"{name_b} must be on the device of {name}: {xb.device} vs {x.device}")


def _validate(mask, cls, mask_biased, cls_biased, alpha, scheme, strategy) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    for name, t in (("mask", mask), ("mask_biased", mask_biased), ("cls", cls), ("cls_biased", cls_biased)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if (mask is None) != (mask_biased is None):
        raise ValueError("mask and mask_biased must both be given or both be None")
    if (cls is None) != (cls_biased is None):
        raise ValueError("cls and cls_biased must both be given or both be None")
    if mask is not None:
        _check_pair(mask, mask_biased, "mask", "mask_biased")
    if cls is not None:
        _check_pair(cls, cls_biased, "cls", "cls_biased")
        if cls.dim() < 1:
            raise ValueError("cls must have a class dimension (last), got a 0-d tensor")
    if mask is not None and cls is not None:
        if mask.device != cls.device:
            raise ValueError(f"mask and cls must be on one device: {mask.device} vs {cls.device}")
        if mask.dtype != cls.dtype:
            raise ValueError(f"mask and cls must share a dtype: {mask.dtype} vs {cls.dtype}")
    needs_mask = scheme in ("separate", "mask", "overall")
    needs_cls = scheme in ("separate", "class", "overall")
    if needs_mask and mask is None:
        raise ValueError(f"scheme {scheme!r} needs mask and mask_biased")
    if needs_cls and cls is None:
        raise ValueError(f"scheme {scheme!r} needs cls and cls_biased")
    if scheme == "overall":
        if mask.dim() != 4 or cls.dim() != 3 or mask.shape[:2] != cls.shape[:2]:
            raise ValueError(f"scheme 'overall' needs mask [B,Q,H,W] and cls [B,Q,K+1] with the same B and Q, got "
                             f"{tuple(mask.shape)} and {tuple(cls.shape)}")


def debias_logits(
    mask: Tensor | None,
    cls: Tensor | None,
    mask_biased: Tensor | None,
    cls_biased: Tensor | None,
    alpha: float = 1.0,
    scheme: str = "separate",
    strategy: str = "fixed",
) -> DebiasedLogits:
    """Debias vanilla logits with the biased (audio-free) branch: ``x' = (1 + a)·x − a·x_b``.

    Args:
        mask, mask_biased: mask logits ``[B,Q,H,W]`` (any shape; the pair must match exactly).
        cls, cls_biased: class logits ``[B,Q,K+1]`` (last dim = classes + "no object"), or None for binary AVS.
        alpha: strength ``>= 0``; 1 gives ``2x − x_b``.
        scheme: ``separate`` (mask and class), ``mask``, ``class``, or ``overall`` (on the per-pixel scores
            ``S = Σ_q softmax(c)[:K]·σ(m)``, returned as ``[B,K,H,W]`` in the ``mask`` field; plain PyTorch,
            see :func:`coavs.ops.reference.debias_overall`).
        strategy: ``fixed`` (``a = alpha``) or ``uncertainty`` (``a = alpha·confidence(x_b)``: ``|2σ(m_b) − 1|``
            per mask element, ``1 − H(softmax(c_b))/log(K+1)`` per class row, or ``|2·clamp(S_b, 0, 1) − 1|``
            per score for ``overall``; no gradient through the confidence).

    Returns ``DebiasedLogits(mask, cls)``; a part the scheme leaves alone is returned as given.
    Float32/16/bfloat16 (and float64) with float32 (float64) arithmetic; both tensors in one kernel launch.

    Non-finite values (every backend alike): elementwise IEEE arithmetic, so a NaN or ±inf affects its own
    element only (inf − inf is NaN); under ``uncertainty`` a class row whose softmax is undefined (NaN or +inf
    biased logit) has confidence 1, as the reference's entropy (``nan_to_num``) gives.
    """
    _validate(mask, cls, mask_biased, cls_biased, alpha, scheme, strategy)
    uncertainty = strategy == "uncertainty"
    alpha = float(alpha)
    if scheme == "overall":
        # By definition this materialises [B,K,H,W]; it is the comparison scheme, so it runs the reference.
        return DebiasedLogits(reference.debias_overall(mask, cls, mask_biased, cls_biased, alpha, uncertainty), cls)
    empty = _empty_like(mask if mask is not None else cls)
    use_mask = scheme in ("separate", "mask")
    use_cls = scheme in ("separate", "class")
    mask_out, cls_out = debias_logits_op(
        mask if use_mask else empty,
        cls if use_cls else empty,
        mask_biased if use_mask else empty,
        cls_biased if use_cls else empty,
        alpha,
        uncertainty,
    )
    return DebiasedLogits(mask_out if use_mask else mask, cls_out if use_cls else cls)


def _empty_like(t: Tensor) -> Tensor:
    return t.new_empty((0,))
