"""coavs.integrations.transformers: a Hugging Face Mask2Former with coavs's masked cross-attention must give
the outputs and gradients of transformers' own, on a small randomly initialised model (no downloads)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.utils._python_dispatch
from torch import nn

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'coavs[hf]')")
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig  # noqa: E402

from coavs.integrations import transformers as integration  # noqa: E402
from coavs.ops import use_backend  # noqa: E402
from tests.support.helpers import assert_close, backends_for  # noqa: E402

HEADS = 4
DECODER_LAYERS = 4  # transformers builds decoder_layers - 1 masked-attention layers


def small_config(**overrides) -> Mask2FormerConfig:
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"],
                          drop_path_rate=0.0)  # no stochastic depth: training-mode runs are deterministic
    settings = dict(backbone_config=backbone, hidden_dim=32, num_queries=7, decoder_layers=DECODER_LAYERS,
                    feature_size=32, mask_feature_size=32, encoder_layers=1, encoder_feedforward_dim=32,
                    dim_feedforward=64, num_attention_heads=HEADS, num_labels=3, common_stride=4)
    settings.update(overrides)
    return Mask2FormerConfig(**settings)


def make_model(dtype=torch.float32, **overrides) -> Mask2FormerForUniversalSegmentation:
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(small_config(**overrides)).to(dtype)


def pixels(dtype=torch.float32, batch=2, size=64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def outputs(model, x):
    out = model(pixel_values=x, output_auxiliary_logits=True)
    return [out.masks_queries_logits, out.class_queries_logits] + [
        t for aux in out.auxiliary_logits for t in (aux["masks_queries_logits"], aux["class_queries_logits"])]


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls of coavs.ops.masked_cross_attention made by the integration."""
    calls = []
    original = integration.masked_cross_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(integration, "masked_cross_attention", counting)
    return calls


@pytest.mark.parametrize("backend", backends_for("masked_cross_attention", "cpu"))
def test_forward_matches_transformers(backend, op_calls, one_thread):
    hf = make_model().eval()
    ours = integration.accelerate(copy.deepcopy(hf))
    x = pixels()
    with torch.no_grad():
        expected = outputs(hf, x)
        with use_backend(backend):
            actual = outputs(ours, x)
    assert len(op_calls) == DECODER_LAYERS - 1 and all(s == (2, HEADS, 7, 8) for s in op_calls)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, scale=10, what=f"output {i} ({backend})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_backward_matches_transformers(dtype, pre_norm, op_calls, one_thread):
    hf = make_model(dtype, pre_norm=pre_norm).train()  # dropout 0: training mode still runs the coavs op
    ours = integration.accelerate(copy.deepcopy(hf))
    x = pixels(dtype)
    weights = [torch.randn(t.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
               for i, t in enumerate(outputs(hf, x))]
    grads = []
    for model in (hf, ours):
        torch.manual_seed(2)
        xr = x.clone().requires_grad_()
        outs = outputs(model, xr)
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        params = [p for _, p in model.named_parameters()]
        grads.append((outs, torch.autograd.grad(loss, [xr] + params, allow_unused=True)))
    assert len(op_calls) == DECODER_LAYERS - 1
    (outs_hf, grads_hf), (outs_ours, grads_ours) = grads
    for i, (a, e) in enumerate(zip(outs_ours, outs_hf)):
        assert_close(a, e, scale=10, what=f"output {i}")
    names = ["pixel_values"] + [n for n, _ in hf.named_parameters()]
    cross_attn_grads = 0
    for name, a, e in zip(names, grads_ours, grads_hf):
        assert (a is None) == (e is None), name
        if e is not None:
            assert_close(a, e, scale=100, what=f"grad of {name}")
            cross_attn_grads += ".cross_attn." in name and bool(e.abs().sum() > 0)
    assert cross_attn_grads == 4 * (DECODER_LAYERS - 1)  # in_proj weight/bias, out_proj weight/bias per layer


def test_rows_that_see_no_key_follow_transformers(op_calls, one_thread):
    """Queries whose predicted mask covers no key (all masked) see every key, as transformers' decoder does;
    all-visible rows and ordinary rows alongside."""
    hf = make_model().eval()
    ours = integration.accelerate(copy.deepcopy(hf))

    def force_rows(module, args, output):
        predicted, mask = output
        mask = mask.clone()
        mask[:, 0] = True   # query 0 of every sample: every key masked
        mask[:, 1] = False  # query 1: every key visible
        return predicted, mask

    for model in (hf, ours):
        model.model.transformer_module.decoder.mask_predictor.register_forward_hook(force_rows)
    x = pixels()
    with torch.no_grad():
        expected, actual = outputs(hf, x), outputs(ours, x)
    assert op_calls
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.isfinite(a).all()
        assert_close(a, e, scale=10, what=f"output {i}")


def test_module_matches_multihead_attention_with_its_own_masks():
    """The swapped module against nn.MultiheadAttention directly: batch-first and sequence-first, a row with
    no visible key (Mask2Former's rule: it sees all), and calls it leaves to PyTorch (a mask that differs
    between heads, a key padding mask)."""
    for batch_first in (False, True):
        torch.manual_seed(0)
        mha = nn.MultiheadAttention(32, HEADS, batch_first=batch_first).double()
        ours = copy.deepcopy(mha)
        ours.__class__ = integration.MaskedCrossAttention
        q, k = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 90, 32, dtype=torch.float64)
        v = torch.randn(2, 90, 32, dtype=torch.float64)
        if not batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        visible_mask = torch.rand(2, 5, 90) < 0.5
        visible_mask[:, 2] = True  # a row with every key masked → sees all
        shared = visible_mask.repeat_interleave(HEADS, 0)
        fixed = shared.clone()
        fixed[:, 2] = False
        assert_close(ours(q, k, v, attn_mask=shared)[0], mha(q, k, v, attn_mask=fixed)[0], what="shared mask")
        assert_close(ours(q, k, v)[0], mha(q, k, v)[0], what="no mask")
        per_head = torch.rand(2 * HEADS, 5, 90) < 0.5
        assert_close(ours(q, k, v, attn_mask=per_head)[0], mha(q, k, v, attn_mask=per_head)[0], what="per head")
        padding = torch.rand(2, 90) < 0.3
        assert_close(ours(q, k, v, key_padding_mask=padding)[0], mha(q, k, v, key_padding_mask=padding)[0],
                     what="key padding")


def test_dropout_in_training_runs_pytorch_attention(op_calls):
    model = integration.accelerate(make_model(dropout=0.1).train())
    outputs(model, pixels())
    assert op_calls == []  # attention dropout is random: left to nn.MultiheadAttention
    model.eval()
    with torch.no_grad():
        outputs(model, pixels())
    assert len(op_calls) == DECODER_LAYERS - 1


def test_accelerate_is_idempotent_keeps_parameters_and_can_be_undone():
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert integration.accelerate(model) is model
    names = integration.accelerated_layers(model)
    assert len(names) == DECODER_LAYERS - 1 and all(n.endswith(".cross_attn") for n in names)
    assert integration.accelerate(model) is model
    assert integration.accelerated_layers(model) == names
    assert all(isinstance(model.get_submodule(n), nn.MultiheadAttention) for n in names)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert integration.accelerate(model.model) is model.model  # Mask2FormerModel too
    assert integration.restore(model) is model and integration.accelerated_layers(model) == []
    assert all(type(model.get_submodule(n)) is nn.MultiheadAttention for n in names)


def test_unsupported_models_are_refused_with_one_line():
    with pytest.raises(TypeError, match="supports transformers' Mask2Former models.*Sequential"):
        integration.accelerate(nn.Sequential(nn.Linear(2, 2), nn.MultiheadAttention(4, 2)))
    with pytest.raises(TypeError, match="takes a transformers Mask2Former model .*got str"):
        integration.accelerate("facebook/mask2former-swin-tiny-coco-instance")
    model = make_model()
    layer = model.model.transformer_module.decoder.layers[1]
    layer.cross_attn = nn.MultiheadAttention(32, HEADS, add_zero_attn=True)
    with pytest.raises(TypeError, match=r"cannot accelerate .*layers\.1\.cross_attn: .*add_zero_attn"):
        integration.accelerate(model)
    assert integration.accelerated_layers(model) == []  # nothing half-swapped
    layer.cross_attn = nn.Identity()
    with pytest.raises(TypeError, match="it is Identity, not the nn.MultiheadAttention"):
        integration.accelerate(model)


def test_without_transformers_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.models.mask2former", None)
    with pytest.raises(ImportError, match=r"needs transformers: pip install 'coavs\[hf\]'"):
        integration.accelerate(nn.Linear(2, 2))


@pytest.mark.parametrize("keys", [1, 7, 31, 32, 33, 64, 100, 625, 4096])
def test_pack_rows_equals_pack_visibility(keys):
    from coavs.ops.masked_cross_attention import pack_visibility

    visible = torch.rand(3, 5, keys) < 0.3
    visible[0, 0] = False
    visible[1, 1] = True
    fast, plain = integration.pack_rows(visible), pack_visibility(visible)
    assert fast.num_keys == plain.num_keys == keys
    for name in ("bits", "occupancy"):
        a, b = getattr(fast, name), getattr(plain, name)
        assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b), name


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host (each a device sync on a GPU)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.equal.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def _module_and_inputs(batch=4, heads=8, per_head=False):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, heads)
    ours = copy.deepcopy(mha)
    ours.__class__ = integration.MaskedCrossAttention
    q, k = torch.randn(10, batch, 64), torch.randn(48, batch, 64)
    masked = torch.rand(batch, 10, 48) < 0.6
    mask = masked.repeat_interleave(heads, 0)
    if per_head:
        mask = torch.rand(batch * heads, 10, 48) < 0.6
    return mha, ours, q, k, mask


def test_one_host_read_per_call_whatever_the_batch_and_heads():
    """Issue 22: deciding whether the heads share the mask is one comparison and one host read per call (it was
    B·(h−1) torch.equal calls: 28 here)."""
    for per_head in (False, True):
        _, ours, q, k, mask = _module_and_inputs(per_head=per_head)
        with _HostReads() as reads:
            ours(q, k, k, attn_mask=mask)
        assert reads.count == 1, (per_head, reads.count)


@pytest.mark.parametrize("per_head", [False, True])
def test_torch_compile_fullgraph_takes_either_path(per_head):
    """Under torch.compile the decision is a torch.cond: no graph break, and the answer of the path it takes."""
    mha, ours, q, k, mask = _module_and_inputs(batch=2, heads=4, per_head=per_head)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = compiled(q, k, k, attn_mask=mask)[0]
        expected = ours(q, k, k, attn_mask=mask)[0]
    assert_close(got, expected, what=f"per_head={per_head}")
    if per_head:
        assert_close(got, mha(q, k, k, attn_mask=mask)[0], what="PyTorch's attention")


def test_accelerate_records_each_layers_key_map(one_thread):
    """The decoder's feature sizes reach every cross-attention (layer i: level i % levels), so masks are blocked as
    image patches; restore() removes the hook."""
    model = integration.accelerate(make_model().eval())
    with torch.no_grad():
        out = model.model.pixel_level_module(pixels())
        model(pixel_values=pixels())
    decoder = model.model.transformer_module.decoder
    sizes = [tuple(f.shape[-2:]) for f in out.decoder_hidden_states]
    for index, layer in enumerate(decoder.layers):
        assert layer.cross_attn.key_map_size == sizes[index % decoder.num_feature_levels]
    integration.restore(model)
    assert not hasattr(decoder, "_coavs_key_map_hook") and not decoder._forward_pre_hooks
