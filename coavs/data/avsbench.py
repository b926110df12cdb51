"""AVSBench on disk: the three layouts (S4 = v1s, MS3 = v1m, AVSS = v2), the AVSS label map and colour palette,
clip records, and the readers of one frame or one mask.

Layouts (``root`` is the folder that holds the metadata file):

- **S4** (``Single-source/``): ``s4_meta_data.csv`` (header row; columns: video name, start time, ``category``,
  ``split``), ``s4_data/visual_frames/<split>/<category>/<name>/<name>_{1..5}.png``,
  ``s4_data/gt_masks/<split>/<category>/<name>/<name>_{k}.png`` (train: frame 1 only; val/test: all five),
  ``s4_data/audio_wav/<split>/<category>/<name>.wav``. Binary masks (foreground = grey value >= 128).
- **MS3** (``Multi-sources/``): ``ms3_meta_data.csv`` (header row; columns: video name, ..., ``split``),
  ``ms3_data/visual_frames/<name>/<name>.mp4_{1..5}.png``, ``ms3_data/gt_masks/<split>/<name>/<name>_{1..5}.png``,
  ``ms3_data/audio_wav/<split>/<name>.wav``. Binary masks (palette index != 0).
- **AVSS** (``AVSBench_semantic/``): ``metadata.csv`` (columns include ``uid``, ``label`` in {v1s, v1m, v2},
  ``split``), ``label2idx.json`` (class name -> 1..K, ``background`` = 1), and per clip
  ``<label>/<uid>/frames/{i}.jpg``, ``audio.wav``, ``labels_rgb/{i}.png`` (colour masks in the Pascal-VOC palette,
  class index ``j`` = label2idx value - 1, 0 = background = black). v1s: 5 frames, only frame 0 annotated in the
  train split; v1m: 5 frames, all annotated; v2: 10 frames, all annotated. ``labels_semantic/{i}.png`` (one
  channel, pixel = class index) is read when ``labels_rgb/`` is absent.

The synthetic Co-AVS set (:mod:`coavs.data.synth`) writes the AVSS layout with its own ``label`` value; its frame
count and annotation rule come from its ``coavs_synth.json``.

AVSBench ships precomputed log-mels as pickles (``audio_log_mel/*.pkl``); unpickling runs arbitrary code, so they
are not read here: the log-mel is computed from ``audio_wav/`` instead (:mod:`coavs.data.audio`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from coavs import jsonio
from coavs.data.errors import DataError

SPLITS = ("train", "val", "test")
IGNORE_INDEX = 255  # label value of pixels of frames without annotation
AVSS_NUM_CLASSES = 71  # the AVSS label map: background + 70 sounding classes
SYNTH_INFO_FILE = "coavs_synth.json"
SYNTH_INFO_FIELDS = {"clips": dict, "subsets": dict}  # what readers of SYNTH_INFO_FILE rely on

S4_CATEGORIES = (
    "baby_laughter", "female_singing", "male_speech", "dog_barking", "cat_meowing", "lions_roaring",
    "horse_clip-clop", "coyote_howling", "mynah_bird_singing", "playing_acoustic_guitar", "playing_tabla",
    "playing_violin", "playing_piano", "playing_ukulele", "playing_glockenspiel", "helicopter", "race_car",
    "driving_buses", "ambulance_siren", "typing_on_computer_keyboard", "chainsawing_trees", "cap_gun_shooting",
    "lawn_mowing",
)
# Clip counts of the official releases (checked by `coavs verify`, reported as warnings when they differ).
OFFICIAL_COUNTS = {
    "s4": {"train": 3452, "val": 740, "test": 740},
    "ms3": {"train": 296, "val": 64, "test": 64},
}
METADATA_FILES = {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}


@dataclass(frozen=True)
class SubsetRule:
    """How many frames a clip of an AVSS subset has and which are annotated.

    ``annotated``: ``"all"``, or ``"first_in_train"`` (v1s: only frame 0 of train clips has a mask)."""

    num_frames: int
    annotated: str = "all"

    def annotated_frames(self, split: str) -> list[bool]:
        if self.annotated == "first_in_train" and split == "train":
            return [i == 0 for i in range(self.num_frames)]
        return [True] * self.num_frames


AVSS_SUBSETS = {"v1s": SubsetRule(5, "first_in_train"), "v1m": SubsetRule(5), "v2": SubsetRule(10)}


# --------------------------------------------------------------------------------------------------- palette
def palette(num_colours: int = 256) -> np.ndarray:
    """Pascal-VOC colour palette ``[num_colours, 3] uint8``: the bits of index ``j`` are dealt to R, G, B in turn
    and placed from the high bit down (j = 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), ...)."""
    index = np.arange(num_colours, dtype=np.int64)
    colours = np.zeros((num_colours, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def colour_to_index(rgb: np.ndarray) -> np.ndarray:
    """Invert :func:`palette` per pixel: ``[H,W,3] uint8 -> [H,W] int64``; ``-1`` where the colour is not a
    palette colour of an index below 256."""
    rgb = rgb.astype(np.int64)
    index = np.zeros(rgb.shape[:2], dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            index |= ((rgb[..., channel] >> (7 - bit)) & 1) << (3 * bit + channel)
    index[index >= 256] = -1
    return index


# --------------------------------------------------------------------------------------------------- label map
@dataclass(frozen=True)
class LabelMap:
    """Class names by index; index 0 is ``background``. On disk: ``label2idx.json`` mapping name -> index + 1."""

    names: tuple[str, ...]

    def __post_init__(self):
        if not self.names or self.names[0] != "background":
            raise ValueError(f"a label map starts with 'background', got {self.names[:1]}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("label map has duplicate class names")
        if len(self.names) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes fit in uint8 labels, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"class {name!r} is not in the label map") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "LabelMap":
        """Read ``label2idx.json`` (name -> 1..K, ``background`` = 1); names ordered by value."""
        path = Path(path)
        mapping = jsonio.read_json(path, "label map", error=DataError)
        if not isinstance(mapping, dict) or not mapping:
            raise DataError(path, "expected a JSON object mapping class name -> index (1..K)")
        values = sorted(mapping.values(), key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else 0))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or values != list(
                range(1, len(mapping) + 1)):
            raise DataError(path, f"class indices must be the integers 1..{len(mapping)}, each once")
        names = tuple(name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1]))
        if names[0] != "background":
            raise DataError(path, f"index 1 must be 'background', got {names[0]!r}")
        try:
            return cls(names)
        except ValueError as exc:
            raise DataError(path, str(exc)) from None

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(jsonio.dumps({name: i + 1 for i, name in enumerate(self.names)}, indent=1) + "\n")


BINARY_LABELS = LabelMap(("background", "sounding"))


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ClipRecord:
    """Where one clip's files are. ``mask_paths[t]`` is None when frame ``t`` has no annotation.

    ``mask_format``: ``"binary"`` (S4/MS3, labels 0/1), ``"palette"`` (AVSS colour masks) or ``"index"``
    (one-channel PNG whose pixel is the class index). ``frame_paths[t]`` may name a ``.jpg`` whose ``.png``
    twin is accepted when the ``.jpg`` is absent. ``source`` says where the clip was listed (file and line)."""

    uid: str
    split: str
    subset: str
    frame_paths: tuple[Path, ...]
    mask_paths: tuple[Path | None, ...]
    audio_path: Path
    mask_format: str
    source: str
    category: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def annotated(self) -> list[bool]:
        return [p is not None for p in self.mask_paths]

    def files(self) -> list[Path]:
        """Every file the clip needs, for signatures and checks."""
        return [*self.frame_paths, *(p for p in self.mask_paths if p is not None), self.audio_path]


def detect_layout(root: str | os.PathLike) -> str:
    """``"s4"``, ``"ms3"`` or ``"avss"`` from the metadata file found in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    found = [kind for kind, name in METADATA_FILES.items() if (root / name).is_file()]
    if len(found) != 1:
        expected = ", ".join(METADATA_FILES.values())
        what = "none" if not found else " and ".join(METADATA_FILES[k] for k in found)
        raise DataError(root, f"cannot tell the layout: expected exactly one of {expected} here, found {what}")
    return found[0]


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a metadata CSV with a header, as (line number, row). Checks that ``required`` columns exist."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise DataError(path, "metadata file is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the CSV ({exc})") from None
    if not header:
        raise DataError(path, "empty file: expected a header row")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, f"header {header} lacks column(s) {missing}")
    return header, rows


def _field(path: Path, line: int, row: dict, column: str) -> str:
    value = row.get(column)
    value = "" if value is None else str(value).strip()
    if not value:
        raise DataError(path, f"line {line}: empty {column!r}")
    if os.sep in value or value in (".", ".."):
        raise DataError(path, f"line {line}: {column!r} value {value!r} is not a plain name")
    return value


def _split_field(path: Path, line: int, row: dict) -> str:
    split = _field(path, line, row, "split")
    if split not in SPLITS:
        raise DataError(path, f"line {line}: split {split!r} is not one of {SPLITS}")
    return split


def check_split(split: str | None) -> None:
    """A ``split`` argument must name a split (or be None: every split); anything else would read no clip."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (or None: all), got {split!r}")


class _Listing:
    """Which metadata row listed each clip: one clip (a uid within its subset) on two rows would be served twice,
    or by two splits (a test clip trained on), so the second row is an error."""

    def __init__(self, meta: Path):
        self.meta, self.rows = meta, {}

    def check(self, line: int, subset: str, uid: str, split: str) -> None:
        first_line, first_split = self.rows.setdefault((subset, uid), (line, split))
        if first_line == line:
            return
        where = (f"in the {first_split} split (line {first_line}) and the {split} split (line {line})"
                 if first_split != split else f"twice in the {split} split (lines {first_line} and {line})")
        raise DataError(self.meta, f"clip {uid!r} is listed {where}; a clip belongs to one split, once")


def _collect(problems: list | None, exc: DataError) -> None:
    if problems is None:
        raise exc
    problems.append(exc)


def read_s4_records(root, split: str | None = None, problems: list | None = None) -> list[ClipRecord]:
    """Clips of the S4 layout (all splits when ``split`` is None). Malformed rows raise :class:`DataError`,
    or are appended to ``problems`` and skipped when a list is given."""
    root = Path(root)
    meta = root / METADATA_FILES["s4"]
    header, rows = _read_csv(meta, ("split",))
    if len(header) < 3:
        raise DataError(meta, f"expected columns name, start_time, category, split; header is {header}")
    name_col = header[0]
    category_col = "category" if "category" in header else header[2]
    check_split(split)
    data = root / "s4_data"
    records = []
    listing = _Listing(meta)
    for line, row in rows:
        try:
            row_split = _split_field(meta, line, row)
            name = _field(meta, line, row, name_col)
            category = _field(meta, line, row, category_col)
            listing.check(line, "s4", name, row_split)
        except DataError as exc:
            _collect(problems, exc)
            continue
        if split is not None and row_split != split:
            continue
        frames_dir = data / "visual_frames" / row_split / category / name
        masks_dir = data / "gt_masks" / row_split / category / name
        num_masks = 1 if row_split == "train" else 5
        records.append(ClipRecord(
            uid=name, split=row_split, subset="s4", category=category, mask_format="binary",
            frame_paths=tuple(frames_dir / f"{name}_{i}.png" for i in range(1, 6)),
            mask_paths=tuple(masks_dir / f"{name}_{i}.png" if i <= num_masks else None for i in range(1, 6)),
            audio_path=data / "audio_wav" / row_split / category / f"{name}.wav",
            source=f"{meta} line {line}"))
    return records


def read_ms3_records(root, split: str | None = None, problems: list | None = None) -> list[ClipRecord]:
    """Clips of the MS3 layout; see :func:`read_s4_records`."""
    root = Path(root)
    meta = root / METADATA_FILES["ms3"]
    header, rows = _read_csv(meta, ("split",))
    name_col = header[0]
    check_split(split)
    data = root / "ms3_data"
    records = []
    listing = _Listing(meta)
    for line, row in rows:
        try:
            row_split = _split_field(meta, line, row)
            name = _field(meta, line, row, name_col)
            listing.check(line, "ms3", name, row_split)
        except DataError as exc:
            _collect(problems, exc)
            continue
        if split is not None and row_split != split:
            continue
        records.append(ClipRecord(
            uid=name, split=row_split, subset="ms3", mask_format="binary",
            frame_paths=tuple(data / "visual_frames" / name / f"{name}.mp4_{i}.png" for i in range(1, 6)),
            mask_paths=tuple(data / "gt_masks" / row_split / name / f"{name}_{i}.png" for i in range(1, 6)),
            audio_path=data / "audio_wav" / row_split / f"{name}.wav",
            source=f"{meta} line {line}"))
    return records


def read_synth_info(root) -> dict | None:
    """The synthetic set's ``coavs_synth.json`` (config, subsets, per-clip classes), or None if absent."""
    path = Path(root) / SYNTH_INFO_FILE
    if not path.is_file():
        return None
    return jsonio.read_json_object(path, "synthetic set info", DataError, SYNTH_INFO_FIELDS)


def avss_subset_rules(root) -> dict[str, SubsetRule]:
    """The AVSS subsets (v1s, v1m, v2) plus those a synthetic set declares in its ``coavs_synth.json``."""
    rules = dict(AVSS_SUBSETS)
    info = read_synth_info(root)
    if info is not None:
        for label, rule in info["subsets"].items():
            try:
                rules[label] = SubsetRule(int(rule["num_frames"]), str(rule.get("annotated", "all")))
            except (KeyError, TypeError, ValueError):
                raise DataError(Path(root) / SYNTH_INFO_FILE, f"subset {label!r}: bad rule {rule!r}") from None
    return rules


def read_avss_records(root, split: str | None = None, subsets: tuple[str, ...] | None = None,
                      problems: list | None = None) -> list[ClipRecord]:
    """Clips of the AVSS layout (``subsets``: the ``label`` values to keep, default all known ones)."""
    root = Path(root)
    meta = root / METADATA_FILES["avss"]
    _, rows = _read_csv(meta, ("uid", "label", "split"))
    rules = avss_subset_rules(root)
    if subsets is not None:
        unknown = [s for s in subsets if s not in rules]
        if unknown:
            raise ValueError(f"unknown AVSS subset(s) {unknown}; known: {sorted(rules)}")
    check_split(split)
    records = []
    listing = _Listing(meta)
    for line, row in rows:
        try:
            row_split = _split_field(meta, line, row)
            label = _field(meta, line, row, "label")
            uid = _field(meta, line, row, "uid")
            if label not in rules:
                raise DataError(meta, f"line {line}: label {label!r} is not one of {sorted(rules)}")
            listing.check(line, label, uid, row_split)
        except DataError as exc:
            _collect(problems, exc)
            continue
        if (split is not None and row_split != split) or (subsets is not None and label not in subsets):
            continue
        rule = rules[label]
        clip_dir = root / label / uid
        mask_dir, mask_format = clip_dir / "labels_rgb", "palette"
        if not mask_dir.is_dir() and (clip_dir / "labels_semantic").is_dir():
            mask_dir, mask_format = clip_dir / "labels_semantic", "index"
        annotated = rule.annotated_frames(row_split)
        records.append(ClipRecord(
            uid=uid, split=row_split, subset=label, mask_format=mask_format, category=str(row.get("a_obj") or ""),
            frame_paths=tuple(clip_dir / "frames" / f"{i}.jpg" for i in range(rule.num_frames)),
            mask_paths=tuple(mask_dir / f"{i}.png" if annotated[i] else None for i in range(rule.num_frames)),
            audio_path=clip_dir / "audio.wav",
            source=f"{meta} line {line}"))
    return records


def read_records(root, kind: str = "auto", split: str | None = None, problems: list | None = None,
                 **kwargs) -> tuple[str, list[ClipRecord]]:
    """(layout kind, clip records) of the dataset at ``root``."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    kind = detect_layout(root) if kind == "auto" else kind
    readers = {"s4": read_s4_records, "ms3": read_ms3_records, "avss": read_avss_records}
    if kind not in readers:
        raise ValueError(f"kind must be 'auto', 's4', 'ms3' or 'avss', got {kind!r}")
    return kind, readers[kind](root, split, problems=problems, **kwargs)


def label_map_for(root, kind: str) -> LabelMap:
    """The binary map for S4/MS3; ``label2idx.json`` for AVSS."""
    return BINARY_LABELS if kind in ("s4", "ms3") else LabelMap.from_json(Path(root) / "label2idx.json")


# --------------------------------------------------------------------------------------------------- readers
def resolve_frame(path: Path) -> Path:
    """``path``, or its ``.png`` twin when a ``.jpg`` is absent (synthetic sets may store PNG frames)."""
    if path.suffix == ".jpg" and not path.exists():
        twin = path.with_suffix(".png")
        if twin.exists():
            return twin
    return path


def _open_image(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise DataError(path, f"missing {what}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"unreadable {what} ({exc})") from None


def _size_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def read_frame(path, size=None) -> np.ndarray:
    """RGB frame ``[H,W,3] uint8``, resized (bilinear) to ``size`` = ``(H, W)`` or an int when given."""
    path = resolve_frame(Path(path))
    image = _open_image(path, "frame").convert("RGB")
    hw = _size_hw(size)
    if hw is not None and image.size != (hw[1], hw[0]):
        image = image.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_mask(path, mask_format: str, num_classes: int, size=None) -> np.ndarray:
    """Class-index mask ``[H,W] uint8`` (resized nearest to ``size``). ``mask_format``: ``"binary"`` (grey >= 128
    or palette index != 0 -> 1), ``"palette"`` (colour in the VOC palette -> its index), ``"index"`` (pixel value).
    Raises :class:`DataError` naming the file and a pixel for colours outside the palette or ids ``>=
    num_classes``."""
    path = Path(path)
    image = _open_image(path, "mask")
    if mask_format == "binary":
        if image.mode == "P":
            labels = (np.asarray(image) != 0).astype(np.uint8)
        else:
            labels = (np.asarray(image.convert("L")) >= 128).astype(np.uint8)
    elif mask_format == "palette":
        labels = _palette_mask_to_index(image, path)
    elif mask_format == "index":
        if image.mode not in ("L", "P", "I", "I;16"):
            raise DataError(path, f"index mask must be single-channel, got PIL mode {image.mode}")
        labels = np.asarray(image).astype(np.int64)
    else:
        raise ValueError(f"mask_format must be 'binary', 'palette' or 'index', got {mask_format!r}")
    if labels.size and labels.max() >= num_classes:
        bad = np.argwhere(labels >= num_classes)[0]
        raise DataError(path, f"label id {int(labels[tuple(bad)])} at pixel (y={bad[0]}, x={bad[1]}) is not a "
                              f"class of the label map (ids 0..{num_classes - 1})")
    labels = labels.astype(np.uint8)
    hw = _size_hw(size)
    if hw is not None and labels.shape != hw:
        labels = np.asarray(Image.fromarray(labels).resize((hw[1], hw[0]), Image.NEAREST))
    return labels


_VOC = palette(256)


def _palette_mask_to_index(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode == "P":
        indices = np.asarray(image)
        used = np.unique(indices)
        file_palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        if used.max(initial=0) < len(file_palette) and np.array_equal(file_palette[used], _VOC[used]):
            return indices.astype(np.int64)  # the file's palette is the VOC palette: indices are class ids
    rgb = np.asarray(image.convert("RGB"))
    labels = colour_to_index(rgb)
    if (labels < 0).any():
        y, x = np.argwhere(labels < 0)[0]
        raise DataError(path, f"colour {tuple(int(c) for c in rgb[y, x])} at pixel (y={y}, x={x}) is not a colour of "
                              "the VOC label palette (a JPEG-compressed or anti-aliased mask?)")
    return labels
