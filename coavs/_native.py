"""Loads the compiled extension ``coavs._C`` (kernels registered as ``torch.ops.coavs_C``).

The package works without it: every op falls back to its reference or Triton kernel, and
``coavs info`` says why the extension is missing.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """None when ``coavs._C`` is loaded, else a one-line reason."""
    try:
        import coavs._C  # noqa: F401  (loading registers the ops)
    except ImportError as exc:
        return f"coavs._C is not importable ({exc}); reinstall with `pip install --no-build-isolation .`"
    return None


def has_op(name: str) -> bool:
    """True when the extension is loaded and defines ``coavs_C::<name>``."""
    return load_error() is None and hasattr(torch.ops.coavs_C, name)


@functools.lru_cache(maxsize=None)
def built_with_cuda() -> bool:
    return load_error() is None and bool(torch.ops.coavs_C.has_cuda())
