"""The shared layout strategy itself: every layout keeps the values and really has the memory layout it names."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.support.strategies import LAYOUTS, layouts, sizes, with_layout


@given(shape=st.lists(sizes(5), min_size=0, max_size=4), data=st.data())
def test_layout_keeps_values(shape, data):
    values = torch.randn(shape, dtype=torch.float64)
    layout = data.draw(layouts(len(shape), allow_expand=False))
    out = with_layout(values, layout)
    assert out.shape == values.shape and torch.equal(out, values)


@pytest.mark.parametrize("kind", [k for k in LAYOUTS if k not in ("contiguous", "mixed")])
def test_each_layout_is_what_it_says(kind):
    values = torch.randn(3, 4, 5)
    layout = {"kind": kind, "perm": [0, 1, 2], "offset": [0, 0, 0], "step": [1, 1, 1], "expand": [False] * 3}
    if kind == "permuted":
        layout["perm"] = [2, 0, 1]
    elif kind == "sliced":
        layout["offset"] = [1, 0, 2]
    elif kind == "stepped":
        layout["step"] = [1, 1, 3]
    elif kind == "expanded":
        layout["expand"] = [False, True, False]
    out = with_layout(values, layout)
    assert not out.is_contiguous()
    if kind == "expanded":
        assert out.stride(1) == 0 and torch.equal(out, values[:, :1].expand(3, 4, 5))
    else:
        assert torch.equal(out, values)
    if kind == "stepped":
        assert out.stride(2) == 3
    if kind == "sliced":
        assert out.storage_offset() > 0
    # storage outside the view is poisoned, so a kernel that ignores strides reads NaN
    if kind in ("sliced", "stepped"):
        assert torch.isnan(torch.as_strided(out, (out.untyped_storage().nbytes() // 4,), (1,), 0)).any()
