"""Run a model over a dataset: predictions per batch, and the metrics table (mIoU, F, bias FPRs).

    model, config = coavs.training.trainer.load_model("runs/debias")
    for out in predict_batches(model, dataset, audio="silence", mode="debias"):
        out["pred_labels"], out["fg_score"], out["labels"], out["outputs"]
    rows = evaluate(model, dataset, modes=("vanilla", "debias"))   # {"vanilla": {"miou": …, "fpr_noise": …}, …}
    print(format_table(rows))

Audio conditions (``audio=``): ``normal`` (the clip's own), and three negatives under which every pixel called
sounding is a false positive (docs/design.md, "Bias metrics"): ``silence`` (the features of a silent wav: zeros for
waveforms and VGGish, the log-mel of silence), ``noise`` (white noise at the clip's level, through the model's
``noise_like`` when its audio encoder has one; seeded per clip), ``misaligned`` (the audio of another clip that
sounds none of the classes of this one — the dataset's ``misaligned_index``: Co-AVS from its annotations, AVSS from
its labels, S4 from its sound categories; a frame whose clip has no such partner is left out of the misaligned FPR,
and on a dataset that cannot say which classes a clip sounds — MS3 — the misaligned FPR is not measured).
:func:`evaluation_notes` says in one line each what a dataset could not measure.

Inference modes (``mode=``): ``vanilla``; ``debias``: the vanilla and biased branch combined by
``coavs.ops.semantic_inference``'s debias (``alpha``, ``scheme``, ``strategy``; the biased branch's audio is
``biased``, ``mute`` by default). (A model trained with the ``ensemble`` strategy predicts with ``vanilla``.)

Only annotated frames are evaluated. Semantic datasets (AVSS, Co-AVS) are scored with
:class:`coavs.eval.metrics.SemanticAVSMetrics` on the argmax labels, binary ones (S4, MS3) with
:class:`~coavs.eval.metrics.BinaryAVSMetrics` on the foreground score; the FPRs count pixels whose label is not
background. Under ``torch.distributed`` each process evaluates every ``world_size``-th clip and the metric
states are merged, so the numbers equal a single process's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from coavs.audio_spec import LOG_OFFSET
from coavs.data.loader import make_loader
from coavs.data.splits import base_dataset, is_binary
from coavs.eval.bias import BiasEvaluator, BiasMeters, white_noise_like
from coavs.eval.metrics import BinaryAVSMetrics, SemanticAVSMetrics
from coavs.inference.batches import collate_frames, select_frames, to_device
from coavs.inference.combine import INFERENCE_MODES, check_mode
from coavs.inference.postprocess import postprocess
from coavs.inference.precision import autocast

AUDIO_CONDITIONS = ("normal", "silence", "noise", "misaligned")
NEGATIVE_CONDITIONS = ("silence", "noise", "misaligned")
_NOISE_SEED_STRIDE = 1_000_003


# ------------------------------------------------------------------------------------------ audio conditions
def silence_audio(audio: Tensor, kind: str) -> Tensor:
    """The features of silence shaped like ``audio``: zeros (``waveform``, ``vggish``) or the log-mel of a
    silent second (``logmel``, as the datasets pad clips)."""
    if kind == "logmel":
        return torch.full_like(audio, float(torch.log(torch.tensor(LOG_OFFSET))))
    return torch.zeros_like(audio)


def noise_audio(model, audio: Tensor, clip_index: Tensor, seed: int = 0) -> Tensor:
    """White noise in the model's audio input space, at each clip's level, drawn per clip from
    ``seed`` and the clip's dataset index (the same noise whatever the batching or the number of processes)."""
    encoder = getattr(model, "prompt_encoder", None)
    out = torch.empty_like(audio)
    for clip in clip_index.unique().tolist():
        rows = (clip_index == clip).nonzero().flatten()
        generator = torch.Generator().manual_seed(seed * _NOISE_SEED_STRIDE + int(clip))
        part = audio[rows]
        if hasattr(encoder, "noise_like"):
            noise = encoder.noise_like(part.cpu(), generator=generator)
        else:
            noise = white_noise_like(part.cpu(), generator=generator)
        out[rows] = noise.to(audio.device, audio.dtype)
    return out


def misaligned_audio(dataset, clip_index: Tensor, frame_index: Tensor, seed: int = 0,
                     load=None) -> tuple[Tensor, Tensor]:
    """For every frame, the same second of a clip that sounds none of the classes of this one (the dataset's
    ``misaligned_index``) → ``(audio [N,...], checked [N] bool)``. A frame whose clip has no such partner (or a
    dataset without ``misaligned_index``) gets silence-shaped zeros and ``checked`` False: the FPR leaves it out.
    ``load(index)`` (default ``dataset.load_audio``) gives a clip's per-frame rows, e.g. ``dataset.load_markers``."""
    load = load or dataset.load_audio
    rows, checked, cache = [], [], {}
    for clip, t in zip(clip_index.tolist(), frame_index.tolist()):
        donor = None
        if hasattr(dataset, "misaligned_index"):
            try:
                donor = dataset.misaligned_index(clip, seed)
            except ValueError:  # no clip sounds only other classes
                donor = None
        checked.append(donor is not None)
        source = clip if donor is None else donor
        if source not in cache:
            cache[source] = load(source)
        audio = cache[source]
        rows.append(audio[t % audio.shape[0]] if donor is not None else torch.zeros_like(audio[0]))
    return torch.stack(rows), torch.tensor(checked, dtype=torch.bool)


def condition_markers(condition: str, dataset, batch: dict, seed: int) -> Tensor | None:
    """The marker scores ``[N,S]`` of the audio a condition plays, from the dataset's marker files
    (``data.marker_files``; None without them): the clip's own, the donor clip's (``misaligned``), or the
    folder's ``silence.pth`` / ``noise.pth``."""
    files = getattr(dataset, "markers", None)
    if files is None:
        return None
    device = batch["frames"].device
    if condition == "normal":
        return batch["markers"]
    if condition == "misaligned":
        return misaligned_audio(dataset, batch["clip_index"], batch["frame_index"], seed,
                                load=dataset.load_markers)[0].to(device)
    return files.condition(condition).to(device).expand(batch["frames"].shape[0], -1)


def _condition_audio(condition: str, model, dataset, batch: dict, seed: int) -> Tensor:
    audio = batch["audio"]
    if condition == "normal":
        return audio
    if condition == "silence":
        return silence_audio(audio, getattr(dataset, "audio", "logmel"))
    if condition == "noise":
        return noise_audio(model, audio, batch["clip_index"], seed)
    if condition == "misaligned":
        donors, checked = misaligned_audio(dataset, batch["clip_index"], batch["frame_index"], seed)
        batch["misaligned_checked"] = checked.to(audio.device)  # frames with a class-checked partner
        return donors.to(audio.device, audio.dtype)
    raise ValueError(f"audio must be one of {AUDIO_CONDITIONS}, got {condition!r}")


# ----------------------------------------------------------------------------------------------- running
def _clip_indices(dataset, max_clips: int | None, distributed: bool | None) -> list[int]:
    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ValueError(f"max_clips must be an int >= 1 or None (all clips), got {max_clips!r}")
    indices = list(range(len(dataset)))
    if max_clips is not None:
        indices = indices[:max_clips]
    shard = torch.distributed.is_available() and torch.distributed.is_initialized() if distributed is None \
        else distributed
    if shard:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        indices = indices[rank::world]
    return indices


def _loader(dataset, indices: list[int], batch_size: int, num_workers: int):
    return make_loader(torch.utils.data.Subset(dataset, indices), batch_size, shuffle=False,
                       num_workers=num_workers, collate_fn=collate_frames, pin_memory=False)


def _check_args(audio, mode, batch_size):
    if audio not in AUDIO_CONDITIONS:
        raise ValueError(f"audio must be one of {AUDIO_CONDITIONS}, got {audio!r}")
    check_mode(mode)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _model_batches(model, dataset, indices, *, batch_size, device, conditions, needs_biased, biased, seed,
                   num_workers, precision, progress,
                   audio_only: bool = False) -> Iterator[tuple[dict, dict[str, dict]]]:
    """``(frame batch on device, {condition: model outputs})`` for the annotated frames of each batch;
    ``audio_only``: only the audio side of the model runs (``AVSModel.audio_outputs``), not the segmenter."""
    device = torch.device(device)
    base = base_dataset(dataset)
    batches = _loader(dataset, indices, batch_size, num_workers) if indices else []
    if progress:
        batches = tqdm(batches, desc="eval", unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = select_frames(batch, batch["annotated"])
                if batch["frames"].shape[0] == 0:
                    continue
                batch = to_device(batch, device)
                outputs = {}
                for condition in conditions:
                    audio = _condition_audio(condition, model, base, batch, seed)
                    markers = None if audio_only else condition_markers(condition, base, batch, seed)
                    with autocast(device, precision):
                        outputs[condition] = (model.audio_outputs(audio) if audio_only else
                                              model(batch["frames"], audio, biased=biased if needs_biased else None,
                                                    marker_scores=markers, clip_index=batch["clip_index"]))
                yield batch, outputs
    finally:
        model.train(was_training)


def predict_batches(model, dataset, *, batch_size: int = 8, device="cpu", audio: str = "normal",
                    mode: str = "vanilla", alpha: float = 1.0, scheme: str = "separate", strategy: str = "fixed",
                    biased: str = "mute", max_clips: int | None = None, indices: list[int] | None = None,
                    seed: int = 0, num_workers: int = 0, precision: str = "fp32",
                    progress: bool = False, overall_reading: str = "score", gate=None) -> Iterator[dict]:
    """Predictions for the annotated frames of ``dataset``, one dict per batch of ``batch_size`` clips.

    Each dict holds the frame batch (``frames``, ``audio`` — the clip's own —, ``labels [N,H,W]`` with 255 =
    unannotated, ``annotated [N]``, ``uid`` list, ``clip_index [N]``, ``frame_index [N]``, and dataset extras
    such as Co-AVS's ``sounding``/``visible``/``silent [N,K]``), plus ``pred_labels [N,H,W]`` long (semantic
    labels; binary datasets 0/1), ``fg_score [N,H,W]`` in [0,1] (the "sounding" score), ``outputs`` (the raw model
    outputs under this audio condition, with ``"biased"`` for ``debias``), ``audio_condition`` and
    ``mode``. ``indices``: evaluate only these clips (default: all, or the first ``max_clips``).
    """
    _check_args(audio, mode, batch_size)
    binary = is_binary(dataset)
    chosen = indices if indices is not None else _clip_indices(dataset, max_clips, distributed=False)
    for batch, outputs in _model_batches(model, dataset, list(chosen), batch_size=batch_size, device=device,
                                         conditions=(audio,), needs_biased=mode != "vanilla", biased=biased,
                                         seed=seed, num_workers=num_workers, precision=precision,
                                         progress=progress):
        out = outputs[audio]
        labels, fg = postprocess(out, tuple(batch["labels"].shape[-2:]), mode, binary, alpha, scheme, strategy,
                                 overall_reading, gate)
        yield {**batch, "pred_labels": labels, "fg_score": fg, "outputs": out, "audio_condition": audio,
               "mode": mode}


# ---------------------------------------------------------------------------------------------- metrics
PROTOCOLS = ("per_dataset", "per_batch")


class _ModeMeters:
    def __init__(self, binary: bool, num_classes: int, conditions, counterfactual: bool = False,
                 protocol: str = "per_dataset"):
        self.binary = binary
        self.segmentation = (BinaryAVSMetrics(scores="probabilities", per_batch=protocol == "per_batch") if binary
                             else SemanticAVSMetrics(num_classes))
        self.bias = BiasMeters(tuple(c for c in conditions if c != "normal"))
        self.counterfactual = counterfactual

    def update(self, condition: str, labels: Tensor, fg: Tensor, gt: Tensor, keep: Tensor | None = None) -> None:
        """``keep [N]`` bool: the frames a negative condition counts (misaligned: those with a checked partner)."""
        if condition == "normal":
            if self.binary:
                self.segmentation.update(fg.float().cpu(), (gt == 1).cpu())
            else:
                self.segmentation.update(labels.cpu(), torch.where(gt == 255, -1, gt).cpu())
        else:
            sounding = (labels != 0).cpu()
            self.bias.update_negative(condition, sounding if keep is None else sounding[keep.cpu()])

    def merge(self, other: "_ModeMeters") -> None:
        self.segmentation.merge(other.segmentation)
        self.bias.merge(other.bias)

    def row(self) -> dict:
        seg = self.segmentation.compute()
        row = {"miou": seg["miou"], "fscore": seg["fscore"], "frames": seg["frames"]}
        if not self.binary:
            row["miou_present_classes"] = seg["miou_present_classes"]
            row["fscore_present_classes"] = seg["fscore_present_classes"]
        bias = self.bias.compute()
        row.update({f"fpr_{kind}": bias[f"fpr_{kind}"] for kind in self.bias.fpr})
        if "misaligned" in self.bias.fpr:
            row["fpr_misaligned_frames"] = bias["fpr_misaligned_frames"]
        if self.counterfactual:  # the scores only where some frame had two sources (no NaN)
            row["counterfactual_frames"] = bias["counterfactual_frames"]
            if bias["counterfactual_frames"]:
                row.update(counterfactual_iou=bias["counterfactual_iou"],
                           counterfactual_leak_iou=bias["counterfactual_leak_iou"], fp_swapped=bias["fp_swapped"])
        return row


# ------------------------------------------------------------------------------------------ counterfactual
def _lone_sounders(dataset) -> dict[int, list[int]] | None:
    """Class → clips that sound that class alone (Co-AVS), or None when the dataset does not say."""
    if not hasattr(dataset, "sounding_classes"):
        return None
    lone: dict[int, list[int]] = {}
    for j in range(len(dataset)):
        heard = dataset.sounding_classes(j)
        if len(heard) == 1:
            lone.setdefault(next(iter(heard)), []).append(j)
    return lone


def counterfactual_cases(dataset, batch: dict, lone: dict, seed: int = 0):
    """Frames of ``batch`` with two sounding sources ``a``, ``b`` (the two largest in the labels) that each have a
    clip sounding them alone: ``(rows [M], (audio_a, audio_b), (mask_a, mask_b))`` — the same second of a clip
    where only ``a`` (``b``) sounds, and the two masks; None when no frame qualifies."""
    labels = batch["labels"]
    rows, audio, masks = [], ([], []), ([], [])
    cache: dict[int, Tensor] = {}
    for i in range(labels.shape[0]):
        values, counts = labels[i][(labels[i] != 0) & (labels[i] != 255)].unique(return_counts=True)
        if values.numel() < 2:
            continue
        pair = values[counts.argsort(descending=True)[:2]].tolist()
        clip, second = int(batch["clip_index"][i]), int(batch["frame_index"][i])
        donors = []
        for c in pair:
            pool = [j for j in lone.get(c, []) if j != clip]
            if not pool:
                break
            donors.append(pool[int(np.random.default_rng([seed, clip, c]).integers(len(pool)))])
        if len(donors) < 2:
            continue
        rows.append(i)
        for side, (donor, c) in enumerate(zip(donors, pair)):
            if donor not in cache:
                cache[donor] = dataset.load_audio(donor)
            clip_audio = cache[donor]
            audio[side].append(clip_audio[second % clip_audio.shape[0]])
            masks[side].append(labels[i] == c)
    if not rows:
        return None
    device = batch["audio"].device
    return (torch.tensor(rows, device=labels.device),
            tuple(torch.stack(a).to(device, batch["audio"].dtype) for a in audio),
            tuple(torch.stack(m) for m in masks))


def _update_counterfactual(model, meters, batch: dict, case, mode: str, binary: bool, settings: dict,
                           biased, device, precision) -> None:
    """Feeds ``meters`` (:class:`coavs.eval.bias.BiasMeters`) through :class:`coavs.eval.bias.BiasEvaluator`'s
    counterfactual update, with the model + postprocess of ``mode`` as the predict callable."""

    rows, audio, masks = case
    clips = batch["clip_index"][rows]

    def predict(frames, audio):
        with autocast(torch.device(device), precision):
            out = model(frames, audio, biased=biased if mode != "vanilla" else None, clip_index=clips)
        return postprocess(out, tuple(frames.shape[-2:]), mode, binary, **settings)[0]

    evaluator = BiasEvaluator(predict, output="labels", meters=meters)
    evaluator.update_counterfactual(batch["frames"][rows], audio, masks)


def evaluate(model, dataset, *, batch_size: int = 8, device="cpu", modes=("vanilla",), bias: bool = True,
             biased: str = "mute", alpha: float = 1.0, scheme: str = "separate", strategy: str = "fixed",
             max_clips: int | None = None, seed: int = 0, num_workers: int = 0, precision: str = "fp32",
             distributed: bool | None = None, progress: bool = False, overall_reading: str = "score",
             gate=None, counterfactual: bool | None = None, protocol: str = "per_dataset") -> dict:
    """The metrics table of ``model`` on ``dataset``: ``{mode: row}`` with ``miou``, ``fscore``, ``frames``
    (semantic sets also ``miou_present_classes``/``fscore_present_classes``) and, with ``bias``,
    ``fpr_silence``, ``fpr_noise``, ``fpr_misaligned``. One model pass per audio condition serves every mode.
    ``distributed`` None: shard over processes when ``torch.distributed`` is initialised (results merged).

    ``counterfactual`` (default: with ``bias``, on datasets that say which classes each clip sounds — Co-AVS):
    on frames with two sounding sources, play a clip where only one of them sounds and score the prediction
    against that source (``counterfactual_iou``) and the other (``counterfactual_leak_iou``), with
    :class:`coavs.eval.bias.BiasEvaluator`'s counterfactual score; ``counterfactual_frames`` = frames × 2 (the
    two scores are left out when it is 0).
    ``overall_reading``: the ``overall`` scheme's reading (``score`` or ``product``); ``gate``: a
    :class:`coavs.eval.gate.Gate` applied to every prediction. ``protocol`` (binary datasets): ``per_dataset``
    (every frame weighs the same) or ``per_batch`` (AVSBench's ``test.py``: the mean of per-batch numbers, one
    batch = ``batch_size`` clips; see :class:`coavs.eval.metrics.BinaryAVSMetrics`); AVSS sums over the dataset
    either way."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    modes = tuple(modes)
    if not modes:
        raise ValueError(f"modes must name at least one of {', '.join(INFERENCE_MODES)}")
    for mode in modes:
        _check_args("normal", mode, batch_size)
    base = base_dataset(dataset)
    conditions = tuple(c for c in AUDIO_CONDITIONS if c != "misaligned" or hasattr(base, "misaligned_index")) \
        if bias else ("normal",)
    binary = is_binary(dataset)
    num_classes = base.num_classes
    lone = _lone_sounders(base) if (bias if counterfactual is None else counterfactual) else None
    if getattr(base, "markers", None) is not None:
        lone = None  # donors' marker files are not threaded through the counterfactual pairs (yet)
    meters = {mode: _ModeMeters(binary, num_classes, conditions, lone is not None) for mode in modes}
    settings = dict(alpha=alpha, scheme=scheme, strategy=strategy, overall_reading=overall_reading, gate=gate)
    indices = _clip_indices(dataset, max_clips, distributed)
    show = progress and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0)
    for batch, outputs in _model_batches(model, dataset, indices, batch_size=batch_size, device=device,
                                         conditions=conditions, needs_biased=any(m != "vanilla" for m in modes),
                                         biased=biased, seed=seed, num_workers=num_workers, precision=precision,
                                         progress=show):
        size = tuple(batch["labels"].shape[-2:])
        for condition, out in outputs.items():
            keep = batch.get("misaligned_checked") if condition == "misaligned" else None
            for mode in modes:
                labels, fg = postprocess(out, size, mode, binary, **settings)
                meters[mode].update(condition, labels, fg, batch["labels"], keep)
        case = counterfactual_cases(base, batch, lone, seed) if lone is not None else None
        if case is not None:
            with torch.no_grad():
                for mode in modes:
                    _update_counterfactual(model, meters[mode].bias, batch, case, mode, binary, settings,
                                           biased, device, precision)
    shard = (torch.distributed.is_available() and torch.distributed.is_initialized()) if distributed is None \
        else distributed
    if shard:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, meters)
        meters = gathered[0]
        for other in gathered[1:]:
            for mode in modes:
                meters[mode].merge(other[mode])
    return {mode: meters[mode].row() for mode in modes}


# ------------------------------------------------------------------------------------------------ notes
def evaluation_notes(dataset, row: dict) -> list[str]:
    """One line per bias metric that ``dataset`` could not support, or supported only in part, given an
    :func:`evaluate` row (with the bias metrics) — what ``coavs eval`` prints instead of skipping silently."""
    base = base_dataset(dataset)
    name = getattr(base, "kind", type(base).__name__).upper()
    notes = []
    if "fpr_silence" not in row:
        return notes
    if "fpr_misaligned" not in row:
        notes.append(f"FPR misaligned: not measured — {name} does not say which classes a clip sounds, so no "
                     "clip can be checked to sound none of a frame's classes")
    elif row.get("fpr_misaligned_frames", row.get("frames")) != row.get("frames"):
        notes.append(f"FPR misaligned: over {row['fpr_misaligned_frames']} of {row['frames']} frames — the other "
                     "frames' clips have no clip in the split that sounds none of their classes")
    if "fpr_misaligned" in row and name == "AVSS" and not hasattr(base, "info"):
        notes.append("FPR misaligned: partners are checked against each clip's labelled (sounding) classes; a "
                     "visible but silent object of the partner's class is unlabelled in AVSS and cannot be ruled out")
    if not hasattr(base, "sounding_classes"):
        notes.append(f"counterfactual IoU, FP swapped: not measured — {name}'s binary masks cannot tell two sounding "
                     "sources apart")
    elif not row.get("counterfactual_frames"):
        notes.append("counterfactual IoU, FP swapped: not measured — no frame has two sounding sources that each "
                     "sound alone in another clip of the split")
    return notes


# ------------------------------------------------------------------------------------------------ table
COLUMNS = (("miou", "mIoU"), ("fscore", "F"), ("fpr_silence", "FPR silence"), ("fpr_noise", "FPR noise"),
           ("fpr_misaligned", "FPR misaligned"), ("fp_swapped", "FP swapped"), ("counterfactual_iou", "CF IoU"))


def format_table(rows: dict[str, dict], title: str | None = None) -> str:
    """``{name: row}`` → a Markdown table (mIoU and F higher is better; FPRs lower is better)."""
    width = max([len("model")] + [len(name) for name in rows])
    present = [(key, label, max(len(label), 6)) for key, label in COLUMNS
               if any(key in row for row in rows.values())]
    header = "| " + "model".ljust(width) + " | " + " | ".join(label.rjust(w) for _, label, w in present) + " |"
    rule = "|" + "-" * (width + 2) + "|" + "|".join("-" * (w + 1) + ":" for _, _, w in present) + "|"
    lines = ([title, ""] if title else []) + [header, rule]
    for name, row in rows.items():
        cells = []
        for key, _, w in present:
            value = row.get(key)
            text = "-" if value is None or value != value else f"{value:.4f}"
            cells.append(text.rjust(w))
        lines.append("| " + name.ljust(width) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)
