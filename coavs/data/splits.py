"""Dataset splits as a config describes them, and the facts about a dataset that every layer asks
(binary or semantic, the dataset under ``Subset`` wrappers)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from coavs.data.avsbench import METADATA_FILES, detect_layout
from coavs.data.dataset import open_dataset
from coavs.data.markers import MARKER_INFO
from coavs.errors import ConfigError

BINARY_KINDS = ("s4", "ms3")


def default_cache_dir() -> Path:
    """The decode cache for ``data.cache_dir: auto``: ``$COAVS_CACHE/clips`` or ``~/.cache/coavs/clips``."""
    base = os.environ.get("COAVS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "coavs")
    return Path(base) / "clips"


def base_dataset(dataset):
    """``dataset`` without its ``torch.utils.data.Subset`` wrappers."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def is_binary(dataset) -> bool:
    """S4/MS3: one sounding class, masks 0/1 (no background class in the set loss). Looks through ``Subset``."""
    return getattr(base_dataset(dataset), "kind", "avss") in BINARY_KINDS


def open_split(config, split: str, subsets=None):
    """The dataset of ``split`` as a config describes it (image size, audio, frames, cache). ``config``: a training
    config (its ``data`` section is used) or the ``data`` section itself."""
    d = getattr(config, "data", config)
    if not d.root:
        raise ConfigError("data.root is not set (the dataset folder; e.g. --set data.root=PATH)")
    cache = None if d.cache_dir in (None, "", "none") else (default_cache_dir() if d.cache_dir == "auto"
                                                             else Path(d.cache_dir))
    kwargs = dict(image_size=d.image_size, audio=d.audio, num_frames=d.num_frames, vggish_dir=d.vggish_dir,
                  cache_dir=cache)
    if getattr(d, "marker_files", None):
        kwargs.update(marker_files(d.marker_files, getattr(config, "model", None) or {}))
    if subsets:
        kwargs["subsets"] = tuple(subsets)
    kind = d.kind
    if kind != "auto" or subsets:
        found = detect_layout(d.root)
        if kind not in ("auto", found):
            raise ConfigError(f"data.kind is {kind}, but {d.root} holds the {found.upper()} layout "
                              f"({METADATA_FILES[found]}): use a {found.upper()} config (configs/paper/{found}.yaml) "
                              "or data.kind=auto")
        kind = found
    if subsets and kind != "avss":
        raise ConfigError(f"this config trains on the AVSS subsets {list(subsets)} (stages[].subsets: the v1s → v2 → "
                          f"v1m curriculum), which needs the AVSS layout (metadata.csv); {d.root} holds the "
                          f"{kind.upper()} layout ({METADATA_FILES[kind]}): use configs/paper/{kind}.yaml")
    return open_dataset(d.root, split, kind, **kwargs)


def marker_files(folder, model: dict) -> dict:
    """The dataset arguments of ``data.marker_files``: the folder, and its width when it has no ``markers.json``
    (``model.num_audio_classes + model.num_clusters``, which must then be set)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data.marker_files: folder not found: {folder} (write it with `coavs markers`)")
    if (folder / MARKER_INFO).is_file():
        return {"marker_dir": folder}
    classes, clusters = model.get("num_audio_classes"), model.get("num_clusters")
    if not (isinstance(classes, int) and isinstance(clusters, int)):
        raise ConfigError(f"data.marker_files: {folder} has no {MARKER_INFO}; set model.num_audio_classes and "
                          "model.num_clusters (their sum is the files' number of markers)")
    return {"marker_dir": folder, "num_markers": classes + clusters}


def check_same_classes(dataset, class_names, num_classes: int, where: str) -> None:
    """Raises :class:`ConfigError` when ``dataset`` (at ``where``) has other classes than a model trained on
    ``class_names`` (``num_classes`` with background): its predictions would be scored against another label map."""
    names = list(getattr(base_dataset(dataset), "class_names", []))
    if int(dataset.num_classes) != int(num_classes):
        raise ConfigError(f"{where} has {dataset.num_classes} classes (with background), the model was trained on "
                          f"{num_classes}: evaluate it on data with the same label map")
    if class_names and names and list(class_names) != names:
        k = next(i for i, (a, b) in enumerate(zip(class_names, names)) if a != b)
        raise ConfigError(f"{where} names class {k} {names[k]!r}, the model was trained with {class_names[k]!r} "
                          "there: evaluate it on data with the same label map")


__all__ = ["BINARY_KINDS", "base_dataset", "check_same_classes", "default_cache_dir", "is_binary",
           "marker_files", "open_split"]
