"""Numeric precision of a forward pass: ``fp32`` (no autocast), ``bf16`` or ``fp16`` autocast."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` ``fp32`` (none), ``bf16`` or ``fp16`` on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


__all__ = ["PRECISIONS", "autocast"]
