"""Device names from the user: ``auto`` (CUDA when a device is visible, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import torch

from coavs.errors import UserError


def resolve_device(name: str, option: str = "--device") -> str:
    """``auto`` → ``cuda`` or ``cpu``; a CUDA name when no CUDA device is visible is a :class:`UserError` that
    names ``option``; any other name as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option} {name}: no CUDA device is visible")
    return name


__all__ = ["resolve_device"]
