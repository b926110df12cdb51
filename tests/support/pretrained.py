"""Random-weight pretrained files in their public formats, written into temporary folders (nothing is
downloaded): VGGish's two PyTorch files, and tiny transformers audio models saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coavs.models.vggish import VGGish


def write_vggish_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """``vggish-10086976.pth`` (a state dict by parameter name) and ``vggish_pca_params-970ea276.pth`` (NumPy
    arrays ``pca_eigen_vectors [128,128]``, ``pca_means [128,1]``) as the public files are: torch's legacy
    (pre-zip) format, the PCA arrays pickled under NumPy 1's module name ``numpy.core``. Weights are scaled so
    that the PCA output spans the quantizer's [-2, 2] range and beyond."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in VGGish().state_dict().items():
        fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
        scale = (2.0 / fan_in) ** 0.5 if tensor.dim() > 1 else 0.01
        state[name] = torch.randn(tensor.shape, generator=gen) * scale
    weights = folder / "vggish-10086976.pth"
    torch.save(state, weights, _use_new_zipfile_serialization=False)
    rng = np.random.default_rng(seed)
    pca = {"pca_eigen_vectors": rng.standard_normal((128, 128)) * 0.05, "pca_means": rng.random((128, 1)) * 0.5}
    pca_path = folder / "vggish_pca_params-970ea276.pth"
    torch.save(pca, pca_path, _use_new_zipfile_serialization=False)
    raw = pca_path.read_bytes()
    pca_path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    return weights, pca_path


def write_tiny_ast(folder: Path, labels: list[str], seed: int = 0) -> Path:
    """A random-weight AST audio classifier (``ASTForAudioClassification``) and its feature extractor, saved with
    ``save_pretrained``: 2 layers of width 32, 16 mel bins, 1.28 s of input."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=16, max_length=128, patch_size=16, frequency_stride=10, time_stride=10,
                       id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    ASTForAudioClassification(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=128).save_pretrained(folder)
    return folder


def write_tiny_hubert(folder: Path, seed: int = 0) -> Path:
    """A random-weight HuBERT (``HubertModel``, 3 layers of width 32, 320-sample frames) and its feature
    extractor, saved with ``save_pretrained``."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder
