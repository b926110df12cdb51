"""Hugging Face ``transformers`` Mask2Former with coavs's masked cross-attention (``pip install 'coavs[hf]'``).

``accelerate(model)`` finds every ``Mask2FormerMaskedAttentionDecoderLayer`` of a ``transformers`` Mask2Former
model and makes its ``cross_attn`` (an ``nn.MultiheadAttention``) run ``coavs.ops.masked_cross_attention``:

    from transformers import Mask2FormerForUniversalSegmentation
    from coavs.integrations.transformers import accelerate
    model = accelerate(Mask2FormerForUniversalSegmentation.from_pretrained(...))

What transformers computes (``modeling_mask2former.py``): the mask predictor resizes the previous layer's mask
logits to the key level (bilinear, ``align_corners=False``) and marks key ``n`` *masked* for query ``q`` where
``sigmoid(logit) < 0.5``, repeated for every head as a bool ``[B·h, Q, N]`` (True = masked); the decoder then
unmasks every key of a row whose keys are all masked (a query that sees nothing sees everything), and the layer
calls ``cross_attn(query, key, value, attn_mask=mask)`` with sequence-first ``[L, B, E]`` tensors. PyTorch's
``nn.MultiheadAttention`` materialises the ``[B·h, Q, N]`` scores and, since transformers leaves
``need_weights`` at its default, the head-averaged weights too. The swapped module keeps the same parameters
(the state dict is unchanged) and computes the same projections and ``softmax(q·kᵀ/√dh over visible keys)·v``
without a ``[B,h,Q,N]`` tensor, in whichever backend coavs picks for the tensors' device (``coavs info`` says
which). Differences that remain: float rounding, and the attention weights it returns are ``None``
(transformers' decoder never reads the cross-attention weights).

Calls it cannot serve exactly run PyTorch's own attention unchanged: attention dropout while training, a
``key_padding_mask``, a float (additive) ``attn_mask``, a mask that differs between heads, ``is_causal``.
Whether the heads share the mask is one comparison on the device and one host read per call (none of the
B·(h−1) per-head ``torch.equal`` syncs it used to make); under ``torch.compile`` it is a ``torch.cond`` of the two
paths, so the graph does not break.
A row with no visible key sees every key (Mask2Former's rule; PyTorch alone would return NaN for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coavs.ops import masked_cross_attention
from coavs.ops.masked_cross_attention import BITS_PER_WORD, OCCUPANCY_BLOCK, AttentionMask

__all__ = ["MaskedCrossAttention", "accelerate", "accelerated_layers", "pack_rows", "restore"]

_INSTALL_HINT = "coavs.integrations.transformers needs transformers: pip install 'coavs[hf]'"


class MaskedCrossAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose boolean-masked forward runs ``coavs.ops.masked_cross_attention``.

    Installed by :func:`accelerate` on an existing module (its class is swapped, its parameters and state dict
    stay as they are); not meant to be constructed by hand.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if not self._served(query, key, value, key_padding_mask, attn_mask, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if attn_mask is None:
            return self._coavs_attention(query, key, value, None), None
        shared = self._heads_share_mask(attn_mask)
        if torch.compiler.is_compiling():
            # both branches in the graph, one taken at run time: no graph break, one host read per call
            out = torch.cond(shared, lambda *x: self._coavs_attention(*x).contiguous(),
                             lambda *x: self._torch_attention(*x).contiguous(), (query, key, value, attn_mask))
            return out, None
        if bool(shared):  # the one host read of the call
            return self._coavs_attention(query, key, value, attn_mask), None
        return super().forward(query, key, value, need_weights=need_weights, attn_mask=attn_mask,
                               average_attn_weights=average_attn_weights)

    def _coavs_attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None) -> Tensor:
        """The attention output ``[L, B, E]`` (``[B, L, E]`` when batch-first) by ``masked_cross_attention``, with
        the mask of the first head (``attn_mask`` True = masked, ``[B·h, Q, N]``)."""
        if not self.batch_first:  # [L, B, E] → [B, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, queries, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads_first(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # [B, L, E] → [B, h, L, dh]
            return F.linear(x, weight, bias).unflatten(-1, (heads, head_dim)).transpose(1, 2)

        q, k, v = heads_first(query, w_q, b_q), heads_first(key, w_k, b_k), heads_first(value, w_v, b_v)
        mask = None
        if attn_mask is not None:
            visible = ~attn_mask.reshape(batch, heads, queries, -1)[:, 0]
            visible = visible | ~visible.any(-1, keepdim=True)  # Mask2Former: a row that sees nothing sees all
            size = getattr(self, "key_map_size", None)  # set by accelerate()'s hook on the decoder
            mask = pack_rows(visible, size if size is not None and size[0] * size[1] == key.shape[1] else None)
        out = masked_cross_attention(q, k, v, mask, scale=head_dim ** -0.5)  # [B, h, Q, dh]
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return out if self.batch_first else out.transpose(0, 1)

    def _torch_attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor) -> Tensor:
        """PyTorch's own attention output (for a mask that differs between heads)."""
        return nn.MultiheadAttention.forward(self, query, key, value, need_weights=False, attn_mask=attn_mask)[0]

    def _heads_share_mask(self, attn_mask: Tensor) -> Tensor:
        """A 0-d bool tensor: every head's ``[Q, N]`` mask equals the first head's (transformers repeats one mask
        per head). One comparison over all heads, no host read; 8 bytes at a time when they fit."""
        per_head = attn_mask.reshape(-1, self.num_heads, attn_mask.shape[-2] * attn_mask.shape[-1])
        if (not torch.compiler.is_compiling() and per_head.shape[-1] % 8 == 0 and per_head.is_contiguous()
                and per_head.storage_offset() % 8 == 0):
            per_head = per_head.view(torch.int64)
        return (per_head == per_head[:, :1]).all()

    def _served(self, query, key, value, key_padding_mask, attn_mask, is_causal) -> bool:
        """Whether the call's *kind* is one the coavs op computes as ``nn.MultiheadAttention`` would (shapes,
        dtypes and flags only; whether the heads share the mask is decided in :meth:`forward`)."""
        if key_padding_mask is not None or is_causal or (self.training and self.dropout > 0.0):
            return False
        if query.dim() != 3 or key.shape != value.shape or key.dim() != 3:
            return False
        if attn_mask is None:
            return True
        if attn_mask.dtype != torch.bool:
            return False
        batch = query.shape[0 if self.batch_first else 1]
        queries, keys = query.shape[1 if self.batch_first else 0], key.shape[1 if self.batch_first else 0]
        return attn_mask.shape == (batch * self.num_heads, queries, keys)


_BIT_OF_BYTE = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_rows(visible: Tensor, size: tuple[int, int] | None = None) -> AttentionMask:
    """``visible [B,Q,N]`` bool → the :class:`~coavs.ops.AttentionMask` that ``pack_visibility`` gives, several
    times faster: eight keys → one byte (bit ``i`` = key ``8j + i``), four bytes → one int32 word and eight → one
    occupancy flag, by reinterpreting the bytes (little-endian, as every platform torch ships for). ``size``: the
    ``(H, W)`` of the keys, when known (better key blocks; the same result)."""
    batch, queries, keys = visible.shape
    blocks = -(-keys // OCCUPANCY_BLOCK)
    padded = F.pad(visible, (0, blocks * OCCUPANCY_BLOCK - keys)) if keys % OCCUPANCY_BLOCK else visible
    weights = torch.tensor(_BIT_OF_BYTE, dtype=torch.uint8, device=visible.device)
    packed = (padded.reshape(batch, queries, -1, 8).view(torch.uint8) * weights).sum(-1, dtype=torch.uint8)
    bits = packed.view(torch.int32)[..., : -(-keys // BITS_PER_WORD)].contiguous()
    occupancy = (packed.view(torch.int64) != 0).to(torch.uint8)
    return AttentionMask(bits, occupancy, keys, size)


def _decoder_classes():
    try:
        from transformers.models.mask2former import modeling_mask2former
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from None
    return (modeling_mask2former.Mask2FormerMaskedAttentionDecoderLayer,
            modeling_mask2former.Mask2FormerMaskedAttentionDecoder)


def _record_key_maps(decoder: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the decoder: tells each layer's cross-attention the ``(H, W)`` of its feature level
    (layer ``i`` attends to level ``i % num_feature_levels``), so that its keys are blocked as image patches."""
    sizes = kwargs.get("feature_size_list", args[5] if len(args) > 5 else None)
    if not sizes:
        return
    for index, layer in enumerate(decoder.layers):
        if type(layer.cross_attn) is MaskedCrossAttention:
            size = sizes[index % decoder.num_feature_levels]
            layer.cross_attn.key_map_size = (int(size[0]), int(size[1]))


def _check_supported(name: str, attention: nn.Module) -> None:
    if type(attention) not in (nn.MultiheadAttention, MaskedCrossAttention):
        raise TypeError(f"cannot accelerate {name}: it is {type(attention).__name__}, not the "
                        "nn.MultiheadAttention that transformers' Mask2Former builds")
    if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
        raise TypeError(f"cannot accelerate {name}: separate key/value sizes, bias_k/bias_v and add_zero_attn "
                        "are not supported (transformers' Mask2Former uses none of them)")


def accelerated_layers(model: nn.Module) -> list[str]:
    """Names of the cross-attention modules of ``model`` that currently run the coavs op."""
    return [name for name, module in model.named_modules() if type(module) is MaskedCrossAttention]


def accelerate(model: nn.Module) -> nn.Module:
    """Makes the masked cross-attention of a ``transformers`` Mask2Former model run coavs's kernels.

    Args:
        model: ``Mask2FormerForUniversalSegmentation``, ``Mask2FormerModel`` or any module containing
            ``Mask2FormerMaskedAttentionDecoderLayer``\\ s.

    Returns ``model`` itself, changed in place (each decoder layer's ``cross_attn`` becomes a
    :class:`MaskedCrossAttention` with the same parameters). Calling it again changes nothing. Raises
    ``TypeError`` for a model without Mask2Former decoder layers and ``ImportError`` without transformers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate() takes a transformers Mask2Former model (an nn.Module), got "
                        f"{type(model).__name__}")
    layer_cls, decoder_cls = _decoder_classes()
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, layer_cls)]
    if not layers:
        raise TypeError(f"accelerate() supports transformers' Mask2Former models (Mask2FormerForUniversalSegmentation, "
                        f"Mask2FormerModel); {type(model).__name__} has no Mask2FormerMaskedAttentionDecoderLayer")
    for name, layer in layers:
        _check_supported(f"{name}.cross_attn", layer.cross_attn)
    for _, layer in layers:
        layer.cross_attn.__class__ = MaskedCrossAttention
    for decoder in model.modules():
        if isinstance(decoder, decoder_cls) and not hasattr(decoder, "_coavs_key_map_hook"):
            decoder._coavs_key_map_hook = decoder.register_forward_pre_hook(_record_key_maps, with_kwargs=True)
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undoes :func:`accelerate`: every swapped cross-attention runs ``nn.MultiheadAttention`` again."""
    for module in model.modules():
        if type(module) is MaskedCrossAttention:
            module.__class__ = nn.MultiheadAttention
            module.__dict__.pop("key_map_size", None)
        hook = module.__dict__.pop("_coavs_key_map_hook", None)
        if hook is not None:
            hook.remove()
    return model
