"""Fixtures of the CLI tests: a tiny dataset and config, a tiny trained run, one clip, and the analysis set (the
helpers live in tests/support/cli.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from coavs.cli import main
from tests.support.analysis_run import tiny_cache, tiny_run, tiny_set  # noqa: F401 (fixtures)
from tests.support.datasets import synth_copy, synth_root  # noqa: F401 (fixtures)
from tests.support.tiny_run import make_tiny_set, tiny_config


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A tiny synthetic set and ``tiny.yaml`` (3 steps, one thread, no progress bar)."""
    root = tmp_path_factory.mktemp("cli_errors")
    data = make_tiny_set(root / "tiny")
    config = tiny_config(data, root / "cache", run={"max_steps": 3})
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="session")
def trained_run(workspace) -> Path:
    """A finished 3-step run folder (train with ``main``)."""
    import torch

    threads = torch.get_num_threads()
    run_dir = workspace / "run"
    try:
        assert main(["train", str(workspace / "tiny.yaml"), "--out", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="session")
def clip(workspace) -> Path:
    """One clip folder of the tiny set (frames/ and audio.wav)."""
    return next(p for p in sorted((workspace / "tiny" / "synth").iterdir()) if (p / "audio.wav").is_file())


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy
