"""Hypothesis strategies shared by the property tests of ``coavs.ops``.

:func:`tensors` draws a tensor of a given logical shape whose memory layout is random: contiguous, dims permuted
(transposed), sliced out of a larger buffer, stepped (every k-th element), expanded (stride 0 along dims whose
values are then constant), or a mix. Storage the view does not cover is filled with a poison value (NaN for
floats) so a kernel that ignores strides reads it and fails loudly.
"""

from __future__ import annotations

import math
import os

import tempfile

import torch
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "permuted", "sliced", "stepped", "expanded", "mixed")

# Hypothesis caches under .hypothesis/ in the working directory; keep the checkout clean.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "coavs-hypothesis"))

# One profile for every property test: bounded, reproducible, no wall-clock deadline (the Triton interpreter is
# slow on its first call). COAVS_HYPOTHESIS_PROFILE=thorough runs more examples by hand.
settings.register_profile("coavs", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", parent=settings.get_profile("coavs"), max_examples=400)
settings.load_profile(os.environ.get("COAVS_HYPOTHESIS_PROFILE", "coavs"))


def sizes(max_size: int = 7, min_size: int = 0) -> st.SearchStrategy[int]:
    """A dimension size that favours the edge cases 0 and 1 and odd sizes."""
    edge = [v for v in (0, 1) if v >= min_size]
    return st.one_of(st.sampled_from(edge), st.integers(min_size, max_size)) if edge else st.integers(min_size,
                                                                                                        max_size)


@st.composite
def layouts(draw, ndim: int, allow_expand: bool = True) -> dict:
    """A random memory layout for an ``ndim``-dim tensor: permutation, per-dim offset, step and expand flags."""
    kind = draw(st.sampled_from(LAYOUTS if allow_expand else tuple(k for k in LAYOUTS if k != "expanded")))
    perm, offset, step, expand = list(range(ndim)), [0] * ndim, [1] * ndim, [False] * ndim
    if ndim == 0:
        return {"kind": kind, "perm": perm, "offset": offset, "step": step, "expand": expand}
    if kind in ("permuted", "mixed"):
        perm = draw(st.permutations(range(ndim)))
        if kind == "permuted" and ndim >= 2 and perm == list(range(ndim)):
            perm[-1], perm[-2] = perm[-2], perm[-1]  # at least a transpose
    if kind in ("sliced", "mixed"):
        offset = draw(st.lists(st.integers(0, 2), min_size=ndim, max_size=ndim))
    if kind in ("stepped", "mixed"):
        step = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
        if kind == "stepped" and all(s == 1 for s in step):
            step[-1] = 2
    if allow_expand and kind in ("expanded", "mixed"):
        expand = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
        if kind == "expanded" and not any(expand):
            expand[draw(st.integers(0, ndim - 1))] = True
    return {"kind": kind, "perm": perm, "offset": offset, "step": step, "expand": expand}


def with_layout(values: torch.Tensor, layout: dict, poison=None) -> torch.Tensor:
    """A view with ``values``' logical shape laid out as ``layout`` says (expanded dims take ``values``' first
    slice along them). Uncovered storage holds ``poison`` (default: NaN for floats, the dtype's max otherwise)."""
    shape = list(values.shape)
    ndim = len(shape)
    if ndim == 0:
        return values.clone()
    if poison is None:
        if values.is_floating_point():
            poison = math.nan
        elif values.dtype == torch.bool:
            poison = True
        else:
            poison = torch.iinfo(values.dtype).max
    stored = [1 if layout["expand"][d] and shape[d] > 0 else shape[d] for d in range(ndim)]
    span = [layout["offset"][d] + (max(stored[d], 1) - 1) * layout["step"][d] + 1 for d in range(ndim)]
    perm = layout["perm"]
    buffer = torch.full([span[p] for p in perm], poison, dtype=values.dtype, device=values.device)
    buffer = buffer.permute(*[perm.index(d) for d in range(ndim)])  # logical dim d has size span[d]
    index = tuple(slice(layout["offset"][d], layout["offset"][d] + stored[d] * layout["step"][d], layout["step"][d])
                  for d in range(ndim))
    view = buffer[index]
    source = values[tuple(slice(0, 1) if stored[d] != shape[d] else slice(None) for d in range(ndim))]
    view.copy_(source)
    out = view.expand(*shape)
    assert out.shape == values.shape
    return out


@st.composite
def tensors(draw, shape, dtype=torch.float32, scale: float | st.SearchStrategy = 1.0, allow_expand: bool = True,
            special: tuple = (), special_fraction: float = 0.0, low: int = 0, high: int = 2) -> torch.Tensor:
    """A tensor of logical ``shape`` with a random layout (:func:`layouts`).

    Floats: ``scale·randn`` from a drawn seed; with ``special`` values (e.g. ``(nan, inf, -inf)``) and
    ``special_fraction > 0``, some elements are replaced by them. Integers: uniform in ``[low, high)``. Bool: coin
    flips. Expanded dims repeat the first slice, as an expanded tensor must.
    """
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if isinstance(scale, st.SearchStrategy):
        scale = draw(scale)
    if dtype == torch.bool:
        values = torch.rand(shape, generator=gen) < 0.5
    elif not dtype.is_floating_point:
        values = torch.randint(low, high, shape, generator=gen, dtype=dtype) if high > low else torch.full(
            shape, low, dtype=dtype)
    else:
        values = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        if special and special_fraction > 0 and values.numel():
            hit = torch.rand(shape, generator=gen) < special_fraction
            pick = torch.randint(0, len(special), shape, generator=gen)
            for i, v in enumerate(special):
                values = torch.where(hit & (pick == i), torch.tensor(v, dtype=values.dtype), values)
        values = values.to(dtype)
    return with_layout(values, draw(layouts(len(shape), allow_expand)))


def describe(t: torch.Tensor) -> str:
    """Shape, strides and offset, for failure messages."""
    return f"shape={tuple(t.shape)} stride={t.stride()} offset={t.storage_offset()} contiguous={t.is_contiguous()}"
