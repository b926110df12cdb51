"""Precomputed per-clip marker files in the paper's reference layout, read for training and evaluation.

The reference code (GeWu-Lab/bias_in_AVS) loads, per clip, ``<folder>/<vid>.pth`` (its README: the output of its
audio classifier thresholded at 0.4 and of HuBERT k-means, e.g. ``preprocess/classification_avs/threshold_0.4/``)
and turns it into a multi-hot vector per frame over the query slots. ``coavs markers`` writes the same layout:

    <folder>/<uid>.pth     a list of T long tensors: frame t's marker ids (class markers 0 … C-1 whose probability
                           is >= the threshold, then C + its cluster id)
    <folder>/markers.json  the marker layout (num_classes C, num_clusters M, threshold, class names, models)
    <folder>/silence.pth, noise.pth   one frame's ids for a silent and a white-noise second (the bias metrics)

The marker space is coavs's (``ModelConfig``): markers ``0 … C-1`` are the dataset's classes 1 … C, markers
``C … C+M-1`` the clusters. Files without ``markers.json`` (made by other tools) are read as well; the model's
``num_audio_classes + num_clusters`` then says how wide they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from coavs import jsonio
from coavs.data.errors import DataError

MARKER_INFO = "markers.json"
MARKER_INFO_FORMAT = "coavs-markers"
CONDITIONS = ("silence", "noise")  # negative-audio conditions whose markers a folder may hold


def markers_from_reference(data, num_markers: int) -> Tensor:
    """The content of one per-clip marker file → scores ``[T,S]`` in [0,1]. Accepted forms:

    - a float tensor ``[T,S']`` of scores or probabilities (``S' ≤ S``; padded with zeros);
    - an integer tensor ``[T]`` (one cluster/class id per frame) → one-hot;
    - an integer tensor ``[T,n]`` or a list of per-frame id lists/tensors → multi-hot (repeated ids and
      negative padding ids are ignored).
    """
    if isinstance(data, (list, tuple)):
        rows = [_multi_hot(torch.as_tensor(frame).long().flatten(), num_markers) for frame in data]
        if not rows:
            raise ValueError("marker file holds no frames")
        return torch.stack(rows)
    if not isinstance(data, Tensor):
        raise ValueError(f"marker file must hold a tensor or a list of per-frame ids, got {type(data).__name__}")
    if data.is_floating_point():
        if data.dim() != 2:
            raise ValueError(f"a float marker tensor must be [T,S], got {tuple(data.shape)}")
        if data.shape[1] > num_markers:
            raise ValueError(f"marker file has {data.shape[1]} markers per frame, the model has {num_markers}")
        if data.min() < 0 or data.max() > 1:
            raise ValueError("float marker scores must lie in [0, 1] (probabilities); apply sigmoid/softmax first")
        return F.pad(data.float(), (0, num_markers - data.shape[1]))
    if data.dim() == 1:
        return _multi_hot_rows(data.long()[:, None], num_markers)
    if data.dim() == 2:
        return _multi_hot_rows(data.long(), num_markers)
    raise ValueError(f"an integer marker tensor must be [T] or [T,n], got {tuple(data.shape)}")


def _multi_hot(ids: Tensor, num_markers: int) -> Tensor:
    ids = ids[ids >= 0]
    if ids.numel() and ids.max() >= num_markers:
        raise ValueError(f"marker id {int(ids.max())} is out of range for {num_markers} markers")
    row = torch.zeros(num_markers)
    row[ids] = 1.0
    return row


def _multi_hot_rows(ids: Tensor, num_markers: int) -> Tensor:
    return torch.stack([_multi_hot(r, num_markers) for r in ids])


def load_reference_markers(path: str | os.PathLike, num_markers: int) -> Tensor:
    """One per-clip marker file (``<vid>.pth``) → ``[T,S]``; see :func:`markers_from_reference`. Raises
    :class:`DataError` naming the file when it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing marker file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return markers_from_reference(data, num_markers)
    except ValueError as exc:
        raise DataError(path, f"bad marker file ({exc})") from None
    except Exception as exc:  # torch.load raises many types for damaged files
        raise DataError(path, f"unreadable marker file ({type(exc).__name__}: {exc})") from None


def read_marker_info(folder: str | os.PathLike) -> dict | None:
    """``<folder>/markers.json`` (written by ``coavs markers``), or None when the folder has none."""
    path = Path(folder) / MARKER_INFO
    if not path.is_file():
        return None
    info = jsonio.read_json(path, "marker info", error=DataError)
    if not isinstance(info, dict) or info.get("format") != MARKER_INFO_FORMAT or not all(
            isinstance(info.get(k), int) and info[k] >= 0 for k in ("num_classes", "num_clusters")):
        raise DataError(path, "not a coavs marker description (format coavs-markers with num_classes and "
                              "num_clusters)")
    return info


class ReferenceMarkers:
    """A folder of per-clip marker files (``<folder>/<uid>.pth``), read on demand and kept in memory.

    ``markers(uid)`` → ``[T,S]``; ``markers.condition("silence")`` → ``[1,S]`` (the folder's ``silence.pth``);
    pass a batch's rows to ``AVSModel.forward(marker_scores=…)``. ``num_markers`` None: the width in
    ``markers.json``."""

    def __init__(self, folder: str | os.PathLike, num_markers: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(self.folder, "marker folder does not exist (write it with `coavs markers`)")
        self.info = read_marker_info(self.folder)
        if num_markers is None:
            if self.info is None:
                raise DataError(self.folder, f"no {MARKER_INFO}: give the number of markers (the model's "
                                             "num_audio_classes + num_clusters)")
            num_markers = self.info["num_classes"] + self.info["num_clusters"]
        self.num_markers = num_markers
        self._cache: dict[str, Tensor] = {}

    def __call__(self, uid: str) -> Tensor:
        if uid not in self._cache:
            self._cache[uid] = load_reference_markers(self.folder / f"{uid}.pth", self.num_markers)
        return self._cache[uid]

    def condition(self, name: str) -> Tensor:
        """The markers of a negative-audio condition (``silence`` or ``noise``), ``[1,S]``."""
        if name not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {name!r}")
        key = f"<{name}>"
        if key not in self._cache:
            self._cache[key] = load_reference_markers(self.folder / f"{name}.pth", self.num_markers)[:1]
        return self._cache[key]


__all__ = ["CONDITIONS", "MARKER_INFO", "ReferenceMarkers", "load_reference_markers", "markers_from_reference",
           "read_marker_info"]
