"""What a training run evaluates: the metrics on ``eval.split`` after epochs, with the run's inference settings,
and the run's "nothing sounds" gate (a fixed threshold, or calibrated on ``gate.split`` and saved as
``<run>/gate.json``). ``trainer`` is the loop's trainer (:mod:`coavs.training.trainer`)."""

from __future__ import annotations

import torch

from coavs.data.splits import open_split
from coavs.errors import ConfigError
from coavs.eval.gate import build_gate, save_gate
from coavs.eval.runner import evaluate
from coavs.inference.gate import Gate
from coavs.training.config import TrainConfig


def check_gate_split(cfg: TrainConfig) -> None:
    """A gate to calibrate needs clips in its split: say so before training, not after it."""
    if cfg.gate.mode != "none" and cfg.gate.threshold is None and len(open_split(cfg, cfg.gate.split)) == 0:
        raise ConfigError(f"gate.split: the {cfg.gate.split} split of {cfg.data.root} has no clips to calibrate "
                          "the gate on (use gate.split=train or set gate.threshold)")


def calibrate_run_gate(trainer) -> object:
    """The run's gate (``gate`` section): a fixed threshold, or calibrated once per step on ``gate.split`` with
    the raw model and saved as ``<run>/gate.json``; None when ``gate.mode`` is none."""
    section = trainer.config.gate
    if section.mode == "none":
        return None
    if section.threshold is not None:
        return Gate(section.mode, section.threshold)
    cached = getattr(trainer, "_gate", None)
    if cached is not None and cached[0] == trainer.step:
        return cached[1]
    dataset = open_split(trainer.config, section.split)
    training = open_split(trainer.config, "train") if section.probe else None
    with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
        gate, stats = build_gate(trainer.raw_model, dataset, section.mode, section.keep, training=training,
                                 device=trainer.device, max_clips=section.max_clips, seed=trainer.config.run.seed,
                                 precision=trainer.config.run.precision)
    if trainer.main:
        save_gate(trainer.folder.root, gate, {**stats, "step": trainer.step}, section.split)
    trainer._gate = (trainer.step, gate)
    return gate


def evaluate_run(trainer) -> dict:
    """Metrics on ``eval.split`` with the raw (un-wrapped) model, on this process's shard, merged."""
    cfg = trainer.config
    dataset = getattr(trainer, "_eval_dataset", None)
    if dataset is None:
        dataset = trainer._eval_dataset = open_split(cfg, cfg.eval.split)
    trainer.raw_model.eval()
    try:
        with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
            return evaluate(trainer.raw_model, dataset, batch_size=cfg.eval.batch_size, device=trainer.device,
                            modes=cfg.eval_modes(), bias=cfg.eval.bias, max_clips=cfg.eval.max_clips,
                            precision=cfg.run.precision, distributed=trainer.info.enabled, protocol=cfg.eval.protocol,
                            gate=trainer.calibrate_gate(), **cfg.debias_config().inference_settings())
    finally:
        trainer.raw_model.train()


__all__ = ["calibrate_run_gate", "check_gate_split", "evaluate_run"]
