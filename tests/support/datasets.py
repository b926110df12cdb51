"""Datasets for tests: a tiny synthetic Co-AVS set (made once per session; fixtures ``synth_root`` and
``synth_copy``, imported by the conftest.py files that use them) and fake AVSBench S4/MS3 layouts."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from coavs.data.synth import SynthConfig, generate

# Small on purpose: every test that reads it decodes a handful of 48x48 frames.
TINY = SynthConfig(num_clips=16, frames_per_clip=3, image_size=48, seed=3, num_distractors=(0, 1),
                   silent_prob=0.3, split_fractions=(0.5, 0.25, 0.25))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A read-only synthetic set; copy it (``synth_copy``) before damaging it."""
    root = tmp_path_factory.mktemp("synth") / "coavs_tiny"
    generate(root, TINY)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(synth_root, dst)
    return dst


def _write_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image.putpalette([0, 0, 0, 128, 0, 0] + [0] * (254 * 3))
    image.save(path)


def _write_wav(path: Path, seconds: float, rate: int = 16000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 3000).astype(np.int16)
    wavfile.write(path, rate, samples)


def _square_mask(size: int, offset: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[offset:offset + size // 2, offset:offset + size // 2] = 1
    return mask


def make_s4(root: Path, size: int = 32) -> Path:
    """An S4 layout with one clip per split (category 'dog_barking'); grey-level masks (0/255)."""
    rows = []
    for k, split in enumerate(("train", "val", "test")):
        name, category = f"clip{k}", "dog_barking"
        rows.append([name, 0, category, split])
        base = root / "s4_data"
        for i in range(1, 6):
            frame = np.full((size, size, 3), 40 * i, dtype=np.uint8)
            _write_png(base / "visual_frames" / split / category / name / f"{name}_{i}.png", frame)
            if split != "train" or i == 1:
                _write_png(base / "gt_masks" / split / category / name / f"{name}_{i}.png", _square_mask(size, i) * 255)
        _write_wav(base / "audio_wav" / split / category / f"{name}.wav", 5.0, seed=k)
    with open(root / "s4_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "start_time", "category", "split"])
        writer.writerows(rows)
    return root


def make_ms3(root: Path, size: int = 32) -> Path:
    """An MS3 layout with two train clips; palette masks (index 0/1), audio at 22.05 kHz."""
    rows = []
    for k in range(2):
        name = f"multi{k}"
        rows.append([name, "train"])
        base = root / "ms3_data"
        for i in range(1, 6):
            _write_png(base / "visual_frames" / name / f"{name}.mp4_{i}.png",
                       np.full((size, size, 3), 30 * i, dtype=np.uint8))
            _write_png(base / "gt_masks" / "train" / name / f"{name}_{i}.png", _square_mask(size, i), palette=True)
        _write_wav(base / "audio_wav" / "train" / f"{name}.wav", 5.0, rate=22050, seed=k)
    with open(root / "ms3_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "split"])
        writer.writerows(rows)
    return root
