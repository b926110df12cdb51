"""The trainer: a config file → a run folder with the resolved config, logs, per-epoch metrics and checkpoints.

    config = TrainConfig.from_file("configs/demo_debias.yaml", overrides=["data.root=data/coavs"])
    summary = train(config, "runs/debias")                 # or: coavs train CONFIG --out runs/debias
    model, config = load_model("runs/debias")              # the last checkpoint, in eval mode

Config sections (YAML or JSON; every key optional; unknown keys are errors that name the key):

- ``data``: the dataset (``root``, ``kind``, ``split``, ``image_size``, ``audio``, …) and the input pipeline
  (``batch_size`` clips per step and process, ``frames_per_clip``, ``num_workers``, ``cache_dir``, ``markers``);
- ``model``: :class:`coavs.models.ModelConfig` fields, plus ``preset: small | paper`` to start from a preset;
  ``num_classes`` and ``num_audio_classes`` default to the dataset's;
- ``loss``: Mask2Former's weights, points per mask, auxiliary losses, the audio classifier's weight, teacher
  forcing of the class markers;
- ``optim``: AdamW, learning-rate schedule (warm-up, then poly / cosine / constant), gradient clipping, and
  ``debias_lr_scale``: the learning-rate factor of debias training (see :class:`OptimSection`);
- ``debias``: ``mode: none`` (vanilla training) or ``mode: fixed | uncertainty | bias_only`` (the strategy) with
  the other :class:`coavs.training.debias.DebiasConfig` fields (``biased_audio``, ``weight``, ``alpha``, …);
- ``stages``: training stages run in order, each with its epochs, AVSS ``subsets`` and learning-rate factor
  (the AVSS curriculum v1s → v2 → v1m is three stages);
- ``eval``: the split evaluated after epochs, how often, which inference modes, bias metrics or not;
- ``run``: seed, device, precision (fp32 / bf16 / fp16 autocast), ``torch.compile``, logging and checkpoints.

The run folder (:class:`coavs.training.runtime.RunFolder`): ``config.json`` (the resolved config), ``train.log``
(readable), ``log.jsonl`` (a record every ``run.log_every`` steps: loss, learning rate, clips/s and the share of
step time spent waiting for data), ``metrics.jsonl`` (a record per epoch), ``summary.json`` and
``checkpoints/last.pt``.

Exact resume: a checkpoint holds model, optimizer, scheduler, grad scaler, every RNG state of every process and
the position in the plan (stage, epoch, batch); the sampler restarts mid-epoch at that batch, so on CPU a resumed
run repeats the uninterrupted run's loss sequence bit for bit. SIGTERM (or Ctrl-C) ends the current step, saves
a checkpoint and returns; ``train(..., resume=True)`` continues. Under ``torchrun`` every process trains on its
share of each epoch (DDP; NCCL on GPU, gloo on CPU) and logged and evaluated numbers are reduced over processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coavs.errors import UserError
from coavs.training import checkpoint as ckpt
from coavs.training import distributed as dist_utils
from coavs.training.batches import collate_frames, select_frames, to_device
from coavs.eval.gate import GateSection
from coavs.training.config import ConfigError, from_dict, read_file, to_dict
from coavs.training.negatives import NegativesSection
from coavs.training.run_lock import RunLock
from coavs.training.runtime import ResumableSampler, RunFolder, StopSignal, Throughput, autocast, resolve_threads

CHECKPOINT_FORMAT = "coavs-train-checkpoint"
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("poly", "cosine", "constant")
DEBIAS_MODES = ("none", "fixed", "uncertainty", "bias_only")
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------ config
@dataclass
class DataSection:
    """The dataset and the input pipeline.

    root: dataset folder (S4, MS3, AVSS or a ``coavs synth`` set); kind: ``auto`` or ``s4``/``ms3``/``avss``.
    split: the training split. image_size: resize frames and masks to this side (None: as stored).
    num_frames: pad or cut clips to this many frames (None: as stored). audio: ``logmel``, ``waveform`` or
    ``vggish`` (needs ``vggish_dir``); it must match the model's ``audio_input``.
    batch_size: clips per step and process. frames_per_clip: annotated frames drawn at random from each clip per
    step (0: all annotated frames; unannotated frames never enter a step: they carry no loss).
    num_workers: DataLoader worker processes (None: CPUs − 1, at most 8); pin_memory None: on with CUDA.
    cache_dir: decoded frames, labels and audio features are stored there after the first read and
    memory-mapped afterwards (``auto``: ``~/.cache/coavs/clips``; None: no cache).
    markers: the k-means markers of models with ``num_clusters`` > 0: ``fit`` (fit on the training split at
    the start, saved as ``<run>/markers.pt``) or the path of a ``coavs fit-markers`` file.
    """

    root: str = ""
    kind: str = "auto"
    split: str = "train"
    image_size: int | None = None
    num_frames: int | None = None
    audio: str = "logmel"
    vggish_dir: str | None = None
    batch_size: int = 4
    frames_per_clip: int = 0
    num_workers: int | None = None
    pin_memory: bool | None = None
    cache_dir: str | None = "auto"
    markers: str = "fit"


@dataclass
class LossSection:
    """Mask2Former's set loss (class CE, mask BCE and dice on ``num_points`` sampled points; auxiliary losses
    after every decoder layer), the audio classifier's multi-label loss (``audio_class_weight``), and teacher
    forcing: ground-truth classes' markers are made present during training."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    aux: bool = True
    audio_class_weight: float = 1.0
    teacher_forcing: bool = True


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule.

    The learning rate is ``lr`` times ``debias_lr_scale`` when debias training is on: the debiased logits
    ``(1+α)·x − α·x_b`` move (1+α) times as fast as the vanilla logits for the same weight update, and the
    debiased loss is weighted λ = 10, so the step that suits vanilla training overshoots (the reference code
    also lowers it). Weight decay applies to weight matrices only (not to norms, biases and the query
    embeddings). ``backbone_lr_scale`` multiplies the backbone's rate (0.1 for a pretrained backbone, as
    Mask2Former). Schedule: linear warm-up over ``warmup_steps``, then ``poly`` (power 0.9), ``cosine`` or
    ``constant`` over the whole plan; each stage multiplies it by its ``lr_scale``. ``grad_clip``: max global
    gradient norm (0: off).
    """

    lr: float = 1e-4
    debias_lr_scale: float = 0.5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_scale: float = 1.0
    schedule: str = "poly"
    warmup_steps: int = 0
    grad_clip: float = 0.0


@dataclass
class StageSection:
    """One training stage: ``epochs`` passes over the training split (restricted to the AVSS ``subsets`` when
    given, e.g. ``[v1s]``), with the learning rate multiplied by ``lr_scale``."""

    name: str = "main"
    epochs: int = 1
    subsets: list[str] | None = None
    lr_scale: float = 1.0


@dataclass
class EvalSection:
    """Evaluation during training: ``split`` ("" = none) after every ``every`` epochs (0: after the last one
    only), inference ``modes`` (default: vanilla, plus debias for a debias-trained model), ``bias``: also the
    false-positive rates under silence, noise and misaligned audio (three more passes). ``max_clips`` caps the
    clips evaluated; ``batch_size`` is in clips."""

    split: str = "val"
    every: int = 1
    modes: list[str] | None = None
    bias: bool = False
    batch_size: int = 4
    max_clips: int | None = None


@dataclass
class RunSection:
    """How the run executes.

    seed; device: ``auto`` | ``cpu`` | ``cuda``; precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast; fp16 with a
    grad scaler); compile: ``torch.compile`` the model (true: inductor, or a backend name such as ``aot_eager``);
    max_steps: cap the plan at this many steps (the schedule follows the cap); log_every: steps between log
    records; checkpoint_every: steps between checkpoints (0: at the end of every epoch only); progress: a tqdm
    bar on rank 0; ddp_find_unused: DDP's ``find_unused_parameters``, needed when a part gets no gradient (None:
    on only with ``audio_class_weight: 0``, which leaves the audio classifier without one); threads:
    ``torch.set_num_threads`` for the run (None: PyTorch's default; ``auto``, the default: 1 on CPU for small
    models and batches, where one thread was measured faster — see ``runtime.resolve_threads``). Small models on
    a busy CPU train faster on one thread than on several (the intra-op barriers cost more than the work): run
    one process per core instead.
    """

    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool | str = False
    max_steps: int | None = None
    log_every: int = 10
    checkpoint_every: int = 0
    progress: bool = True
    ddp_find_unused: bool | None = None
    threads: int | str | None = "auto"


# Keys that may differ between a run and its resumption (they do not change what is computed).
_RESUMABLE_CHANGES = ("run.progress", "run.log_every", "run.checkpoint_every", "run.threads", "data.num_workers",
                      "data.pin_memory", "data.cache_dir", "resolved")


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docstring for the sections)."""

    data: DataSection = field(default_factory=DataSection)
    model: dict = field(default_factory=dict)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    debias: dict = field(default_factory=lambda: {"mode": "none"})
    stages: list[StageSection] = field(default_factory=lambda: [StageSection(epochs=10)])
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)
    negatives: NegativesSection = field(default_factory=NegativesSection)  # negative-audio training (negatives.py)
    gate: GateSection = field(default_factory=GateSection)  # inference "nothing sounds" gate (coavs/eval/gate.py)
    resolved: dict = field(default_factory=dict)  # filled by train(): dataset kind, classes, world size

    def __post_init__(self):
        self.validate()

    # -------------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, data: dict, overrides=None) -> "TrainConfig":
        """From nested dicts; ``overrides``: ``["a.b=value", …]`` or ``{"a.b": value}`` (values parsed as
        YAML: ``run.seed=3``, ``data.root=/data``, ``stages=[{epochs: 2}]``)."""
        data = apply_overrides(data or {}, overrides)
        return from_dict(cls, data)

    @classmethod
    def from_file(cls, path, overrides=None) -> "TrainConfig":
        """A YAML (.yaml/.yml) or JSON file; see :meth:`from_dict` for ``overrides``."""
        return cls.from_dict(read_file(path), overrides)

    def to_dict(self) -> dict:
        return to_dict(self)

    # ------------------------------------------------------------------------------------- derived
    def model_config(self, num_classes: int | None = None):
        """The :class:`ModelConfig`: ``model.preset`` (``small``/``paper``) or the defaults, updated with the
        other ``model`` keys; ``audio_input`` defaults to ``data.audio``; ``num_classes`` (the dataset's) fills
        ``num_classes`` and ``num_audio_classes`` = K − 1 (a class marker per class) when the config does not
        set them."""
        from coavs.models.config import ModelConfig

        fields = dict(self.model)
        preset = fields.pop("preset", None)
        fields.setdefault("audio_input", self.data.audio)
        if fields["audio_input"] != self.data.audio:
            raise ConfigError(f"model.audio_input ({fields['audio_input']!r}) must match data.audio "
                              f"({self.data.audio!r})")
        if num_classes is not None:
            fields.setdefault("num_classes", num_classes)
            fields.setdefault("num_audio_classes", num_classes - 1)
        builders = {None: ModelConfig, "default": ModelConfig, "small": ModelConfig.small, "paper": ModelConfig.paper}
        if preset not in builders:
            raise ConfigError(f"model.preset must be 'small' or 'paper', got {preset!r}")
        try:
            return builders[preset](**fields)
        except TypeError as exc:
            known = sorted(f.name for f in dataclasses.fields(ModelConfig))
            raise ConfigError(f"model: {exc}; known keys: preset, {', '.join(known)}") from None
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None

    def debias_config(self):
        """The :class:`DebiasConfig` of ``debias`` (``enabled`` False for ``mode: none``)."""
        from coavs.training.debias import DebiasConfig

        fields = dict(self.debias)
        mode = fields.pop("mode", "none")
        if mode not in DEBIAS_MODES:
            raise ConfigError(f"debias.mode must be one of {', '.join(DEBIAS_MODES)}, got {mode!r}")
        for key in ("enabled", "strategy"):
            if key in fields:
                raise ConfigError(f"debias.{key} is set by debias.mode (none, fixed, uncertainty or bias_only)")
        known = {f.name for f in dataclasses.fields(DebiasConfig)} - {"enabled", "strategy"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join('debias.' + k for k in unknown)}; known: mode, "
                              f"{', '.join(sorted(known))}")
        try:
            binary = bool(self.resolved.get("binary", False))  # scheme auto: mask for binary AVS (B.2)
            if mode == "none":
                return DebiasConfig(enabled=False, **fields).resolved(binary)
            return DebiasConfig(enabled=True, strategy=mode, **fields).resolved(binary)
        except ValueError as exc:
            raise ConfigError(f"debias: {exc}") from None

    @property
    def debias_enabled(self) -> bool:
        return self.debias.get("mode", "none") != "none"

    def eval_modes(self) -> list[str]:
        if self.eval.modes is not None:
            return list(self.eval.modes)
        return ["vanilla", "debias"] if self.debias_enabled else ["vanilla"]

    # ----------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        d, o, r, e = self.data, self.optim, self.run, self.eval
        bad = _non_finite(to_dict(self))
        if bad:
            raise ConfigError("config values must be finite numbers: "
                              + ", ".join(f"{key}={value}" for key, value in bad[:4]))
        if d.split not in SPLITS:
            raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got {d.split!r}")
        if e.split not in ("",) + SPLITS:
            raise ConfigError(f"eval.split must be one of {', '.join(SPLITS)} or empty (no evaluation), "
                              f"got {e.split!r}")
        if d.image_size is not None and d.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1 or null (as stored), got {d.image_size}")
        if d.num_frames is not None and d.num_frames < 1:
            raise ConfigError(f"data.num_frames must be >= 1 or null (as stored), got {d.num_frames}")
        if d.audio == "vggish" and not d.vggish_dir:
            raise ConfigError("data.audio=vggish needs data.vggish_dir (the folder of <uid>.npy VGGish features)")
        if len(o.betas) == 2 and not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError(f"optim.betas must both be in [0, 1), got {list(o.betas)}")
        if d.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {d.batch_size}")
        if d.frames_per_clip < 0:
            raise ConfigError(f"data.frames_per_clip must be >= 0, got {d.frames_per_clip}")
        if d.num_workers is not None and d.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
        if d.audio not in ("logmel", "waveform", "vggish"):
            raise ConfigError(f"data.audio must be logmel, waveform or vggish, got {d.audio!r}")
        if d.kind not in ("auto", "s4", "ms3", "avss"):
            raise ConfigError(f"data.kind must be auto, s4, ms3 or avss, got {d.kind!r}")
        if o.lr <= 0 or o.debias_lr_scale <= 0 or o.backbone_lr_scale < 0 or o.weight_decay < 0:
            raise ConfigError("optim.lr and optim.debias_lr_scale must be > 0; optim.backbone_lr_scale and "
                              "optim.weight_decay >= 0")
        if o.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        if len(o.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {o.betas!r}")
        if o.warmup_steps < 0 or o.grad_clip < 0:
            raise ConfigError("optim.warmup_steps and optim.grad_clip must be >= 0")
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        for i, stage in enumerate(self.stages):
            if stage.epochs < 1:
                raise ConfigError(f"stages[{i}].epochs must be >= 1, got {stage.epochs}")
            if stage.lr_scale < 0:
                raise ConfigError(f"stages[{i}].lr_scale must be >= 0, got {stage.lr_scale}")
        if r.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {', '.join(PRECISIONS)}, got {r.precision!r}")
        if r.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"run.device must be auto, cpu or cuda, got {r.device!r}")
        if r.max_steps is not None and r.max_steps < 1:
            raise ConfigError(f"run.max_steps must be >= 1, got {r.max_steps}")
        if not isinstance(r.compile, (bool, str)):
            raise ConfigError(f"run.compile must be true, false or a torch.compile backend name, got {r.compile!r}")
        if r.threads is not None and r.threads != "auto" and (not isinstance(r.threads, int) or r.threads < 1):
            raise ConfigError(f"run.threads must be >= 1, 'auto' or null, got {r.threads!r}")
        if r.log_every < 1 or r.checkpoint_every < 0:
            raise ConfigError("run.log_every must be >= 1 and run.checkpoint_every >= 0")
        if self.loss.num_points < 1:
            raise ConfigError(f"loss.num_points must be >= 1, got {self.loss.num_points}")
        if e.every < 0 or e.batch_size < 1:
            raise ConfigError("eval.every must be >= 0 and eval.batch_size >= 1")
        for mode in self.eval_modes():
            if mode not in ("vanilla", "debias", "ensemble"):
                raise ConfigError(f"eval.modes: {mode!r} is not vanilla, debias or ensemble")
        self.debias_config()
        self.model_config(num_classes=self.model.get("num_classes"))


def apply_overrides(data: dict, overrides) -> dict:
    """``data`` (nested dicts) with dotted-key overrides applied; values given as strings are parsed as YAML
    (``null`` is None; an empty value is the empty string)."""
    if not overrides:
        return data
    import copy

    import yaml

    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r} must look like section.key=value")
            key, value = text.split("=", 1)
            try:
                parsed.append((key.strip(), yaml.safe_load(value) if value.strip() else ""))
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {text!r}: cannot parse the value ({exc})") from None
        items = parsed
    for key, value in items:
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _non_finite(data, where: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float in nested dicts and lists."""
    if isinstance(data, dict):
        return [bad for key, value in data.items() for bad in _non_finite(value, f"{where}.{key}" if where else key)]
    if isinstance(data, (list, tuple)):
        return [bad for i, value in enumerate(data) for bad in _non_finite(value, f"{where}[{i}]")]
    return [(where, data)] if isinstance(data, float) and not math.isfinite(data) else []


def config_differences(a: TrainConfig, b: TrainConfig, ignore=_RESUMABLE_CHANGES) -> list[str]:
    """Dotted keys whose values differ (ignoring ``ignore`` prefixes)."""
    fa, fb = _flatten(json.loads(json.dumps(a.to_dict()))), _flatten(json.loads(json.dumps(b.to_dict())))
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)]


# -------------------------------------------------------------------------------------------------- plan
@dataclass
class _Stage:
    index: int
    section: StageSection
    dataset: object
    steps_per_epoch: int
    first_step: int  # global step at which the stage starts


class _Plan:
    """Stages × epochs × batches laid out on one global step counter (capped by ``run.max_steps``)."""

    def __init__(self, stages: list[_Stage], cap: int | None):
        self.stages = stages
        full = sum(s.steps_per_epoch * s.section.epochs for s in stages)
        self.total = full if cap is None else min(cap, full)

    def position(self, step: int) -> tuple[int, int, int]:
        """(stage, epoch in stage, batch in epoch) of the ``step``-th step (0-based)."""
        for stage in self.stages:
            span = stage.steps_per_epoch * stage.section.epochs
            if step < stage.first_step + span:
                local = step - stage.first_step
                return stage.index, local // stage.steps_per_epoch, local % stage.steps_per_epoch
        last = self.stages[-1]
        return last.index, last.section.epochs, 0

    def lr_factor(self, step: int, optim: OptimSection) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            warm = (step + 1) / optim.warmup_steps
        else:
            warm = 1.0
        progress = min(step / max(self.total, 1), 1.0)
        if optim.schedule == "poly":
            decay = (1.0 - progress) ** 0.9
        elif optim.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        stage = self.stages[self.position(min(step, self.total - 1))[0]]
        return warm * decay * stage.section.lr_scale


# ------------------------------------------------------------------------------------------------ helpers
def default_cache_dir() -> Path:
    import os

    base = os.environ.get("COAVS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "coavs")
    return Path(base) / "clips"


def open_split(config: TrainConfig, split: str, subsets=None):
    """The dataset of ``split`` as the config describes it (image size, audio, frames, cache)."""
    from coavs.data.dataset import open_dataset

    d = config.data
    if not d.root:
        raise ConfigError("data.root is not set (the dataset folder; e.g. --set data.root=PATH)")
    cache = None if d.cache_dir in (None, "", "none") else (default_cache_dir() if d.cache_dir == "auto"
                                                             else Path(d.cache_dir))
    kwargs = dict(image_size=d.image_size, audio=d.audio, num_frames=d.num_frames, vggish_dir=d.vggish_dir,
                  cache_dir=cache)
    if subsets:
        kwargs["subsets"] = tuple(subsets)
    kind = d.kind
    if subsets and kind == "auto":
        from coavs.data.avsbench import detect_layout

        kind = detect_layout(d.root)
    if subsets and kind != "avss":
        raise ConfigError(f"stages[].subsets only apply to AVSS-layout datasets, {d.root} is {kind}")
    return open_dataset(d.root, split, kind, **kwargs)


def is_binary(dataset) -> bool:
    """S4/MS3: one sounding class, masks 0/1 (no background class in the set loss)."""
    return getattr(dataset, "kind", "avss") in ("s4", "ms3")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_groups(model, lr: float, optim: OptimSection) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.dim() < 2 or name in ("query_feat", "query_pos")
        backbone = name.startswith("backbone.")
        groups.setdefault((backbone, no_decay), []).append(param)
    return [{"params": params, "lr": lr * (optim.backbone_lr_scale if backbone else 1.0),
             "weight_decay": 0.0 if no_decay else optim.weight_decay}
            for (backbone, no_decay), params in sorted(groups.items())]


def _all_ranks_rng(info) -> list:
    state = ckpt.rng_state()
    if not info.enabled:
        return [state]
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


class _SignalProofWorker:
    """DataLoader ``worker_init_fn`` wrapper: workers ignore SIGTERM and SIGINT, so a signal sent to the whole
    process group (a scheduler, Ctrl-C) reaches the training loop, which saves and stops, instead of killing
    the workers under it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


# ------------------------------------------------------------------------------------------------ trainer
class _Trainer:
    def __init__(self, config: TrainConfig, run_dir, info, on_step: Callable | None):
        self.config = config
        self.info = info
        self.device = info.device
        self.folder = RunFolder(run_dir)
        self.on_step = on_step
        self.main = info.is_main

    # ------------------------------------------------------------------------------------ set-up
    def build(self, resume: bool) -> None:
        from coavs.models import AVSModel
        from coavs.training.debias import DebiasObjective
        from coavs.training.losses import SetCriterion

        cfg = self.config
        folder = self.folder
        if self.main:  # the run lock is held: a temporary checkpoint file is what a killed run left behind
            ckpt.remove_temporaries(folder.checkpoints)
        has_checkpoint = folder.last_checkpoint.is_file()
        if resume and not has_checkpoint:
            raise FileNotFoundError(2, "nothing to resume: no checkpoint in the run folder",
                                    str(folder.last_checkpoint))
        if not resume and has_checkpoint:
            raise ConfigError(f"{folder.root} already holds a run (checkpoints/last.pt); resume it (--resume) "
                              "or choose another folder")
        if resume:
            stored = TrainConfig.from_dict(json.loads((folder.root / "config.json").read_text()))
            if cfg is not None:
                given = _resolve(cfg, open_split(cfg, cfg.data.split, cfg.stages[0].subsets), self.info)
                changed = config_differences(stored, given)
                if changed:
                    raise ConfigError(f"the config differs from the run's config.json in {', '.join(changed[:6])}; "
                                      "a resumed run keeps its config")
                # Settings that do not change the computation may differ (progress bar, workers, logging).
                stored = dataclasses.replace(stored, run=dataclasses.replace(
                    stored.run, progress=cfg.run.progress, log_every=cfg.run.log_every,
                    checkpoint_every=cfg.run.checkpoint_every, threads=cfg.run.threads), data=dataclasses.replace(
                    stored.data, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory,
                    cache_dir=cfg.data.cache_dir))
            cfg = self.config = stored

        _seed_everything(cfg.run.seed)
        stages = self._datasets_for(cfg)
        cfg = self.config = _resolve(cfg, stages[0].dataset, self.info)
        self.binary = cfg.resolved["binary"]
        self.plan = _Plan(stages, cfg.run.max_steps)
        self.model_config = cfg.model_config()
        model = AVSModel(self.model_config)
        if self.model_config.num_clusters and not resume:
            self._install_markers(model)
        self.raw_model = model.to(self.device)
        threads = resolve_threads(cfg.run.threads, self.device, sum(p.numel() for p in model.parameters()),
                                  cfg.data.batch_size * (cfg.data.image_size or 224) ** 2)
        if threads is not None:
            torch.set_num_threads(threads)
        self.class_to_marker = model.class_to_marker().to(self.device)

        debias = cfg.debias_config()
        lr = cfg.optim.lr * (cfg.optim.debias_lr_scale if debias.enabled else 1.0)
        self.optimizer = torch.optim.AdamW(_param_groups(model, lr, cfg.optim), lr=lr, betas=tuple(cfg.optim.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda step: self.plan.lr_factor(step, cfg.optim))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.precision == "fp16")
        criterion = SetCriterion(self.model_config.num_classes, class_weight=cfg.loss.class_weight,
                                 mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight,
                                 no_object_weight=cfg.loss.no_object_weight, num_points=cfg.loss.num_points,
                                 aux_loss=cfg.loss.aux)
        self.objective = DebiasObjective(criterion, debias, binary=self.binary)
        self.negatives = _negative_sampler(cfg, model)
        _check_gate_split(cfg)

        self.step = 0
        self.checkpoint_step = -1
        self.epoch_loss = [0.0, 0]
        self.last_train_loss = None
        if resume:
            self._load_checkpoint()
        else:
            # Each process its own stream after the (shared) initialisation; DDP broadcasts rank 0's weights.
            _seed_everything(cfg.run.seed + 1 + 1000 * self.info.rank)
            if self.main:  # a fresh start: logs of an earlier attempt that never saved a checkpoint go
                for name in ("log.jsonl", "metrics.jsonl", "train.log", "summary.json"):
                    (folder.root / name).unlink(missing_ok=True)
                folder.create(cfg.to_dict())
        dist_utils.barrier()

        self.model = self.raw_model
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            find_unused = cfg.run.ddp_find_unused
            if find_unused is None:
                find_unused = cfg.loss.audio_class_weight == 0
            self.model = DistributedDataParallel(self.raw_model, device_ids=ids, find_unused_parameters=find_unused)
        if cfg.run.compile:
            backend = cfg.run.compile if isinstance(cfg.run.compile, str) else "inductor"
            self.model = torch.compile(self.model, backend=backend)

    def _datasets_for(self, cfg: TrainConfig) -> list[_Stage]:
        stages, first = [], 0
        for i, section in enumerate(cfg.stages):
            dataset = open_split(cfg, cfg.data.split, section.subsets)
            if len(dataset) == 0:
                raise ConfigError(f"stage {section.name!r}: the {cfg.data.split} split of {cfg.data.root} has no clips"
                                  + (f" in subsets {section.subsets}" if section.subsets else ""))
            per_rank = math.ceil(len(dataset) / self.info.world_size)
            steps = math.ceil(per_rank / cfg.data.batch_size)
            stages.append(_Stage(i, section, dataset, steps, first))
            first += steps * section.epochs
        return stages

    def _install_markers(self, model) -> None:
        from coavs.models.fit_markers import fit_markers

        source = self.config.data.markers
        if source == "fit":
            path = self.folder.root / "markers.pt"
            if self.main and not path.is_file():
                d = self.config.data
                vggish = d.vggish_dir if self.model_config.audio_input == "vggish" else None
                try:
                    fit_markers(path, self.model_config.num_clusters, data=d.root, vggish=vggish, split=d.split,
                                seed=self.config.run.seed)
                except ValueError as exc:  # DataError included: no descriptors to fit the markers on
                    raise ConfigError(f"data.markers=fit: {exc}") from None
            dist_utils.barrier()
        else:
            path = Path(source)
        try:
            model.load_markers(path)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"data.markers: {exc}") from None

    # ---------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        rng = _all_ranks_rng(self.info)
        if self.main:
            state = {
                "format": CHECKPOINT_FORMAT, "version": 1,
                "config": json.dumps(self.config.to_dict()),
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "step": self.step,
                "position": list(self.plan.position(self.step)),
                "epoch_loss": list(self.epoch_loss),
            }
            ckpt.save_atomic(state, self.folder.last_checkpoint)
        self.checkpoint_step = self.step
        dist_utils.barrier()

    def _load_checkpoint(self) -> None:
        state = ckpt.load(self.folder.last_checkpoint, map_location=self.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{self.folder.last_checkpoint} is not a coavs training checkpoint")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.checkpoint_step = int(state["step"])
        self.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        rngs = state["rng"]
        if len(rngs) != self.info.world_size:
            raise ConfigError(f"the checkpoint was written by {len(rngs)} process(es); resume it with as many "
                              f"(this run has {self.info.world_size})")
        ckpt.set_rng_state(rngs[self.info.rank])
        if self.main:  # drop records written after the checkpoint (a crash between checkpoints)
            for name in ("log.jsonl", "metrics.jsonl"):
                records = self.folder.read(name)
                kept = [r for r in records if r.get("step", 0) <= self.step]
                if len(kept) != len(records):
                    (self.folder.root / name).write_text("".join(json.dumps(r) + "\n" for r in kept))

    # -------------------------------------------------------------------------------------- logging
    def say(self, message: str) -> None:
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.folder.root / "train.log", "a") as f:
            f.write(f"{stamp} {message}\n")
        if self.config.run.progress:
            from coavs.progress import write

            write(message)

    # ----------------------------------------------------------------------------------------- loop
    def loader(self, stage: _Stage, epoch: int, start_batch: int):
        from coavs.data.loader import make_loader

        d = self.config.data
        sampler = ResumableSampler(len(stage.dataset), self.info.rank, self.info.world_size,
                                   seed=self.config.run.seed + 7919 * stage.index, shuffle=True)
        sampler.set_epoch(epoch, start=start_batch * d.batch_size)
        pin = d.pin_memory if d.pin_memory is not None else self.device.type == "cuda"
        loader = make_loader(stage.dataset, d.batch_size, sampler=sampler, num_workers=d.num_workers,
                             pin_memory=pin, collate_fn=collate_frames, persistent_workers=False,
                             seed=self.config.run.seed)
        if loader.num_workers:
            loader.worker_init_fn = _SignalProofWorker(loader.worker_init_fn)
        return loader

    def train_step(self, batch: dict) -> tuple[float, dict, int]:
        """One optimisation step on a frame batch → (loss, detached loss terms, frames used)."""
        from coavs.training.losses import audio_classification_loss, targets_from_labels
        from coavs.training.negatives import classifier_rows

        cfg = self.config
        batch = self._training_frames(batch)
        if self.negatives is not None:  # negative-audio frames with empty targets (coavs.training.negatives)
            stage = self.plan.stages[self.plan.position(self.step)[0]]
            batch = self.negatives.augment(batch, self.step, stage.dataset)
        batch = to_device(batch, self.device, non_blocking=True)
        targets = targets_from_labels(batch["labels"], self.model_config.num_classes, self.class_to_marker,
                                      background_is_class=not self.binary)
        classes = self.model_config.num_audio_classes
        presence = targets.presence[:, 1:1 + classes]
        with autocast(self.device, cfg.run.precision):
            outputs = self.model(batch["frames"], batch["audio"], biased=self.objective.biased_audio,
                                 class_presence=presence if cfg.loss.teacher_forcing and classes else None)
        if bool(targets.annotated.any()):
            result = self.objective(outputs, targets.targets, targets.annotated)
            loss, terms = result.total, dict(result.terms)
            if outputs.get("audio_logits") is not None and cfg.loss.audio_class_weight > 0:
                audio_loss = audio_classification_loss(outputs["audio_logits"], presence,
                                                       classifier_rows(targets.annotated, batch))
                terms["audio_cls"] = audio_loss
                loss = loss + cfg.loss.audio_class_weight * audio_loss
        else:  # nothing annotated: a zero step that keeps every process in step
            loss, terms = outputs["pred_logits"].float().sum() * 0.0, {}
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # fp16: the scaler skips the optimizer on inf/NaN gradients; the
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)  # plan goes on
            self.scheduler.step()
        return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, int(batch["frames"].shape[0])

    def _training_frames(self, batch: dict) -> dict:
        """Annotated frames only; ``frames_per_clip`` of them per clip drawn at random (global torch RNG)."""
        annotated = batch["annotated"]
        keep = annotated.clone()
        k = self.config.data.frames_per_clip
        if k:
            clip = batch["clip_index"]
            for c in clip.unique().tolist():
                rows = (annotated & (clip == c)).nonzero().flatten()
                if rows.numel() > k:
                    drop = rows[torch.randperm(rows.numel())[k:]]
                    keep[drop] = False
        if not bool(keep.any()):
            return batch
        return select_frames(batch, keep)

    def run(self, max_steps: int | None) -> dict:
        cfg, plan = self.config, self.plan
        stop_at = plan.total if max_steps is None else min(plan.total, max_steps)
        resumed = self.step > 0
        if self.main:
            self.folder.log({"event": "resume" if resumed else "start", "step": self.step, "total_steps": plan.total,
                             "world_size": self.info.world_size, "time": time.time()})
        self.say(f"{'resuming at' if resumed else 'starting'} step {self.step} of {plan.total} "
                 f"({self.info.world_size} process(es) on {self.device}; {self.model_config.queries} queries; "
                 f"debias {cfg.debias.get('mode', 'none')})")
        bar = None
        if self.main and cfg.run.progress:  # a tqdm bar on a terminal, else a plain line every log_every steps
            from coavs.progress import progress_bar

            bar = progress_bar(plan.total, initial=self.step, unit="step", desc="train", every=cfg.run.log_every,
                               dynamic_ncols=True)
        last_eval, reason, started = None, None, time.perf_counter()
        window = Throughput()
        window_loss = [0.0, 0]
        self.raw_model.train()
        with StopSignal() as stop:
            while self.step < stop_at and reason is None:
                stage_index, epoch, batch_index = plan.position(self.step)
                stage = plan.stages[stage_index]
                epoch_meter = Throughput()
                window.restart_clock()
                batches = iter(self.loader(stage, epoch, batch_index))
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except BaseException:  # a worker's error (a damaged file): stop the workers now, as they
                        shutdown = getattr(batches, "_shutdown_workers", None)  # ignore SIGTERM (see above)
                        if shutdown is not None:
                            shutdown()
                        raise
                    window.data_ready()
                    epoch_meter.data_ready()
                    loss, terms, _ = self.train_step(batch)
                    clips = int(batch["clip_index"].unique().numel())
                    window.step_done(clips)
                    epoch_meter.step_done(clips)
                    self.step += 1
                    batch_index += 1
                    self.epoch_loss[0] += loss
                    self.epoch_loss[1] += 1
                    window_loss[0] += loss
                    window_loss[1] += 1
                    if self.on_step is not None:
                        self.on_step(self.step, {"loss": loss, **terms})
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", stage=stage.section.name, epoch=epoch + 1)
                        bar.update(1)
                    epoch_done = batch_index == stage.steps_per_epoch or self.step == plan.total
                    if self.step % cfg.run.log_every == 0 or epoch_done or self.step == stop_at:
                        self._log_window(window, window_loss, loss, terms, stage, epoch)
                    if epoch_done:
                        last_eval = self._end_epoch(stage, epoch, epoch_meter) or last_eval
                        window.restart_clock()
                    elif cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self._stop_requested(stop):
                        reason = signal.Signals(stop.requested).name
                        break
                    if self.step >= stop_at or epoch_done:
                        break
                del batches
        if bar is not None:
            bar.close()
        finished = self.step >= plan.total
        if not finished and reason is None:
            reason = "max_steps"
        if finished:
            self.calibrate_gate()
        if self.checkpoint_step != self.step:
            self.save_checkpoint()
        seconds = time.perf_counter() - started
        summary = {"run_dir": str(self.folder.root), "step": self.step, "total_steps": plan.total,
                   "finished": finished, "stopped": None if finished else reason,
                   "train_loss": self.last_train_loss, "eval": last_eval, "seconds": seconds}
        if self.main:
            self.folder.log({"event": "done" if finished else "stopped", "step": self.step, "reason": reason,
                             "time": time.time()})
            (self.folder.root / "summary.json").write_text(json.dumps(summary, indent=2))
        if finished:
            self.say(f"done: {self.step} steps in {seconds:.1f} s -> {self.folder.root}")
        else:
            self.say(f"stopped ({reason}) after step {self.step}; checkpoint saved, continue with --resume")
        return summary

    def _stop_requested(self, stop: StopSignal) -> bool:
        """A signal on any process stops every process (reduced, so all leave the loop at the same step)."""
        if not self.info.enabled:
            return stop.requested is not None
        flag = torch.tensor([0.0 if stop.requested is None else 1.0], device=self.device)
        dist_utils.all_reduce_sum(flag)
        if flag.item() > 0 and stop.requested is None:
            stop.requested = signal.SIGTERM
        return flag.item() > 0

    def _log_window(self, window: Throughput, window_loss: list, loss: float, terms: dict, stage: _Stage,
                    epoch: int) -> None:
        rates = window.report()
        sums = torch.tensor([window_loss[0], window_loss[1], rates["clips_per_s"], rates["data_wait_frac"]],
                            dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_sum(sums)
        window_loss[0], window_loss[1] = 0.0, 0
        if not self.main:
            return
        record = {"step": self.step, "stage": stage.section.name, "epoch": epoch + 1, "loss": loss,
                  "loss_mean": float(sums[0] / sums[1]) if sums[1] else None,
                  "lr": self.optimizer.param_groups[-1]["lr"], "clips_per_s": float(sums[2]),
                  "data_wait_fraction": float(sums[3]) / self.info.world_size, **terms}
        self.folder.log(record)

    def _end_epoch(self, stage: _Stage, epoch: int, meter: Throughput) -> dict | None:
        cfg = self.config
        seconds = meter.total
        rates = meter.report()
        sums = torch.tensor([*self.epoch_loss, rates["clips_per_s"], rates["data_wait_frac"]], dtype=torch.float64,
                            device=self.device)
        dist_utils.all_reduce_sum(sums)
        summary = {"clips_per_s": float(sums[2]), "data_wait_fraction": float(sums[3]) / self.info.world_size,
                   "seconds": seconds}
        self.last_train_loss = float(sums[0] / sums[1]) if sums[1] else None
        is_last = self.step >= self.plan.total
        eval_result = None
        due = cfg.eval.every and (epoch + 1) % cfg.eval.every == 0
        if cfg.eval.split and (due or is_last):
            eval_result = self.evaluate()
        record = {"step": self.step, "stage": stage.section.name, "epoch": epoch + 1,
                  "train_loss": self.last_train_loss,
                  "clips_per_s": summary["clips_per_s"], "data_wait_fraction": summary["data_wait_fraction"],
                  "seconds": summary["seconds"]}
        if eval_result is not None:
            record["eval"] = eval_result
        if self.main:
            self.folder.log(record, "metrics.jsonl")
            text = ", ".join(f"{mode} mIoU {row['miou']:.4f} F {row['fscore']:.4f}"
                             for mode, row in (eval_result or {}).items())
            self.say(f"{stage.section.name} epoch {epoch + 1}/{stage.section.epochs}: train loss "
                     f"{record['train_loss']:.4f}, {summary['clips_per_s']:.1f} clips/s, data wait "
                     f"{100 * summary['data_wait_fraction']:.0f}%" + (f"; {text}" if text else ""))
        self.epoch_loss = [0.0, 0]
        self.save_checkpoint()
        return eval_result

    def calibrate_gate(self):
        return _calibrate_gate(self)

    def evaluate(self) -> dict:
        """Metrics on ``eval.split`` with the raw (un-wrapped) model, on this process's shard, merged."""
        from coavs.eval.runner import evaluate

        cfg = self.config
        dataset = getattr(self, "_eval_dataset", None)
        if dataset is None:
            dataset = self._eval_dataset = open_split(cfg, cfg.eval.split)
        self.raw_model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                return evaluate(self.raw_model, dataset, batch_size=cfg.eval.batch_size, device=self.device,
                                modes=cfg.eval_modes(), bias=cfg.eval.bias, max_clips=cfg.eval.max_clips,
                                biased=self.objective.config.biased_audio, alpha=self.objective.config.alpha,
                                scheme=self.objective.config.scheme,
                                strategy="uncertainty" if self.objective.config.strategy == "uncertainty"
                                else "fixed", precision=cfg.run.precision, distributed=self.info.enabled,
                                overall_reading=self.objective.config.overall_reading, gate=self.calibrate_gate())
        finally:
            self.raw_model.train()


def _negative_sampler(cfg: TrainConfig, model):
    from coavs.training.negatives import NegativeSampler

    return NegativeSampler(cfg.negatives, cfg.run.seed, cfg.data.audio, model) if cfg.negatives.enabled else None


def _check_gate_split(cfg: TrainConfig) -> None:
    """A gate to calibrate needs clips in its split: say so before training, not after it."""
    if cfg.gate.mode != "none" and cfg.gate.threshold is None and len(open_split(cfg, cfg.gate.split)) == 0:
        raise ConfigError(f"gate.split: the {cfg.gate.split} split of {cfg.data.root} has no clips to calibrate "
                          "the gate on (use gate.split=train or set gate.threshold)")


def _calibrate_gate(trainer) -> object:
    """The run's gate (``gate`` section): a fixed threshold, or calibrated once per step on ``gate.split`` with
    the raw model and saved as ``<run>/gate.json``; None when ``gate.mode`` is none."""
    from coavs.eval.gate import Gate, calibrate_gate, save_gate

    section = trainer.config.gate
    if section.mode == "none":
        return None
    if section.threshold is not None:
        return Gate(section.mode, section.threshold)
    cached = getattr(trainer, "_gate", None)
    if cached is not None and cached[0] == trainer.step:
        return cached[1]
    dataset = open_split(trainer.config, section.split)
    with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
        gate, stats = calibrate_gate(trainer.raw_model, dataset, section.mode, section.keep,
                                     device=trainer.device, max_clips=section.max_clips, seed=trainer.config.run.seed,
                                     precision=trainer.config.run.precision)
    if trainer.main:
        save_gate(trainer.folder.root, gate, {**stats, "step": trainer.step}, section.split)
    trainer._gate = (trainer.step, gate)
    return gate


def _resolve(config: TrainConfig, dataset, info) -> TrainConfig:
    """The config with the model fully spelled out (no preset; classes from the dataset) and facts about the
    dataset and the run under ``resolved``."""
    model = config.model_config(num_classes=dataset.num_classes)
    kind = getattr(dataset, "kind", "avss")
    resolved = {"dataset_kind": kind, "binary": is_binary(dataset), "class_names": list(dataset.class_names),
                "world_size": info.world_size, "torch": torch.__version__}
    data = dataclasses.replace(config.data, kind=kind if config.data.kind == "auto" else config.data.kind)
    return dataclasses.replace(config, model=model.to_dict(), data=data, resolved=resolved)


def train(config, run_dir, resume: bool = False, max_steps: int | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train as ``config`` says (a :class:`TrainConfig`, a dict, or a YAML/JSON path) into ``run_dir``.

    Args:
        resume: continue the run in ``run_dir`` from its last checkpoint (exactly; the config must be the run's).
        max_steps: stop after this global step (checkpoint saved; resumable) without changing the plan or the
            schedule — unlike ``run.max_steps``, which shortens the plan.
        on_step: called on every process after every step with ``(step, {"loss": …, <terms>})``.

    Returns a summary: ``step``, ``total_steps``, ``finished``, ``stopped`` (None, ``SIGTERM``, ``SIGINT`` or
    ``max_steps``), ``train_loss`` (mean of the last epoch so far), ``eval`` (the last evaluation: mode → metrics),
    ``seconds``, ``run_dir``. Runs under ``torchrun`` as DDP (one process per device).
    """
    if isinstance(config, (str, Path)):
        config = TrainConfig.from_file(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if resume and max_steps is not None and max_steps < 0:
        raise ValueError("max_steps must be >= 0")
    if config.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda, but no CUDA device is visible (use run.device=auto or cpu)")
    if config.data.audio == "vggish" and not Path(config.data.vggish_dir).is_dir():
        raise ConfigError(f"data.vggish_dir {config.data.vggish_dir} is not a folder (data.audio=vggish reads "
                          "<uid>.npy VGGish features from it)")
    was_initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    threads = torch.get_num_threads()
    info = dist_utils.setup(config.run.device)
    lock = RunLock(run_dir) if info.is_main else None  # one run per folder, for the run's whole life
    try:
        if lock is not None:
            lock.acquire()
        trainer = _Trainer(config, run_dir, info, on_step)
        trainer.build(resume)
        if lock is not None and lock.previous_pid is not None:
            trainer.say(f"took over the run folder from pid {lock.previous_pid}, which ended without releasing it")
        return trainer.run(max_steps)
    finally:
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads)  # run.threads applies to the run only
        if not was_initialised:
            dist_utils.teardown()


# ---------------------------------------------------------------------------------------------- loading
def checkpoint_path(run_dir_or_checkpoint) -> Path:
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        path = RunFolder(path).last_checkpoint
    if not path.is_file():
        raise FileNotFoundError(2, "no checkpoint (give a run folder or a .pt file)", str(path))
    return path


def load_model(run_dir_or_checkpoint, device="cpu"):
    """The trained model (eval mode, on ``device``) and the run's resolved :class:`TrainConfig`, from a run folder
    (its ``checkpoints/last.pt``) or a checkpoint file. Loads with ``weights_only=True``."""
    from coavs.models import AVSModel

    path = checkpoint_path(run_dir_or_checkpoint)
    state = ckpt.load(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a coavs training checkpoint")
    config = TrainConfig.from_dict(json.loads(state["config"]))
    model = AVSModel(config.model_config())
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


__all__ = ["TrainConfig", "DataSection", "LossSection", "OptimSection", "StageSection", "EvalSection", "RunSection",
           "train", "load_model", "checkpoint_path", "open_split", "is_binary", "apply_overrides"]
