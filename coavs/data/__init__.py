"""Data: AVSBench readers (S4, MS3, AVSS), the synthetic Co-AVS generator, torch Datasets, an on-disk decode cache,
loader set-up with throughput timing, and dataset verification.

Heavy modules are imported on first use, so ``import coavs.data`` stays cheap."""

from __future__ import annotations

import importlib

from coavs.data.errors import DataError

_EXPORTS = {
    "LabelMap": "avsbench", "ClipRecord": "avsbench", "read_records": "avsbench", "detect_layout": "avsbench",
    "palette": "avsbench", "IGNORE_INDEX": "avsbench", "AVSS_NUM_CLASSES": "avsbench",
    "SynthConfig": "synth", "generate": "synth", "CLASS_NAMES": "synth",
    "ClipDataset": "dataset", "S4Dataset": "dataset", "MS3Dataset": "dataset", "AVSSDataset": "dataset",
    "CoAVSDataset": "dataset", "open_dataset": "dataset",
    "ClipCache": "cache", "make_loader": "loader", "DataTimer": "loader",
    "verify_dataset": "verify", "VerifyReport": "verify",
}

__all__ = ["DataError", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"coavs.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'coavs.data' has no attribute {name!r}")
