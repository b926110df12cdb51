"""The analysis tests' set: a tiny synthetic Co-AVS set with varied object areas, semantics and instances, and a
tiny model trained on it for two steps (enough to run every analysis; the numbers mean nothing). The fixtures
``tiny_set``, ``tiny_cache`` and ``tiny_run`` are imported by tests/analysis and tests/cli conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from coavs.data.synth import SynthConfig, generate

TINY_SET = SynthConfig(num_clips=12, frames_per_clip=2, image_size=32, num_semantics=(1, 2),
                       instances_per_semantic=(1, 2), object_area=(0.05, 0.5), silent_prob=0.2,
                       split_fractions=(0.5, 0.25, 0.25), seed=5)

TINY_MODEL = {"preset": "small", "audio_input": "logmel", "hidden_dim": 32, "num_layers": 2, "ffn_dim": 64,
              "num_heads": 4, "backbone_widths": [8, 8, 16, 16], "audio_channels": [4, 8], "num_clusters": 2}


def tiny_base_config(root: Path, cache: Path) -> dict:
    """A training config that runs in about a second per step on a CPU."""
    return {
        "data": {"root": str(root), "audio": "logmel", "batch_size": 2, "num_workers": 0, "cache_dir": str(cache)},
        "model": dict(TINY_MODEL),
        "loss": {"num_points": 64},
        "optim": {"lr": 1e-3},
        "debias": {"strategy": "fixed", "biased_audio": "mute"},
        "stages": [{"epochs": 1}],
        "eval": {"split": ""},
        "run": {"device": "cpu", "max_steps": 2, "progress": False},
    }


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analysis_data") / "coavs_tiny"
    generate(root, TINY_SET)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_cache")


@pytest.fixture(scope="session")
def tiny_run(tiny_set, tiny_cache, tmp_path_factory) -> Path:
    """A debias-trained tiny model (2 steps)."""
    from coavs.training.trainer import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("analysis_run") / "run"
    train(TrainConfig.from_dict(tiny_base_config(tiny_set, tiny_cache)), run_dir)
    return run_dir
