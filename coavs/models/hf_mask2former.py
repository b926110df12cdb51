"""The paper's segmenter: transformers' ``Mask2FormerForUniversalSegmentation`` prompted by coavs's audio queries.

``ModelConfig(segmenter="hf_mask2former", checkpoint=FOLDER)`` builds :class:`HFMask2FormerAVS`: the audio side of
:class:`coavs.models.AVSModel` (audio encoder, perception, ``coavs.ops.assign_queries``, the biased branch) in front
of a Mask2Former loaded from a local ``save_pretrained`` folder (``local_files_only=True``; the paper's is
``facebook/mask2former-swin-base-ade-semantic``, any Mask2Former checkpoint works).

    frames ─► Swin backbone ─► deformable pixel decoder ─► mask features, 3 levels      (transformers, once)
    audio  ─► embedding ─► markers ─► assign_queries(scores, embedding, queries_features, d)
              queries [N,Q,D] = queries_features + gate·audio          (the vanilla and the biased branch)
    queries ─► Mask2Former's masked-attention decoder (coavs.ops.masked_cross_attention via
               coavs.integrations.transformers.accelerate) ─► class_predictor, mask predictor per layer

- **Queries.** The checkpoint's learnable query features (``transformer_module.queries_features``) are the
  ``query_feat`` of op 1: the prompt of query ``q`` is its marker's gate times the audio embedding, added to the
  query features before the decoder, as the reference code does (its ``prompt_features_projected`` is added to
  ``query_features`` in transformers' transformer module). The query position embeddings stay the checkpoint's.
- **One backbone pass.** transformers' transformer module builds its query features inside ``forward``; this
  class runs the pixel-level module once, prepares the decoder inputs as that ``forward`` does (sine positions,
  input projections, level embeddings), and calls the decoder itself with the prompted queries. With a biased
  branch the two branches go through the decoder as one batch of ``2N`` (the image features repeated), so only the
  decoder runs twice, and the branches never attend to each other.
- **Heads.** ``num_labels`` is set to the dataset's ``K`` and ``num_queries`` to ``Q``: where they differ from the
  checkpoint (ADE20k's 150 classes; ``Q ≠ 100``), transformers re-initialises ``class_predictor`` (and the query
  embeddings) — ``from_pretrained(..., ignore_mismatched_sizes=True)``, logged in one line.
- **Frames.** Normalised with the checkpoint's image processor (``preprocessor_config.json``: ``image_mean``,
  ``image_std``, ``rescale_factor``); its ``size`` is the run's default image size (:func:`read_checkpoint`).

Everything after the decoder — matching, losses, debias, semantic inference, metrics — is coavs's, on the same
output dict as :class:`AVSModel`. A run's resolved config stores the checkpoint's ``config.json`` (``hf_config``), so
``coavs eval`` / ``predict`` rebuild the model from the run alone, without the weight folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from coavs.errors import UserError
from coavs.integrations.transformers import accelerate
from coavs.models.avs_model import AVSModel
from coavs.models.config import ModelConfig

_INSTALL_HINT = "model.segmenter hf_mask2former needs transformers: pip install 'coavs[hf]'"
CHECKPOINT_FILES = ("config.json", "preprocessor_config.json")

log = logging.getLogger(__name__)


class CheckpointInfo(NamedTuple):
    """What a run needs from a ``save_pretrained`` folder before it builds the model."""

    config: dict  # config.json (Mask2FormerConfig.to_dict())
    image_size: int | None  # the image processor's size (square side), None when it has none
    pixel_mean: tuple[float, float, float]  # for frames in [0,1]
    pixel_std: tuple[float, float, float]


def _transformers():
    try:
        import transformers
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from None
    return transformers


def read_checkpoint(folder) -> CheckpointInfo:
    """The model config and image preprocessing of a Mask2Former ``save_pretrained`` folder, read with
    transformers' own readers (``Mask2FormerConfig.from_pretrained`` and the image processor's
    ``get_image_processor_dict``, both ``local_files_only``). A missing folder or file is one
    :class:`~coavs.errors.UserError` line naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model.checkpoint: {folder} is not a folder (a Mask2Former written by save_pretrained, "
                        "with config.json, model.safetensors and preprocessor_config.json; nothing is downloaded)")
    for name in CHECKPOINT_FILES:
        if not (folder / name).is_file():
            raise UserError(f"model.checkpoint: {folder / name} is missing (save the model and its image processor "
                            "with save_pretrained into that folder)")
    transformers = _transformers()
    try:
        config = transformers.Mask2FormerConfig.from_pretrained(folder, local_files_only=True)
        processor, _ = transformers.ImageProcessingMixin.get_image_processor_dict(str(folder), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"model.checkpoint: cannot read {folder}: {exc}") from None
    if config.model_type != "mask2former":
        raise UserError(f"model.checkpoint: {folder} holds a {config.model_type!r} model, not a Mask2Former")
    scale = 255.0 * (float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0)
    mean = processor.get("image_mean", [0.485, 0.456, 0.406])
    std = processor.get("image_std", [0.229, 0.224, 0.225])
    if not processor.get("do_normalize", True):
        mean, std = [0.0] * 3, [1.0 / scale] * 3
    size = processor.get("size") if processor.get("do_resize", True) else None
    side = None
    if isinstance(size, dict):
        side = size.get("shortest_edge") or size.get("height")
    elif isinstance(size, int):
        side = size
    return CheckpointInfo(config.to_dict(), int(side) if side else None,
                          tuple(float(m) / scale for m in mean), tuple(float(s) / scale for s in std))


class _Features(NamedTuple):
    mask_features: Tensor  # [N, C, H/4, W/4]
    levels: list[Tensor]  # three [HW, N, D] decoder inputs (projected, level embedding added)
    positions: list[Tensor]  # three [HW, N, D] sine position embeddings
    sizes: list[torch.Size]  # the three levels' (H, W)


class HFMask2FormerAVS(AVSModel):
    """:class:`AVSModel` whose segmenter is transformers' Mask2Former (see the module docstring).

    ``pretrained``: load the weights of ``config.checkpoint`` (a new run); False builds the architecture from
    ``config.hf_config`` alone, for weights that come from a coavs checkpoint next (``coavs eval``, resume).
    """

    backbone_prefix = "hf.model.pixel_level_module.encoder."
    embedding_names = ("hf.model.transformer_module.queries_features.weight",
                       "hf.model.transformer_module.queries_embedder.weight",
                       "hf.model.transformer_module.level_embed.weight")

    def _build_segmenter(self, config: ModelConfig, pretrained: bool) -> None:
        transformers = _transformers()
        overrides = dict(num_labels=config.num_classes, num_queries=config.queries,
                         id2label={i: str(i) for i in range(config.num_classes)})
        if pretrained and config.checkpoint:
            read_checkpoint(config.checkpoint)  # one clear line for a missing folder or file
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # its load report spans a table; ours is one line
            try:
                hf, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
                    config.checkpoint, local_files_only=True, ignore_mismatched_sizes=True, output_loading_info=True,
                    **overrides)
            finally:
                transformers.logging.set_verbosity(verbosity)
            fresh = sorted({key.rsplit(".", 1)[0] for key, *_ in info.get("mismatched_keys", [])}
                           | {key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})
            log.info("hf_mask2former: loaded %s; initialised anew: %s", config.checkpoint, ", ".join(fresh) or "none")
        else:
            if config.hf_config is None:
                raise ValueError("hf_mask2former without pretrained weights needs ModelConfig.hf_config (the "
                                 "checkpoint's config.json, which a run's resolved config holds)")
            hf_config = transformers.Mask2FormerConfig.from_dict({**config.hf_config, **overrides})
            hf = transformers.Mask2FormerForUniversalSegmentation(hf_config)
        hidden = hf.config.hidden_dim
        if hidden != config.hidden_dim:
            raise ValueError(f"ModelConfig.hidden_dim ({config.hidden_dim}) must equal the checkpoint's hidden_dim "
                             f"({hidden}): the audio prompt is added to its query features")
        hf.criterion = None  # coavs's matcher and losses train it; transformers' loss would only hold a buffer
        self.hf = accelerate(hf)

    def segmenter_parts(self) -> dict[str, list[nn.Module]]:
        model = self.hf.model
        return {"backbone": [model.pixel_level_module.encoder], "pixel_decoder": [model.pixel_level_module.decoder],
                "decoder": [model.transformer_module, self.hf.class_predictor]}

    def query_features(self) -> Tensor:
        return self.hf.model.transformer_module.queries_features.weight

    def image_features(self, frames: Tensor) -> _Features:
        """The pixel-level module (backbone + pixel decoder) and the decoder inputs of transformers'
        ``Mask2FormerTransformerModule.forward``, computed once."""
        x = (frames - self.pixel_mean.to(frames.dtype)) / self.pixel_std.to(frames.dtype)
        pixel = self.hf.model.pixel_level_module(pixel_values=x)
        module = self.hf.model.transformer_module
        levels, positions, sizes = [], [], []
        for i in range(module.num_feature_levels):
            feature = pixel.decoder_hidden_states[i]
            sizes.append(feature.shape[-2:])
            position = module.position_embedder(feature.shape, feature.device, feature.dtype, None).flatten(2)
            positions.append(position.permute(2, 0, 1))
            level = module.input_projections[i](feature).flatten(2) + module.level_embed.weight[i][None, :, None]
            levels.append(level.permute(2, 0, 1))
        return _Features(pixel.decoder_last_hidden_state, levels, positions, sizes)

    def decode(self, queries: Tensor, active: Tensor, branches: int, features: _Features) -> list[tuple[Tensor, Tensor]]:
        """transformers' masked-attention decoder on the prompted queries; the branches laid side by side in
        ``queries [N, branches·Q, D]`` run as a batch of ``branches·N`` (see the module docstring)."""
        n, q = queries.shape[0], queries.shape[1] // branches
        module = self.hf.model.transformer_module
        batched = torch.cat(queries.split(q, dim=1), dim=0)  # [branches·N, Q, D]

        def repeat_batch(t: Tensor, dim: int) -> Tensor:
            return t if branches == 1 else torch.cat([t] * branches, dim=dim)

        out = module.decoder(
            inputs_embeds=batched.transpose(0, 1),
            multi_stage_positional_embeddings=[repeat_batch(p, 1) for p in features.positions],
            pixel_embeddings=repeat_batch(features.mask_features, 0),
            encoder_hidden_states=[repeat_batch(level, 1) for level in features.levels],
            query_position_embeddings=module.queries_embedder.weight[:, None].repeat(1, batched.shape[0], 1),
            feature_size_list=features.sizes, return_dict=True)
        predictions = []
        for hidden, masks in zip(out.intermediate_hidden_states, out.masks_queries_logits):
            logits = self.hf.class_predictor(hidden.transpose(0, 1))  # [branches·N, Q, K+1]
            predictions.append((torch.cat(logits.split(n, dim=0), dim=1), torch.cat(masks.split(n, dim=0), dim=1)))
        return predictions


__all__ = ["CHECKPOINT_FILES", "CheckpointInfo", "HFMask2FormerAVS", "read_checkpoint"]
