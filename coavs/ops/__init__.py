"""Public fused ops. Models call these; only this package knows about backends (see ``_dispatch``)."""

from coavs.ops._dispatch import BACKENDS, BackendUnavailable, availability, select, use_backend
from coavs.ops.assign_queries import AssignedQueries, assign_queries, query_markers
from coavs.ops.debias_logits import DebiasedLogits, debias_logits
from coavs.ops.masked_cross_attention import AttentionMask, build_attention_mask, masked_cross_attention
from coavs.ops.matching_cost import matching_cost
from coavs.ops.semantic_inference import Debias, semantic_inference

__all__ = [
    "AssignedQueries",
    "AttentionMask",
    "BACKENDS",
    "BackendUnavailable",
    "Debias",
    "DebiasedLogits",
    "assign_queries",
    "availability",
    "build_attention_mask",
    "debias_logits",
    "masked_cross_attention",
    "matching_cost",
    "query_markers",
    "semantic_inference",
    "select",
    "use_backend",
]
