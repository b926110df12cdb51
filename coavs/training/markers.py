"""``coavs fit-markers``: fit the k-means latent semantic markers on a training set's audio descriptors (and, for
a training run, :func:`install_markers`).

Descriptors (what :meth:`AudioEncoder.descriptor` computes at run time, so train-time clusters and run-time
assignment agree):
- ``logmel_stats`` (models with ``audio_input`` ``logmel``/``waveform``): each second of each training clip's
  ``audio.wav`` → VGGish-style log-mel → per-band mean and std over time, ``[128]``;
- ``vggish`` (models with ``audio_input`` ``vggish``): the 128-d vectors of AVSBench's VGGish feature files,
  one ``<uid>.npy`` (``[T,128]``) per clip.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from coavs.data.audio import load_seconds, log_mel
from coavs.data.avsbench import read_records
from coavs.data.dataset import read_vggish_features
from coavs.errors import ConfigError
from coavs.models.audio import logmel_stats
from coavs.models.perception import KMeansFit, fit_kmeans, save_kmeans
from coavs.training import distributed as dist_utils


def descriptors_from_dataset(root, split: str = "train", progress: bool = False) -> tuple[Tensor, int]:
    """``logmel_stats`` of every second of every clip of ``split`` → ``([M,128], number of clips)``."""
    _, records = read_records(root, split=split)
    if not records:
        raise ValueError(f"no {split} clips found in {root}")
    rows = []
    iterator = records
    if progress:
        iterator = tqdm(records, desc="audio descriptors", unit="clip")
    for record in iterator:
        seconds = load_seconds(record.audio_path, record.num_frames)
        rows.append(logmel_stats(log_mel(seconds)))
    return torch.cat(rows), len(records)


def descriptors_from_vggish(folder, uids: list[str] | None = None) -> tuple[Tensor, int]:
    """The 128-d rows of ``<folder>/<uid>.npy`` files (all ``.npy`` files when ``uids`` is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(str(folder))
    paths = sorted(folder.glob("*.npy")) if uids is None else [folder / f"{uid}.npy" for uid in uids]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} VGGish feature files missing in {folder}, e.g. {missing[:3]}")
    if not paths:
        raise ValueError(f"no .npy VGGish feature files in {folder}")
    rows = []
    for path in paths:
        rows.append(torch.from_numpy(read_vggish_features(path)))
    return torch.cat(rows), len(paths)


def fit_markers(out: str | os.PathLike, num_clusters: int, data=None, vggish=None, split: str = "train",
                iters: int = 100, seed: int = 0, progress: bool = False) -> tuple[Path, KMeansFit, int, int]:
    """Fit and save the markers → ``(path, fit, descriptors, clips)``. ``vggish`` (a folder of ``<uid>.npy``)
    selects VGGish descriptors; with ``data`` too, only the uids of that split are read."""
    if data is None and vggish is None:
        raise ValueError("give a dataset folder (--data) or a folder of VGGish feature files (--vggish)")
    if vggish is not None:
        uids = None
        if data is not None:
            uids = [r.uid for r in read_records(data, split=split)[1]]
        features, clips = descriptors_from_vggish(vggish, uids)
        kind = "vggish"
    else:
        features, clips = descriptors_from_dataset(data, split, progress)
        kind = "logmel_stats"
    fit = fit_kmeans(features, num_clusters, iters=iters, seed=seed)
    return save_kmeans(out, fit, kind), fit, features.shape[0], clips


def file_markers(batch: dict, class_presence: Tensor | None = None) -> Tensor | None:
    """The batch's markers from ``data.marker_files`` (``[N,S]``, None without them), with teacher forcing: the
    first ``C`` (class) markers raised to ``class_presence [N,C]`` when given, as the model does for its own."""
    markers = batch.get("markers")
    if markers is None or class_presence is None:
        return markers
    classes = class_presence.shape[1]
    forced = torch.maximum(markers[:, :classes], class_presence.to(markers.dtype))
    return torch.cat([forced, markers[:, classes:]], dim=1)


def install_markers(model, config, model_config, run_root, main: bool) -> None:
    """Loads ``data.markers`` into ``model``: ``fit`` fits them once (main process) into ``<run>/markers.pt``;
    anything else is a markers file."""
    source = config.data.markers
    if source == "fit":
        path = Path(run_root) / "markers.pt"
        if main and not path.is_file():
            d = config.data
            vggish = d.vggish_dir if model_config.audio_input == "vggish" else None
            try:
                fit_markers(path, model_config.num_clusters, data=d.root, vggish=vggish, split=d.split,
                            seed=config.run.seed)
            except ValueError as exc:  # DataError included: no descriptors to fit the markers on
                raise ConfigError(f"data.markers=fit: {exc}") from None
        dist_utils.barrier()
    else:
        path = Path(source)
    try:
        model.load_markers(path)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"data.markers: {exc}") from None
