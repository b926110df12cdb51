"""One small call of every public op in ``coavs.ops``, forward and (where it has one) backward.

Shared by the host-sync and launch-count test (``tests/ops/test_host_sync.py``) and the benchmarks' launch
table (``benchmarks/op_launches.py``). Each case builds its inputs (fresh, seeded), returns the forward call and,
for differentiable ops, the tensors to differentiate and the upstream gradients, so that a harness can run the
forward and the backward separately (only the op's own work inside each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import coavs.ops as ops


@dataclass(frozen=True)
class Case:
    """``name``: ``op[variant]``; ``op``: the backend registry name (``coavs.ops._dispatch.REGISTRY``);
    ``build()`` returns ``(forward, leaves)``: ``forward()`` runs the op and returns its differentiable outputs
    (a tuple; empty for ops without a gradient), ``leaves`` the inputs that receive gradients."""

    name: str
    op: str
    build: Callable[[], tuple[Callable[[], tuple], list[torch.Tensor]]]
    backward: bool = True


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, scale: float = 1.0, grad: bool = False, gen=None) -> torch.Tensor:
    t = torch.randn(*shape, generator=gen) * scale
    return t.requires_grad_(grad)


# ------------------------------------------------------------------------------------------------ the ops
def _debias(scheme: str, strategy: str):
    def build():
        g = _gen()
        mask, mask_b = _randn(2, 3, 5, 6, scale=3, grad=True, gen=g), _randn(2, 3, 5, 6, scale=3, grad=True, gen=g)
        cls, cls_b = _randn(2, 3, 7, scale=3, grad=True, gen=g), _randn(2, 3, 7, scale=3, grad=True, gen=g)

        def forward():
            out = ops.debias_logits(mask, cls, mask_b, cls_b, alpha=0.7, scheme=scheme, strategy=strategy)
            return tuple(t for t in out if t is not None)
        return forward, [mask, cls, mask_b, cls_b]
    return build


def _assign(soft: bool):
    def build():
        g = _gen()
        scores = torch.rand(3, 4, generator=g).requires_grad_(soft)
        audio, feat = _randn(3, 8, grad=True, gen=g), _randn(10, 8, grad=True, gen=g)

        def forward():
            out = ops.assign_queries(scores, audio, feat, dilation=2, threshold=0.5, soft=soft)
            return (out.queries, out.gate) if soft else (out.queries,)
        return forward, ([scores] if soft else []) + [audio, feat]
    return build


def _matching():
    g = _gen()
    batch, queries, targets, points, classes = 2, 6, 3, 20, 5
    mask = _randn(batch, queries, points, scale=2, gen=g)
    target = (torch.rand(batch, targets, points, generator=g) > 0.5).float()
    cls = _randn(batch, queries, classes + 1, gen=g)
    labels = torch.randint(0, classes, (batch, targets), generator=g)
    allowed = torch.rand(batch, queries, targets, generator=g) > 0.3
    counts = torch.tensor([3, 2])

    def forward():
        ops.matching_cost(mask, target, cls, labels, allowed, counts)
        return ()
    return forward, []


def _semantic(mode: str, gate: bool = False, debias: str | None = None, with_cls: bool = True):
    def build():
        g = _gen()
        mask = _randn(2, 3, 4, 5, scale=3, gen=g)
        cls = _randn(2, 3, 6, scale=2, gen=g) if with_cls else None
        gates = torch.rand(2, 3, generator=g) if gate else None
        biased = None
        if debias is not None:
            biased = (_randn(2, 3, 4, 5, scale=3, gen=g), _randn(2, 3, 6, scale=2, gen=g) if with_cls else None)
        options = ops.Debias(0.5, debias, "uncertainty") if debias else None

        def forward():
            ops.semantic_inference(mask, cls, (7, 9), gate=gates, biased=biased, debias=options, mode=mode,
                                   background=0 if (mode == "binary" and with_cls) else None)
            return ()
        return forward, []
    return build


def _attention_mask():
    g = _gen()
    logits = _randn(2, 3, 4, 4, scale=2, gen=g)

    def forward():
        ops.build_attention_mask(logits, (6, 5))
        return ()
    return forward, []


def _attention(dtype=torch.float32):
    def build():
        g = _gen()
        batch, heads, queries, keys, dim = 2, 2, 5, 30, 8
        q, k, v = (_randn(batch, heads, n, dim, gen=g).to(dtype).requires_grad_()
                   for n in (queries, keys, keys))
        with torch.no_grad():
            mask = ops.build_attention_mask(_randn(batch, queries, 3, 3, scale=2, gen=g), (6, 5))
        active = torch.rand(batch, queries, generator=g) > 0.3

        def forward():
            return (ops.masked_cross_attention(q, k, v, mask, active),)
        return forward, [q, k, v]
    return build


CASES = [
    Case("debias_logits[separate,fixed]", "debias_logits", _debias("separate", "fixed")),
    Case("debias_logits[separate,uncertainty]", "debias_logits", _debias("separate", "uncertainty")),
    Case("debias_logits[mask,fixed]", "debias_logits", _debias("mask", "fixed")),
    Case("assign_queries[hard]", "assign_queries", _assign(False)),
    Case("assign_queries[soft]", "assign_queries", _assign(True)),
    Case("matching_cost", "matching_cost", _matching, backward=False),
    Case("semantic_inference[semantic]", "semantic_inference", _semantic("semantic"), backward=False),
    Case("semantic_inference[semantic,gate,separate]", "semantic_inference",
         _semantic("semantic", gate=True, debias="separate"), backward=False),
    Case("semantic_inference[semantic,overall]", "semantic_inference", _semantic("semantic", debias="overall"),
         backward=False),
    Case("semantic_inference[binary,background]", "semantic_inference", _semantic("binary"), backward=False),
    Case("semantic_inference[binary,mask-only]", "semantic_inference", _semantic("binary", with_cls=False),
         backward=False),
    Case("build_attention_mask", "masked_cross_attention", _attention_mask, backward=False),
    Case("masked_cross_attention", "masked_cross_attention", _attention()),
    Case("masked_cross_attention[float16]", "masked_cross_attention", _attention(torch.float16)),
    Case("masked_cross_attention[float64]", "masked_cross_attention", _attention(torch.float64)),
]


def upstream_gradients(outputs: tuple, seed: int = 1) -> list[torch.Tensor]:
    """Random upstream gradients for the differentiable outputs (made before any measurement)."""
    g = _gen(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float32).to(o.dtype) for o in outputs]
