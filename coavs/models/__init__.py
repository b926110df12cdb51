"""The model layer: audio encoder → perception (markers) → query assignment; image backbone → pixel decoder →
transformer decoder (masked cross-attention) → heads; and the batched biased branch. Calls only ``coavs.ops``."""

from coavs.models.audio import AudioEncoder, LogMel, LogMelCNN, VGGishMLP
from coavs.models.avs_model import AVSModel
from coavs.models.backbone import SmallCNN, build_backbone
from coavs.models.biased import BIASED_AUDIO, DiffusionSchedule, biased_embedding
from coavs.models.config import ModelConfig
from coavs.models.decoder import TransformerDecoder
from coavs.models.perception import KMeansFit, Perception, fit_kmeans, load_kmeans, save_kmeans
from coavs.models.pixel_decoder import PixelDecoder
from coavs.models.text import BagOfWordsEncoder

__all__ = [
    "AVSModel", "AudioEncoder", "BIASED_AUDIO", "BagOfWordsEncoder", "DiffusionSchedule", "KMeansFit", "LogMel",
    "LogMelCNN", "ModelConfig", "Perception", "PixelDecoder", "SmallCNN", "TransformerDecoder", "VGGishMLP",
    "biased_embedding", "build_backbone", "fit_kmeans", "load_kmeans", "save_kmeans",
]
