"""What the analysis commands share: how a trained run is evaluated (inference mode and debias settings from its
config) and which dataset it is evaluated on."""

from __future__ import annotations

import dataclasses

from coavs.data.splits import is_binary, open_split


def inference_settings(config, mode: str | None = None) -> dict:
    """Keyword arguments of :func:`coavs.eval.runner.predict_batches` that evaluate a run as it was trained:
    ``mode`` (the run's inference mode — ``debias`` for a debias-trained run — unless given), ``biased`` (the
    biased branch's audio), ``alpha``, ``scheme``, ``strategy`` and ``overall_reading``."""
    debias = config.debias_config()
    return {"mode": mode or config.inference_mode(), **debias.inference_settings()}


def open_eval_dataset(config, split: str = "test", root: str | None = None):
    """The ``split`` of the run's dataset (or of the dataset at ``root``, opened with the run's image size and
    audio features, so the model sees what it was trained on)."""
    if root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(root), kind="auto"))
    return open_split(config, split)


def num_semantic_classes(dataset) -> int | None:
    """Classes incl. background for the semantic metrics, or None for binary datasets (S4/MS3)."""
    return None if is_binary(dataset) else int(dataset.num_classes)
