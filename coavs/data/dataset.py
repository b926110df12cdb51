"""torch Datasets over the AVSBench layouts and the synthetic Co-AVS set.

Each item is a dict (``T`` = frames of the clip, or ``num_frames`` when set; ``K`` = classes incl. background):

- ``frames``: ``[T,3,H,W]`` float32 in [0, 1] (uint8 0..255 with ``uint8_frames=True``, to convert on the GPU);
- ``audio``: ``logmel`` ``[T,1,96,64]`` (VGGish-style, one patch per second), ``waveform`` ``[T,16000]``
  (16 kHz), or ``vggish`` ``[T,128]`` (precomputed embeddings, ``<vggish_dir>/<uid>.npy`` or ``.pt``);
- ``labels``: ``[T,H,W]`` int64 class indices, 0 = background, 255 = not annotated (S4/MS3: 0/1);
- ``annotated``: ``[T]`` bool; ``valid``: ``[T]`` bool (False on padding frames); ``uid``: str; ``index``: int;
- with ``marker_dir`` (precomputed marker files, :mod:`coavs.data.markers`): ``markers`` ``[T,S]`` in [0,1].
- Co-AVS only: ``sounding``, ``visible``, ``silent`` ``[T,K]`` bool: per frame, which classes sound, which have
  visible pixels, and which are visible but silent (the visual-prior cases).

Frame ``t`` goes with second ``t`` of the audio. Padding (``num_frames`` larger than the clip, e.g. 10 for AVSS
v1s/v1m clips of 5 frames) fills frames and waveforms with zeros, log-mels with the log of silence, VGGish rows
with the last row, and labels with 255. With ``cache_dir`` the decoded frames+labels and the audio features are
cached on disk after the first read (:mod:`coavs.data.cache`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from coavs.data import audio as audio_io
from coavs.data.avsbench import (BINARY_LABELS, IGNORE_INDEX, ClipRecord, LabelMap, detect_layout, read_avss_records,
                                 read_frame, read_mask, read_ms3_records, read_s4_records, read_synth_info,
                                 resolve_frame)
from coavs.data.cache import ClipCache, source_signature
from coavs.data.errors import DataError
from coavs.data.markers import ReferenceMarkers

AUDIO_MODES = ("logmel", "waveform", "vggish")
VGGISH_DIM = 128


class ClipDataset(Dataset):
    """Clips given as :class:`~coavs.data.avsbench.ClipRecord` s; the layout classes below build the records."""

    def __init__(self, records: list[ClipRecord], label_map: LabelMap, *, root, kind: str, image_size=None,
                 audio: str = "logmel", num_frames: int | None = None, vggish_dir=None, cache_dir=None,
                 uint8_frames: bool = False, marker_dir=None, num_markers: int | None = None):
        if audio not in AUDIO_MODES:
            raise ValueError(f"audio must be one of {AUDIO_MODES}, got {audio!r}")
        if audio == "vggish" and vggish_dir is None:
            raise ValueError("audio='vggish' needs vggish_dir (a folder of <uid>.npy or <uid>.pt files, [T,128])")
        if image_size is not None:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
            if len(hw) != 2 or min(hw) < 1:
                raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
            image_size = hw
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
        self.records = list(records)
        self.label_map = label_map
        self.root = Path(root)
        self.kind = kind
        self.image_size = image_size
        self.audio = audio
        self.num_frames = num_frames
        self.vggish_dir = None if vggish_dir is None else Path(vggish_dir)
        self.uint8_frames = uint8_frames
        self.markers = None if marker_dir is None else ReferenceMarkers(marker_dir, num_markers)
        self.cache = None
        if cache_dir is not None:
            self.cache = ClipCache(cache_dir, {"kind": kind, "root": str(self.root.absolute())})

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_map.names

    @property
    def uids(self) -> list[str]:
        return [r.uid for r in self.records]

    @property
    def marker_layout(self) -> tuple[int, int] | None:
        """``(class markers C, cluster markers M)`` of the marker files (their ``markers.json``), else None."""
        info = self.markers.info if self.markers is not None else None
        return None if info is None else (info["num_classes"], info["num_clusters"])

    def load_markers(self, index: int) -> torch.Tensor:
        """The marker scores ``[T,S]`` of clip ``index`` from the marker files (``T`` = its frames; a file with
        fewer rows repeats its last one)."""
        if self.markers is None:
            raise ValueError("this dataset was opened without marker files (marker_dir)")
        record = self.records[index]
        rows = self.markers(record.uid)
        if rows.shape[0] < record.num_frames:
            rows = torch.cat([rows, rows[-1:].expand(record.num_frames - rows.shape[0], -1)])
        return rows[:record.num_frames]

    def __getitem__(self, index: int) -> dict:
        with audio_io.one_thread():  # per-clip tensors are small: intra-op threads only add barrier waits
            return self._item(index)

    def _item(self, index: int) -> dict:
        record = self.records[index]
        signature = self._visual_signature(record) if self.cache is not None else None
        visual = self._cached(record, signature, self._visual_name(), lambda: self.decode_visual(record))
        audio = self.load_audio(index)
        frames = torch.from_numpy(np.array(visual[:, :3]))
        if not self.uint8_frames:
            frames = frames.float().div_(255.0)
        item = {
            "frames": frames,
            "audio": audio,
            "labels": torch.from_numpy(np.array(visual[:, 3])).long(),
            "annotated": torch.tensor(record.annotated, dtype=torch.bool),
            "valid": torch.ones(record.num_frames, dtype=torch.bool),
            **self.extras(index),
        }
        if self.markers is not None:
            item["markers"] = self.load_markers(index)
        item = self._fit_frames(item)
        item["uid"] = record.uid
        item["index"] = index
        return item

    def load_audio(self, index: int) -> torch.Tensor:
        """Only the audio of clip ``index`` (as in ``__getitem__``, before padding to ``num_frames``)."""
        record = self.records[index]
        if self.audio == "vggish":
            return torch.from_numpy(self._read_vggish(record))
        signature = source_signature([record.audio_path]) if self.cache is not None else None
        with audio_io.one_thread():
            array = self._cached(record, signature, f"audio-{self.audio}", lambda: self.decode_audio(record))
        return torch.from_numpy(np.array(array))

    def decode_visual(self, record: ClipRecord) -> np.ndarray:
        """Frames and labels of one clip, decoded from disk: ``[T,4,H,W] uint8`` (RGB + label channel)."""
        frames = [read_frame(p, self.image_size) for p in record.frame_paths]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise DataError(record.frame_paths[0].parent, f"frames of clip {record.uid!r} differ in size "
                                                          f"{sorted(s[:2] for s in shapes)}; pass image_size")
        height, width = frames[0].shape[:2]
        labels = []
        for mask_path in record.mask_paths:
            if mask_path is None:
                labels.append(np.full((height, width), IGNORE_INDEX, dtype=np.uint8))
                continue
            mask = read_mask(mask_path, record.mask_format, self.num_classes, self.image_size)
            if mask.shape != (height, width):
                raise DataError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                                           f"{width}x{height}; pass image_size to resize both")
            labels.append(mask)
        out = np.empty((record.num_frames, 4, height, width), dtype=np.uint8)
        out[:, :3] = np.stack(frames).transpose(0, 3, 1, 2)
        out[:, 3] = np.stack(labels)
        return out

    def decode_audio(self, record: ClipRecord) -> np.ndarray:
        """The clip's audio features from its wav: log-mel ``[T,1,96,64]`` or waveform ``[T,16000]``."""
        seconds = audio_io.load_seconds(record.audio_path, record.num_frames)
        feats = audio_io.log_mel(seconds) if self.audio == "logmel" else seconds
        return feats.numpy()

    def extras(self, index: int) -> dict:
        """Extra per-frame tensors of a clip (``[T, ...]``); the synthetic set adds its class annotations."""
        return {}

    # ------------------------------------------------------------------ internals
    def _visual_name(self) -> str:
        size = "native" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        return f"visual-{size}"

    def _visual_signature(self, record: ClipRecord) -> str | None:
        files = [resolve_frame(p) for p in record.frame_paths] + [p for p in record.mask_paths if p is not None]
        return source_signature(files)

    def _cached(self, record: ClipRecord, signature, name: str, build) -> np.ndarray:
        if self.cache is None:
            return build()
        return self.cache.get_or_build(f"{record.split}-{record.subset}-{record.uid}", signature, name, build)

    def _read_vggish(self, record: ClipRecord) -> np.ndarray:
        for suffix in (".npy", ".pt"):
            path = self.vggish_dir / f"{record.uid}{suffix}"
            if path.exists():
                break
        else:
            raise DataError(self.vggish_dir / f"{record.uid}.npy", "missing VGGish feature file (.npy or .pt)")
        feats = read_vggish_features(path)
        t = record.num_frames
        if feats.shape[0] < t:  # short clip: repeat the last second, as AVSBench's preprocessing does
            feats = np.concatenate([feats, np.repeat(feats[-1:], t - feats.shape[0], axis=0)])
        return np.ascontiguousarray(feats[:t])

    def _fit_frames(self, item: dict) -> dict:
        """Pad or cut every per-frame entry to ``num_frames``."""
        target = self.num_frames
        length = item["frames"].shape[0]
        if target is None or target == length:
            return item
        if target < length:
            return {k: v[:target] for k, v in item.items()}
        fill = {"labels": IGNORE_INDEX, "annotated": False, "valid": False}
        if self.audio == "logmel":
            fill["audio"] = float(np.log(audio_io.LOG_OFFSET))
        out = {}
        for key, value in item.items():
            if key == "audio" and self.audio == "vggish":
                pad = value[-1:].expand(target - length, *value.shape[1:])
            else:
                pad = torch.full((target - length, *value.shape[1:]), fill.get(key, 0), dtype=value.dtype)
            out[key] = torch.cat([value, pad])
        return out


class ClassIndex:
    """Which classes each clip sounds, for the bias metrics and the negatives that need it: the
    ``sounding_classes`` / ``visible_classes`` of a clip and :meth:`misaligned_index` (a clip that sounds none of
    them). Subclasses fill ``_heard`` and ``_seen`` (lists of sets of label values, one per clip)."""

    _heard: list[set[int]]
    _seen: list[set[int]]

    def sounding_classes(self, index: int) -> set[int]:
        """Class indices heard in clip ``index``."""
        return set(self._heard[index])

    def visible_classes(self, index: int) -> set[int]:
        """Class indices seen in some frame of clip ``index`` (as far as the dataset knows)."""
        return set(self._seen[index])

    def misaligned_index(self, index: int, seed: int = 0) -> int:
        """A clip whose sound names none of the classes seen or heard in clip ``index`` (and that does sound),
        chosen at random but reproducibly from ``(seed, index)``: its audio is a negative for clip ``index``'s
        frames. A ValueError when no clip qualifies."""
        candidates = self._misaligned_candidates(index)
        if not candidates:
            raise ValueError(f"no clip in this split sounds only classes absent from clip {index} "
                             f"({self.records[index].uid}); use more clips or more classes")
        return int(candidates[np.random.default_rng([seed, index]).integers(len(candidates))])

    def misaligned_indices(self, seed: int = 0) -> list[int]:
        """:meth:`misaligned_index` for every clip."""
        return [self.misaligned_index(i, seed) for i in range(len(self))]

    def _misaligned_candidates(self, index: int) -> list[int]:
        avoid = self._seen[index] | self._heard[index]
        return [j for j, heard in enumerate(self._heard) if j != index and heard and not heard & avoid]


class S4Dataset(ClipDataset):
    """AVSBench S4 (single source, binary masks; train clips have frame 1 annotated). ``root``: ``Single-source/``.

    Each clip's sound has one category (``s4_meta_data.csv``), so :meth:`misaligned_index` can pick a clip of
    another category; the binary masks cannot name classes, so there is no ``sounding_classes``."""

    def __init__(self, root, split: str = "train", **kwargs):
        super().__init__(read_s4_records(root, split), BINARY_LABELS, root=root, kind="s4", **kwargs)

    def misaligned_index(self, index: int, seed: int = 0) -> int:
        """A clip of another sound category, chosen reproducibly from ``(seed, index)``."""
        own = self.records[index].category
        candidates = [j for j, r in enumerate(self.records) if r.category != own]
        if not candidates:
            raise ValueError(f"every clip of this split is of category {own!r}")
        return int(candidates[np.random.default_rng([seed, index]).integers(len(candidates))])


class MS3Dataset(ClipDataset):
    """AVSBench MS3 (multiple sources, binary masks, all 5 frames annotated). ``root``: ``Multi-sources/``. Its
    metadata names no sound categories: which classes a clip sounds is unknown."""

    def __init__(self, root, split: str = "train", **kwargs):
        super().__init__(read_ms3_records(root, split), BINARY_LABELS, root=root, kind="ms3", **kwargs)


class AVSSDataset(ClassIndex, ClipDataset):
    """AVSBench-semantic (AVSS): ``metadata.csv`` + ``label2idx.json``; ``subsets`` picks labels (v1s, v1m, v2).
    v1s/v1m clips have 5 frames and v2 clips 10: pass ``num_frames=10`` to batch them together.

    The classes a clip sounds are the classes its labels show (only sounding objects are labelled): read from the
    masks of its annotated frames the first time they are asked for (cached with the decoded clips). A visible but
    silent object is unlabelled, so ``visible_classes`` is the sounding ones: a misaligned clip is checked against
    the classes that sound, not against every visible object."""

    def __init__(self, root, split: str = "train", subsets: tuple[str, ...] | None = None, **kwargs):
        records = read_avss_records(root, split, subsets=subsets)
        super().__init__(records, LabelMap.from_json(Path(root) / "label2idx.json"), root=root, kind="avss",
                         **kwargs)
        self._labelled: list[set[int]] | None = None

    @property
    def _heard(self) -> list[set[int]]:
        if self._labelled is None:
            self._labelled = [self._labelled_classes(r) for r in self.records]
        return self._labelled

    @property
    def _seen(self) -> list[set[int]]:
        return self._heard

    def _labelled_classes(self, record: ClipRecord) -> set[int]:
        masks = [p for p in record.mask_paths if p is not None]

        def build():
            found: set[int] = set()
            for path in masks:
                found |= set(np.unique(read_mask(path, record.mask_format, self.num_classes)).tolist())
            return np.array(sorted(found - {0, IGNORE_INDEX}), dtype=np.int64)

        signature = source_signature(masks) if self.cache is not None else None
        return {int(c) for c in self._cached(record, signature, "classes", build)}


class CoAVSDataset(AVSSDataset):
    """The synthetic Co-AVS set (AVSS layout + ``coavs_synth.json``), with per-frame class annotations for the
    bias metrics (which classes sound, which are visible — silent ones included) and :meth:`misaligned_index` for
    "audio of another clip" tests."""

    def __init__(self, root, split: str = "train", **kwargs):
        super().__init__(root, split, **kwargs)
        info = read_synth_info(root)
        if info is None:
            raise DataError(Path(root), "not a synthetic Co-AVS set (coavs_synth.json is missing)")
        self.info = info
        names = self.label_map.names
        self._sounding, self._visible = [], []
        for record in self.records:
            clip = info["clips"].get(record.uid)
            if clip is None:
                raise DataError(Path(root) / "coavs_synth.json", f"no entry for clip {record.uid!r}")
            try:
                sounding = np.zeros((record.num_frames, len(names)), dtype=bool)
                sounding[:, [names.index(c) for c in clip["sounding"]]] = True
                visible = np.zeros_like(sounding)
                for t, shown in enumerate(clip["visible"][: record.num_frames]):
                    visible[t, [names.index(c) for c in shown]] = True
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise DataError(Path(root) / "coavs_synth.json", f"clip {record.uid!r}: bad entry ({exc})") from None
            self._sounding.append(sounding)
            self._visible.append(visible)
        self._labelled = [set(np.flatnonzero(s.any(axis=0)).tolist()) for s in self._sounding]
        self._visible_sets = [set(np.flatnonzero(v.any(axis=0)).tolist()) for v in self._visible]

    @property
    def _seen(self) -> list[set[int]]:
        return self._visible_sets

    def extras(self, index: int) -> dict:
        sounding = torch.from_numpy(self._sounding[index])
        visible = torch.from_numpy(self._visible[index])
        return {"sounding": sounding, "visible": visible, "silent": visible & ~sounding}


def read_vggish_features(path) -> np.ndarray:
    """A VGGish feature file (``.npy``, or a ``.pt`` tensor) as ``[T,128] float32``. A damaged file, another shape,
    no rows, or NaN / infinite values (as for wavs) raise :class:`DataError` naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            feats = torch.load(path, map_location="cpu", weights_only=True)
            feats = feats.numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
        else:
            feats = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "missing VGGish feature file") from None
    except Exception as exc:  # np.load / torch.load raise many types for damaged files
        raise DataError(path, f"unreadable VGGish features ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(np.asarray(feats).dtype, np.number):
        raise DataError(path, f"VGGish features must be numbers, got dtype {np.asarray(feats).dtype}")
    feats = np.asarray(feats, dtype=np.float32).reshape(-1, feats.shape[-1]) if feats.ndim >= 2 else feats
    if feats.ndim != 2 or feats.shape[1] != VGGISH_DIM or feats.shape[0] == 0:
        raise DataError(path, f"VGGish features must be [T, {VGGISH_DIM}], got {tuple(feats.shape)}")
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).sum())
        raise DataError(path, f"the VGGish features hold NaN or infinite values ({bad} of {feats.size})")
    return feats


def open_dataset(root, split: str = "train", kind: str = "auto", **kwargs) -> ClipDataset:
    """The dataset at ``root`` by its layout: S4, MS3, AVSS, or Co-AVS (AVSS with ``coavs_synth.json``)."""
    kind = detect_layout(root) if kind == "auto" else kind
    if kind == "s4":
        return S4Dataset(root, split, **kwargs)
    if kind == "ms3":
        return MS3Dataset(root, split, **kwargs)
    if kind == "avss":
        if (Path(root) / "coavs_synth.json").is_file():
            return CoAVSDataset(root, split, **kwargs)
        return AVSSDataset(root, split, **kwargs)
    raise ValueError(f"kind must be 'auto', 's4', 'ms3' or 'avss', got {kind!r}")
