"""Shared test helpers: tolerances by dtype, backend lists, verbose comparison."""

from __future__ import annotations

import torch

from coavs.ops import _dispatch

# (atol, rtol) for comparing a kernel with the float32 reference evaluated on the same low-precision inputs.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> dict:
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol * scale, "rtol": rtol * scale}


def assert_close(actual, expected, dtype=None, scale: float = 1.0, what: str = ""):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, **tolerance(dtype, scale), equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def backends_for(op: str, device: str) -> list[str]:
    """Backends that can run ``op`` on ``device`` in this process."""
    spec = _dispatch.REGISTRY[op]
    return [b for b in _dispatch.BACKENDS if _dispatch.availability(spec, b, device)[0]]


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view with the same values (last two dims stored transposed)."""
    if t.dim() < 2:
        return t.repeat_interleave(2)[::2] if t.numel() else t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)
