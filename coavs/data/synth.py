"""Synthetic Co-AVS: clips of coloured shapes whose classes each have their own sound, written in the AVSS layout
so the readers of real data read them (``metadata.csv``, ``label2idx.json``, ``<label>/<uid>/frames/{i}.jpg``,
``audio.wav``, ``labels_rgb/{i}.png`` in the VOC palette, ``labels_semantic/{i}.png`` with class indices), plus
``coavs_synth.json`` (the config, the subset rule, per-clip sounding and visible classes, and statistics).

A clip: ``num_semantics`` *featured* classes with ``instances_per_semantic`` objects each, together covering
``object_area`` of the frame (the paper scales objects to 30-40 %), plus ``num_distractors`` extra classes whose
objects never sound. The **visual prior**: each featured class is silent in a clip with probability
``silent_prob`` (its objects are visible, its sound absent). A small ``silent_prob`` is a strong prior (what is
visible almost always sounds); ``eval_silent_prob`` sets a different value for the val/test splits so the bias
can be measured there. At least ``min_sounding`` featured classes sound (those silent are flipped back at
random), so the realised silent rate is reported in ``coavs_synth.json`` (``stats``).

Only sounding objects are labelled (their class index); silent ones are background, as in AVS. Each class has a
distinct shape, texture and colour, and a distinct sound (harmonic stacks, bursts, chirps, noise bands, AM and FM
patterns); the sounds of the sounding classes are mixed over a faint noise floor. Objects drift from frame to
frame; frame ``t`` shows second ``t`` of the audio.

Every clip draws from its own generator seeded by ``(seed, clip index)``: the output does not depend on the number
of workers, and the same config gives byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import wavfile
from tqdm import tqdm

from coavs import jsonio
from coavs.data.avsbench import SPLITS, SYNTH_INFO_FIELDS, SYNTH_INFO_FILE, LabelMap, palette
from coavs.data.errors import DataError
from coavs.data.synth_sounds import mix_sounds

SYNTH_VERSION = 1


@dataclass(frozen=True)
class SynthClass:
    """A synthetic class: how it looks (shape, texture, colour) and sounds (``sound`` recipe at ``pitch`` Hz)."""

    name: str
    shape: str
    texture: str
    colour: tuple[int, int, int]
    sound: str
    pitch: float


SYNTH_CLASSES = (
    SynthClass("violin", "tall_ellipse", "vstripes", (160, 82, 40), "bowed", 440.0),
    SynthClass("dog", "circle", "dots", (214, 178, 120), "bark", 520.0),
    SynthClass("car", "wide_rect", "hstripes", (205, 35, 45), "engine", 90.0),
    SynthClass("bird", "triangle", "solid", (242, 212, 40), "chirp", 3000.0),
    SynthClass("drum", "square", "checker", (40, 85, 205), "drum", 75.0),
    SynthClass("piano", "diamond", "diag", (235, 235, 235), "piano", 262.0),
    SynthClass("siren", "hexagram", "solid", (250, 120, 20), "siren", 850.0),
    SynthClass("helicopter", "cross", "hstripes", (40, 150, 60), "rotor", 14.0),
    SynthClass("baby", "half_disc", "dots", (240, 150, 190), "cry", 380.0),
    SynthClass("bell", "ring", "checker", (150, 60, 200), "bell", 600.0),
)
CLASS_NAMES = tuple(c.name for c in SYNTH_CLASSES)
_CLASS_BY_NAME = {c.name: c for c in SYNTH_CLASSES}
# bounding-box height / width of each shape
_ASPECT = {"tall_ellipse": 1.6, "wide_rect": 0.55, "half_disc": 0.5}


Range = tuple[float, float]


def _as_range(value, name: str, integer: bool) -> tuple:
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if integer and (int(lo) != lo or int(hi) != hi):
        raise ValueError(f"{name} must be an integer or a (min, max) pair of integers, got {value!r}")
    if lo > hi or lo < 0:
        raise ValueError(f"{name} must be a non-negative (min, max) with min <= max, got {value!r}")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic Co-AVS set. Ranges are ``(min, max)`` (inclusive) or one number.

    num_clips: clips in all splits together; split_fractions: (train, val, test) shares.
    frames_per_clip: frames (= seconds of audio) per clip; image_size: frame side, or (H, W).
    classes: names from :data:`CLASS_NAMES` to use (>= 2; default all 10).
    num_semantics / instances_per_semantic: featured classes per clip and objects per class (Co-AVS: 2 and 1).
    object_area: fraction of the frame the featured objects cover together (each object gets an equal share;
    distractor objects get the same size as one featured object).
    num_distractors: extra always-silent classes per clip.
    silent_prob: probability that a featured class is silent in a clip (the visual prior; a float, or a mapping
    class -> probability with the others at 0); eval_silent_prob: the same for val/test (None: as train).
    min_sounding: featured classes that sound in every clip at least.
    train_annotation: ``"all"`` frames annotated, or ``"first"`` (only frame 0 in train, like v1s).
    sample_rate: of ``audio.wav`` (readers resample to 16 kHz); audio_noise: RMS of the noise floor.
    frame_format: ``"jpg"`` or ``"png"``; label: the ``label`` column / folder name of the clips.
    """

    num_clips: int = 200
    frames_per_clip: int = 5
    image_size: int | tuple[int, int] = 96
    classes: tuple[str, ...] = CLASS_NAMES
    num_semantics: int | Range = 2
    instances_per_semantic: int | Range = 1
    object_area: float | Range = (0.30, 0.40)
    num_distractors: int | Range = 0
    silent_prob: float | Mapping = 0.1
    eval_silent_prob: float | Mapping | None = None
    min_sounding: int = 1
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    train_annotation: str = "all"
    sample_rate: int = 16000
    audio_noise: float = 0.005
    frame_format: str = "jpg"
    jpeg_quality: int = 92
    label: str = "synth"
    seed: int = 0

    def __post_init__(self):
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if not 1 <= self.frames_per_clip <= 60:
            raise ValueError(f"frames_per_clip must be in 1..60, got {self.frames_per_clip}")
        h, w = self.frame_hw
        if min(h, w) < 16 or max(h, w) > 2048:
            raise ValueError(f"image_size must be between 16 and 2048 pixels, got {self.image_size!r}")
        unknown = [c for c in self.classes if c not in _CLASS_BY_NAME]
        if unknown or len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"classes must be >= 2 distinct names from {CLASS_NAMES}, got {self.classes!r}")
        sem = _as_range(self.num_semantics, "num_semantics", True)
        inst = _as_range(self.instances_per_semantic, "instances_per_semantic", True)
        dis = _as_range(self.num_distractors, "num_distractors", True)
        area = _as_range(self.object_area, "object_area", False)
        if sem[0] < 1 or inst[0] < 1:
            raise ValueError("num_semantics and instances_per_semantic must be at least 1")
        if sem[1] + dis[1] > len(self.classes):
            raise ValueError(f"num_semantics + num_distractors (max {sem[1] + dis[1]}) exceeds the "
                             f"{len(self.classes)} classes")
        if not (0.0 < area[0] and area[1] <= 0.9):
            raise ValueError(f"object_area must lie in (0, 0.9], got {self.object_area!r}")
        if not 0 <= self.min_sounding <= sem[0]:
            raise ValueError(f"min_sounding must be in 0..min num_semantics ({sem[0]}), got {self.min_sounding}")
        for name in ("silent_prob", "eval_silent_prob"):
            self._silent_table(getattr(self, name), name)
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be three non-negative shares, got {self.split_fractions!r}")
        if self.train_annotation not in ("all", "first"):
            raise ValueError(f"train_annotation must be 'all' or 'first', got {self.train_annotation!r}")
        if not 4000 <= self.sample_rate <= 96000:
            raise ValueError(f"sample_rate must be in 4000..96000, got {self.sample_rate}")
        if self.frame_format not in ("jpg", "png"):
            raise ValueError(f"frame_format must be 'jpg' or 'png', got {self.frame_format!r}")
        if not self.label or not self.label.replace("_", "").replace("-", "").isalnum() or self.label in SPLITS:
            raise ValueError(f"label must be a plain folder name, got {self.label!r}")

    @property
    def frame_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if np.isscalar(s) else (int(s[0]), int(s[1]))

    def _silent_table(self, value, name: str) -> dict[str, float] | None:
        if value is None:
            if name == "silent_prob":
                raise ValueError("silent_prob must be a probability or a mapping, not None")
            return None
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in self.classes]
            if unknown:
                raise ValueError(f"{name} names unknown class(es) {unknown}")
            table = {c: float(value.get(c, 0.0)) for c in self.classes}
        else:
            table = {c: float(value) for c in self.classes}
        if not all(0.0 <= p <= 1.0 for p in table.values()):
            raise ValueError(f"{name} values must be probabilities in [0, 1], got {value!r}")
        return table

    def silent_table(self, split: str) -> dict[str, float]:
        """Per-class probability of being silent when featured, for ``split``."""
        if split != "train" and self.eval_silent_prob is not None:
            return self._silent_table(self.eval_silent_prob, "eval_silent_prob")
        return self._silent_table(self.silent_prob, "silent_prob")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Mapping):
                out[key] = dict(value)
        return out


# --------------------------------------------------------------------------------------------------- visuals
def _unit_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (y down, x right), ``[h,1]`` and ``[1,w]``."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    return y[:, None], x[None, :]


def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Boolean ``[h,w]`` mask of ``shape`` filling an ``h x w`` box."""
    y, x = _unit_grid(h, w)
    if shape in ("circle", "tall_ellipse"):
        m = x * x + y * y <= 1.0
    elif shape in ("square", "wide_rect"):
        m = np.ones((h, w), dtype=bool)
    elif shape == "triangle":  # apex at the top
        m = np.abs(x) <= (y + 1) / 2
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= 1.0
    elif shape == "cross":
        m = (np.abs(x) <= 0.34) | (np.abs(y) <= 0.34)
    elif shape == "ring":
        r2 = x * x + y * y
        m = (r2 <= 1.0) & (r2 >= 0.3)
    elif shape == "hexagram":  # two overlapping triangles
        m = (np.abs(x) <= (y + 1) * 0.6) & (y <= 0.5) | (np.abs(x) <= (1 - y) * 0.6) & (y >= -0.5)
    elif shape == "half_disc":  # flat side down
        m = x * x + ((1 - y) / 2) ** 2 <= 1.0
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.broadcast_to(m, (h, w)).copy()


@functools.lru_cache(maxsize=None)
def _fill_ratio(shape: str) -> float:
    """Fraction of its box a shape covers."""
    return float(shape_mask(shape, 128, 128).mean())


def texture_mask(texture: str, h: int, w: int) -> np.ndarray:
    """Boolean ``[h,w]`` accent pattern; the period scales with the object so it survives JPEG at small sizes."""
    period = max(4, int(round(min(h, w) / 4)))
    half = period / 2
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    if texture == "solid":
        m = np.zeros((h, w), dtype=bool)
    elif texture == "hstripes":
        m = (yy // half) % 2 == 1
    elif texture == "vstripes":
        m = (xx // half) % 2 == 1
    elif texture == "checker":
        m = ((yy // half) + (xx // half)) % 2 == 1
    elif texture == "diag":
        m = ((yy + xx) // half) % 2 == 1
    elif texture == "dots":
        m = ((yy % period) - half + 0.5) ** 2 + ((xx % period) - half + 0.5) ** 2 <= (period * 0.3) ** 2
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.broadcast_to(m, (h, w))


def _accent(colour: np.ndarray) -> np.ndarray:
    """The texture colour: darker for light colours, lighter for dark ones."""
    return colour * 0.45 if colour.mean() > 110 else colour + (255 - colour) * 0.55


@dataclass
class _Object:
    cls: SynthClass
    class_index: int
    sounding: bool
    h: int
    w: int
    y: float
    x: float
    vy: float
    vx: float
    mask: np.ndarray = field(repr=False)
    pixels: np.ndarray = field(repr=False)  # [h, w, 3] float32 texture colours


def _make_object(cls: SynthClass, class_index: int, sounding: bool, area_px: float, frame_hw, rng) -> _Object:
    fh, fw = frame_hw
    aspect = _ASPECT.get(cls.shape, 1.0)
    w = math.sqrt(area_px / (_fill_ratio(cls.shape) * aspect))
    h, w = int(round(min(aspect * w, fh))), int(round(min(w, fw)))
    h, w = max(h, 3), max(w, 3)
    colour = np.clip(np.asarray(cls.colour, np.float32) + rng.uniform(-18, 18, 3), 0, 255)
    tex = texture_mask(cls.texture, h, w)
    pixels = np.where(tex[..., None], _accent(colour), colour).astype(np.float32)
    shading = 1.0 + 0.12 * np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]  # light from the top
    pixels = pixels * (2.0 - shading)
    speed = rng.uniform(0.0, 0.04, 2) * np.array([fh, fw]) * rng.choice([-1, 1], 2)
    return _Object(cls, class_index, sounding, h, w, 0.0, 0.0, float(speed[0]), float(speed[1]),
                   shape_mask(cls.shape, h, w), pixels)


def _place(objects: list[_Object], frame_hw, rng) -> None:
    """Choose start positions, avoiding overlap where the frame allows (best of 16 random tries each)."""
    fh, fw = frame_hw
    placed: list[tuple[float, float, int, int]] = []
    for obj in objects:
        best, best_overlap = None, None
        for _ in range(16):
            y = rng.uniform(0, fh - obj.h) if fh > obj.h else 0.0
            x = rng.uniform(0, fw - obj.w) if fw > obj.w else 0.0
            overlap = sum(max(0.0, min(y + obj.h, py + ph) - max(y, py))
                          * max(0.0, min(x + obj.w, px + pw) - max(x, px)) for py, px, ph, pw in placed)
            if best_overlap is None or overlap < best_overlap:
                best, best_overlap = (y, x), overlap
            if overlap == 0:
                break
        obj.y, obj.x = best
        placed.append((obj.y, obj.x, obj.h, obj.w))


def _step(obj: _Object, frame_hw) -> None:
    """Move by the velocity, bouncing off the frame edges."""
    for pos, vel, size, limit in (("y", "vy", obj.h, frame_hw[0]), ("x", "vx", obj.w, frame_hw[1])):
        value, speed, room = getattr(obj, pos) + getattr(obj, vel), getattr(obj, vel), max(limit - size, 0)
        if value < 0 or value > room:
            speed = -speed
            value = min(max(value, 0), room)
        setattr(obj, pos, value)
        setattr(obj, vel, speed)


def _background(frame_hw, rng) -> tuple[np.ndarray, float]:
    """A muted two-colour gradient at a random angle (per clip) and the per-pixel noise scale."""
    fh, fw = frame_hw
    a, b = rng.uniform(60, 150, 3), rng.uniform(60, 150, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = _unit_grid(fh, fw)
    t = (np.cos(angle) * x + np.sin(angle) * y) * 0.5 + 0.5
    return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32), rng.uniform(3, 9)


def _render(objects: list[_Object], base: np.ndarray, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """One frame: ``[H,W,3] uint8`` image and ``[H,W] int16`` owner map (object number, -1 = background)."""
    fh, fw = base.shape[:2]
    image = base + rng.normal(0, noise, base.shape).astype(np.float32)
    owner = np.full((fh, fw), -1, dtype=np.int16)
    for k, obj in enumerate(objects):
        y0, x0 = int(round(obj.y)), int(round(obj.x))
        y1, x1 = min(y0 + obj.h, fh), min(x0 + obj.w, fw)
        mask = obj.mask[: y1 - y0, : x1 - x0]
        region = image[y0:y1, x0:x1]
        region[mask] = obj.pixels[: y1 - y0, : x1 - x0][mask]
        owner[y0:y1, x0:x1][mask] = k
    return np.clip(image, 0, 255).round().astype(np.uint8), owner


# --------------------------------------------------------------------------------------------------- clips
def _split_of_clips(config: SynthConfig) -> list[str]:
    shares = np.asarray(config.split_fractions, dtype=np.float64)
    counts = np.floor(shares / shares.sum() * config.num_clips).astype(int)
    for i in np.argsort(-(shares / shares.sum() * config.num_clips - counts))[: config.num_clips - counts.sum()]:
        counts[i] += 1
    splits = np.repeat(np.array(SPLITS), counts)
    return list(np.random.default_rng([config.seed, 2**31 - 1]).permutation(splits))


def _draw(rng, value) -> int:
    lo, hi = (value, value) if np.isscalar(value) else value
    return int(rng.integers(int(lo), int(hi) + 1))


def _clip_uid(index: int) -> str:
    return f"synth_{index:05d}"


def generate_clip(config: SynthConfig, index: int, split: str, out_dir: Path | None) -> dict:
    """Make clip ``index`` and write its files under ``out_dir`` (nothing is written when None).

    Returns its record: uid, split, featured / sounding / silent / distractor class names, per-frame visible
    classes and the fraction of each frame covered by sounding objects."""
    rng = np.random.default_rng([config.seed, index])
    frame_hw = config.frame_hw
    labels = LabelMap(("background", *config.classes))
    n_sem = _draw(rng, config.num_semantics)
    n_dis = _draw(rng, config.num_distractors)
    chosen = list(rng.choice(len(config.classes), n_sem + n_dis, replace=False))
    featured = [config.classes[i] for i in chosen[:n_sem]]
    distractors = [config.classes[i] for i in chosen[n_sem:]]
    silent_p = config.silent_table(split)
    sounding = {c: rng.random() >= silent_p[c] for c in featured}
    missing = config.min_sounding - sum(sounding.values())
    if missing > 0:  # flip silent featured classes back until enough sound
        for c in rng.permutation([c for c in featured if not sounding[c]])[:missing]:
            sounding[str(c)] = True
    area = rng.uniform(*_as_range(config.object_area, "object_area", False))
    instances = {c: _draw(rng, config.instances_per_semantic) for c in featured}
    per_object = area * frame_hw[0] * frame_hw[1] / sum(instances.values())
    objects = []
    for c in featured:
        for _ in range(instances[c]):
            objects.append(_make_object(_CLASS_BY_NAME[c], labels.index(c), sounding[c], per_object, frame_hw, rng))
    for c in distractors:
        objects.append(_make_object(_CLASS_BY_NAME[c], labels.index(c), False, per_object, frame_hw, rng))
    objects = [objects[i] for i in rng.permutation(len(objects))]  # drawing order = depth order
    _place(objects, frame_hw, rng)
    base, noise = _background(frame_hw, rng)
    sounding_names = [c for c in featured if sounding[c]]
    audio = mix_sounds([_CLASS_BY_NAME[c] for c in sounding_names], config.frames_per_clip, config.sample_rate,
                       config.audio_noise, rng)

    annotated = [config.train_annotation == "all" or split != "train" or t == 0
                 for t in range(config.frames_per_clip)]
    class_of_owner = np.array([o.class_index if o.sounding else 0 for o in objects] + [0], dtype=np.uint8)
    frames, masks, visible, target_area = [], [], [], []
    for t in range(config.frames_per_clip):
        if t:
            for obj in objects:
                _step(obj, frame_hw)
        image, owner = _render(objects, base, noise, rng)
        label = class_of_owner[owner]  # owner -1 picks the trailing background entry
        frames.append(image)
        masks.append(label)
        shown = np.unique(owner[owner >= 0])
        visible.append(sorted({objects[k].cls.name for k in shown}, key=config.classes.index))
        target_area.append(round(float((label > 0).mean()), 4))

    if out_dir is not None:
        _write_clip(out_dir, config, frames, masks, annotated, audio)
    return {
        "uid": _clip_uid(index), "split": split, "featured": featured, "sounding": sounding_names,
        "silent": [c for c in featured if not sounding[c]], "distractors": distractors,
        "visible": visible, "target_area": target_area,
    }


def _write_clip(clip_dir: Path, config: SynthConfig, frames, masks, annotated, audio) -> None:
    (clip_dir / "frames").mkdir(parents=True)
    (clip_dir / "labels_rgb").mkdir()
    (clip_dir / "labels_semantic").mkdir()
    voc = palette(256).reshape(-1).tolist()
    for t, (image, label) in enumerate(zip(frames, masks)):
        pil = Image.fromarray(image)
        if config.frame_format == "jpg":
            pil.save(clip_dir / "frames" / f"{t}.jpg", quality=config.jpeg_quality)
        else:
            pil.save(clip_dir / "frames" / f"{t}.png", compress_level=1)
        if annotated[t]:
            coloured = Image.fromarray(label)
            coloured.putpalette(voc)  # palette image: decodes to the VOC colours, like AVSS's labels_rgb
            coloured.save(clip_dir / "labels_rgb" / f"{t}.png", compress_level=1)
            Image.fromarray(label).save(clip_dir / "labels_semantic" / f"{t}.png", compress_level=1)
    wavfile.write(clip_dir / "audio.wav", config.sample_rate, audio)


def _generate_one(args) -> dict:
    config, index, split, root = args
    return generate_clip(config, index, split, Path(root) / config.label / _clip_uid(index))


def _folder_mode() -> int:
    """The permissions ``mkdir`` gives a new folder under the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def generate(root: str | os.PathLike, config: SynthConfig = SynthConfig(), *, workers: int = 1,
             overwrite: bool = False, progress: bool = False) -> dict:
    """Write a synthetic Co-AVS set to ``root`` and return its summary (``coavs_synth.json`` without the clips).

    The set is built in a temporary folder beside ``root`` and renamed into place at the end, so an interrupted
    run leaves no half-written set. ``root`` must not exist unless ``overwrite`` (then it is replaced)."""
    root = Path(root).absolute()
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} already exists (pass overwrite=True / --overwrite to replace it)")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    staging.chmod(_folder_mode())  # mkdtemp makes it private (0700); the set gets a normal folder's permissions
    try:
        splits = _split_of_clips(config)
        jobs = [(config, i, splits[i], str(staging)) for i in range(config.num_clips)]
        clips = _run_jobs(jobs, workers, progress)
        _write_index(staging, config, clips)
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            staging.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = jsonio.read_json_object(root / SYNTH_INFO_FILE, "synthetic set info", DataError, SYNTH_INFO_FIELDS)
    summary.pop("clips")
    summary["root"] = str(root)
    return summary


def _run_jobs(jobs, workers: int, progress: bool) -> list[dict]:
    bar = tqdm(total=len(jobs), desc="coavs synth", unit="clip", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for job in jobs:
                out.append(_generate_one(job))
                bar.update()
            return out
        # fork when available: workers need no re-import, and clips are seeded per index, so the result is the same
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            out = []
            for record in pool.map(_generate_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                out.append(record)
                bar.update()
            return out
    finally:
        bar.close()


def _write_index(root: Path, config: SynthConfig, clips: list[dict]) -> None:
    labels = LabelMap(("background", *config.classes))
    labels.to_json(root / "label2idx.json")
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
        for clip in clips:
            writer.writerow([clip["uid"], clip["uid"], 0, 0, "_".join(clip["sounding"]), clip["split"], config.label])
    info = {
        "format": "coavs-synth", "version": SYNTH_VERSION, "config": config.to_json(),
        "classes": list(labels.names),
        "subsets": {config.label: {"num_frames": config.frames_per_clip,
                                   "annotated": "first_in_train" if config.train_annotation == "first" else "all"}},
        "stats": _stats(config, clips),
        "clips": {c["uid"]: {k: v for k, v in c.items() if k != "uid"} for c in clips},
    }
    (root / SYNTH_INFO_FILE).write_text(jsonio.dumps(info, indent=1) + "\n")


def _stats(config: SynthConfig, clips: list[dict]) -> dict:
    """Per split: clip count, and per class how often it appeared and how often it was silent when it did."""
    stats = {}
    for split in SPLITS:
        chosen = [c for c in clips if c["split"] == split]
        per_class = {}
        for name in config.classes:
            shown = [c for c in chosen if name in c["featured"] or name in c["distractors"]]
            silent = [c for c in shown if name not in c["sounding"]]
            per_class[name] = {"appears": len(shown), "silent": len(silent),
                               "silent_rate": round(len(silent) / len(shown), 4) if shown else None}
        appear = sum(v["appears"] for v in per_class.values())
        stats[split] = {
            "clips": len(chosen), "classes": per_class,
            "silent_rate": round(sum(v["silent"] for v in per_class.values()) / appear, 4) if appear else None,
            "mean_target_area": round(float(np.mean([np.mean(c["target_area"]) for c in chosen])), 4)
            if chosen else None,
        }
    return stats
