"""``assign_queries``: dilated query-to-semantic assignment and audio prompting (docs/design.md, op 1).

Backends: reference, native (C++ CPU), cuda, triton. On CUDA tensors the CUDA kernel runs first, then Triton.
Each direction is one kernel launch for the whole batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from coavs import _native
from coavs.ops import _dispatch, reference


class AssignedQueries(NamedTuple):
    """Output of :func:`assign_queries`.

    ``queries [B,Q,D]``: prompted queries (dtype of ``query_feat``); ``gate [B,Q]``: the audio gate of each query
    (dtype of ``scores``); ``active [B,Q]`` bool: the query's marker is present; ``query_marker [Q]`` long: the
    marker that owns each query, −1 for queries beyond ``S·d``.
    """

    queries: Tensor
    gate: Tensor
    active: Tensor
    query_marker: Tensor


# --------------------------------------------------------------------------------------------- backends
def _triton_forward(*args):
    from coavs.kernels import assign_queries as k

    return k.assign_queries_forward(*args)


def _triton_backward(*args):
    from coavs.kernels import assign_queries as k

    return k.assign_queries_backward(*args)


def _native_forward(*args):
    return tuple(torch.ops.coavs_C.assign_queries(*args))


def _native_backward(*args):
    return tuple(torch.ops.coavs_C.assign_queries_backward(*args))


_dispatch.register(
    _dispatch.OpSpec(
        name="assign_queries",
        impls={"reference": reference.assign_queries, "native": _native_forward, "cuda": _native_forward,
               "triton": _triton_forward},
        native_op="assign_queries",
    )
)
_dispatch.register(
    _dispatch.OpSpec(
        name="assign_queries_backward",
        impls={"reference": reference.assign_queries_backward, "native": _native_backward,
               "cuda": _native_backward, "triton": _triton_backward},
        native_op="assign_queries_backward",
    )
)


# ------------------------------------------------------------------------------------------- custom ops
def _fake_forward(scores, audio, query_feat, dilation, threshold, dormant_gate, soft):
    batch, num_queries, width = scores.shape[0], query_feat.shape[0], query_feat.shape[1]
    return (query_feat.new_empty(batch, num_queries, width), scores.new_empty(batch, num_queries),
            scores.new_empty(batch, num_queries, dtype=torch.bool))


def _fake_backward(grad_queries, grad_gate, audio, gate, active, num_markers, dilation, soft):
    batch, num_queries, width = grad_queries.shape
    return (gate.new_empty(batch, num_markers), audio.new_empty(batch, width),
            grad_queries.new_empty(num_queries, width))


def _assign_queries(
    scores: Tensor, audio: Tensor, query_feat: Tensor, dilation: int, threshold: float, dormant_gate: float,
    soft: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(queries, gate, active); see :func:`coavs.ops.reference.assign_queries`."""
    return _dispatch.run("assign_queries", query_feat.device, scores, audio, query_feat, dilation, threshold,
                         dormant_gate, soft)


assign_queries_op = _dispatch.define_op("coavs::assign_queries", _assign_queries)


assign_queries_op.register_fake(_fake_forward)


def _assign_queries_backward(
    grad_queries: Tensor, grad_gate: Tensor, audio: Tensor, gate: Tensor, active: Tensor, num_markers: int,
    dilation: int, soft: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(d_scores, d_audio, d_query_feat); see :func:`coavs.ops.reference.assign_queries_backward`."""
    return _dispatch.run("assign_queries_backward", grad_queries.device, grad_queries, grad_gate, audio, gate,
                         active, num_markers, dilation, soft)


assign_queries_backward_op = _dispatch.define_op("coavs::assign_queries_backward", _assign_queries_backward)


assign_queries_backward_op.register_fake(_fake_backward)


def _setup_context(ctx, inputs, output):
    scores, audio, query_feat, dilation, _, _, soft = inputs
    _, gate, active = output
    ctx.save_for_backward(audio, gate, active)
    ctx.num_markers, ctx.dilation, ctx.soft = scores.shape[1], dilation, soft
    ctx.query_meta = torch.empty_like(query_feat, device="meta")
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as a filled zero tensor


def _backward(ctx, grad_queries, grad_gate, _grad_active):
    audio, gate, active = ctx.saved_tensors
    if grad_queries is None:
        grad_queries = audio.new_zeros(gate.shape[0], *ctx.query_meta.shape)
    if not ctx.soft:
        grad_gate = gate  # never read without the soft gate (d_scores is zero): no allocation, no launch
    elif grad_gate is None:
        grad_gate = torch.zeros_like(gate)
    d_scores, d_audio, d_query_feat = assign_queries_backward_op(
        grad_queries, grad_gate, audio, gate, active, ctx.num_markers, ctx.dilation, ctx.soft
    )
    return (d_scores if ctx.soft else None), d_audio, d_query_feat, None, None, None, None


assign_queries_op.register_autograd(_backward, setup_context=_setup_context)

if _native.load_error() is None and _native.has_op("assign_queries"):
    # Fake kernels of the C++ ops, so they trace and pass opcheck on their own.
    torch.library.register_fake("coavs_C::assign_queries")(_fake_forward)
    torch.library.register_fake("coavs_C::assign_queries_backward")(_fake_backward)


# ------------------------------------------------------------------------------------------- public API
def query_markers(num_queries: int, num_markers: int, dilation: int, device=None) -> Tensor:
    """``[Q]`` long: the marker that owns each query (``q // d`` for ``q < S·d``, −1 beyond)."""
    _check_layout(num_queries, num_markers, dilation)
    return _query_markers(num_queries, num_markers, dilation, device)


def _check_layout(num_queries: int, num_markers: int, dilation: int) -> None:
    if isinstance(dilation, bool) or not isinstance(dilation, int):
        raise TypeError(f"dilation must be an int, got {type(dilation).__name__}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if num_markers < 1:
        raise ValueError(f"scores must have at least one marker (S >= 1), got S={num_markers}")
    if num_markers * dilation > num_queries:
        raise ValueError(f"S·d = {num_markers}·{dilation} = {num_markers * dilation} exceeds the number of queries "
                         f"Q = {num_queries}: every marker needs its own block of d queries")


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _validate(scores, audio, query_feat) -> None:
    for name, t in (("scores", scores), ("audio", audio), ("query_feat", query_feat)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B,S], got shape {tuple(scores.shape)}")
    if audio.dim() != 2:
        raise ValueError(f"audio must be [B,D], got shape {tuple(audio.shape)}")
    if query_feat.dim() != 2:
        raise ValueError(f"query_feat must be [Q,D], got shape {tuple(query_feat.shape)}")
    if audio.shape[0] != scores.shape[0]:
        raise ValueError(f"audio must have the batch size of scores: {audio.shape[0]} vs {scores.shape[0]} "
                         "(no broadcasting)")
    if audio.shape[1] != query_feat.shape[1]:
        raise ValueError(f"audio must have the width D of query_feat: {audio.shape[1]} vs {query_feat.shape[1]}")
    if audio.dtype != query_feat.dtype:
        raise ValueError(f"audio must have the dtype of query_feat: {audio.dtype} vs {query_feat.dtype}")
    for name, t in (("scores", scores), ("audio", audio)):
        if t.device != query_feat.device:
            raise ValueError(f"{name} must be on the device of query_feat: {t.device} vs {query_feat.device}")


def assign_queries(
    scores: Tensor,
    audio: Tensor,
    query_feat: Tensor,
    dilation: int,
    threshold: float = 0.4,
    dormant_gate: float = 0.0,
    soft: bool = False,
) -> AssignedQueries:
    """Give each latent semantic marker its block of ``d`` queries and prompt the queries of present markers.

    Args:
        scores: marker scores ``[B,S]`` (class probabilities, or one-hot cluster ids); any float dtype.
        audio: audio embedding ``[B,D]``.
        query_feat: learnable query features ``[Q,D]`` (dtype of ``audio``).
        dilation: ``d >= 1``; marker ``s`` owns queries ``s·d … s·d+d−1``. ``S·d > Q`` is an error; queries
            ``≥ S·d`` own no marker and stay dormant.
        threshold: a marker is present when its score ``≥ threshold``; when none is, the top-scoring marker
            (first on ties) is present, so no sample has zero active queries.
        dormant_gate: the gate of queries whose marker is absent (0: they get no audio).
        soft: gate of present markers = their score (gradient flows to ``scores``) instead of 1.

    Returns :class:`AssignedQueries` ``(queries = query_feat[q] + gate[b,q]·audio[b], gate, active,
    query_marker)``. Gradients flow to ``query_feat`` and ``audio``, and to ``scores`` in soft mode (presence
    itself is a step and has none). Float32/16/bfloat16 (and float64), float32 arithmetic.

    Non-finite values (every backend alike): a NaN score is never ``>= threshold`` but ranks highest for the
    top-marker fallback (as ``torch.argmax``); queries follow IEEE arithmetic elementwise.
    """
    _validate(scores, audio, query_feat)
    _check_layout(query_feat.shape[0], scores.shape[1], dilation)
    threshold = _check_float("threshold", threshold)
    dormant_gate = _check_float("dormant_gate", dormant_gate)
    if not isinstance(soft, bool):
        raise TypeError(f"soft must be a bool, got {type(soft).__name__}")
    queries, gate, active = assign_queries_op(scores, audio, query_feat, dilation, threshold, dormant_gate, soft)
    marker = _query_markers(query_feat.shape[0], scores.shape[1], dilation, query_feat.device)
    return AssignedQueries(queries, gate, active, marker)


def _query_markers(num_queries: int, num_markers: int, dilation: int, device) -> Tensor:
    """:func:`reference.query_markers` in two device launches (three when some queries own no marker)."""
    marker = torch.arange(num_queries, device=device).div_(dilation, rounding_mode="floor")
    if num_markers * dilation < num_queries:
        marker[num_markers * dilation:].fill_(-1)
    return marker
