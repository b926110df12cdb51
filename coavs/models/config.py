"""``ModelConfig``: every size and switch of :class:`coavs.models.AVSModel`, with a CPU and a paper preset.

Marker layout (the "latent semantic markers" of the paper): markers ``0 … C-1`` are the audio classifier's
classes, markers ``C … C+M-1`` the k-means clusters. ``S = C + M`` markers; marker ``s`` owns queries
``s·d … s·d+d-1`` (``d`` = dilation), so ``Q ≥ S·d``.

Which queries a ground truth may be matched to (``target_markers``):

- ``class`` (semantic AVS): class marker ``c−1`` is the classifier's score for label value ``c`` (label 0 is
  background), and a ground truth of class ``c`` goes only to the ``d`` queries of marker ``c−1``;
- ``any`` (binary AVS, S4/MS3; the reference code's choice of ``C`` classes + 1 cluster): the markers are not the
  segmentation classes, so the foreground may go to any *active* query, the queries of whichever class and
  cluster markers the audio switched on. The learned classifier of a binary run has ``C = 1`` marker (is anything
  sounding); precomputed marker files (the reference code's BEATs classes) bring their own ``C``.

Segmenters (``segmenter``): ``own`` (coavs's backbone → FPN pixel decoder → transformer decoder, CPU presets) or
``hf_mask2former`` (transformers' ``Mask2FormerForUniversalSegmentation`` from the local ``save_pretrained``
folder ``checkpoint``; :mod:`coavs.models.hf_mask2former`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

AUDIO_INPUTS = ("vggish", "logmel", "waveform")
BIASED_QUERIES = ("all", "own", "shared")
SEGMENTERS = ("own", "hf_mask2former")
TARGET_MARKERS = ("class", "any")
FREEZABLE = ("backbone", "pixel_decoder", "decoder")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Sizes and switches of the model. ``num_queries=None`` means exactly ``S·d`` (every query owns a marker)."""

    # task
    num_classes: int = 71  # K: label values 0 … K-1 (0 = background); K+1 class logits (last = no object)
    # audio / prompt
    audio_input: str = "vggish"  # "vggish" [N,128] | "logmel" [N,1,96,64] | "waveform" [N,16000] at 16 kHz
    audio_channels: tuple[int, ...] = (32, 64, 128)  # widths of the log-mel CNN
    # perception (markers)
    num_audio_classes: int = 70  # C: classifier markers for label values 1 … C (0 = no classifier)
    num_clusters: int = 30  # M: k-means markers (0 = none); fitted with `coavs fit-markers`
    marker_threshold: float = 0.4
    dormant_gate: float = 0.0
    soft_gate: bool = False
    target_markers: str = "class"  # "class" (semantic AVS) | "any" (binary AVS): see the module docstring
    # segmenter
    segmenter: str = "own"  # "own" | "hf_mask2former" (see the module docstring)
    checkpoint: str | None = None  # hf_mask2former: the local save_pretrained folder (never downloaded)
    hf_config: dict | None = None  # hf_mask2former: the checkpoint's config.json, filled when a run starts
    freeze: tuple[str, ...] = ()  # parts that do not train: any of "backbone", "pixel_decoder", "decoder"
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN  # frame normalisation (hf_mask2former: the checkpoint's
    pixel_std: tuple[float, ...] = IMAGENET_STD  # image processor's image_mean / image_std)
    hidden_dim: int = 256  # D (also the audio embedding size)
    num_queries: int | None = 100  # Q
    dilation: int = 1  # d
    num_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    backbone: str = "small_cnn"  # "small_cnn" | "timm:<name>" | "torchvision:<resnet name>"
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)  # small_cnn stage widths (strides 4, 8, 16, 32)
    backbone_weights: str | None = None  # local weight file of a timm/torchvision backbone (never downloaded)
    backbone_kwargs: dict | None = None  # extra timm.create_model arguments (e.g. img_size)
    pixel_decoder_layers: int = 1  # transformer-encoder layers on the coarsest feature level
    # biased branch
    diffusion_steps: int = 100  # `ddpm` biased audio: betas linspace(1e-4, 0.02, steps) rescaled to ᾱ_T = 0
    # the biased branch's markers, active queries and gates (coavs/models/biased.py): "all" every marker-owned
    # query active (gate 1) whatever the audio; "own" perceived from the bias-only audio; "shared" the vanilla
    # branch's (the pre-D.2 behaviour, not audio-free; kept as an ablation)
    biased_queries: str = "all"

    def __post_init__(self):
        self.audio_channels = tuple(self.audio_channels)
        self.backbone_widths = tuple(self.backbone_widths)
        self.freeze = tuple(self.freeze)
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        self.validate()

    # ------------------------------------------------------------------------------------------ derived
    @property
    def num_markers(self) -> int:
        """S = C + M."""
        return self.num_audio_classes + self.num_clusters

    @property
    def queries(self) -> int:
        """Q, with ``num_queries=None`` resolved to ``S·d``."""
        return self.num_queries if self.num_queries is not None else self.num_markers * self.dilation

    def class_to_marker(self) -> list[int]:
        """Marker of each label value (``-1`` = any active query: background, classes without a classifier marker,
        and every class under ``target_markers="any"``)."""
        if self.target_markers == "any":
            return [-1] * self.num_classes
        return [c - 1 if 1 <= c <= self.num_audio_classes else -1 for c in range(self.num_classes)]

    def validate(self) -> None:
        def positive(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")

        for name in ("num_classes", "hidden_dim", "dilation", "num_layers", "num_heads", "ffn_dim",
                     "diffusion_steps"):
            positive(name)
        for name in ("num_audio_classes", "num_clusters", "pixel_decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ModelConfig.{name} must be an int >= 0, got {value!r}")
        if self.audio_input not in AUDIO_INPUTS:
            raise ValueError(f"ModelConfig.audio_input must be one of {AUDIO_INPUTS}, got {self.audio_input!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"ModelConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.hidden_dim % 4:
            raise ValueError(f"ModelConfig.hidden_dim must be divisible by 4 (2-D sine positions), got "
                             f"{self.hidden_dim}")
        if self.target_markers not in TARGET_MARKERS:
            raise ValueError(f"ModelConfig.target_markers must be one of {TARGET_MARKERS}, got {self.target_markers!r}")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"ModelConfig.segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if self.segmenter == "hf_mask2former" and not self.checkpoint and self.hf_config is None:
            raise ValueError("ModelConfig.segmenter hf_mask2former needs checkpoint: the folder of a Mask2Former "
                             "saved with save_pretrained (e.g. facebook/mask2former-swin-base-ade-semantic)")
        bad = [part for part in self.freeze if part not in FREEZABLE]
        if bad:
            raise ValueError(f"ModelConfig.freeze takes parts among {FREEZABLE}, got {bad}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(f"ModelConfig.pixel_mean and pixel_std need 3 values each (std > 0), got "
                             f"{self.pixel_mean}, {self.pixel_std}")
        if self.num_audio_classes > self.num_classes - 1:  # a learned classifier learns from the labels
            raise ValueError(f"ModelConfig.num_audio_classes ({self.num_audio_classes}) can cover at most the "
                             f"num_classes - 1 = {self.num_classes - 1} non-background classes")
        if self.num_markers < 1:
            raise ValueError("ModelConfig needs at least one marker: num_audio_classes + num_clusters >= 1")
        if self.num_queries is not None:
            positive("num_queries")
            if self.num_markers * self.dilation > self.num_queries:
                raise ValueError(f"ModelConfig: S·d = ({self.num_audio_classes} classes + {self.num_clusters} "
                                 f"clusters)·{self.dilation} = {self.num_markers * self.dilation} exceeds "
                                 f"num_queries = {self.num_queries}")
        if not 0.0 <= self.marker_threshold <= 1.0:
            raise ValueError(f"ModelConfig.marker_threshold must be in [0, 1], got {self.marker_threshold}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if len(self.backbone_widths) != 4 or any(w < 1 for w in self.backbone_widths):
            raise ValueError(f"ModelConfig.backbone_widths needs 4 positive widths, got {self.backbone_widths}")
        if self.biased_queries not in BIASED_QUERIES:
            raise ValueError(f"ModelConfig.biased_queries must be one of {BIASED_QUERIES}, got {self.biased_queries!r}")
        if not self.audio_channels or any(c < 1 for c in self.audio_channels):
            raise ValueError(f"ModelConfig.audio_channels needs positive widths, got {self.audio_channels}")

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def small(cls, **overrides) -> "ModelConfig":
        """A CPU preset that trains in minutes: D=64, 3 decoder layers, 6 classes (bg + 5), 3 clusters, d=2."""
        base = dict(num_classes=6, num_audio_classes=5, num_clusters=3, dilation=2, num_queries=None,
                    hidden_dim=64, num_layers=3, num_heads=4, ffn_dim=128, audio_channels=(8, 16, 32),
                    backbone_widths=(16, 32, 64, 128), pixel_decoder_layers=0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper(cls, **overrides) -> "ModelConfig":
        """The paper's decoder (Mask2Former: D=256, 9 layers, 8 heads, FFN 2048) on AVSS (K=71), with the simple
        dilation of supplementary B.1 at d = 2 (its Figure B3): each of the S = 70 + 30 = 100 markers owns two
        queries, so Q = S·d = 200 (Mask2Former's Q = 100 would leave room for d = 1 only)."""
        base = dict(num_classes=71, num_audio_classes=70, num_clusters=30, dilation=2, num_queries=None,
                    hidden_dim=256, num_layers=9, num_heads=8, ffn_dim=2048)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        return cls(**data)
