"""The training config: the schema (:class:`TrainConfig` and its sections), dotted-key overrides, validation (the
ranges of its numbers are in :mod:`coavs.training.config_ranges`); the reader that turns YAML or JSON into nested
dataclasses with errors that name the offending key is :mod:`coavs.training.config_reader`.

    config = TrainConfig.from_file("configs/demo_debias.yaml", overrides=["data.root=data/coavs"])

Config sections (YAML or JSON; every key optional; unknown keys are errors that name the key):

- ``data``: the dataset (``root``, ``kind``, ``split``, ``image_size``, ``audio``, …) and the input pipeline
  (``batch_size`` clips per step and process, ``frames_per_clip``, ``num_workers``, ``cache_dir``, ``markers``);
- ``model``: :class:`coavs.models.ModelConfig` fields, plus ``preset: small | paper`` to start from a preset;
  ``num_classes`` and ``num_audio_classes`` default to the dataset's;
- ``loss``: Mask2Former's weights, points per mask, auxiliary losses, the audio classifier's weight, teacher
  forcing of the class markers;
- ``optim``: AdamW, learning-rate schedule (warm-up, then poly / cosine / constant), gradient clipping, and
  ``debias_lr_scale``: the learning-rate factor of debias training (see :class:`OptimSection`);
- ``debias``: ``strategy: none`` (vanilla training) or ``strategy: fixed | uncertainty | bias_only | ensemble`` (the
  strategy; the old key ``mode`` is accepted with a FutureWarning) with the other
  :class:`coavs.inference.settings.DebiasConfig` fields (``biased_audio``, ``weight``, ``alpha``, …);
- ``stages``: training stages run in order, each with its epochs, AVSS ``subsets``, learning-rate factor, whether it
  trains with the debias section (``debias: false`` for a vanilla stage) and whether it restarts the schedule (the
  AVSS curriculum v1s → v2 → v1m is three stages; the paper's recipe, a vanilla stage then a debias fine-tuning
  stage at a smaller rate, is two — see :class:`StageSection`);
- ``eval``: the split evaluated after epochs, how often, which inference modes, bias metrics or not;
- ``run``: seed, device, precision (fp32 / bf16 / fp16 autocast), ``torch.compile``, logging and checkpoints.
"""


from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass, field

import torch
import yaml

from coavs import jsonio
from coavs.data.splits import base_dataset, is_binary
from coavs.errors import ConfigError
from coavs.eval.gate import GateSection
from coavs.inference.combine import check_mode
from coavs.inference.precision import PRECISIONS
from coavs.inference.settings import STRATEGIES, DebiasConfig
from coavs.models.config import ModelConfig
from coavs.models.hf_mask2former import read_checkpoint
from coavs.training.config_ranges import (NUMBER_RANGES, _numbers, check_finite,  # noqa: F401  (re-export)
                                         check_number_ranges)
from coavs.training.config_reader import from_dict, parse_yaml, read_file, to_dict  # noqa: F401  (re-export)
from coavs.training.negatives import NegativesSection

SCHEDULES = ("poly", "cosine", "constant")
EVAL_PROTOCOLS = ("per_dataset", "per_batch")
DEBIAS_STRATEGIES = ("none", *STRATEGIES)  # the debias section's strategy: none trains the vanilla model only
SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------------------------------------ schema
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
    marker_files: a folder of precomputed per-clip marker files (``<uid>.pth``, the paper's way; ``coavs
    markers`` writes them, :mod:`coavs.data.markers` reads them). The model then takes every frame's markers
    from them, in training and evaluation, instead of its learned classifier and k-means (``markers`` is unused;
    the classifier gets no loss). Its ``markers.json`` sets the defaults of ``model.num_audio_classes`` and
    ``model.num_clusters`` (without one, set both: their sum is the files' width); the biased branch activates
    every marker-owned query (``model.biased_queries: all``, the default) or shares the files' markers
    (``shared``, as the reference code does; ``own`` needs the classifier the files replace); teacher
    forcing (``loss.teacher_forcing``) still makes the ground-truth classes' markers present in training.
    The ``gate`` and ``negatives`` sections, which read the model's own classifier, cannot be combined with it.
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
    marker_files: str | None = None


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

    The learning rate is ``lr`` times ``debias_lr_scale`` in the stages that train with debias: the debiased logits
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
    given, e.g. ``[v1s]``), with the learning rate multiplied by ``lr_scale``.

    ``debias``: train this stage with the ``debias`` section (true) or as the vanilla model (false); None (the
    default): as the ``debias`` section says. ``restart_schedule``: warm-up and decay start again at this stage and
    run over the steps up to the next restart, as a separate run would (``coavs train --init-from``). The paper's
    recipe — train the vanilla model to adequate performance, then fine-tune it with the debias strategy at a
    smaller learning rate — is::

        debias: {strategy: fixed, biased_audio: mute}
        optim: {debias_lr_scale: 0.1}
        stages:
          - {name: vanilla, epochs: 30, debias: false}
          - {name: debias, epochs: 10, debias: true, restart_schedule: true}
    """

    name: str = "main"
    epochs: int = 1
    subsets: list[str] | None = None
    lr_scale: float = 1.0
    debias: bool | None = None
    restart_schedule: bool = False


@dataclass
class EvalSection:
    """Evaluation during training: ``split`` ("" = none) after every ``every`` epochs (0: after the last one
    only), inference ``modes`` (default: vanilla, plus debias for a debias-trained model), ``bias``: also the
    false-positive rates under silence, noise and misaligned audio (three more passes). ``max_clips`` caps the
    clips evaluated; ``batch_size`` is in clips. ``protocol`` (S4/MS3 only): ``per_dataset`` weighs every frame
    alike and averages one F curve over the split; ``per_batch`` averages per-batch numbers as AVSBench's
    ``test.py`` and the paper's code do, one batch = ``batch_size`` clips (their test loaders take 1 clip per
    batch), so it depends on the batch size (:class:`coavs.eval.metrics.BinaryAVSMetrics`). AVSS sums over the
    dataset under both."""

    split: str = "val"
    every: int = 1
    modes: list[str] | None = None
    bias: bool = False
    batch_size: int = 4
    max_clips: int | None = None
    protocol: str = "per_dataset"


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
    init_from: a run folder (its last checkpoint) or checkpoint file of an earlier run whose model weights —
    markers included — this run starts from, with a fresh optimizer and schedule (``coavs train --init-from RUN``;
    e.g. a debias fine-tuning of a vanilla run). Its model must match this config's and its dataset's classes.
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
    init_from: str | None = None  # a run folder or checkpoint whose model weights start this run (--init-from)


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
    debias: dict = field(default_factory=lambda: {"strategy": "none"})
    stages: list[StageSection] = field(default_factory=lambda: [StageSection(epochs=10)])
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)
    negatives: NegativesSection = field(default_factory=NegativesSection)  # negative-audio training (negatives.py)
    gate: GateSection = field(default_factory=GateSection)  # inference "nothing sounds" gate (coavs/eval/gate.py)
    resolved: dict = field(default_factory=dict)  # filled by train(): dataset kind, classes, world size

    def __post_init__(self):
        self.debias = _rename_debias_mode(self.debias)
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
    def model_config(self, num_classes: int | None = None, marker_layout: tuple[int, int] | None = None,
                     binary: bool = False):
        """The :class:`ModelConfig`: ``model.preset`` (``small``/``paper``) or the defaults, updated with the
        other ``model`` keys; ``audio_input`` defaults to ``data.audio``; ``num_classes`` (the dataset's) fills
        ``num_classes`` and ``num_audio_classes`` = K − 1 (a class marker per class) when the config does not
        set them. ``marker_layout`` ``(C, M)`` (of ``data.marker_files``) fills ``num_audio_classes`` and
        ``num_clusters`` first; with marker files ``biased_queries`` may not be ``own``. ``binary``
        (S4/MS3) makes ``target_markers`` default to ``any`` (the foreground may go to the queries of any present
        marker, class or cluster; :mod:`coavs.models.config`)."""
        fields = dict(self.model)
        if binary:
            fields.setdefault("target_markers", "any")
        preset = fields.pop("preset", None)
        fields.setdefault("audio_input", self.data.audio)
        if self.data.marker_files:
            if fields.get("biased_queries") == "own":
                raise ConfigError("model.biased_queries own perceives the biased branch's markers with the model's "
                                  "classifier; with data.marker_files use all (every marker-owned query, the "
                                  "default) or shared (the files' markers, the reference code's way)")
            if marker_layout is not None:
                fields.setdefault("num_audio_classes", marker_layout[0])
                fields.setdefault("num_clusters", marker_layout[1])
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
        """The :class:`DebiasConfig` of ``debias`` (``enabled`` False for ``strategy: none``)."""
        fields = dict(self.debias)
        strategy = fields.pop("strategy", "none")
        if strategy not in DEBIAS_STRATEGIES:
            raise ConfigError(f"debias.strategy (formerly debias.mode) must be one of {', '.join(DEBIAS_STRATEGIES)}, "
                              f"got {strategy!r}")
        if "enabled" in fields:
            raise ConfigError("debias.enabled is set by debias.strategy (none, fixed, uncertainty or bias_only)")
        known = {f.name for f in dataclasses.fields(DebiasConfig)} - {"enabled", "strategy"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join('debias.' + k for k in unknown)}; known: strategy, "
                              f"{', '.join(sorted(known))}")
        try:
            binary = bool(self.resolved.get("binary", False))  # scheme auto: mask for binary AVS (B.2)
            if strategy == "none":
                return DebiasConfig(enabled=False, **fields).resolved(binary)
            return DebiasConfig(enabled=self.debias_enabled, strategy=strategy, **fields).resolved(binary)
        except ValueError as exc:
            raise ConfigError(f"debias: {exc}") from None

    def stage_trains_debias(self, stage: StageSection) -> bool:
        """Whether ``stage`` trains with the debias section (its ``debias`` flag, else the section's strategy)."""
        return self.debias.get("strategy", "none") != "none" if stage.debias is None else bool(stage.debias)

    @property
    def debias_enabled(self) -> bool:
        """Whether the model is debias-trained: a debias strategy and at least one stage that trains with it
        (such a model has a biased branch, and is evaluated debiased)."""
        return self.debias.get("strategy", "none") != "none" and any(self.stage_trains_debias(s) for s in self.stages)

    def inference_mode(self) -> str:
        """How the trained model predicts: ``debias`` (the two branches combined) for a debias-trained model,
        ``vanilla`` otherwise — and for the ``ensemble`` strategy, whose vanilla branch alone is the debiased model
        (trained in a product of experts with the biased branch)."""
        if self.debias_enabled and self.debias.get("strategy") != "ensemble":
            return "debias"
        return "vanilla"

    def eval_modes(self) -> list[str]:
        if self.eval.modes is not None:
            return list(self.eval.modes)
        return ["vanilla", "debias"] if self.inference_mode() == "debias" else ["vanilla"]

    # ----------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        d, o, r, e = self.data, self.optim, self.run, self.eval
        check_finite(to_dict(self))
        if d.split not in SPLITS:
            raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got {d.split!r}")
        if e.split not in ("",) + SPLITS:
            raise ConfigError(f"eval.split must be one of {', '.join(SPLITS)} or empty (no evaluation), "
                              f"got {e.split!r}")
        if d.image_size is not None and d.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1 or null (as stored), got {d.image_size}")
        if d.num_frames is not None and d.num_frames < 1:
            raise ConfigError(f"data.num_frames must be >= 1 or null (as stored), got {d.num_frames}")
        if d.marker_files is not None and not d.marker_files:
            raise ConfigError("data.marker_files must name the folder of per-clip marker files that `coavs markers` "
                              "wrote (--set data.marker_files=DIR), or be null for learned markers")
        if d.marker_files and self.gate.mode != "none":
            raise ConfigError("gate.mode needs the model's own audio classifier; data.marker_files replaces it "
                              "(set gate.mode: none)")
        if d.marker_files and self.negatives.ratio > 0:
            raise ConfigError("negatives train the model's own audio classifier; data.marker_files replaces it "
                              "(set negatives.ratio: 0)")
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
            if stage.debias and self.debias.get("strategy", "none") == "none":
                raise ConfigError(f"stages[{i}].debias is true but debias.strategy is none: name the strategy "
                                  "(fixed, uncertainty, bias_only or ensemble) in the debias section")
        if r.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {', '.join(PRECISIONS)}, got {r.precision!r}")
        if r.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"run.device must be auto, cpu or cuda, got {r.device!r}")
        if r.max_steps is not None and r.max_steps < 1:
            raise ConfigError(f"run.max_steps must be >= 1, got {r.max_steps}")
        if not isinstance(r.compile, (bool, str)):
            raise ConfigError(f"run.compile must be true, false or a torch.compile backend name, got {r.compile!r}")
        if isinstance(r.compile, str):
            backends = torch.compiler.list_backends(exclude_tags=())  # imports torch._dynamo (seconds) when asked
            if r.compile not in backends:
                raise ConfigError(f"run.compile must be true, false or a torch.compile backend such as inductor, "
                                  f"aot_eager or eager (see torch.compiler.list_backends()), got {r.compile!r}")
        if r.threads is not None and r.threads != "auto" and (not isinstance(r.threads, int) or r.threads < 1):
            raise ConfigError(f"run.threads must be >= 1, 'auto' or null, got {r.threads!r}")
        if r.log_every < 1 or r.checkpoint_every < 0:
            raise ConfigError("run.log_every must be >= 1 and run.checkpoint_every >= 0")
        if self.loss.num_points < 1:
            raise ConfigError(f"loss.num_points must be >= 1, got {self.loss.num_points}")
        if e.every < 0 or e.batch_size < 1:
            raise ConfigError("eval.every must be >= 0 and eval.batch_size >= 1")
        if e.protocol not in EVAL_PROTOCOLS:
            raise ConfigError(f"eval.protocol must be {' or '.join(EVAL_PROTOCOLS)}, got {e.protocol!r}")
        check_number_ranges(to_dict(self))  # every other number (the checks above have the more specific messages)
        for mode in self.eval_modes():
            try:
                check_mode(mode)
            except ValueError as exc:
                raise ConfigError(f"eval.modes: {exc}") from None
        self.debias_config()
        self.model_config(num_classes=self.model.get("num_classes"))


def stored_config(data, what: str, path) -> TrainConfig:
    """The :class:`TrainConfig` of ``data``, the resolved config that ``path`` holds (a run's ``config.json``, a
    checkpoint); anything wrong with it is a one-line ConfigError naming ``what`` and ``path``."""
    jsonio.check_object(data, path, what, ConfigError)
    try:
        return TrainConfig.from_dict(data)
    except ValueError as exc:  # ConfigError included: an unknown key, a value of the wrong type or range
        reason = str(exc)
    jsonio.fail(ConfigError, path, what, reason)


def _rename_debias_mode(debias):
    """The ``debias`` section with its old key ``mode`` renamed to ``strategy`` (one FutureWarning line, which
    Python shows to users by default)."""
    if not isinstance(debias, dict) or "mode" not in debias:
        return debias
    debias = dict(debias)
    old = debias.pop("mode")
    if "strategy" in debias and debias["strategy"] != old:
        raise ConfigError(f"debias.mode is the old name of debias.strategy; give only debias.strategy (got mode "
                          f"{old!r} and strategy {debias['strategy']!r})")
    warnings.warn("the config key debias.mode is deprecated: call it debias.strategy", FutureWarning, stacklevel=4)
    debias["strategy"] = old
    return debias


def apply_overrides(data: dict, overrides) -> dict:
    """``data`` (nested dicts) with dotted-key overrides applied; values given as strings are parsed as YAML
    (``null`` is None; an empty value is the empty string)."""
    if not overrides:
        return data
    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r} must look like section.key=value")
            key, value = text.split("=", 1)
            try:
                parsed.append((key.strip(), parse_yaml(value) if value.strip() else ""))
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


def config_differences(a: TrainConfig, b: TrainConfig, ignore=_RESUMABLE_CHANGES) -> list[str]:
    """Dotted keys whose values differ (ignoring ``ignore`` prefixes)."""
    fa, fb = _flatten(json.loads(json.dumps(a.to_dict()))), _flatten(json.loads(json.dumps(b.to_dict())))
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)]


def prepare_segmenter(config: TrainConfig) -> TrainConfig:
    """The config with what an ``hf_mask2former`` segmenter takes from its checkpoint folder filled in (once, at
    the start of a run; a run's config.json keeps it): ``model.hf_config`` (the checkpoint's config.json),
    ``hidden_dim`` and ``num_queries`` (the checkpoint's, unless the config sets them), ``pixel_mean`` /
    ``pixel_std`` (its image processor's) and ``data.image_size`` (its image processor's size, unless set).
    Other configs come back unchanged."""
    model = dict(config.model)
    if model.get("segmenter") != "hf_mask2former" or model.get("hf_config") is not None:
        return config
    if not model.get("checkpoint"):
        raise ConfigError("model.segmenter hf_mask2former needs model.checkpoint: the folder of a Mask2Former saved "
                          "with save_pretrained (e.g. facebook/mask2former-swin-base-ade-semantic)")
    try:
        info = read_checkpoint(model["checkpoint"])
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    model.setdefault("hidden_dim", info.config["hidden_dim"])
    model.setdefault("num_queries", info.config["num_queries"])
    model.setdefault("pixel_mean", list(info.pixel_mean))
    model.setdefault("pixel_std", list(info.pixel_std))
    model["hf_config"] = info.config
    data = config.data
    if data.image_size is None and info.image_size is not None:
        data = dataclasses.replace(data, image_size=info.image_size)
    return dataclasses.replace(config, model=model, data=data)


def resolve(config: TrainConfig, dataset, world_size: int) -> TrainConfig:
    """The config with the model fully spelled out (no preset; classes from the dataset) and facts about the
    dataset and the run under ``resolved``."""
    layout = getattr(base_dataset(dataset), "marker_layout", None)
    model = config.model_config(num_classes=dataset.num_classes, marker_layout=layout,
                                binary=is_binary(dataset))
    if layout is not None and (model.num_audio_classes, model.num_clusters) != tuple(layout):
        raise ConfigError(f"data.marker_files holds {layout[0]} class + {layout[1]} cluster markers (its "
                          f"markers.json); the model has num_audio_classes={model.num_audio_classes}, num_clusters="
                          f"{model.num_clusters}: leave them unset or make them match")
    kind = getattr(dataset, "kind", "avss")
    resolved = {"dataset_kind": kind, "binary": is_binary(dataset), "class_names": list(dataset.class_names),
                "world_size": world_size, "torch": torch.__version__}
    data = dataclasses.replace(config.data, kind=kind if config.data.kind == "auto" else config.data.kind)
    return dataclasses.replace(config, model=model.to_dict(), data=data, resolved=resolved)


