"""Tiny stand-ins for what a researcher downloads, written in the public formats, so the paper's configs run end to
end without a download: AVSBench S4, MS3 and AVSS folders in their released layouts (frames, masks, wavs,
metadata), VGGish feature files (``<uid>.npy``, ``[T,128]``, random until ``coavs features`` lands), a random-weight
Mask2Former written with ``save_pretrained`` together with its image processor, and timm / torchvision state
dicts of the classification models (the files those libraries publish)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile

from coavs.data.avsbench import AVSS_NUM_CLASSES, palette

SIZE = 32  # frame side of the tiny layouts
IMAGE_SIZE = 64  # the tiny Mask2Former's image processor size (frames are resized to it)
HIDDEN = 32  # the tiny Mask2Former's hidden_dim
QUERIES = 12  # the tiny Mask2Former's num_queries


def _frame(path: Path, seed: int, size: int = SIZE, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, fmt)


def _blob(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=bool)
    y, x = rng.integers(0, size // 2, 2)
    mask[y:y + size // 2, x:x + size // 2] = True
    return mask


def _wav(path: Path, seconds: int, seed: int, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(seed).standard_normal(seconds * rate) * 2000).astype(np.int16)
    wavfile.write(path, rate, samples)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


SPLIT_CLIPS = {"train": 3, "val": 1, "test": 2}


def make_released_s4(root: Path) -> Path:
    """``Single-source/``: ``s4_meta_data.csv``, ``s4_data/{visual_frames,gt_masks,audio_wav}/<split>/<category>/``;
    grey masks (0/255), train clips annotate frame 1 only. Returns ``root``."""
    rows, seed = [], 0
    for split, count in SPLIT_CLIPS.items():
        for k in range(count):
            name, category = f"s4{split}{k}", ("dog_barking", "playing_violin")[k % 2]
            rows.append([name, 0, category, split])
            base = root / "s4_data"
            for i in range(1, 6):
                seed += 1
                _frame(base / "visual_frames" / split / category / name / f"{name}_{i}.png", seed)
                if split != "train" or i == 1:
                    mask = base / "gt_masks" / split / category / name / f"{name}_{i}.png"
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_blob(SIZE, seed).astype(np.uint8) * 255).save(mask)
            _wav(base / "audio_wav" / split / category / f"{name}.wav", 5, seed)
    _csv(root / "s4_meta_data.csv", ["name", "start_time", "category", "split"], rows)
    return root


def make_released_ms3(root: Path) -> Path:
    """``Multi-sources/``: ``ms3_meta_data.csv``, ``ms3_data/visual_frames/<name>/<name>.mp4_{1..5}.png``,
    ``gt_masks/<split>/<name>/`` (palette PNGs, index 0/1; all five frames annotated), ``audio_wav/<split>/``."""
    rows, seed = [], 100
    for split, count in SPLIT_CLIPS.items():
        for k in range(count):
            name = f"ms3{split}{k}"
            rows.append([name, split])
            base = root / "ms3_data"
            for i in range(1, 6):
                seed += 1
                _frame(base / "visual_frames" / name / f"{name}.mp4_{i}.png", seed)
                mask = base / "gt_masks" / split / name / f"{name}_{i}.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(_blob(SIZE, seed).astype(np.uint8), mode="P")
                image.putpalette([0, 0, 0, 128, 0, 0] + [0] * (254 * 3))
                image.save(mask)
            _wav(base / "audio_wav" / split / f"{name}.wav", 5, seed)
    _csv(root / "ms3_meta_data.csv", ["video_id", "split"], rows)
    return root


AVSS_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


def make_released_avss(root: Path) -> Path:
    """``AVSBench_semantic/``: ``metadata.csv`` (vid, uid, s_min, s_sec, a_obj, split, label), the 71-class
    ``label2idx.json`` (background = 1; the other names are placeholders), and per clip ``<label>/<uid>/frames/{i}.jpg``,
    ``audio.wav`` and ``labels_rgb/{i}.png`` (VOC-palette colour masks; v1s train clips annotate frame 0 only)."""
    names = ["background"] + [f"class_{j:02d}" for j in range(1, AVSS_NUM_CLASSES)]
    (root / "label2idx.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "label2idx.json").write_text(json.dumps({name: i + 1 for i, name in enumerate(names)}))
    colours = palette(256)
    rows, seed = [], 200
    for label, frames in AVSS_FRAMES.items():
        for split, count in SPLIT_CLIPS.items():
            for k in range(count if label == "v2" else 1):
                uid = f"{label}{split}{k}"
                seed += 1
                cls = 1 + seed % (AVSS_NUM_CLASSES - 1)
                rows.append([uid[:-1], uid, 0, frames, names[cls], split, label])
                clip = root / label / uid
                for i in range(frames):
                    _frame(clip / "frames" / f"{i}.jpg", seed * 10 + i, fmt="JPEG")
                    if label == "v1s" and split == "train" and i > 0:
                        continue
                    index = np.where(_blob(SIZE, seed * 10 + i), cls, 0)
                    mask = clip / "labels_rgb" / f"{i}.png"
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(colours[index]).save(mask)
                _wav(clip / "audio.wav", frames, seed)
    _csv(root / "metadata.csv", ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"], rows)
    return root


def write_vggish(folder: Path, uids: list[str], seconds: int = 10, seed: int = 0) -> Path:
    """Random ``<uid>.npy`` ``[T,128]`` float32 files where ``coavs features`` will write VGGish embeddings."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for uid in uids:
        np.save(folder / f"{uid}.npy", rng.standard_normal((seconds, 128)).astype(np.float32))
    return folder


def write_tiny_mask2former(folder: Path, num_labels: int = 150) -> Path:
    """A random-weight Mask2Former (tiny Swin backbone, ``hidden_dim`` 32, 12 queries, ADE20k's 150 labels by
    default) and its image processor (64×64, ImageNet mean/std), both through ``save_pretrained``."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    backbone = SwinConfig(image_size=IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, hidden_dim=HIDDEN, num_queries=QUERIES, decoder_layers=4,
                               feature_size=HIDDEN, mask_feature_size=HIDDEN, encoder_layers=1,
                               encoder_feedforward_dim=32, dim_feedforward=64, num_attention_heads=4,
                               num_labels=num_labels, common_stride=4)
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.485, 0.456, 0.406],
                              image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def write_timm_weights(path: Path, name: str, **kwargs) -> Path:
    """The state dict of timm's classification model ``name`` (random weights), as timm publishes weight files."""
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model(name, pretrained=False, **kwargs).state_dict(), path)
    return path


def write_torchvision_weights(path: Path, name: str = "resnet50") -> Path:
    """The state dict of torchvision's ``name`` (random weights), the format of torchvision's ``resnet50-*.pth``."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return path
