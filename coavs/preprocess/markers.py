"""``coavs markers``: the paper's per-clip marker files, computed with pretrained audio models loaded from local
``save_pretrained`` folders through transformers (nothing is downloaded).

    from coavs.preprocess.markers import compute_markers
    compute_markers("AVSBench_semantic", "markers", classifier="ast-audioset", hubert="hubert-base",
                    class_map="avss_audioset.json")

Per frame ``t`` of a clip (second ``t`` of its audio):

- **class markers** ``0 … C-1`` (the dataset's classes 1 … C): an audio classifier
  (``AutoModelForAudioClassification`` + ``AutoFeatureExtractor``, e.g. AST fine-tuned on AudioSet) hears
  ``window`` seconds centred on the second; label probabilities (sigmoid, or softmax for a single-label model)
  are mapped onto the dataset's classes (a class's probability is the maximum over the labels it is mapped to)
  and a class is present at ``>= threshold`` (0.4, the paper's);
- **cluster marker** ``C + k``: HuBERT (``AutoModel``) hidden states of layer ``hubert_layer`` over the whole clip,
  averaged over each second, assigned to the nearest of ``clusters`` k-means centres fitted on the seconds of the
  ``fit_split`` split (:func:`coavs.models.perception.fit_kmeans`). One cluster per frame, as the reference code's
  FAQ describes ("C classes + 1 cluster").

Output (:mod:`coavs.data.markers` reads it): ``<out>/<uid>.pth`` (a list of ``T`` long tensors of marker ids: the
reference code's layout), ``markers.json`` (the layout and what made it), ``kmeans.pt`` (the centres), and
``silence.pth`` / ``noise.pth`` (the markers of a silent and of a white-noise second, which the bias metrics use).
The models' per-clip outputs are cached under ``<out>/.cache/`` keyed by the models and settings that made them,
so an interrupted run resumes and a rerun with another threshold or cluster count takes seconds.

BEATs, the classifier the paper used, is in no maintained package (its model code lives only in Microsoft's
research repository) and coavs does not copy it; an AudioSet classifier from transformers (AST) takes its place.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from coavs import jsonio
from coavs.audio_spec import SAMPLE_RATE
from coavs.data.audio import resample
from coavs.data.avsbench import SPLITS, label_map_for
from coavs.data.markers import MARKER_INFO, MARKER_INFO_FORMAT
from coavs.errors import UserError
from coavs.models.perception import fit_kmeans, save_kmeans
from coavs.preprocess.common import (clip_audio, dataset_clips, fit_rows, folder_identity, save_torch,
                                     write_atomic)
from coavs.progress import progress_bar

ANY_LABEL = "*"
NOISE_LEVEL = 0.1  # standard deviation of the white-noise second (about -20 dBFS)


@dataclass(frozen=True)
class MarkerSettings:
    """threshold: class-marker threshold on the mapped probability; clusters: k-means centres (M); hubert_layer:
    the hidden state clustered (capped at the model's depth); window: seconds the classifier hears per frame;
    seed: k-means seeding; fit_split: the split whose seconds the k-means is fitted on."""

    threshold: float = 0.4
    clusters: int = 30
    hubert_layer: int = 7
    window: float = 1.0
    seed: int = 0
    fit_split: str = "train"

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.clusters < 1:
            raise ValueError(f"--clusters must be >= 1, got {self.clusters}")
        if self.hubert_layer < 0:
            raise ValueError(f"--hubert-layer must be >= 0, got {self.hubert_layer}")
        if not 0.0 < self.window <= 30.0:
            raise ValueError(f"--window must be in (0, 30] seconds, got {self.window}")
        if self.fit_split not in SPLITS:
            raise ValueError(f"fit_split must be one of {SPLITS}, got {self.fit_split!r}")


# ------------------------------------------------------------------------------------------------ models
def _load(folder, what: str, loader):
    """``loader(folder)`` for a local ``save_pretrained`` folder, with one clear line when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder} (expected a save_pretrained folder there; nothing is "
                        "downloaded)")
    if not (folder / "config.json").is_file():
        raise UserError(f"{what} folder {folder} has no config.json (expected a save_pretrained folder)")
    if not (folder / "preprocessor_config.json").is_file():
        raise UserError(f"{what} folder {folder} has no preprocessor_config.json (save the model's feature "
                        "extractor into it too)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per local weight file says nothing
    try:
        return loader(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{what} folder {folder}: cannot load it with transformers "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


class AudioClassifier:
    """A transformers audio classifier and its feature extractor: 16 kHz windows → label probabilities."""

    def __init__(self, folder, device: str):
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        def load(path):
            extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
            model = AutoModelForAudioClassification.from_pretrained(path, local_files_only=True)
            return extractor, model

        self.extractor, model = _load(folder, "--classifier", load)
        self.model = model.to(device).eval()
        self.device = device
        config = model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.single_label = getattr(config, "problem_type", None) == "single_label_classification"
        self.rate = int(getattr(self.extractor, "sampling_rate", SAMPLE_RATE))

    @torch.no_grad()
    def probabilities(self, windows: list[np.ndarray], batch_size: int) -> Tensor:
        """16 kHz windows → ``[len(windows), L]`` float32 probabilities."""
        rows = []
        for i in range(0, len(windows), batch_size):
            batch = [w if self.rate == SAMPLE_RATE else resample(w, SAMPLE_RATE, self.rate).numpy()
                     for w in windows[i:i + batch_size]]
            inputs = self.extractor(batch, sampling_rate=self.rate, return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits.float()
            rows.append((logits.softmax(-1) if self.single_label else logits.sigmoid()).cpu())
        return torch.cat(rows)


class HubertFeatures:
    """A transformers speech encoder (HuBERT, or any ``AutoModel`` with hidden states and a convolutional frame
    stride) and its feature extractor: a clip's 16 kHz audio → per-second means of one layer's hidden states."""

    def __init__(self, folder, layer: int, device: str):
        from transformers import AutoFeatureExtractor, AutoModel

        def load(path):
            return (AutoFeatureExtractor.from_pretrained(path, local_files_only=True),
                    AutoModel.from_pretrained(path, local_files_only=True))

        self.extractor, model = _load(folder, "--hubert", load)
        self.model = model.to(device).eval()
        self.device = device
        config = model.config
        self.layer = min(layer, int(config.num_hidden_layers))
        self.stride = int(np.prod(getattr(config, "conv_stride", (320,))))
        self.rate = int(getattr(self.extractor, "sampling_rate", SAMPLE_RATE))

    @torch.no_grad()
    def per_second(self, wave: Tensor, seconds: int) -> Tensor:
        """``[N]`` at 16 kHz → ``[seconds, H]``: the mean hidden state of the frames that start in each second
        (seconds past the audio repeat the last one)."""
        audio = wave if self.rate == SAMPLE_RATE else resample(wave, SAMPLE_RATE, self.rate)
        minimum = max(self.stride, 400)
        if audio.numel() < minimum:
            audio = torch.nn.functional.pad(audio, (0, minimum - audio.numel()))
        inputs = self.extractor(audio.numpy(), sampling_rate=self.rate, return_tensors="pt")
        out = self.model(inputs["input_values"].to(self.device), output_hidden_states=True)
        hidden = out.hidden_states[self.layer][0].float().cpu()  # [F,H]
        second = torch.arange(hidden.shape[0]) * self.stride // self.rate
        rows = [hidden[second == t].mean(0) for t in range(min(seconds, int(second.max()) + 1))]
        return fit_rows(torch.stack(rows), seconds)


# ------------------------------------------------------------------------------------------------ class map
def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def resolve_class_map(classes: list[str], labels: list[str], mapping: dict | None) -> tuple[Tensor, dict]:
    """``[L,C]`` float 0/1 (label ``l`` counts for dataset class ``c``) and the mapping as resolved (class →
    label names). ``mapping``: class → a label name, a list of them, or ``"*"`` (any label); a class it does not
    name is matched to the labels named like it (case, ``_`` and ``-`` ignored)."""
    mapping = dict(mapping or {})
    unknown = [name for name in mapping if name not in classes]
    if unknown:
        raise UserError(f"--class-map names {unknown[:3]}, not classes of the dataset (its classes: "
                        f"{', '.join(classes[:8])}{' …' if len(classes) > 8 else ''})")
    by_name: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_name.setdefault(_normalise(label), []).append(index)
    matrix = torch.zeros(len(labels), len(classes))
    resolved, missing = {}, []
    for c, name in enumerate(classes):
        wanted = mapping.get(name)
        if wanted is None:
            found = by_name.get(_normalise(name), [])
            if not found:
                missing.append(name)
                continue
        elif wanted == ANY_LABEL:
            found = list(range(len(labels)))
        else:
            wanted = [wanted] if isinstance(wanted, str) else wanted
            if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
                raise UserError(f"--class-map: {name!r} must map to a label name, a list of them, or \"*\"")
            found = []
            for label in wanted:
                if label not in labels:
                    close = difflib.get_close_matches(label, labels, n=3, cutoff=0.4)
                    raise UserError(f"--class-map: {name!r} -> {label!r} is not a label of the classifier"
                                    f"{f' (close: {close})' if close else ''}")
                found.append(labels.index(label))
        matrix[found, c] = 1.0
        resolved[name] = ANY_LABEL if wanted == ANY_LABEL else [labels[i] for i in found]
    if missing:
        raise UserError(f"no classifier label is named like the dataset class(es) {missing[:5]}"
                        f"{' …' if len(missing) > 5 else ''}: give --class-map JSON (class -> classifier labels; "
                        "\"*\" for any label, e.g. {\"sounding\": \"*\"} for S4/MS3)")
    return matrix, resolved


def read_class_map(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--class-map file not found: {path}")
    mapping = jsonio.read_json(path, "--class-map")
    if not isinstance(mapping, dict):
        raise UserError(f"--class-map {path}: expected a JSON object (dataset class -> classifier labels)")
    return mapping


# ------------------------------------------------------------------------------------------------ per clip
def windows_of(wave: Tensor, seconds: int, window: float) -> list[np.ndarray]:
    """For each second ``t``, ``window`` seconds of ``wave`` centred on ``t + 0.5`` (silence outside the audio)."""
    length = max(1, int(round(window * SAMPLE_RATE)))
    padded = torch.nn.functional.pad(wave, (length, length + seconds * SAMPLE_RATE))
    out = []
    for t in range(seconds):
        start = int(round((t + 0.5) * SAMPLE_RATE - length / 2)) + length
        out.append(padded[start:start + length].numpy().astype(np.float32))
    return out


class _Computer:
    """Runs the models on clips (and on silence and noise), caching per-clip outputs."""

    def __init__(self, classifier, class_matrix, hubert, settings: MarkerSettings, batch_size: int, cache: Path):
        self.classifier, self.class_matrix, self.hubert = classifier, class_matrix, hubert
        self.settings, self.batch_size, self.cache = settings, batch_size, cache

    def __call__(self, key: str, wave: Tensor, seconds: int, cached: bool = True) -> dict:
        path = self.cache / f"{key}.pt"
        if cached and path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache entry is recomputed
                pass
        out = {"probs": None, "hubert": None}
        if self.classifier is not None:
            labels = self.classifier.probabilities(windows_of(wave, seconds, self.settings.window), self.batch_size)
            out["probs"] = (labels[:, :, None] * self.class_matrix[None]).amax(dim=1)  # [T,C]
        if self.hubert is not None:
            out["hubert"] = self.hubert.per_second(wave, seconds)
        if cached:
            save_torch(path, out)
        return out


def _ids(probs: Tensor | None, clusters: Tensor | None, num_classes: int, threshold: float) -> list[Tensor]:
    """Per frame, the marker ids: classes at ``>= threshold``, then ``num_classes + cluster``."""
    frames = probs.shape[0] if probs is not None else clusters.shape[0]
    rows = []
    for t in range(frames):
        ids = (probs[t] >= threshold).nonzero().flatten() if probs is not None else torch.zeros(0, dtype=torch.long)
        if clusters is not None:
            ids = torch.cat([ids, clusters[t:t + 1] + num_classes])
        rows.append(ids.long())
    return rows


def compute_markers(root, out=None, *, classifier=None, class_map=None, hubert=None,
                    settings: MarkerSettings | None = None, split: str | None = None, device: str = "cpu",
                    batch_size: int = 16, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the marker files of every clip of ``split`` (default: all) of the dataset at ``root`` into ``out``
    (default ``<root>/markers``); see the module docstring. ``class_map``: a dict or a JSON file path. Returns
    ``{"out", "clips", "written", "classes", "clusters", "seconds"}``."""
    settings = settings or MarkerSettings()
    if classifier is None and hubert is None:
        raise UserError("give a classifier folder (class markers) and/or a HuBERT folder (cluster markers)")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    layout, records = dataset_clips(root, split)
    class_names = list(label_map_for(root, layout).names[1:])
    out = Path(out) if out is not None else Path(root) / "markers"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    mapping = read_class_map(class_map) if isinstance(class_map, (str, Path)) else class_map

    model = class_matrix = resolved = None
    if classifier is not None:
        model = AudioClassifier(classifier, device)
        class_matrix, resolved = resolve_class_map(class_names, model.labels, mapping)
    speech = HubertFeatures(hubert, settings.hubert_layer, device) if hubert is not None else None
    num_classes = len(class_names) if model is not None else 0
    num_clusters = settings.clusters if speech is not None else 0

    per_clip = {"classifier": folder_identity(classifier) if classifier else None, "class_map": resolved,
                "window": settings.window, "hubert": folder_identity(hubert) if hubert else None,
                "hubert_layer": speech.layer if speech else None}
    key = hashlib.sha256(jsonio.dumps(per_clip, sort_keys=True).encode()).hexdigest()[:16]
    cache = out / ".cache" / key
    if overwrite and (out / ".cache").is_dir():
        for old in (out / ".cache").rglob("*.pt"):
            old.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    compute = _Computer(model, class_matrix, speech, settings, batch_size, cache)

    fit_records = []
    if speech is not None and split is not None and split != settings.fit_split:
        fit_records = dataset_clips(root, settings.fit_split)[1]
    todo = records + [r for r in fit_records if r.uid not in {x.uid for x in records}]
    results = {}
    with torch.no_grad():
        bar = progress_bar(len(todo), desc="markers", unit="clip", disable=not progress)
        try:
            for record in todo:
                results[record.uid] = compute(record.uid, clip_audio(record), record.num_frames)
                bar.update(1)
        finally:
            bar.close()
        silent = torch.zeros(SAMPLE_RATE)
        noise = torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(settings.seed)) * NOISE_LEVEL
        conditions = {"silence": compute("silence", silent, 1, cached=False),
                      "noise": compute("noise", noise, 1, cached=False)}

    fit = None
    if speech is not None:
        seconds = [results[r.uid]["hubert"] for r in todo if r.split == settings.fit_split]
        if not seconds:
            raise UserError(f"no {settings.fit_split} clips to fit the k-means on (choose --fit-split)")
        features = torch.cat(seconds)
        if features.shape[0] < settings.clusters:
            raise UserError(f"--clusters {settings.clusters} needs at least as many seconds of "
                            f"{settings.fit_split} audio; {root} has {features.shape[0]}")
        fit = fit_kmeans(features.double(), settings.clusters, seed=settings.seed)
        save_kmeans(out / "kmeans.pt", fit, f"hubert-layer{speech.layer}")

    def nearest(rows: Tensor) -> Tensor:
        return torch.cdist((rows.float() - fit.mean) / fit.std, fit.centroids).argmin(dim=1)

    def marker_ids(result: dict) -> list[Tensor]:
        clusters = nearest(result["hubert"]) if fit is not None else None
        return _ids(result["probs"], clusters, num_classes, settings.threshold)

    for record in records:
        save_torch(out / f"{record.uid}.pth", marker_ids(results[record.uid]))
    for name, result in conditions.items():
        save_torch(out / f"{name}.pth", marker_ids(result))
    info = {"format": MARKER_INFO_FORMAT, "version": 1, "num_classes": num_classes, "num_clusters": num_clusters,
            "num_markers": num_classes + num_clusters, "class_names": class_names if num_classes else [],
            "layout": layout, **per_clip, **{k: v for k, v in asdict(settings).items() if k != "hubert_layer"},
            "files": "<uid>.pth: a list of T long tensors, frame t's marker ids (classes 0..C-1 at >= threshold, "
                     "then C + cluster)"}
    jsonio.write_json(out / MARKER_INFO, info, indent=1)
    return {"out": str(out), "clips": len(records), "written": len(records), "classes": num_classes,
            "clusters": num_clusters, "seconds": time.perf_counter() - start}


__all__ = ["AudioClassifier", "HubertFeatures", "MarkerSettings", "compute_markers", "read_class_map",
           "resolve_class_map", "windows_of"]
