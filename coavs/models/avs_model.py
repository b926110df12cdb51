"""``AVSModel``: audio perception → prompted queries → Mask2Former-style segmenter, with a batched biased branch.

    embedding = prompt_encoder(audio)                               [N,D]
    scores    = perception(embedding, descriptor)  (or given)      [N,S]   latent semantic markers
    queries   = assign_queries(scores, embedding, query_feat, d)   [N,Q,D] (+ gate, active, query_marker)
    features  = pixel_decoder(backbone(frames))                    once, shared by both branches
    outputs   = decoder([queries | biased queries], features)      one decoder pass over 2·Q queries

The biased branch (``biased="mute" | "noise" | "ddpm" | "random_semantic"``) is prompted by bias-only audio that
never depends on the clip's audio (:mod:`coavs.models.biased`); by default every marker-owned query is active in
it (``ModelConfig.biased_queries="all"``), or its markers are perceived from the bias-only audio (``"own"``) or
reused from the vanilla branch (``"shared"``, an ablation that is not audio-free).
Only ``coavs.ops`` is called for fused work; nothing here knows about backends.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import coavs.ops as ops
from coavs.models.audio import AudioEncoder
from coavs.models.backbone import build_backbone
from coavs.models.biased import (BIASED_AUDIO, DiffusionSchedule, biased_embedding, biased_input, fixed_noise_input,
                                 other_clip_rows)
from coavs.models.config import ModelConfig
from coavs.models.decoder import TransformerDecoder
from coavs.models.perception import Perception, load_kmeans
from coavs.models.pixel_decoder import PixelDecoder

class AVSModel(nn.Module):
    """Audio-prompted mask classification (see the module docstring).

    ``prompt_encoder``: any module mapping the ``audio`` argument to ``[N,D]`` (default: the
    :class:`AudioEncoder` of ``config.audio_input``). K-means markers need it to have ``descriptor(x)`` and
    ``descriptor_dim``; the ``noise`` biased branch needs ``noise_like(x)``. A text encoder works the same way
    (see ``examples/text_prompted.py``). ``pretrained``: load ``config.backbone_weights`` (False when the weights
    come from a coavs checkpoint next).

    The segmenter is this class's (``backbone`` → ``pixel_decoder`` → ``decoder``, with ``query_feat`` and
    ``query_pos``); :class:`coavs.models.hf_mask2former.HFMask2FormerAVS` replaces it by transformers' Mask2Former
    through the four methods a segmenter defines: :meth:`_build_segmenter`, :meth:`query_features`,
    :meth:`image_features` and :meth:`decode`.
    """

    backbone_prefix = "backbone."  # parameters trained at optim.backbone_lr_scale
    embedding_names = ("query_feat", "query_pos")  # parameters without weight decay (besides norms and biases)

    def __init__(self, config: ModelConfig, prompt_encoder: nn.Module | None = None, pretrained: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.hidden_dim
        self.prompt_encoder = prompt_encoder or AudioEncoder(config.audio_input, dim, config.audio_channels)
        descriptor_dim = 0
        if config.num_clusters:
            if not hasattr(self.prompt_encoder, "descriptor"):
                raise ValueError(f"k-means markers (num_clusters={config.num_clusters}) need a prompt encoder with "
                                 f"descriptor(); {type(self.prompt_encoder).__name__} has none (set num_clusters=0)")
            descriptor_dim = self.prompt_encoder.descriptor_dim
        self.perception = Perception(dim, config.num_audio_classes, config.num_clusters, descriptor_dim)
        self._build_segmenter(config, pretrained)
        self.diffusion = DiffusionSchedule(config.diffusion_steps)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)
        for part in config.freeze:
            for module in self.segmenter_parts()[part]:
                module.requires_grad_(False)

    # -------------------------------------------------------------------------------------- segmenter
    def _build_segmenter(self, config: ModelConfig, pretrained: bool) -> None:
        dim, queries = config.hidden_dim, config.queries
        self.query_feat = nn.Parameter(torch.randn(queries, dim))
        self.query_pos = nn.Parameter(torch.randn(queries, dim))
        self.backbone = build_backbone(config.backbone, config.backbone_widths,
                                       config.backbone_weights if pretrained else None, config.backbone_kwargs)
        self.pixel_decoder = PixelDecoder(self.backbone.out_channels, dim, config.num_heads, config.ffn_dim,
                                          config.pixel_decoder_layers, config.dropout)
        self.decoder = TransformerDecoder(dim, config.num_heads, config.ffn_dim, config.num_layers,
                                          config.num_classes, config.dropout)

    def segmenter_parts(self) -> dict[str, list[nn.Module]]:
        """The modules of each part that ``ModelConfig.freeze`` can name."""
        return {"backbone": [self.backbone], "pixel_decoder": [self.pixel_decoder], "decoder": [self.decoder]}

    def query_features(self) -> Tensor:
        """The learnable query features ``[Q,D]`` that the audio prompts are added to."""
        return self.query_feat

    def image_features(self, frames: Tensor):
        """Frames ``[N,3,H,W]`` in [0,1] → the segmenter's image features, computed once for both branches
        (here ``(mask_features [N,D,H/4,W/4], three levels)``)."""
        x = (frames - self.pixel_mean.to(frames.dtype)) / self.pixel_std.to(frames.dtype)
        return self.pixel_decoder(self.backbone(x))

    def decode(self, queries: Tensor, active: Tensor, branches: int, features) -> list[tuple[Tensor, Tensor]]:
        """Prompted queries ``[N, branches·Q, D]`` (branches side by side) → per prediction (initial queries, then
        every layer) ``(class logits [N, branches·Q, K+1], mask logits [N, branches·Q, H/4, W/4])``."""
        mask_features, levels = features
        return self.decoder(queries, self.query_pos, levels, mask_features, active, branches)

    # ------------------------------------------------------------------------------------------- parts
    def class_to_marker(self) -> Tensor:
        """``[K]`` long: the marker of each label value (−1 = none), for :func:`targets_from_labels`."""
        return torch.tensor(self.config.class_to_marker(), dtype=torch.long)

    def load_markers(self, path) -> None:
        """Install the k-means markers written by ``coavs fit-markers`` (checks cluster count and descriptor)."""
        fit, descriptor = load_kmeans(path)
        expected = getattr(self.prompt_encoder, "descriptor_kind", None)
        if expected is not None and descriptor != expected:
            raise ValueError(f"{path} was fitted on {descriptor!r} descriptors, this model's audio encoder gives "
                             f"{expected!r} (audio_input={self.config.audio_input!r})")
        if fit.centroids.shape[0] != self.config.num_clusters:
            raise ValueError(f"{path} holds {fit.centroids.shape[0]} clusters, the model has num_clusters="
                             f"{self.config.num_clusters}")
        self.perception.set_clusters(fit)

    def perceive(self, embedding: Tensor, audio: Tensor, class_presence: Tensor | None = None):
        descriptor = self.prompt_encoder.descriptor(audio) if self.config.num_clusters else None
        return self.perception(embedding, descriptor, class_presence)

    def audio_outputs(self, audio: Tensor) -> dict:
        """The audio side of :meth:`forward` for audio inputs ``[M,…]`` alone (no frames): ``audio_embedding
        [M,D]`` and ``audio_logits [M,C]`` (None without a classifier). Negative-audio training trains the
        classifier through this for its ``audio_only`` kinds; the gate's calibration reads it."""
        if hasattr(self.prompt_encoder, "check_input"):
            self.prompt_encoder.check_input(audio)
        embedding = self.prompt_encoder(audio)
        classifier = self.perception.classifier
        return {"audio_embedding": embedding, "audio_logits": classifier(embedding) if classifier is not None else None}

    def assign(self, scores: Tensor, embedding: Tensor):
        c = self.config
        query_feat = self.query_features()
        return ops.assign_queries(scores.float(), embedding.to(query_feat.dtype), query_feat, c.dilation,
                                  threshold=c.marker_threshold, dormant_gate=c.dormant_gate, soft=c.soft_gate)

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, frames: Tensor, audio: Tensor, biased: str | None = None, marker_scores: Tensor | None = None,
                class_presence: Tensor | None = None, clip_index: Tensor | None = None) -> dict:
        """Segment ``frames [N,3,H,W]`` (in [0,1]) prompted by ``audio`` (one input per frame, ``[N,…]``).

        Args:
            biased: also run the biased branch with this bias-only audio (``mute``, ``noise``, ``ddpm``,
                ``random_semantic``); its outputs are under ``"biased"``.
            marker_scores: ``[N,S]`` markers to use instead of the perception module's (e.g. the paper's
                marker files, :class:`coavs.data.markers.ReferenceMarkers`).
            class_presence: ``[N,C]`` ground-truth class presence for teacher forcing (training).
            clip_index: ``[N]`` the clip of each frame: the ``random_semantic`` biased branch takes its audio from
                another clip (default: every frame is its own clip).

        Returns a dict: ``pred_logits [N,Q,K+1]``, ``pred_masks [N,Q,H/4,W/4]``, ``aux_outputs`` (the same two
        keys for the initial queries and every layer but the last), ``active [N,Q]``, ``gate [N,Q]``,
        ``query_marker [Q]``, ``marker_scores [N,S]``, ``audio_logits [N,C]`` (None without a classifier),
        ``audio_embedding [N,D]`` (what the gate's sounding probe reads) and,
        with ``biased``, ``"biased"``: the biased branch's ``pred_logits``, ``pred_masks``, ``aux_outputs``.
        """
        self._check_inputs(frames, audio, biased, marker_scores, class_presence)
        embedding = self.prompt_encoder(audio)
        audio_logits = None
        if marker_scores is None:
            perceived = self.perceive(embedding, audio, class_presence)
            marker_scores, audio_logits = perceived.scores, perceived.class_logits
        assigned = self.assign(marker_scores, embedding)
        queries, active, branches = assigned.queries, assigned.active, 1
        biased_assigned = None
        if biased is not None:
            biased_assigned = self.biased_assignment(biased, audio, embedding, marker_scores, clip_index)
            queries = torch.cat([queries, biased_assigned.queries], dim=1)
            active = torch.cat([active, biased_assigned.active], dim=1)
            branches = 2

        predictions = self.decode(queries, active, branches, self.image_features(frames))

        q = self.config.queries
        outputs = _branch(predictions, slice(0, q))
        outputs.update(active=assigned.active, gate=assigned.gate, query_marker=assigned.query_marker,
                       marker_scores=marker_scores, audio_logits=audio_logits, audio_embedding=embedding)
        if biased is not None:
            outputs["biased"] = _branch(predictions, slice(q, 2 * q))
            outputs["biased"].update(active=biased_assigned.active, gate=biased_assigned.gate)
        return outputs

    def biased_assignment(self, kind: str, audio: Tensor, embedding: Tensor | None = None,
                          marker_scores: Tensor | None = None, clip_index: Tensor | None = None):
        """The biased branch's prompted queries (``queries [N,Q,D]``, ``gate``, ``active``, ``query_marker``, as
        :func:`coavs.ops.assign_queries`) for bias-only audio ``kind`` — everything the branch receives besides
        the image features. ``embedding``/``marker_scores``: the vanilla branch's (computed when None; only the
        ``shared`` ablation reads the markers, and only ``random_semantic`` reads embeddings, of other clips)."""
        c = self.config
        if embedding is None:
            embedding = self.prompt_encoder(audio)
        n = embedding.shape[0]
        partner = other_clip_rows(clip_index, n, embedding.device, self.training) if kind == "random_semantic" \
            else None
        noise_input = fixed_noise_input(audio, self.prompt_encoder) if kind == "noise" else None
        bias_only = biased_embedding(kind, embedding, self.prompt_encoder, self.diffusion, partner, noise_input)
        if c.biased_queries == "all":
            return self.assign(torch.ones((n, c.num_markers), device=embedding.device), bias_only)
        if c.biased_queries == "shared":
            if marker_scores is None:
                marker_scores = self.perceive(embedding, audio).scores
            return self.assign(marker_scores, bias_only)
        heard = biased_input(kind, audio, self.prompt_encoder, partner, noise_input)
        return self.assign(self.perceive(bias_only, heard).scores, bias_only)

    def _check_inputs(self, frames, audio, biased, marker_scores, class_presence) -> None:
        if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [N,3,H,W], got "
                             f"{tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__}")
        if not frames.is_floating_point():
            raise TypeError(f"frames must be floating point in [0,1], got {frames.dtype}")
        n = frames.shape[0]
        if not isinstance(audio, Tensor) or audio.shape[0] != n:
            raise ValueError(f"audio must have one entry per frame (N={n}), got "
                             f"{tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__}")
        if hasattr(self.prompt_encoder, "check_input"):
            self.prompt_encoder.check_input(audio)
        if biased is not None and biased not in BIASED_AUDIO:
            raise ValueError(f"biased must be one of {BIASED_AUDIO} or None, got {biased!r}")
        s = self.config.num_markers
        if marker_scores is not None and tuple(marker_scores.shape) != (n, s):
            raise ValueError(f"marker_scores must be [N,S] = [{n},{s}], got {tuple(marker_scores.shape)}")
        c = self.config.num_audio_classes
        if class_presence is not None and tuple(class_presence.shape) != (n, c):
            raise ValueError(f"class_presence must be [N,C] = [{n},{c}], got {tuple(class_presence.shape)}")


def _branch(predictions: list[tuple[Tensor, Tensor]], queries: slice) -> dict:
    """One branch's final outputs and auxiliary outputs from the decoder's per-layer predictions."""
    cls, masks = predictions[-1]
    return {
        "pred_logits": cls[:, queries],
        "pred_masks": masks[:, queries],
        "aux_outputs": [{"pred_logits": c[:, queries], "pred_masks": m[:, queries]} for c, m in predictions[:-1]],
    }
