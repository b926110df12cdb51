"""Bias metrics: does the prediction follow the audio, or what usually sounds? (docs/design.md, "Bias metrics")

- **False-positive rate under negative audio** (AVSBench-Robust's FPR): give the model audio that should make
  nothing sound — silence, white noise, or the audio of another clip of a different class — and measure the
  fraction of pixels it still predicts as sounding, averaged over frames. A model with a visual prior segments
  the usual sounding object anyway.
- **Counterfactual score** on frames with two visible sources: play the audio of one source only and measure the
  IoU of the prediction with *that* source's mask (and, as a leak measure, with the other source's mask). A model
  with audio priming bias segments both, or the wrong one.
- **Swapped audio** (the visual-prior condition): the same plays, read from the silent source's side — a visible
  object of a class that usually sounds is silent while another visible object sounds; ``fp_swapped`` is the
  share of the silent object's pixels still called sounding, averaged over cases (0 = the prior is ignored).

Everything is built on predictions: ``FalsePositiveRate`` and ``CounterfactualScore`` take predicted masks and
``BiasMeters`` holds one of each per negative kind (the one state that both ``BiasEvaluator`` and the evaluation
runner feed, so there is one bias-evaluation path); ``BiasEvaluator`` drives any
``predict(frames, audio) -> mask logits | probabilities | labels`` callable, so no model class is needed. Audio
is any ``[B, ...]`` tensor: raw waveforms ``[B, samples]``, embeddings ``[B, D]`` or ``[B, T, D]``; the
negative-audio helpers keep the shape.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from coavs.eval.metrics import frame_iou

NEGATIVE_KINDS = ("silence", "noise", "misaligned")  # as the runner's audio conditions; fpr_<kind> each
_OLD_KIND_NAMES = {"other": "misaligned"}  # accepted as input; results use the new name
OUTPUTS = ("logits", "probabilities", "labels")


# ---------------------------------------------------------------------------------------- negative audio
def _check_audio(audio) -> None:
    if not isinstance(audio, Tensor) or not audio.is_floating_point():
        raise TypeError("audio must be a floating-point Tensor [B, ...] (waveforms or embeddings)")
    if audio.dim() < 2:
        raise ValueError(f"audio must have a batch dimension and at least one more, got shape {tuple(audio.shape)}")


def item_rms(audio: Tensor) -> Tensor:
    """Root mean square of every item of ``audio [B, ...]``, ``[B]`` float32."""
    _check_audio(audio)
    return audio.detach().float().flatten(1).pow(2).mean(1).sqrt()


def silence_like(audio: Tensor) -> Tensor:
    """Zeros shaped like ``audio``: silent waveforms, or the muted ("zero audio") embedding."""
    _check_audio(audio)
    return torch.zeros_like(audio)


def white_noise_like(audio: Tensor, rms: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian white noise shaped like ``audio [B, ...]``, each item scaled to an exact RMS.

    ``rms``: the target RMS of every item (e.g. 0.1 of full scale for waveforms), or None to match each item's
    own RMS (noise as loud as the real clip, or at the scale of the real embeddings). Drawn on the generator's
    device (CPU by default) and moved to ``audio``'s device and dtype.
    """
    _check_audio(audio)
    if rms is not None and (isinstance(rms, bool) or not isinstance(rms, (int, float)) or not math.isfinite(rms)
                            or rms < 0):
        raise ValueError(f"rms must be a finite number >= 0 or None, got {rms!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(audio.shape, generator=generator, device=gen_device, dtype=torch.float32).to(audio.device)
    target = item_rms(audio) if rms is None else torch.full((audio.shape[0],), float(rms), device=audio.device)
    scale = target / item_rms(noise).clamp_min(torch.finfo(torch.float32).tiny)
    return (noise * scale.view(-1, *([1] * (audio.dim() - 1)))).to(audio.dtype)


def _label_sets(labels: Tensor, batch: int, name: str) -> Tensor:
    """``[B, C]`` bool class sets from ``[B]`` int class ids, ``[B, C]`` multi-hot labels, or ``[B,H,W]`` label maps
    (the classes present, without background 0 and the ignore value 255; C = 256)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a Tensor of class ids [B], multi-hot labels [B, C] or label maps [B,H,W]")
    if labels.shape[0] != batch:
        raise ValueError(f"{name} must have one entry per audio item ({batch}), got shape {tuple(labels.shape)}")
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"{name} [B] must hold integer class ids, got {labels.dtype}")
        return labels.long()[:, None]
    if labels.dim() == 2:
        return labels != 0
    if labels.dim() == 3 and not labels.is_floating_point():
        maps = labels.long().flatten(1)
        if bool(((maps < 0) | (maps > 255)).any()):
            raise ValueError(f"{name} label maps must hold values in [0, 255]")
        present = torch.zeros(batch, 256, dtype=torch.bool, device=labels.device)
        present.scatter_(1, maps, True)
        present[:, 0] = present[:, 255] = False  # background, not annotated
        return present
    raise ValueError(f"{name} must be [B] class ids, [B, C] multi-hot or [B,H,W] label maps, got shape "
                     f"{tuple(labels.shape)}")


def other_class_donors(labels: Tensor, pool_labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """For every item, the index of a donor of a *different* class, drawn uniformly, ``[B]`` long.

    ``labels``: ``[B]`` class ids or ``[B, C]`` multi-hot (different = no class in common). Donors come from
    ``pool_labels`` (same format) when given, else from the batch itself. Raises when an item has no donor.
    """
    batch = labels.shape[0] if isinstance(labels, Tensor) else -1
    own = _label_sets(labels, batch, "labels").cpu()
    pool = own if pool_labels is None else _label_sets(pool_labels, pool_labels.shape[0], "pool_labels").cpu()
    if own.dtype != pool.dtype or own.shape[1] != pool.shape[1]:
        raise ValueError(f"labels and pool_labels must be in the same format (both [B] ids or both [B, C] "
                         f"multi-hot with the same C), got {tuple(labels.shape)} and {tuple(pool_labels.shape)}")
    if own.dtype == torch.bool:
        different = ~(own.long() @ pool.long().T).bool()
    else:
        different = own != pool.T
    donors = torch.empty(batch, dtype=torch.long)
    for i in range(batch):
        candidates = different[i].nonzero().flatten()
        if candidates.numel() == 0:
            source = "the pool" if pool_labels is not None else "the batch"
            raise ValueError(f"item {i} has no audio of a different class in {source}; pass pool_audio/"
                             "pool_labels with clips of other classes")
        donors[i] = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
    return donors


def audio_of_other_class(audio: Tensor, labels: Tensor, pool_audio: Tensor | None = None,
                         pool_labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Every item's audio replaced by the audio of another clip of a different class (see
    :func:`other_class_donors`); from ``pool_audio`` when given (same item shape), else from the batch."""
    _check_audio(audio)
    if (pool_audio is None) != (pool_labels is None):
        raise ValueError("pool_audio and pool_labels must be given together")
    source = audio if pool_audio is None else pool_audio
    if pool_audio is not None:
        _check_audio(pool_audio)
        if pool_audio.shape[1:] != audio.shape[1:]:
            raise ValueError(f"pool_audio items must be shaped like audio items: {tuple(pool_audio.shape[1:])} vs "
                             f"{tuple(audio.shape[1:])}")
    donors = other_class_donors(labels, pool_labels, generator)
    return source[donors.to(source.device)].to(device=audio.device, dtype=audio.dtype)


def negative_audio(kind: str, audio: Tensor, labels: Tensor | None = None, rms: float | None = None,
                   pool_audio: Tensor | None = None, pool_labels: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Audio that should make nothing sound: ``silence``, ``noise`` (white, at ``rms``), or ``misaligned`` (audio
    of a clip of a different class; needs ``labels``; ``other`` is its old name)."""
    kind = _OLD_KIND_NAMES.get(kind, kind)
    if kind == "silence":
        return silence_like(audio)
    if kind == "noise":
        return white_noise_like(audio, rms, generator)
    if kind == "misaligned":
        if labels is None:
            raise ValueError("negative audio 'misaligned' needs the class labels of the clips")
        return audio_of_other_class(audio, labels, pool_audio, pool_labels, generator)
    raise ValueError(f"kind must be one of {NEGATIVE_KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------------------ predictions
def sounding_pixels(pred: Tensor, output: str = "logits", background: int = 0) -> Tensor:
    """Which pixels a prediction calls sounding, ``[B,H,W]`` bool.

    ``output``: ``logits`` (``σ(x) > 0.5``, as the S4/MS3 mIoU), ``probabilities`` (``p > 0.5``) or ``labels``
    (``label != background``). ``[B,1,H,W]`` is accepted.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not isinstance(pred, Tensor):
        raise TypeError(f"pred must be a Tensor, got {type(pred).__name__}")
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.dim() != 3:
        raise ValueError(f"pred must be [B,H,W] (or [B,1,H,W]), got shape {tuple(pred.shape)}")
    if output == "labels":
        if pred.is_floating_point() or pred.dtype == torch.bool:
            raise TypeError(f"label predictions must be an integer tensor, got {pred.dtype}")
        return pred != background
    if pred.dtype == torch.bool:
        return pred
    if not pred.is_floating_point():
        raise TypeError(f"{output} must be a floating-point tensor, got {pred.dtype}")
    p = pred.detach().float()
    return (torch.sigmoid(p) if output == "logits" else p) > 0.5


def _check_mask(mask: Tensor, name: str, shape) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be a binary mask")
        mask = mask != 0
    return mask


class FalsePositiveRate:
    """Mean over frames of the fraction of pixels predicted as sounding (to be fed predictions made with
    negative audio, where every sounding pixel is a false positive)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self._fraction_sum = 0.0

    def update(self, sounding: Tensor) -> None:
        """``sounding [B,H,W]`` bool (see :func:`sounding_pixels`)."""
        if not isinstance(sounding, Tensor) or sounding.dtype != torch.bool or sounding.dim() != 3:
            raise TypeError("sounding must be a bool [B,H,W] tensor; convert predictions with sounding_pixels()")
        if sounding.shape[0] == 0:
            return
        self._fraction_sum += float(sounding.flatten(1).double().mean(1).sum())
        self.frames += sounding.shape[0]

    def merge(self, other: "FalsePositiveRate") -> None:
        """Adds the statistics of ``other`` (e.g. another process's shard)."""
        self.frames += other.frames
        self._fraction_sum += other._fraction_sum

    def compute(self) -> float:
        return self._fraction_sum / self.frames if self.frames else math.nan


class CounterfactualScore:
    """Multi-source frames with the audio swapped to one visible source: how much of the prediction follows it.

    Per frame ``IoU(pred, mask of the source that plays)`` (``follow``), ``IoU(pred, mask of the silent
    source)`` (``leak``), with AVSBench's per-frame IoU (1e-7 epsilon), and the share of the silent source's pixels
    called sounding (``silent_fp``, the swapped-audio false positives); means over frames.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self._follow_sum = 0.0
        self._leak_sum = 0.0
        self._silent_fp_sum = 0.0

    def update(self, sounding: Tensor, playing_mask: Tensor, silent_mask: Tensor) -> None:
        """``sounding [B,H,W]`` bool prediction; ``playing_mask``/``silent_mask [B,H,W]`` binary source masks."""
        if not isinstance(sounding, Tensor) or sounding.dtype != torch.bool or sounding.dim() != 3:
            raise TypeError("sounding must be a bool [B,H,W] tensor; convert predictions with sounding_pixels()")
        playing = _check_mask(playing_mask, "playing_mask", sounding.shape).to(sounding.device)
        silent = _check_mask(silent_mask, "silent_mask", sounding.shape).to(sounding.device)
        if sounding.shape[0] == 0:
            return
        self._follow_sum += float(frame_iou(sounding, playing).sum())
        self._leak_sum += float(frame_iou(sounding, silent).sum())
        silent_pixels = silent.flatten(1).sum(1).double()
        called = (sounding & silent).flatten(1).sum(1).double()
        self._silent_fp_sum += float((called / silent_pixels.clamp_min(1)).sum())
        self.frames += sounding.shape[0]

    def merge(self, other: "CounterfactualScore") -> None:
        """Adds the statistics of ``other`` (e.g. another process's shard)."""
        self.frames += other.frames
        self._follow_sum += other._follow_sum
        self._leak_sum += other._leak_sum
        self._silent_fp_sum += other._silent_fp_sum

    def compute(self) -> dict:
        n = self.frames
        return {"follow_iou": self._follow_sum / n if n else math.nan,
                "leak_iou": self._leak_sum / n if n else math.nan,
                "silent_fp": self._silent_fp_sum / n if n else math.nan, "frames": n}


class BiasEvaluator:
    """Streams the bias metrics of any ``predict(frames, audio)`` callable.

    Args:
        predict: returns mask logits / probabilities ``[B,H,W]`` (or ``[B,1,H,W]``), or labels ``[B,H,W]``, for
            ``frames`` and ``audio`` batches (any types ``predict`` understands; ``audio`` must be a ``[B, ...]``
            float tensor here, waveforms or embeddings). Called under ``torch.no_grad()``.
        output: ``logits``, ``probabilities`` or ``labels`` (see :func:`sounding_pixels`).
        background: the background label when ``output="labels"``.
        kinds: which negative audio to test (subset of ``silence``, ``noise``, ``misaligned``; ``other`` is the
            old name of ``misaligned``).
        noise_rms: white-noise RMS (None: each clip's own RMS).
        pool_audio, pool_labels: donors for ``misaligned`` (default: the other clips of each batch).
        generator: for noise and donor draws (reproducible runs).
        meters: the :class:`BiasMeters` to feed (default: new ones over ``kinds``); the evaluation runner passes
            its own, which it also feeds with the predictions it makes under its audio conditions.
    """

    def __init__(self, predict: Callable, output: str = "logits", background: int = 0,
                 kinds: tuple[str, ...] = NEGATIVE_KINDS, noise_rms: float | None = None,
                 pool_audio: Tensor | None = None, pool_labels: Tensor | None = None,
                 generator: torch.Generator | None = None, meters: "BiasMeters | None" = None):
        if not callable(predict):
            raise TypeError("predict must be a callable predict(frames, audio)")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        kinds = tuple(_OLD_KIND_NAMES.get(k, k) for k in kinds)
        unknown = [k for k in kinds if k not in NEGATIVE_KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {NEGATIVE_KINDS}, got {kinds!r}")
        self.predict = predict
        self.output = output
        self.background = background
        self.kinds = tuple(kinds)
        self.noise_rms = noise_rms
        self.pool_audio, self.pool_labels = pool_audio, pool_labels
        self.generator = generator
        self.meters = meters if meters is not None else BiasMeters(self.kinds)

    @property
    def fpr(self) -> dict[str, FalsePositiveRate]:
        return self.meters.fpr

    @property
    def counterfactual(self) -> CounterfactualScore:
        return self.meters.counterfactual

    def _sounding(self, frames, audio) -> Tensor:
        with torch.no_grad():
            return sounding_pixels(self.predict(frames, audio), self.output, self.background)

    def update_negative(self, frames, audio: Tensor, classes: Tensor | None = None, *,
                        labels: Tensor | None = None) -> None:
        """Runs ``predict`` once per negative kind on this batch and accumulates the false-positive rates.

        ``classes``: what each clip sounds, for ``misaligned`` audio (another clip's, of a different class): class
        ids ``[B]``, multi-hot ``[B, C]`` or the frames' label maps ``[B,H,W]`` (the classes present). ``labels=``
        is its former name (a FutureWarning)."""
        if labels is not None:
            if classes is not None:
                raise TypeError("give classes (labels is its former name), not both")
            warnings.warn("BiasEvaluator.update_negative(labels=...) is now classes=...", FutureWarning, stacklevel=2)
            classes = labels
        for kind in self.kinds:
            negative = negative_audio(kind, audio, classes, self.noise_rms, self.pool_audio, self.pool_labels,
                                      self.generator)
            self.meters.update_negative(kind, self._sounding(frames, negative))

    def update_counterfactual(self, frames, source_audio: tuple[Tensor, Tensor],
                              source_masks: tuple[Tensor, Tensor]) -> None:
        """Multi-source frames with two visible sources: ``source_audio = (audio_a, audio_b)`` (each source's
        sound alone, ``[B, ...]``) and ``source_masks = (mask_a, mask_b)`` (``[B,H,W]``). Plays each source in
        turn and scores the prediction against the playing and the silent source."""
        if len(source_audio) != 2 or len(source_masks) != 2:
            raise ValueError("source_audio and source_masks must each hold the two sources (a, b)")
        for playing in (0, 1):
            sounding = self._sounding(frames, source_audio[playing])
            self.meters.update_counterfactual(sounding, source_masks[playing], source_masks[1 - playing])

    def compute(self) -> dict:
        """See :meth:`BiasMeters.compute`."""
        return self.meters.compute()


class BiasMeters:
    """The state of the bias metrics, fed with predictions already made: a :class:`FalsePositiveRate` per
    negative kind (``fpr``) and a :class:`CounterfactualScore` (``counterfactual``). :class:`BiasEvaluator` and
    the evaluation runner (:func:`coavs.eval.runner.evaluate`) both accumulate into it, so both report the same
    numbers under the same names."""

    def __init__(self, kinds: tuple[str, ...] = NEGATIVE_KINDS):
        kinds = tuple(_OLD_KIND_NAMES.get(k, k) for k in kinds)
        unknown = [k for k in kinds if k not in NEGATIVE_KINDS]
        if unknown:
            raise ValueError(f"kinds must be a subset of {NEGATIVE_KINDS}, got {kinds!r}")
        self.fpr = {kind: FalsePositiveRate() for kind in kinds}
        self.counterfactual = CounterfactualScore()

    def update_negative(self, kind: str, sounding: Tensor) -> None:
        """``sounding [B,H,W]`` bool: the prediction under negative audio of ``kind``."""
        self.fpr[_OLD_KIND_NAMES.get(kind, kind)].update(sounding)

    def update_counterfactual(self, sounding: Tensor, playing_mask: Tensor, silent_mask: Tensor) -> None:
        """``sounding [B,H,W]`` bool: the prediction while only the source of ``playing_mask`` plays."""
        self.counterfactual.update(sounding, playing_mask.to(sounding.device), silent_mask.to(sounding.device))

    def merge(self, other: "BiasMeters") -> None:
        """Adds the statistics of ``other`` (e.g. another process's shard)."""
        for kind, meter in self.fpr.items():
            meter.merge(other.fpr[kind])
        self.counterfactual.merge(other.counterfactual)

    def compute(self) -> dict:
        """``fpr_<kind>`` and ``fpr_<kind>_frames`` per kind; ``counterfactual_iou`` (follow),
        ``counterfactual_leak_iou``, ``fp_swapped`` (the silent source's pixels called sounding) and
        ``counterfactual_frames`` (frames × 2 swaps)."""
        result = {}
        for kind, meter in self.fpr.items():
            result[f"fpr_{kind}"] = meter.compute()
            result[f"fpr_{kind}_frames"] = meter.frames
        cf = self.counterfactual.compute()
        result.update(counterfactual_iou=cf["follow_iou"], counterfactual_leak_iou=cf["leak_iou"],
                      fp_swapped=cf["silent_fp"], counterfactual_frames=cf["frames"])
        return result
