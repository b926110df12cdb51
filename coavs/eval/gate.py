"""Inference-time "nothing sounds" gate from the perception classifier or a sounding probe (beyond the paper).

The audio classifier gives ``p = σ(audio_logits) [N,C]``, one probability per sounding class. Modes:

- ``any``: a frame whose "anything sounds" score is below ``τ`` is predicted empty (all background; binary
  foreground score 0) — silence and noise should make nothing sound. The score is the top class probability
  ``max_c p_c``, or, with ``probe: true``, a sounding probe's: a small MLP on the model's frozen audio
  embedding fitted after training on the *training* split, its frames' own audio (sounding) against silence
  and white noise made from them (not sounding) (:func:`fit_sounding_probe`). The probe needs no retraining and
  leaves the segmenter untouched; the classifier, trained on positives only, has never heard silence;
- ``class``: a pixel labelled class ``k`` whose own probability ``p_k`` is below ``τ`` becomes background — the
  visible object whose sound is not heard (e.g. under another clip's audio) is not segmented. Classes without
  a classifier marker are never gated; binary models (one class) gate as ``any``.

``τ`` is calibrated on a training or validation split, never on the test split (:func:`calibrate_gate`): the
scores of the positive cases (``any``: frames with a sounding pixel; ``class``: every (frame, sounding class)
pair), with the frame's own audio, and of negatives made from the same frames (silence and white noise); ``τ``
keeps ``keep`` of the positives (the ``1 − keep`` quantile of their scores) and, when the negatives' 95th
percentile lies below that, sits midway between the two.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from coavs import jsonio
from coavs.data.splits import is_binary
from coavs.errors import ConfigError
from coavs.eval.runner import _clip_indices, _model_batches
from coavs.inference.gate import (GATE_MODES, Gate, SoundingProbe, apply_gate,  # noqa: F401  (re-export)
                                  sounding_probability)

CALIBRATION_SPLITS = ("train", "val")
GATE_FILE = "gate.json"
PROBE_FILE = "gate_probe.pt"


@dataclass
class GateSection:
    """``gate`` config section: ``mode`` none (default) | any | class; ``threshold`` a fixed τ (None: calibrate
    on ``split`` — train or val — keeping ``keep`` of the positive cases; ``max_clips`` caps the clips used);
    ``probe`` (mode any): score frames with a sounding probe fitted on the training split (module docstring)."""

    mode: str = "none"
    threshold: float | None = None
    keep: float = 0.98
    split: str = "val"
    max_clips: int | None = None
    probe: bool = False

    def __post_init__(self):
        if self.mode not in GATE_MODES:
            raise ConfigError(f"gate.mode must be one of {', '.join(GATE_MODES)}, got {self.mode!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"gate.threshold must be in [0, 1] or null (calibrate), got {self.threshold}")
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"gate.keep must be in (0, 1], got {self.keep}")
        if self.split not in CALIBRATION_SPLITS:
            raise ConfigError(f"gate.split must be train or val (never the test split), got {self.split!r}")
        if self.probe and self.mode != "any":
            raise ConfigError(f"gate.probe gates whole frames: it needs gate.mode any, got {self.mode!r}")
        if self.probe and self.threshold is not None:
            raise ConfigError("gate.probe is fitted and calibrated after training: leave gate.threshold null")


def _positive_scores(probs: Tensor, labels: Tensor, mode: str, binary: bool) -> Tensor:
    valid = (labels != 255) & (labels != 0)
    if mode == "any" or binary:
        return probs.amax(dim=1)[_sounding_frames(labels)]
    scores = []
    classes = probs.shape[1]
    for i in range(labels.shape[0]):
        present = labels[i][valid[i]].unique()
        present = present[(present >= 1) & (present <= classes)]
        scores.append(probs[i, present - 1])
    return torch.cat(scores) if scores else probs.new_zeros(0)


def choose_threshold(positive: Tensor, negative: Tensor, keep: float) -> float:
    """τ from positive and negative scores (see the module docstring)."""
    if positive.numel() == 0:
        raise ValueError("cannot calibrate the gate: no positive case in the calibration split")
    pos = positive.double().sort().values
    tau = float(pos[min(int(math.floor((1.0 - keep) * pos.numel())), pos.numel() - 1)])
    if negative.numel():
        neg95 = float(torch.quantile(negative.double(), 0.95))
        if neg95 < tau:
            tau = (tau + neg95) / 2
    return min(max(tau, 0.0), 1.0)


def _sounding_frames(labels: Tensor) -> Tensor:
    """``[N]`` bool: frames with at least one sounding (annotated, non-background) pixel."""
    return ((labels != 255) & (labels != 0)).flatten(1).any(dim=1)


def fit_sounding_probe(model, dataset, *, steps: int = 300, lr: float = 1e-2, batch_size: int = 8, device="cpu",
                       max_clips: int | None = None, seed: int = 0,
                       precision: str = "fp32") -> tuple[SoundingProbe, dict]:
    """Fit a :class:`SoundingProbe` on the frozen audio embedding of ``dataset`` (the training split): frames
    with a sounding pixel under their own audio are positive, the same frames with silence and with white noise
    negative; full-batch Adam for ``steps`` on the class-balanced BCE. → ``(probe, stats)``: ``positives``,
    ``negatives``, ``loss``, ``accuracy`` (on the fitting data)."""
    embeddings, targets = [], []
    indices = _clip_indices(dataset, max_clips, distributed=False)
    for batch, outputs in _model_batches(model, dataset, indices, batch_size=batch_size, device=device,
                                         conditions=("normal", "silence", "noise"), needs_biased=False, biased=None,
                                         seed=seed, num_workers=0, precision=precision, progress=False,
                                         audio_only=True):
        sounding = _sounding_frames(batch["labels"])
        for condition, out in outputs.items():
            embedding = out["audio_embedding"].float()
            if condition == "normal":
                embeddings.append(embedding[sounding])
                targets.append(torch.ones(int(sounding.sum()), device=embedding.device))
            else:
                embeddings.append(embedding)
                targets.append(torch.zeros(embedding.shape[0], device=embedding.device))
    x = torch.cat(embeddings) if embeddings else torch.zeros(0)
    y = torch.cat(targets) if targets else torch.zeros(0)
    positives, negatives = int(y.sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("cannot fit the sounding probe: the training split has no frame with a sounding pixel")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = SoundingProbe(x.shape[1]).to(x.device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    weight = torch.tensor(negatives / positives, device=x.device)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(probe(x), y, pos_weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.eval()
    with torch.no_grad():
        accuracy = float(((probe(x) > 0).float() == y).float().mean())
    stats = {"positives": positives, "negatives": negatives, "loss": float(loss.detach()), "accuracy": accuracy}
    return probe.cpu(), stats


def calibrate_gate(model, dataset, mode: str, keep: float = 0.98, *, batch_size: int = 8, device="cpu",
                   max_clips: int | None = None, seed: int = 0, precision: str = "fp32",
                   probe: SoundingProbe | None = None) -> tuple[Gate, dict]:
    """Calibrate τ on ``dataset`` (a training or validation split) → ``(Gate, stats)``; see the module
    docstring. ``probe`` (mode any): score frames with it. ``stats``: ``positives``, ``negatives``,
    ``positive_kept``, ``negative_gated``."""
    if mode not in GATE_MODES[1:]:
        raise ValueError(f"mode must be 'any' or 'class', got {mode!r}")
    if probe is not None and mode != "any":
        raise ValueError("a sounding probe needs mode 'any'")
    binary = is_binary(dataset)
    positives, negatives = [], []
    indices = _clip_indices(dataset, max_clips, distributed=False)
    for batch, outputs in _model_batches(model, dataset, indices, batch_size=batch_size, device=device,
                                         conditions=("normal", "silence", "noise"), needs_biased=False, biased=None,
                                         seed=seed, num_workers=0, precision=precision, progress=False,
                                         audio_only=True):
        labels = batch["labels"]
        for condition, out in outputs.items():
            if probe is not None:
                score = sounding_probability(None, probe, out.get("audio_embedding"))
                chosen = score[_sounding_frames(labels)] if condition == "normal" else score
            else:
                if out.get("audio_logits") is None:
                    raise ValueError("the gate needs the model's audio classifier (num_audio_classes > 0)")
                probs = torch.sigmoid(out["audio_logits"].float())
                chosen = (_positive_scores(probs, labels, mode, binary) if condition == "normal"
                          else probs.amax(dim=1))
            (positives if condition == "normal" else negatives).append(chosen.cpu())
    pos = torch.cat(positives) if positives else torch.zeros(0)
    neg = torch.cat(negatives) if negatives else torch.zeros(0)
    tau = choose_threshold(pos, neg, keep)
    stats = {"positives": int(pos.numel()), "negatives": int(neg.numel()),
             "positive_kept": float((pos >= tau).double().mean()) if pos.numel() else math.nan,
             "negative_gated": float((neg < tau).double().mean()) if neg.numel() else math.nan}
    return Gate(mode, tau, probe), stats


def build_gate(model, calibration, mode: str, keep: float = 0.98, *, training=None,
               **settings) -> tuple[Gate, dict]:
    """:func:`calibrate_gate` on ``calibration``; with ``training`` (the training split) a sounding probe is
    fitted on it first and gated on (``stats["probe"]``: :func:`fit_sounding_probe`'s stats). ``settings``:
    ``batch_size``, ``device``, ``max_clips``, ``seed``, ``precision``."""
    probe, probe_stats = None, None
    if training is not None:
        probe, probe_stats = fit_sounding_probe(model, training, **settings)
    gate, stats = calibrate_gate(model, calibration, mode, keep, probe=probe, **settings)
    if probe_stats is not None:
        stats["probe"] = probe_stats
    return gate, stats


def save_gate(run_dir, gate: Gate, stats: dict | None = None, split: str | None = None) -> Path:
    """Write ``<run>/gate.json`` (and ``gate_probe.pt`` for a gate with a sounding probe)."""
    run_dir = Path(run_dir)
    probe_file = None
    if gate.probe is not None:
        probe_file = PROBE_FILE
        torch.save({"dim": gate.probe.dim, "state_dict": gate.probe.state_dict()}, run_dir / PROBE_FILE)
    path = run_dir / GATE_FILE
    jsonio.write_json(path, {"mode": gate.mode, "threshold": gate.threshold, "split": split, "probe": probe_file,
                             "stats": stats or {}})
    return path


def load_gate(run_dir) -> Gate | None:
    """The gate a run calibrated (``<run>/gate.json``, with its probe), or None (no file, or a checkpoint path)."""
    path = Path(run_dir)
    path = path / GATE_FILE if path.is_dir() else path.parent.parent / GATE_FILE
    if not path.is_file():
        return None
    data = jsonio.read_json_object(path, "gate", ConfigError, fields={"mode": str, "threshold": float},
                                   optional={"probe": (str, type(None))})
    probe = _load_probe(path.parent / data["probe"]) if data.get("probe") else None
    try:
        return Gate(data["mode"], float(data["threshold"]), probe)
    except ValueError as exc:  # a mode or threshold out of range, a probe under the class mode
        reason = str(exc)
    jsonio.fail(ConfigError, path, "gate", reason)


def _load_probe(path: Path) -> SoundingProbe:
    """The sounding probe that :func:`save_gate` wrote to ``path``; a damaged file is a one-line ConfigError."""
    if not path.is_file():
        raise FileNotFoundError(2, "the gate's sounding probe is missing (recalibrate the gate)", str(path))
    try:
        with warnings.catch_warnings():  # torch's advice on weights_only would follow the one-line error
            warnings.simplefilter("ignore")
            stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        reason = f"not a readable torch file ({type(exc).__name__})"
    else:
        reason = _probe_problem(stored)
        if reason is None:
            probe = SoundingProbe(stored["dim"])
            probe.load_state_dict(stored["state_dict"])
            return probe.eval()
    jsonio.fail(ConfigError, path, "gate probe", f"{reason}; recalibrate the gate")


def _probe_problem(stored) -> str | None:
    """What keeps ``stored`` from being a saved :class:`SoundingProbe`, or None."""
    if not (isinstance(stored, dict) and isinstance(stored.get("dim"), int) and stored["dim"] >= 1
            and isinstance(stored.get("state_dict"), dict)):
        return "not a sounding probe saved by coavs gate (a dict of dim and state_dict)"
    with torch.device("meta"):  # the shapes a probe of that width has, without allocating it
        expected = {k: tuple(v.shape) for k, v in SoundingProbe(stored["dim"]).state_dict().items()}
    got = {k: tuple(v.shape) if isinstance(v, Tensor) else None for k, v in stored["state_dict"].items()}
    if got != expected:
        return f"its state_dict is not that of a sounding probe of dim {stored['dim']}"
    return None


__all__ = ["GATE_MODES", "GateSection", "Gate", "SoundingProbe", "apply_gate", "build_gate", "calibrate_gate",
           "choose_threshold", "fit_sounding_probe", "save_gate", "load_gate"]
