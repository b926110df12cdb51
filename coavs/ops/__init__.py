"""Public fused ops. Models call these; only this package knows about backends (see ``_dispatch``)."""

from coavs.ops._dispatch import BACKENDS, BackendUnavailable, availability, select, use_backend
from coavs.ops.debias_logits import DebiasedLogits, debias_logits

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "DebiasedLogits",
    "availability",
    "debias_logits",
    "select",
    "use_backend",
]
