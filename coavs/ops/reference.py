"""Plain-PyTorch definitions of every op in ``coavs.ops``.

Each function here is the meaning of its op: short and obviously right. Kernels are tested against these,
and benchmarks import them as the eager baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------- debias_logits
def _confidence_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def mask_confidence(mask_biased: Tensor) -> Tensor:
    """|2·sigmoid(m_b) − 1| per element, without gradient (float32; float64 for float64)."""
    return (2 * torch.sigmoid(mask_biased.detach().to(_confidence_dtype(mask_biased))) - 1).abs()


def class_confidence(cls_biased: Tensor) -> Tensor:
    """1 − H(softmax(c_b)) / log(K+1) per row of ``[..., K+1]``, without gradient; shape ``[..., 1]`` (float32;
    float64 for float64)."""
    c = cls_biased.detach().to(_confidence_dtype(cls_biased))
    width = c.shape[-1]
    if width <= 1:
        return torch.ones_like(c[..., :1])
    p = torch.softmax(c, dim=-1)
    entropy = -(p * torch.log_softmax(c, dim=-1)).nan_to_num(0.0).sum(-1, keepdim=True)
    return (1 - entropy / math.log(width)).clamp(0, 1)


def debias_logits(
    mask: Tensor, cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor]:
    """``x' = (1 + a)·x − a·x_b`` for both the mask pair and the class pair.

    ``a = alpha`` (fixed) or ``alpha·confidence(x_b)`` (uncertainty; see the two confidence functions).
    Either pair may be empty. Computed in float32 (float64 stays float64), returned in the input dtype.
    """
    acc = torch.float64 if mask.dtype == torch.float64 else torch.float32

    def one(x: Tensor, xb: Tensor, confidence) -> Tensor:
        if x.numel() == 0:
            return x.clone()
        a = alpha * confidence(xb).to(acc) if uncertainty else alpha
        return ((1 + a) * x.to(acc) - a * xb.to(acc)).to(x.dtype)

    return one(mask, mask_biased, mask_confidence), one(cls, cls_biased, class_confidence)


def debias_logits_backward(
    grad_mask: Tensor, grad_cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`debias_logits`: ``dx = (1 + a)·g``, ``dx_b = −a·g`` (no gradient through ``a``)."""
    acc = torch.float64 if grad_mask.dtype == torch.float64 else torch.float32

    def one(g: Tensor, xb: Tensor, confidence) -> tuple[Tensor, Tensor]:
        if g.numel() == 0:
            return g.clone(), g.clone()
        a = alpha * confidence(xb).to(acc) if uncertainty else alpha
        g32 = g.to(acc)
        return ((1 + a) * g32).to(g.dtype), (-a * g32).to(g.dtype)

    d_mask, d_mask_b = one(grad_mask, mask_biased, mask_confidence)
    d_cls, d_cls_b = one(grad_cls, cls_biased, class_confidence)
    return d_mask, d_mask_b, d_cls, d_cls_b


def overall_scores(mask: Tensor, cls: Tensor) -> Tensor:
    """Per-pixel class scores ``S[b,k,h,w] = Σ_q softmax(cls[b,q])[k]·σ(mask[b,q,h,w])`` for k < K (no "no object")."""
    probs = torch.softmax(cls.float(), dim=-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, torch.sigmoid(mask.float())).to(mask.dtype)


def debias_overall(
    mask: Tensor, cls: Tensor, mask_biased: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool
) -> Tensor:
    """The ``overall`` scheme: debias the per-pixel scores ``S`` of :func:`overall_scores`, ``[B,K,H,W]``.

    Uncertainty weight per score: ``|2·clamp(S_b, 0, 1) − 1|`` (no gradient).
    """
    scores = overall_scores(mask, cls)
    scores_biased = overall_scores(mask_biased, cls_biased)
    a = alpha * (2 * scores_biased.detach().clamp(0, 1) - 1).abs() if uncertainty else alpha
    return (1 + a) * scores - a * scores_biased


# -------------------------------------------------------------------------------------- masked_cross_attention
def attention_visibility(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Which keys each query sees, ``[B,Q,H·W]`` bool, as Mask2Former builds its attention mask.

    ``mask_logits [B,Q,h',w']`` are resized bilinearly (``align_corners=False``) to ``size = (H, W)``; a key is
    visible iff ``sigmoid(resized) >= 0.5``, both in the logits' dtype as Mask2Former computes it (the same as
    logit ``>= 0`` except that logits a rounding step below 0 count as visible); a query that sees no key sees
    every key.
    """
    resized = torch.nn.functional.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    visible = (torch.sigmoid(resized) >= 0.5).flatten(2)
    return visible | ~visible.any(-1, keepdim=True)


def masked_cross_attention(
    q: Tensor, k: Tensor, v: Tensor, visible: Tensor, active: Tensor | None, scale: float
) -> Tensor:
    """Dense masked attention, ``[B,h,Q,dh]``, written the way Mask2Former's ``nn.MultiheadAttention`` runs it.

    ``softmax(scale·q·kᵀ + mask)·v`` with the additive mask 0 where ``visible [B,Q,N]`` (shared by all heads) and
    −inf elsewhere; rows of queries with ``active [B,Q] == False`` are zero (None: every query is active), and so
    are rows that see no key (only a hand-built ``visible`` has them; they get zero gradient, not NaN).
    Float32 arithmetic (float64 stays float64), returned in the dtype of ``q``. Materialises ``[B,h,Q,N]``.
    Differentiable (autograd); for finite inputs. Non-finite inputs follow :func:`masked_attention_forward`.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    works = visible.any(-1) if active is None else visible.any(-1) & active
    # a row without a visible key attends to every key (finite softmax, no NaN in the backward) and is zeroed
    seen = visible | ~visible.any(-1, keepdim=True)
    additive = torch.zeros(visible.shape, dtype=acc, device=q.device).masked_fill(~seen, float("-inf"))
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale + additive[:, None]
    out = torch.matmul(torch.softmax(scores, dim=-1), v.to(acc))
    out = torch.where(works[:, None, :, None], out, torch.zeros((), dtype=acc, device=q.device))
    return out.to(q.dtype)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_attention_forward(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, works: Tensor,
                             scale: float) -> tuple[Tensor, Tensor]:
    """``(out [B,h,Q,dh], lse [B,h,Q])`` of masked attention over the *working* rows ``works [B,Q]`` (active
    rows with a visible key), with the non-finite policy every backend follows (docs/design.md):

    - a non-finite element of ``q``, ``k`` or ``v`` is read as 0, and a working row is *poisoned* when its ``q``
      row, a key or value row it sees, or one of its visible scores ``scale·q·kᵀ`` is non-finite (a NaN or ±inf
      input, or an overflow), or when its output overflows;
    - a poisoned row's ``out`` and ``lse`` are NaN; every other row is computed from finite values only, so a
      NaN never reaches it through the zero probabilities of keys it does not see;
    - rows that do not work are 0 in ``out`` and ``lse``.

    ``lse`` is the natural log-sum-exp of the visible scores, float32 (float64 for float64).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    zero = torch.zeros((), dtype=acc, device=q.device)
    q32, k32, v32 = q.to(acc), k.to(acc), v.to(acc)
    kv_ok = torch.isfinite(k32).all(-1) & torch.isfinite(v32).all(-1)  # [B,h,N]
    scores = torch.matmul(_finite_or_zero(q32) * scale, _finite_or_zero(k32).transpose(-1, -2))
    seen = visible[:, None]  # [B,1,Q,N]
    poisoned = (~torch.isfinite(q32).all(-1) | (seen & ~kv_ok[:, :, None, :]).any(-1)
                | (seen & ~torch.isfinite(scores)).any(-1))
    masked = torch.where(seen & torch.isfinite(scores), scores, torch.full((), float("-inf"), dtype=acc,
                                                                           device=q.device))
    row_max = masked.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), zero, row_max)
    weights = torch.exp(masked - row_max)
    total = weights.sum(-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones((), dtype=acc, device=q.device))
    out = torch.matmul(weights, _finite_or_zero(v32)) / safe
    lse = (row_max + torch.log(safe)).squeeze(-1)
    poisoned = works[:, None] & (poisoned | ~torch.isfinite(out).all(-1) | (total.squeeze(-1) <= 0))
    nan = torch.full((), float("nan"), dtype=acc, device=q.device)
    out = torch.where(poisoned[..., None], nan, torch.where(works[:, None, :, None], out, zero))
    lse = torch.where(poisoned, nan, torch.where(works[:, None], lse, zero))
    return out.to(q.dtype), lse


def masked_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              visible: Tensor, works: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`masked_attention_forward` (from its ``out`` and ``lse``), with the same policy:
    a working row is poisoned when its ``lse`` is NaN (poisoned in the forward) or its ``grad_out`` or ``out``
    has a non-finite element; it contributes nothing, its ``dq`` is NaN and so are ``dk`` and ``dv`` of every key
    it sees (in its head). Everything else is computed from finite values; ``dS`` is 0 at keys a row does not
    see. ``dv = Pᵀ·g``, ``dS = P∘(g·vᵀ − rowsum(g∘o))``, ``dq = s·dS·k``, ``dk = s·dSᵀ·q``."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    zero = torch.zeros((), dtype=acc, device=q.device)
    g32, o32 = grad_out.to(acc), out.to(acc)
    poisoned = works[:, None] & ~(torch.isfinite(lse) & torch.isfinite(g32).all(-1) & torch.isfinite(o32).all(-1))
    good = (works[:, None] & ~poisoned)[..., None] & visible[:, None]  # [B,h,Q,N]
    q_scaled = _finite_or_zero(q.to(acc)) * scale
    k32, v32, g0 = _finite_or_zero(k.to(acc)), _finite_or_zero(v.to(acc)), _finite_or_zero(g32)
    scores = torch.matmul(q_scaled, k32.transpose(-1, -2))
    probs = torch.where(good, torch.exp(scores - _finite_or_zero(lse)[..., None]), zero)
    delta = (g0 * _finite_or_zero(o32)).sum(-1, keepdim=True)
    ds = torch.where(good, probs * (torch.matmul(g0, v32.transpose(-1, -2)) - delta), zero)
    dq = torch.matmul(ds, k32) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q_scaled)
    dv = torch.matmul(probs.transpose(-1, -2), g0)
    key_poisoned = (visible[:, None] & poisoned[..., None]).any(-2)[..., None]  # [B,h,N,1]
    nan = torch.full((), float("nan"), dtype=acc, device=q.device)
    dq = torch.where(poisoned[..., None], nan, dq)
    dk = torch.where(key_poisoned, nan, dk)
    dv = torch.where(key_poisoned, nan, dv)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------- assign_queries
def query_markers(num_queries: int, num_markers: int, dilation: int, device=None) -> Tensor:
    """``[Q]`` long: the marker that owns each query (``q // d`` for ``q < S·d``, else −1 for "none")."""
    q = torch.arange(num_queries, device=device)
    return torch.where(q < num_markers * dilation, q // dilation, torch.full_like(q, -1))


def marker_presence(scores: Tensor, threshold: float) -> Tensor:
    """``[B,S]`` bool: ``score ≥ threshold``; a row with no such marker gets its top-scoring one (first on ties).

    Compared in float32 (float64 for float64 scores), so ``threshold`` is rounded to that precision.
    """
    acc = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.detach().to(acc)
    present = s >= _rounded(threshold, acc)
    top = torch.zeros_like(present).scatter_(1, s.argmax(1, keepdim=True), True) if s.shape[0] else present
    return present | (top & ~present.any(1, keepdim=True))


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (float32 or float64) on the host: no tensor, so no device copy."""
    return float(np.float32(value)) if dtype == torch.float32 else float(value)


def assign_queries(
    scores: Tensor, audio: Tensor, query_feat: Tensor, dilation: int, threshold: float, dormant_gate: float,
    soft: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Dilated query assignment: ``(queries [B,Q,D], gate [B,Q], active [B,Q] bool)``.

    Marker ``s`` owns queries ``s·d … s·d+d−1``; a query is active when its marker is present
    (:func:`marker_presence`); ``gate`` is 1 (soft: the marker's score) on active queries, ``dormant_gate``
    elsewhere, in the dtype of ``scores``; ``queries = query_feat[q] + gate[b,q]·audio[b]`` in the dtype of
    ``query_feat``, computed in float32 (float64 stays float64).
    """
    acc = torch.float64 if query_feat.dtype == torch.float64 else torch.float32
    num_markers = scores.shape[1]
    marker = query_markers(query_feat.shape[0], num_markers, dilation, scores.device)
    owner = marker.clamp(min=0)
    active = marker_presence(scores, threshold)[:, owner] & (marker >= 0)
    on = scores[:, owner] if soft else torch.ones_like(scores[:, owner])
    gate = torch.where(active, on, torch.full_like(on, dormant_gate))
    queries = query_feat.to(acc) + gate.to(acc)[..., None] * audio.to(acc)[:, None, :]
    return queries.to(query_feat.dtype), gate, active


def assign_queries_backward(
    grad_queries: Tensor, grad_gate: Tensor, audio: Tensor, gate: Tensor, active: Tensor, num_markers: int,
    dilation: int, soft: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`assign_queries`: ``(d_scores [B,S], d_audio [B,D], d_query_feat [Q,D])``.

    ``d_query_feat[q] = Σ_b g[b,q]``; ``d_audio[b] = Σ_q gate[b,q]·g[b,q]``; in soft mode
    ``d_scores[b,s] = Σ_{q of s, active} (⟨g[b,q], audio[b]⟩ + grad_gate[b,q])`` (zero otherwise: the gate is a
    constant, and presence is a step function with no gradient).
    """
    acc = torch.float64 if grad_queries.dtype == torch.float64 else torch.float32
    g = grad_queries.to(acc)
    d_query_feat = g.sum(0).to(grad_queries.dtype)
    d_audio = (gate.to(acc)[..., None] * g).sum(1).to(audio.dtype)
    batch, width = gate.shape[0], num_markers * dilation
    d_scores = torch.zeros(batch, num_markers, dtype=acc, device=gate.device)
    if soft:
        per_query = (g * audio.to(acc)[:, None, :]).sum(-1) + grad_gate.to(acc)
        per_query = torch.where(active, per_query, torch.zeros_like(per_query))
        d_scores = per_query[:, :width].reshape(batch, num_markers, dilation).sum(-1)
    return d_scores.to(gate.dtype), d_audio, d_query_feat


# --------------------------------------------------------------------------------------------- matching_cost
def matching_cost(
    mask_logits: Tensor, target_masks: Tensor, class_logits: Tensor, target_labels: Tensor, allowed: Tensor,
    num_targets: Tensor, cost_class: float, cost_mask: float, cost_dice: float
) -> Tensor:
    """Mask2Former's matching cost of every query against every ground truth, ``[B,Q,G]`` float32.

    ``mask_logits [B,Q,P]`` and ``target_masks [B,G,P]`` are values at the same ``P`` sampled points;
    ``class_logits [B,Q,K+1]``; ``target_labels [B,G]`` long; ``allowed [B,Q,G]`` bool; ``num_targets [B]``:
    columns ``g ≥ num_targets[b]`` are padding. With ``x`` a query's logits and ``t`` a ground truth's values:

        class  −softmax(class_logits)[label]
        mask   mean_p [softplus(−x)·t + softplus(x)·(1 − t)]          (sigmoid cross-entropy)
        dice   1 − (2·Σ σ(x)·t + 1) / (Σ σ(x) + Σ t + 1)
        cost   cost_class·class + cost_mask·mask + cost_dice·dice,   +inf where not allowed or padding

    Computed in float32 (float64 inputs in float64, returned as float64).

    Non-finite inputs (:func:`matching_cost_undefined`): an allowed, real pair costs NaN when its query's mask
    logits or its ground truth's values hold a NaN or ±inf, or its class row holds a NaN or +inf or is all −inf;
    a −inf class logit beside a finite one is a class of probability 0. Bad values, which no kernel can check
    without reading them back to the host: a real ground truth whose label is outside ``[0, K+1)`` costs NaN
    for its allowed pairs; a sample whose count is outside ``[0, G]`` has every column real and every allowed
    pair NaN.
    """
    acc = torch.float64 if mask_logits.dtype == torch.float64 else torch.float32
    x, t = mask_logits.to(acc), target_masks.to(acc)
    num_points = x.shape[-1]
    probs = torch.softmax(class_logits.to(acc), dim=-1)
    labels = target_labels.clamp(0, class_logits.shape[-1] - 1)
    class_cost = -torch.gather(probs, 2, labels[:, None, :].expand(-1, probs.shape[1], -1))
    positive, negative = F.softplus(-x), F.softplus(x)
    mask_cost = (positive @ t.transpose(1, 2) + negative @ (1 - t).transpose(1, 2)) / num_points
    sig = torch.sigmoid(x)
    dice_cost = 1 - (2 * (sig @ t.transpose(1, 2)) + 1) / (sig.sum(-1)[:, :, None] + t.sum(-1)[:, None, :] + 1)
    cost = cost_class * class_cost + cost_mask * mask_cost + cost_dice * dice_cost
    num_gt = t.shape[1]
    bad_label = (target_labels < 0) | (target_labels >= class_logits.shape[-1])
    bad_count = (num_targets < 0) | (num_targets > num_gt)
    undefined = matching_cost_undefined(mask_logits, target_masks, class_logits) | bad_label[:, None, :]
    cost = cost.masked_fill(undefined | bad_count[:, None, None], math.nan)
    column = torch.arange(num_gt, device=t.device)
    real = (column[None, :] < num_targets[:, None]) | bad_count[:, None]
    return torch.where(allowed & real[:, None, :], cost, torch.full_like(cost, math.inf))


def matching_cost_undefined(mask_logits: Tensor, target_masks: Tensor, class_logits: Tensor) -> Tensor:
    """``[B,Q,G]`` bool: pairs whose cost is NaN by the non-finite policy of :func:`matching_cost`."""
    c = class_logits
    query = (~torch.isfinite(mask_logits)).any(-1) | torch.isnan(c).any(-1) | torch.isposinf(c).any(-1)
    query = query | torch.isneginf(c).all(-1)
    target = (~torch.isfinite(target_masks)).any(-1)
    return query[:, :, None] | target[:, None, :]


# ----------------------------------------------------------------------------------------- semantic_inference
def _debias_mask_only(mask: Tensor, mask_biased: Tensor, alpha: float, uncertainty: bool) -> Tensor:
    empty = mask.new_empty((0,))
    return debias_logits(mask, empty, mask_biased, empty, alpha, uncertainty)[0]


def _debias_class_only(cls: Tensor, cls_biased: Tensor, alpha: float, uncertainty: bool) -> Tensor:
    empty = cls.new_empty((0,))
    return debias_logits(empty, cls, empty, cls_biased, alpha, uncertainty)[1]


def _gated_sigmoids(mask: Tensor, size: tuple[int, int], gate: Tensor | None) -> Tensor:
    """``gate[b,q]·σ(resize(mask))``, ``[B,Q,H,W]`` float32 (bilinear, ``align_corners=False``)."""
    s = torch.sigmoid(F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False))
    return s if gate is None else s * gate.float()[:, :, None, None]


def _debias_scores(scores: Tensor, scores_biased: Tensor, alpha: float, uncertainty: bool) -> Tensor:
    """The ``overall`` scheme of :func:`debias_overall` on per-pixel scores (``|2·clamp(S_b,0,1) − 1|`` weight)."""
    a = alpha * (2 * scores_biased.clamp(0, 1) - 1).abs() if uncertainty else alpha
    return (1 + a) * scores - a * scores_biased


def semantic_scores(
    mask: Tensor, cls: Tensor, size: tuple[int, int], gate: Tensor | None = None, mask_biased: Tensor | None = None,
    cls_biased: Tensor | None = None, alpha: float = 1.0, scheme: str = "separate", uncertainty: bool = False,
) -> Tensor:
    """Per-pixel class scores ``S [B,K,H,W]`` float32 of :func:`semantic_inference` (after any debias)."""
    m, c = mask.float(), cls.float()
    debiased = mask_biased is not None
    if debiased and scheme in ("separate", "mask"):
        m = _debias_mask_only(m, mask_biased.float(), alpha, uncertainty)
    if debiased and scheme in ("separate", "class"):
        c = _debias_class_only(c, cls_biased.float(), alpha, uncertainty)
    scores = torch.einsum("bqk,bqhw->bkhw", torch.softmax(c, dim=-1)[..., :-1], _gated_sigmoids(m, size, gate))
    if debiased and scheme == "overall":
        probs_b = torch.softmax(cls_biased.float(), dim=-1)[..., :-1]
        scores_b = torch.einsum("bqk,bqhw->bkhw", probs_b, _gated_sigmoids(mask_biased, size, gate))
        scores = _debias_scores(scores, scores_b, alpha, uncertainty)
    return scores


def undefined_samples(masks: list, probs: list, gate: Tensor | None) -> Tensor:
    """``[B]`` bool: the samples that ``semantic_inference`` leaves undefined (label −1, score NaN): a mask logit
    of ``masks`` (each ``[B,Q,h,w]``), a class probability of ``probs`` (each ``[B,Q,K]``) or a gate is NaN or
    ±inf."""
    finite = None
    for t in [*masks, *probs] + ([gate] if gate is not None else []):
        ok = torch.isfinite(t).flatten(1).all(1)
        finite = ok if finite is None else finite & ok
    return ~finite


def _mark_undefined(result: Tensor, undefined: Tensor) -> Tensor:
    fill = -1 if result.dtype == torch.int64 else math.nan
    return result.masked_fill(undefined.view(-1, *([1] * (result.dim() - 1))), fill)


def semantic_inference(
    mask: Tensor, cls: Tensor | None, size: tuple[int, int], gate: Tensor | None = None,
    mask_biased: Tensor | None = None, cls_biased: Tensor | None = None, alpha: float = 1.0,
    scheme: str = "separate", uncertainty: bool = False, mode: str = "semantic", background: int | None = None,
) -> Tensor:
    """Post-processing of a mask-classification model, the definition of ``coavs.ops.semantic_inference``.

    ``mask [B,Q,h',w']`` and ``cls [B,Q,K+1]`` logits (float32 arithmetic throughout). With biased logits, the
    debias of :func:`debias_logits` is applied first, at the logits' own resolution (``separate``, ``mask``,
    ``class``), or to the scores (``overall``). Then ``s_q = gate[b,q]·σ(resize(m_q))``,
    ``S[k] = Σ_q softmax(c_q)[k]·s_q`` for ``k < K`` (:func:`semantic_scores`), and:

    - ``mode="semantic"``: ``argmax_k S[k]`` → ``[B,H,W]`` int64 (lowest class on ties);
    - ``mode="binary"``: ``Σ_{k ≠ background} S[k]`` → ``[B,H,W]`` float32; with ``cls=None`` (a mask-only
      model) ``max_q s_q``, the union of the query masks.

    Undefined samples (:func:`undefined_samples`: a NaN or ±inf mask logit, biased mask logit where the scheme
    reads them, gate, or class probability after the class debias) get label −1 / score NaN everywhere.

    Materialises ``[B,Q,H,W]`` and ``[B,K,H,W]``.
    """
    gate_f = None if gate is None else gate.float()
    if cls is None:
        m = mask.float()
        if mask_biased is not None:  # a mask-only model has only the mask scheme
            m = _debias_mask_only(m, mask_biased.float(), alpha, uncertainty)
        undefined = undefined_samples([mask] + ([mask_biased] if mask_biased is not None else []), [], gate_f)
        return _mark_undefined(_gated_sigmoids(m, size, gate).amax(1), undefined)
    scores = semantic_scores(mask, cls, size, gate, mask_biased, cls_biased, alpha, scheme, uncertainty)
    debiased = mask_biased is not None
    c = cls.float()
    if debiased and scheme in ("separate", "class"):
        c = _debias_class_only(c, cls_biased.float(), alpha, uncertainty)
    probs = [torch.softmax(c, dim=-1)[..., :-1]]
    if debiased and scheme == "overall":
        probs.append(torch.softmax(cls_biased.float(), dim=-1)[..., :-1])
    masks = [mask] + ([mask_biased] if debiased and scheme in ("separate", "mask", "overall") else [])
    undefined = undefined_samples(masks, probs, gate_f)
    if mode == "semantic":
        return _mark_undefined(scores.argmax(1), undefined)
    keep = [k for k in range(scores.shape[1]) if k != background]
    return _mark_undefined(scores[:, keep].sum(1), undefined)


def semantic_inference_kernel(
    mask: Tensor, mask_biased: Tensor, probs: Tensor, probs_biased: Tensor, gate: Tensor, foreground: Tensor,
    height: int, width: int, alpha: float, uncertainty: bool, mask_debias: bool, overall: bool, reduce: str,
) -> Tensor:
    """The contract of the fused kernels, which receive class probabilities instead of class logits.

    ``probs``/``probs_biased [B,Q,K]`` float32 (``softmax(c)[:K]``, empty for ``reduce="max_query"``),
    ``gate [B,Q]`` float32 or empty, ``foreground [K]`` float32 weights (``reduce="foreground"``).
    ``mask_debias``: debias the mask logits with ``mask_biased`` (op 4) before resizing; ``overall``: debias the
    scores ``S`` with ``S_b`` computed from ``mask_biased``/``probs_biased``. ``reduce``: ``argmax`` (int64
    labels), ``foreground`` (``Σ_k foreground[k]·S[k]``; an empty ``foreground`` weighs every class 1) or
    ``max_query`` (``max_q s_q``), float32. Undefined samples (:func:`undefined_samples` of the masks the scheme
    reads, the probabilities and the gate) get −1 / NaN.
    """
    size = (height, width)
    g = gate if gate.numel() else None
    m = mask.float()
    if mask_debias:
        m = _debias_mask_only(m, mask_biased.float(), alpha, uncertainty)
    masks = [mask] + ([mask_biased] if (mask_debias or overall) else [])
    prob_list = [] if reduce == "max_query" else [probs] + ([probs_biased] if overall else [])
    undefined = undefined_samples(masks, prob_list, g)
    s = _gated_sigmoids(m, size, g)
    if reduce == "max_query":
        return _mark_undefined(s.amax(1), undefined)
    scores = torch.einsum("bqk,bqhw->bkhw", probs, s)
    if overall:
        scores_b = torch.einsum("bqk,bqhw->bkhw", probs_biased, _gated_sigmoids(mask_biased, size, g))
        scores = _debias_scores(scores, scores_b, alpha, uncertainty)
    if reduce == "argmax":
        return _mark_undefined(scores.argmax(1), undefined)
    weighted = scores if foreground.numel() == 0 else scores * foreground[None, :, None, None]
    return _mark_undefined(weighted.sum(1), undefined)
