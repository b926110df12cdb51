"""``ModelConfig``: every size and switch of :class:`coavs.models.AVSModel`, with a CPU and a paper preset.

Marker layout (the "latent semantic markers" of the paper): markers ``0 … C-1`` are the audio classifier's
classes (label values ``1 … C``; label 0 is background), markers ``C … C+M-1`` are the k-means clusters.
``S = C + M`` markers; marker ``s`` owns queries ``s·d … s·d+d-1`` (``d`` = dilation), so ``Q ≥ S·d``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

AUDIO_INPUTS = ("vggish", "logmel", "waveform")
BIASED_QUERIES = ("all", "own", "shared")


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
    # segmenter
    hidden_dim: int = 256  # D (also the audio embedding size)
    num_queries: int | None = 100  # Q
    dilation: int = 1  # d
    num_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    backbone: str = "small_cnn"  # "small_cnn" | "timm:<name>" | "torchvision:<resnet name>"
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)  # small_cnn stage widths (strides 4, 8, 16, 32)
    backbone_weights: str | None = None  # local state-dict file for a timm/torchvision backbone (never downloaded)
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
        """Marker of each label value (``-1`` = none: background and classes without a classifier marker)."""
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
        if self.num_audio_classes > self.num_classes - 1:
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
