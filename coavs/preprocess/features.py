"""``coavs features``: per-clip VGGish embeddings ``<out>/<uid>.npy`` (``[T,128]`` float32), the files that
``data.audio: vggish`` reads from ``data.vggish_dir``.

    from coavs.preprocess.features import extract_vggish_features
    summary = extract_vggish_features("AVSBench_semantic", "vggish-10086976.pth", out="vggish")

Each clip's whole wav is read (scipy), resampled to 16 kHz when it is not (torchaudio's sinc interpolation; the
original pipeline uses resampy, see docs/features_and_markers.md for how close that is), turned into VGGish
examples and embedded (:mod:`coavs.models.vggish`). A clip gets exactly as many rows as it has frames: the first
``T`` examples, or, for audio shorter than ``T`` examples, the last row repeated (as AVSBench's preprocessing
pads S4/MS3 clips). Audio shorter than one example (0.975 s) is padded with silence to one example.

Resumable: ``<out>/vggish.json`` records the weight files and settings; a rerun skips the clips whose file is
already there (each file is written whole, under a temporary name, then renamed), and a rerun with other weights
is refused unless ``overwrite``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from coavs.errors import UserError
from coavs.models.vggish import EMBEDDING_DIM, EXAMPLE_SAMPLES, load_vggish
from coavs.preprocess.common import clip_audio, dataset_clips, file_identity, fit_rows, open_output, save_npy
from coavs.progress import progress_bar

MANIFEST = "vggish.json"
MANIFEST_FORMAT = "coavs-vggish-features"


def default_output(root, pca: bool) -> Path:
    """``<root>/vggish`` (raw embeddings) or ``<root>/vggish_pca`` (postprocessed)."""
    return Path(root) / ("vggish_pca" if pca else "vggish")


def clip_embeddings(model, record) -> np.ndarray:
    """``[T,128]`` float32 for one clip (``T`` = its frames); see the module docstring."""
    wave = clip_audio(record)
    if wave.numel() < EXAMPLE_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, EXAMPLE_SAMPLES - wave.numel()))
    rows = model.embed(wave)
    return fit_rows(rows, record.num_frames).numpy().astype(np.float32)


def _complete(path: Path, frames: int) -> bool:
    """Whether ``path`` is a finished feature file of ``frames`` rows (read through its header only)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.shape == (frames, EMBEDDING_DIM)


def extract_vggish_features(root, weights, pca=None, out=None, *, kind: str = "auto", split: str | None = None,
                            device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``<out>/<uid>.npy`` for every clip of ``split`` (default: all splits) of the dataset at ``root``.

    ``weights``: ``vggish-10086976.pth``; ``pca``: ``vggish_pca_params-970ea276.pth`` to write the postprocessed
    (PCA + 8-bit) embeddings instead of the raw ones AVSBench's configs use. ``out`` defaults to
    :func:`default_output`. Returns ``{"out", "clips", "written", "skipped", "seconds"}``.
    """
    for path, what in ((weights, "VGGish weights"), (pca, "VGGish PCA")):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{what} file not found: {path} (expected the public "
                            f"{'vggish-10086976.pth' if what == 'VGGish weights' else 'vggish_pca_params-970ea276.pth'}"
                            " there; nothing is downloaded)")
    _, records = dataset_clips(root, split, kind)
    try:
        model = load_vggish(weights, pca, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "weights": file_identity(weights),
                "pca": None if pca is None else file_identity(pca), "postprocess": pca is not None,
                "rows": "one per frame: the first T VGGish examples, the last repeated for short audio"}
    out = open_output(out or default_output(root, pca is not None), MANIFEST, manifest, overwrite)
    written = skipped = 0
    start = time.perf_counter()
    bar = progress_bar(len(records), desc="vggish", unit="clip", disable=not progress)
    try:
        for record in records:
            path = out / f"{record.uid}.npy"
            if not overwrite and _complete(path, record.num_frames):
                skipped += 1
            else:
                save_npy(path, clip_embeddings(model, record))
                written += 1
            bar.update(1)
    finally:
        bar.close()
    return {"out": str(out), "clips": len(records), "written": written, "skipped": skipped,
            "seconds": time.perf_counter() - start}


__all__ = ["MANIFEST", "clip_embeddings", "default_output", "extract_vggish_features"]
