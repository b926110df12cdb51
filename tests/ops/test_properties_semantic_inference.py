"""Property tests of ``semantic_inference``: every backend against the reference, on random shapes (1 in every
dimension, 0 in the batch), random memory layouts, resizing up and down, gates, debias options, extreme values and
NaN/±inf.

Non-finite policy (identical on every backend, nothing read back to the host): a sample whose mask logits (the
biased ones too where the scheme reads them), gate or class probabilities (after the class debias) hold a NaN or
±inf is undefined: label −1 / score NaN on every pixel; the other samples are computed as usual.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import coavs.ops as ops
from coavs.ops import reference
from coavs.ops.semantic_inference import Debias
from tests.support.helpers import backends_for
from tests.support.compare import assert_same
from tests.support.strategies import sizes, tensors

BACKENDS = backends_for("semantic_inference", "cpu")
FAST = [b for b in BACKENDS if b not in ("triton", "reference")]
SPECIAL = (math.nan, math.inf, -math.inf)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@st.composite
def problems(draw, dtypes=DTYPES, special=False, max_size=5):
    batch, queries = draw(sizes(2)), draw(st.integers(1, 4))
    in_h, in_w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    size = (draw(st.integers(1, max_size + 2)), draw(st.integers(1, max_size + 2)))
    classes = draw(st.integers(2, 5))
    dtype = draw(st.sampled_from(dtypes))
    extra = {"special": SPECIAL, "special_fraction": 0.05} if special else {}
    big = 1e4 if dtype == torch.float16 else 1e30
    scale = st.sampled_from([1.0, 4.0, big])
    mask = draw(tensors((batch, queries, in_h, in_w), dtype, scale=scale, **extra))
    mode = draw(st.sampled_from(["semantic", "binary"]))
    with_cls = mode == "semantic" or draw(st.booleans())
    cls = draw(tensors((batch, queries, classes), dtype, scale=scale, **extra)) if with_cls else None
    gate_kind = draw(st.sampled_from(["none", "float", "bool"]))
    gate = None if gate_kind == "none" else draw(tensors((batch, queries), torch.bool if gate_kind == "bool"
                                                         else torch.float32))
    biased = debias = None
    if draw(st.booleans()):
        mask_b = draw(tensors((batch, queries, in_h, in_w), dtype, scale=scale, **extra))
        cls_b = draw(tensors((batch, queries, classes), dtype, scale=scale, **extra)) if with_cls else None
        biased = (mask_b, cls_b)
        schemes = ["separate", "mask", "class", "overall"] if with_cls else ["mask"]
        debias = Debias(draw(st.sampled_from([0.0, 0.5, 1.0])), draw(st.sampled_from(schemes)),
                        draw(st.sampled_from(["fixed", "uncertainty"])))
    background = draw(st.sampled_from([None, 0])) if with_cls and (mode == "semantic" or classes > 2) else None
    return dict(mask_logits=mask, cls_logits=cls, size=size, gate=gate, biased=biased, debias=debias, mode=mode,
                background=background)


def run(backend, kwargs):
    with ops.use_backend(backend):
        return ops.semantic_inference(**kwargs)


def decisive(kwargs, tol):
    """``[B,H,W]`` bool: pixels whose top two reference scores differ by more than ``tol`` (labels comparable)."""
    args = dict(kwargs)
    biased, debias = args.pop("biased"), args.pop("debias")
    mask_b, cls_b = biased if biased is not None else (None, None)
    debias = debias or Debias()
    scores = reference.semantic_scores(args["mask_logits"], args["cls_logits"], args["size"], args["gate"], mask_b,
                                       cls_b, debias.alpha, debias.scheme, debias.strategy == "uncertainty")
    if scores.shape[1] < 2:
        return torch.ones(scores.shape[0], *scores.shape[2:], dtype=torch.bool)
    top = scores.topk(2, dim=1).values
    return ((top[:, 0] - top[:, 1]) > tol) | scores.isnan().any(1)


def undefined(kwargs) -> torch.Tensor:
    """``[B]`` bool: the samples the policy leaves undefined (written from the policy, not from a backend)."""
    mask, cls, gate = kwargs["mask_logits"], kwargs["cls_logits"], kwargs["gate"]
    biased, debias = kwargs["biased"], kwargs["debias"] or Debias()
    scheme = debias.scheme if biased is not None else None

    def bad(t):
        return ~torch.isfinite(t.float()).flatten(1).all(1)

    out = bad(mask)
    if scheme in ("separate", "mask", "overall"):
        out |= bad(biased[0])
    if gate is not None and gate.is_floating_point():
        out |= bad(gate)
    if cls is not None:
        c = cls.float()
        if scheme in ("separate", "class"):
            c = reference.debias_logits(c.new_empty(0), c, c.new_empty(0), biased[1].float(), debias.alpha,
                                        debias.strategy == "uncertainty")[1]
        out |= bad(torch.softmax(c, -1)[..., :-1])
        if scheme == "overall":
            out |= bad(torch.softmax(biased[1].float(), -1)[..., :-1])
    return out


def check(backend, kwargs):
    got, expected = run(backend, kwargs), run("reference", kwargs)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    dead = undefined(kwargs)
    if kwargs["mode"] == "semantic":
        assert (got[dead] == -1).all() and (expected[dead] == -1).all(), f"{backend}: undefined samples not -1"
        assert (got[~dead] >= 0).all(), f"{backend}: -1 in a defined sample"
        keep = decisive(kwargs, 1e-4) & ~dead[:, None, None]
        assert torch.equal(got[keep], expected[keep]), f"{backend}: labels differ\n{got}\n{expected}"
    else:
        assert got[dead].isnan().all() and expected[dead].isnan().all(), f"{backend}: undefined samples not NaN"
        assert not got[~dead].isnan().any(), f"{backend}: NaN in a defined sample"
        assert_same(got[~dead], expected[~dead], torch.float32, scale=10, what=f"{backend} scores")


@pytest.mark.parametrize("backend", FAST)
@given(kwargs=problems())
def test_matches_reference(backend, kwargs):
    check(backend, kwargs)


@pytest.mark.parametrize("backend", FAST)
@given(kwargs=problems(special=True))
def test_nonfinite_policy(backend, kwargs):
    check(backend, kwargs)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton unavailable")
@settings(max_examples=6)
@given(kwargs=problems(dtypes=(torch.float32,), special=True, max_size=3))
def test_triton_matches_reference(kwargs):
    check("triton", kwargs)


@given(kwargs=problems(special=True))
def test_reference_backend_matches_definition(kwargs):
    """The op (reference backend, which receives probabilities) against reference.semantic_inference."""
    args = dict(kwargs)
    biased, debias = args.pop("biased"), args.pop("debias")
    mask_b, cls_b = biased if biased is not None else (None, None)
    debias = debias or Debias()
    gate = args["gate"]
    expected = reference.semantic_inference(args["mask_logits"], args["cls_logits"], args["size"],
                                            None if gate is None else gate.float(), mask_b, cls_b, debias.alpha,
                                            debias.scheme, debias.strategy == "uncertainty", args["mode"],
                                            args["background"])
    got = run("reference", kwargs)
    dead = undefined(kwargs)
    if kwargs["mode"] == "semantic":
        assert (got[dead] == -1).all() and (expected[dead] == -1).all()
    else:
        assert got[dead].isnan().all() and expected[dead].isnan().all()
    got, expected = got[~dead], expected[~dead]
    if kwargs["mode"] == "semantic":
        keep = decisive(kwargs, 1e-4)[~dead]
        assert torch.equal(got[keep], expected[keep])
    else:
        assert_same(got, expected, torch.float32, scale=10, what="reference backend")


@given(kwargs=problems(dtypes=(torch.float32,)))
def test_meta_tensors_give_the_shape(kwargs):
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if kwargs["biased"] is not None:
        meta["biased"] = tuple(None if t is None else t.to("meta") for t in kwargs["biased"])
    out = ops.semantic_inference(**meta)
    batch = kwargs["mask_logits"].shape[0]
    assert out.shape == (batch, *kwargs["size"])
    assert out.dtype == (torch.int64 if kwargs["mode"] == "semantic" else torch.float32)
