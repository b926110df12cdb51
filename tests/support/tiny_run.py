"""A tiny synthetic Co-AVS set and a training config that runs a step in well under a second on one CPU thread,
for the trainer, runner and CLI tests."""

from __future__ import annotations

from pathlib import Path

from coavs.data.synth import SynthConfig, generate

TINY_SET = SynthConfig(num_clips=16, frames_per_clip=2, image_size=32, classes=("violin", "dog", "car", "bird"),
                       silent_prob=0.2, eval_silent_prob=0.5, split_fractions=(0.5, 0.25, 0.25), seed=11)

TINY_MODEL = {"preset": "small", "hidden_dim": 32, "num_layers": 2, "ffn_dim": 64, "num_heads": 4,
              "backbone_widths": [8, 8, 16, 16], "audio_channels": [4, 8], "num_clusters": 2}


def make_tiny_set(root: Path) -> Path:
    generate(root, TINY_SET)
    return root


def tiny_config(root: Path, cache: Path, **sections) -> dict:
    """The config as a dict; ``sections`` replace or extend sections (``run={"max_steps": 3}`` merges)."""
    config = {
        "data": {"root": str(root), "audio": "logmel", "batch_size": 2, "num_workers": 0, "cache_dir": str(cache)},
        "model": dict(TINY_MODEL),
        "loss": {"num_points": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "debias": {"strategy": "none"},
        "stages": [{"epochs": 1}],
        "eval": {"split": ""},
        "run": {"device": "cpu", "progress": False, "log_every": 1, "threads": 1},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step record in the run's log.jsonl."""
    import json

    records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]
