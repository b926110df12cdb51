"""Negative-audio training: frames paired with audio that sounds none of their objects, and EMPTY targets.

Beyond the paper (AVSBench-Robust, Li et al. 2025: negative pairs balanced against positive ones). Every step,
``ratio`` negative frames per positive (annotated) frame are generated on the fly from the step's own frames:
the visual input of a frame drawn from the batch, with one of

- ``silence``: the encoder input of silence (the log-mel of a silent second; zeros for waveforms and VGGish);
- ``noise``: white noise at the frame's level, through the model's ``noise_like`` when its encoder has one;
- ``misaligned``: the same second of another *training* clip that sounds none of the classes seen or heard in
  this clip (the dataset's ``misaligned_index``: Co-AVS, AVSS); a frame whose clip has no such partner gets
  ``noise`` (counted in the step's logged ``negatives_fallback``), and a dataset that cannot say which classes a
  clip sounds (S4, MS3) is refused when the run starts;

and the label map set to background everywhere (an empty target: no sounding pixel). One more kind is only partly
negative — counterfactual audio, the way Counterfactual Samples Synthesizing (Chen et al., CVPR 2020) teaches a VQA
model to look at the evidence:

- ``swapped``: a frame where two or more classes sound (from its labels) gets the same second of another training
  clip that sounds some of them and nothing else (a strict, non-empty subset, e.g. one source alone), and its
  target keeps only those classes' pixels: the objects that still sound, while the visible objects whose sound was
  taken away become background — the visual-prior condition (``fp_swapped``), taught. Frames without two sounding
  classes or without such a clip are not drawn; a batch that has none gets fewer negatives. Its audio names the
  classes of its target, so it also trains the audio classifier. The kinds are dealt round
robin from a random offset, so their counts differ by at most one; the count itself is ``⌊ratio·N⌋`` plus one
with probability ``frac(ratio·N)`` (so the mean is exactly ``ratio·N``). ``mode: add`` appends the negatives to
the batch (more frames per step); ``replace`` swaps the audio and targets of that many of the batch's own frames
(the step costs the same).

Everything is drawn from a generator seeded by ``(run seed, step)``: the same seed gives the same negatives, and a
resumed run draws what the uninterrupted one did. Negatives compose with every debias strategy: they are frames
of the batch like any other, so the biased branch and the debiased loss see them too.

The audio classifier learns "nothing sounds" from silence and noise negatives (class presence all zero); a
misaligned negative's audio does sound (other classes), so those rows are left out of the classifier's loss
(:func:`classifier_rows`); a swapped negative's target names exactly what its audio sounds.

``audio_only`` names the kinds whose frames train only the audio classifier (every class absent): they never
reach the segmentation, debias or matching losses (:func:`split_negatives`; the trainer runs only their audio
through the prompt encoder and the classifier, :meth:`AVSModel.audio_outputs`). Misaligned audio does sound, so it
has no such target and can only train segmentation. What each choice did on the demo set (docs/analysis.md):
silence and noise through the segmentation loss cost 5 points of mIoU (one seed); through the classifier only
they cost none at the demo's ``loss.audio_class_weight: 5`` (3 seeds), while at weight 1 they pushed noise-like
classes (drum, dog) under the 0.4 marker threshold on one seed in three.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import Tensor

from coavs.data.avsbench import IGNORE_INDEX as IGNORE_LABEL
from coavs.errors import ConfigError
from coavs.eval.runner import noise_audio, silence_audio
from coavs.inference.batches import select_frames

NEGATIVE_KINDS = ("silence", "noise", "misaligned", "swapped")
NEGATIVE_MODES = ("add", "replace")
POSITIVE = -1  # ``negative_kind`` of a positive frame
_SEED_STRIDE = 1_000_003


@dataclass
class NegativesSection:
    """``negatives`` config section. ``ratio`` 0 (the default) switches negative-audio training off."""

    ratio: float = 0.0  # negative frames per positive frame and step
    kinds: list[str] = field(default_factory=lambda: ["silence", "noise", "misaligned"])
    mode: str = "add"  # add: extra frames | replace: swap the audio and targets of some of the batch's frames
    audio_only: list[str] = field(default_factory=list)  # kinds that train the audio heads only (see above)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not \
                (0.0 <= self.ratio <= 8.0) or not math.isfinite(self.ratio):
            raise ConfigError(f"negatives.ratio must be a number in [0, 8], got {self.ratio!r}")
        if not self.kinds or any(k not in NEGATIVE_KINDS for k in self.kinds):
            raise ConfigError(f"negatives.kinds must be a non-empty list of {', '.join(NEGATIVE_KINDS)}, "
                              f"got {self.kinds!r}")
        if self.mode not in NEGATIVE_MODES:
            raise ConfigError(f"negatives.mode must be one of {', '.join(NEGATIVE_MODES)}, got {self.mode!r}")
        if not isinstance(self.audio_only, (list, tuple)) or any(k not in self.kinds for k in self.audio_only):
            raise ConfigError(f"negatives.audio_only must list some of negatives.kinds ({self.kinds}), "
                              f"got {self.audio_only!r}")
        for kind in ("misaligned", "swapped"):
            if kind in self.audio_only:
                raise ConfigError(f"negatives.audio_only cannot hold {kind}: another clip's audio does sound, so it "
                                  "has no 'nothing sounds' target for the audio heads (it trains segmentation)")
        if self.audio_only and self.mode == "replace":
            raise ConfigError("negatives.mode: replace would drop positive frames from the segmentation loss for "
                              "audio_only negatives; use mode: add")
        if self.mode == "replace" and self.ratio > 1.0:
            raise ConfigError(f"negatives.ratio must be <= 1 with mode replace, got {self.ratio}")

    @property
    def enabled(self) -> bool:
        return self.ratio > 0


def negative_count(positives: int, ratio: float, generator: torch.Generator) -> int:
    """How many negatives go with ``positives`` frames: ``⌊ratio·n⌋`` plus one with probability of the fraction."""
    expected = ratio * positives
    base = math.floor(expected)
    frac = expected - base
    if frac > 0 and float(torch.rand((), generator=generator)) < frac:
        base += 1
    return int(base)


class NegativeSampler:
    """Adds (or swaps in) negative frames; see the module docstring.

    Args:
        section: the :class:`NegativesSection`.
        seed: the run's seed.
        audio_kind: the dataset's audio features (``logmel``, ``waveform``, ``vggish``) for silence.
        model: the model whose ``prompt_encoder.noise_like`` makes the noise (None: white noise).
    """

    def __init__(self, section: NegativesSection, seed: int, audio_kind: str = "logmel", model=None):
        self.section = section
        self.seed = int(seed)
        self.audio_kind = audio_kind
        self.model = None
        encoder = getattr(model, "prompt_encoder", None)
        if encoder is not None and hasattr(encoder, "noise_like"):
            # negatives are made on the CPU before the batch moves; noise_like uses no learned weights, so a CPU
            # copy of the encoder made once serves the whole run whatever the model's device
            self.model = SimpleNamespace(prompt_encoder=copy.deepcopy(encoder).cpu())

    fallbacks = 0  # misaligned negatives of the last augment() that became noise (their clip had no partner)

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * _SEED_STRIDE + int(step) * 7919 + 17) % 2**63)

    def augment(self, batch: dict, step: int, dataset=None) -> dict:
        """``batch`` with negatives (CPU tensors; before ``to_device``) and ``negative_kind [N]`` long
        (``-1`` = positive, else the index in :data:`NEGATIVE_KINDS`)."""
        n = batch["frames"].shape[0]
        g = self.generator(step)
        self.fallbacks = 0
        count = negative_count(n, self.section.ratio, g) if n else 0
        kinds = list(self.section.kinds)
        out = dict(batch)
        out["negative_kind"] = torch.full((n,), POSITIVE, dtype=torch.long)
        if count == 0:
            return out
        if self.section.mode == "replace":
            rows = torch.randperm(n, generator=g)[:count]
        else:
            rows = torch.randint(n, (count,), generator=g)
        offset = int(torch.randint(len(kinds), (), generator=g))
        chosen = [kinds[(offset + i) % len(kinds)] for i in range(count)]
        donors: list[int | None] = [None] * count
        if "swapped" in chosen:
            rows, chosen, donors = self._swapped_rows(batch, rows, chosen, dataset, g)
            if not chosen:
                return out
        negatives = select_frames(batch, rows)
        kind_index = torch.tensor([NEGATIVE_KINDS.index(k) for k in chosen], dtype=torch.long)
        audio = negatives["audio"].clone()
        labels = torch.zeros_like(negatives["labels"])  # the empty target: all background
        for kind in set(chosen):
            which = torch.tensor([k == kind for k in chosen])
            if kind == "swapped":
                audio[which], labels[which] = self._swapped(negatives, which, [d for d, k in zip(donors, chosen)
                                                                                 if k == kind], dataset)
                continue
            audio[which], kind_index[which] = self._audio(kind, negatives, which, step, dataset, kind_index[which])
        negatives["audio"] = audio
        negatives["labels"] = labels
        negatives["annotated"] = torch.ones_like(negatives["annotated"])
        negatives["negative_kind"] = kind_index
        if self.section.mode == "replace":
            for key, value in negatives.items():
                if isinstance(value, Tensor) and isinstance(out.get(key), Tensor) and value.dim() >= 1:
                    out[key] = out[key].clone()
                    out[key][rows] = value.to(out[key].dtype)
            return out
        return _concat(out, negatives)

    def _swapped_rows(self, batch: dict, rows: Tensor, chosen: list[str], dataset, g: torch.Generator):
        """Re-draws the rows of the ``swapped`` negatives among the frames that have two or more sounding classes
        and a donor clip; drops them when the batch has none. Returns ``(rows, kinds, donors)``."""
        heard = _heard_by_clip(dataset)
        eligible = []
        for i in range(batch["labels"].shape[0]):
            classes = _frame_classes(batch["labels"][i])
            if len(classes) < 2 or heard is None:
                continue
            clip = int(batch["clip_index"][i])
            pool = [j for j, h in enumerate(heard) if j != clip and h and h < classes]
            if pool:
                eligible.append((i, pool))
        rows, kinds, donors = rows.clone(), [], []
        keep = []
        for position, kind in enumerate(chosen):
            if kind != "swapped":
                keep.append(position)
                kinds.append(kind)
                donors.append(None)
            elif eligible:
                row, pool = eligible[int(torch.randint(len(eligible), (), generator=g))]
                rows[position] = row
                keep.append(position)
                kinds.append(kind)
                donors.append(pool[int(torch.randint(len(pool), (), generator=g))])
        return rows[keep], kinds, donors

    def _swapped(self, frames: dict, which: Tensor, donors: list[int], dataset) -> tuple[Tensor, Tensor]:
        """The donors' audio (the same second) and the frames' labels restricted to the donors' classes."""
        heard = _heard_by_clip(dataset)
        labels = frames["labels"][which].clone()
        seconds = frames["frame_index"][which].tolist()
        audio = []
        for k, (donor, second) in enumerate(zip(donors, seconds)):
            donor_audio = dataset.load_audio(donor)
            audio.append(donor_audio[second % donor_audio.shape[0]])
            kept = torch.zeros_like(labels[k], dtype=torch.bool)
            for c in heard[donor]:
                kept |= labels[k] == c
            labels[k] = torch.where(kept | (labels[k] == IGNORE_LABEL), labels[k], torch.zeros_like(labels[k]))
        return torch.stack(audio).to(frames["audio"].dtype), labels

    def _audio(self, kind: str, frames: dict, which: Tensor, step: int, dataset, kind_index: Tensor):
        audio = frames["audio"][which]
        clips = frames["clip_index"][which]
        seed = self.seed * _SEED_STRIDE + int(step)
        if kind == "silence":
            return silence_audio(audio, self.audio_kind), kind_index
        if kind == "misaligned":
            donors = _misaligned_donors(dataset, clips, seed)
            rows = []
            for i, (donor, second) in enumerate(zip(donors, frames["frame_index"][which].tolist())):
                if donor is None:  # this clip has no partner: noise instead, counted
                    kind_index[i] = NEGATIVE_KINDS.index("noise")
                    self.fallbacks += 1
                    rows.append(noise_audio(self.model, audio[i:i + 1], clips[i:i + 1], seed)[0])
                    continue
                donor_audio = dataset.load_audio(donor)
                rows.append(donor_audio[second % donor_audio.shape[0]].to(audio.dtype))
            return torch.stack(rows), kind_index
        return noise_audio(self.model, audio, clips, seed), kind_index


def _misaligned_donors(dataset, clips: Tensor, seed: int) -> list[int | None]:
    """A donor clip for each frame's clip (the dataset's ``misaligned_index``); None for a clip without one."""
    if dataset is None or not hasattr(dataset, "misaligned_index"):
        return [None] * len(clips)
    donors = []
    for clip in clips.tolist():
        try:
            donors.append(int(dataset.misaligned_index(int(clip), seed % 2**32)))
        except ValueError:
            donors.append(None)
    return donors


def _frame_classes(labels: Tensor) -> set[int]:
    """The classes a frame's label map ``[H,W]`` shows as sounding (neither background nor unannotated)."""
    values = labels.unique().tolist()
    return {int(v) for v in values if v not in (0, IGNORE_LABEL)}


_HEARD: dict[int, tuple[object, list[set[int]]]] = {}


def _heard_by_clip(dataset) -> list[set[int]] | None:
    """Every clip's sounding classes (``dataset.sounding_classes``), computed once per dataset; None when the
    dataset cannot say."""
    if dataset is None or not hasattr(dataset, "sounding_classes"):
        return None
    cached = _HEARD.get(id(dataset))
    if cached is None or cached[0] is not dataset:
        cached = _HEARD[id(dataset)] = (dataset, [set(dataset.sounding_classes(j)) for j in range(len(dataset))])
    return cached[1]


def check_dataset(section: NegativesSection, dataset) -> None:
    """The kinds that need to know which classes each clip sounds, refused (one line) on a dataset that cannot say
    (S4, MS3), instead of silently training on something else."""
    needs = {"misaligned": ("misaligned_index", "AVSS, Co-AVS, S4"), "swapped": ("sounding_classes", "AVSS, Co-AVS")}
    for kind, (method, datasets) in needs.items():
        if section.enabled and kind in section.kinds and not hasattr(dataset, method):
            raise ConfigError(f"negatives.kinds: {kind} needs a dataset that says which classes each clip sounds "
                              f"({datasets}); {type(dataset).__name__} does not")


def _concat(batch: dict, extra: dict) -> dict:
    out = {}
    for key, value in batch.items():
        other = extra.get(key)
        if isinstance(value, Tensor) and isinstance(other, Tensor) and value.dim() >= 1:
            out[key] = torch.cat([value, other.to(value.dtype)])
        elif isinstance(value, list) and isinstance(other, list):
            out[key] = value + other
        else:
            out[key] = value
    return out


def split_negatives(batch: dict, kinds) -> tuple[dict, Tensor | None]:
    """``(batch without the negatives of ``kinds``, those negatives' audio [M,…] or None)`` — the
    ``audio_only`` negatives, which the segmentation losses never see."""
    kind = batch.get("negative_kind")
    if kind is None or not kinds:
        return batch, None
    taken = torch.zeros_like(kind, dtype=torch.bool)
    for name in kinds:
        taken |= kind == NEGATIVE_KINDS.index(name)
    if not bool(taken.any()):
        return batch, None
    return select_frames(batch, ~taken), batch["audio"][taken]


def classifier_rows(annotated: Tensor, batch: dict) -> Tensor:
    """Rows the audio classifier's loss uses: annotated frames, minus misaligned negatives (their audio sounds
    classes that the empty target does not name)."""
    kind = batch.get("negative_kind")
    if kind is None:
        return annotated
    return annotated & (kind.to(annotated.device) != NEGATIVE_KINDS.index("misaligned"))


__all__ = ["NEGATIVE_KINDS", "NegativesSection", "NegativeSampler", "check_dataset", "negative_count",
           "split_negatives", "classifier_rows"]
