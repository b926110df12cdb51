"""Device names from the user: ``auto`` (CUDA when a device is visible, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import re

import torch

from coavs.errors import UserError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"(auto|cpu|cuda)(:(\d+))?")


def check_device_name(name: str, option: str = "--device") -> str:
    """``name`` if it is one of :data:`DEVICE_NAMES` (whether such a device is visible is not checked here), else a
    :class:`UserError` naming ``option``."""
    match = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if match is None or (match.group(2) and match.group(1) != "cuda"):
        raise UserError(f"{option} {name!r} is not a device: use {DEVICE_NAMES}")
    return name


def resolve_device(name: str, option: str = "--device") -> str:
    """``auto`` → ``cuda`` or ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as given. A name that is not a device, or a
    CUDA device that is not visible, is a :class:`UserError` that names ``option``."""
    check_device_name(name, option)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{option} {name}: no CUDA device is visible")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name


__all__ = ["DEVICE_NAMES", "check_device_name", "resolve_device"]
