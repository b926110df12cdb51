"""The model layer: audio encoder → perception (markers) → query assignment; image backbone → pixel decoder →
transformer decoder (masked cross-attention) → heads; and the batched biased branch. Calls only ``coavs.ops``."""

from coavs.models.audio import AudioEncoder, LogMel, LogMelCNN, VGGishMLP
from coavs.models.avs_model import AVSModel
from coavs.models.hf_mask2former import HFMask2FormerAVS, read_checkpoint
from coavs.models.backbone import SmallCNN, build_backbone
from coavs.models.biased import BIASED_AUDIO, DiffusionSchedule, biased_embedding
from coavs.models.config import ModelConfig
from coavs.models.decoder import TransformerDecoder
from coavs.models.perception import KMeansFit, Perception, fit_kmeans, load_kmeans, save_kmeans
from coavs.models.pixel_decoder import PixelDecoder
from coavs.models.text import BagOfWordsEncoder



def build_model(config: ModelConfig, prompt_encoder=None, pretrained: bool = True) -> AVSModel:
    """The model of ``config.segmenter``: :class:`AVSModel` (``own``) or :class:`HFMask2FormerAVS`
    (``hf_mask2former``). ``pretrained``: load the configured weight files (backbone weights, the Mask2Former
    checkpoint); False when a coavs checkpoint's weights are loaded next."""
    cls = HFMask2FormerAVS if config.segmenter == "hf_mask2former" else AVSModel
    return cls(config, prompt_encoder, pretrained=pretrained)


__all__ = [
    "AVSModel", "HFMask2FormerAVS", "build_model", "read_checkpoint", "AudioEncoder", "BIASED_AUDIO",
    "BagOfWordsEncoder", "DiffusionSchedule", "KMeansFit", "LogMel", "LogMelCNN", "ModelConfig", "Perception",
    "PixelDecoder", "SmallCNN", "TransformerDecoder", "VGGishMLP", "biased_embedding", "build_backbone", "fit_kmeans",
    "load_kmeans", "save_kmeans",
]
