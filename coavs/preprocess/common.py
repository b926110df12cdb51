"""What ``coavs features`` and ``coavs markers`` share: the clips of a dataset, one clip's audio at 16 kHz, an
output folder with a manifest that says how its files were made (so a rerun resumes, and a rerun with other
weights or settings is refused instead of mixing files), and atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from coavs import jsonio
from coavs.audio_spec import SAMPLE_RATE
from coavs.data.audio import read_wav
from coavs.data.avsbench import SPLITS, ClipRecord, read_records
from coavs.errors import UserError


def dataset_clips(root, split: str | None = None, kind: str = "auto") -> tuple[str, list[ClipRecord]]:
    """(layout, the clips of ``split`` or of every split) of the dataset at ``root``, each uid once."""
    if split is not None and split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    layout, records = read_records(root, kind, split=split)
    if not records:
        raise UserError(f"{root}: no clips{f' in the {split} split' if split else ''}")
    seen: dict[str, ClipRecord] = {}
    for record in records:
        other = seen.setdefault(record.uid, record)
        if other is not record and other.audio_path != record.audio_path:
            raise UserError(f"{root}: clip id {record.uid!r} is listed twice with different audio ({other.source}; "
                            f"{record.source}); per-clip files are named by clip id")
    return layout, list(seen.values())


# resampy's ``kaiser_best`` filter (what the original VGGish pipeline resamples with): 64 zero crossings, roll-off
# at 0.9476 of the lower Nyquist, Kaiser window beta 14.77; torchaudio computes the same windowed sinc exactly
# (resampy interpolates a table). docs/features_and_markers.md gives the measured difference.
KAISER_BEST = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                   beta=14.769656459379492)


def resample_like_resampy(samples, rate: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """``[N]`` at ``rate`` → float32 at ``target`` Hz with :data:`KAISER_BEST` (float64 inside)."""
    wave = torch.as_tensor(samples, dtype=torch.float64)
    if rate == target:
        return wave.float()
    import torchaudio.functional as AF

    return AF.resample(wave, int(rate), int(target), **KAISER_BEST).float()


def clip_audio(record: ClipRecord) -> torch.Tensor:
    """The clip's whole wav as mono float32 samples at 16 kHz ``[N]`` (channels averaged; other rates resampled
    with resampy's ``kaiser_best`` filter, :func:`resample_like_resampy`)."""
    samples, rate = read_wav(record.audio_path)
    return resample_like_resampy(samples, rate)


def fit_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``[T,...]`` cut to ``count`` rows, or padded by repeating the last row (AVSBench's rule for short clips)."""
    if rows.shape[0] >= count:
        return rows[:count]
    return torch.cat([rows, rows[-1:].expand(count - rows.shape[0], *rows.shape[1:])])


def file_identity(path) -> dict:
    """Name, size and SHA-256 of a weight file (what a manifest records about it)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def folder_identity(folder) -> dict:
    """The identity of a ``save_pretrained`` folder: its config and weight files (name, size, SHA-256)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin")))
    return {"name": folder.name, "files": {p.name: file_identity(p)["sha256"][:16] for p in files}}


def open_output(out, manifest_name: str, manifest: dict, overwrite: bool) -> Path:
    """Create ``out`` (or reuse it) and write ``manifest`` there. An existing manifest that differs from
    ``manifest`` (files made by other weights or settings) is a :class:`UserError` unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    path = out / manifest_name
    old = None
    if path.is_file():
        try:
            old = jsonio.read_json(path, "manifest")
        except UserError:
            old = None  # an unreadable manifest counts as one made with other settings
        if old != manifest and not overwrite:
            old = old if isinstance(old, dict) else {}
            changed = ", ".join(sorted(k for k in set(manifest) | set(old) if old.get(k) != manifest.get(k)))
            raise UserError(f"{out} holds files made with other weights or settings ({changed or manifest_name}); "
                            "use --overwrite to replace them, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    if old != manifest:
        jsonio.write_json(path, manifest, indent=1)
    return out


def write_atomic(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``: a killed run never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    write_atomic(path, write)


def save_torch(path: Path, data) -> None:
    write_atomic(path, lambda tmp: torch.save(data, tmp))


__all__ = ["KAISER_BEST", "clip_audio", "dataset_clips", "file_identity", "fit_rows", "folder_identity", "open_output",
           "resample_like_resampy", "save_npy", "save_torch", "write_atomic"]
