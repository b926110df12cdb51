"""Comparison helpers shared by the property tests."""

from __future__ import annotations

import torch

# (atol, rtol) of a kernel against the reference evaluated on the same inputs.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_same(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0,
                what: str = "") -> None:
    """Same shape and dtype, NaN and ±inf exactly where the expectation has them, finite values close."""
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(expected.shape)}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} vs {expected.dtype}"
    if not got.is_floating_point():
        assert torch.equal(got, expected), f"{what}: values differ\n{got}\n{expected}"
        return
    g, e = got.double(), expected.double()
    assert torch.equal(g.isnan(), e.isnan()), f"{what}: NaN positions differ\n{got}\n{expected}"
    assert torch.equal(g.isposinf(), e.isposinf()), f"{what}: +inf positions differ\n{got}\n{expected}"
    assert torch.equal(g.isneginf(), e.isneginf()), f"{what}: -inf positions differ\n{got}\n{expected}"
    finite = e.isfinite()
    atol, rtol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(g[finite], e[finite], atol=atol * scale, rtol=rtol * scale,
                               msg=lambda m: f"{what}: {m}")
