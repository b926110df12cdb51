"""The step plan of a run: its stages × epochs × batches on one global step counter, the learning-rate schedule
over it (warm-up, then poly / cosine / constant, times each stage's factor), and the optimizer's parameter groups."""


from __future__ import annotations

import math
from dataclasses import dataclass

from coavs.data.splits import open_split
from coavs.errors import ConfigError
from coavs.training.config import OptimSection, StageSection, TrainConfig


@dataclass
class Stage:
    index: int
    section: StageSection
    dataset: object
    steps_per_epoch: int
    first_step: int  # global step at which the stage starts


class Plan:
    """Stages × epochs × batches laid out on one global step counter (capped by ``run.max_steps``)."""

    def __init__(self, stages: list[Stage], cap: int | None):
        self.stages = stages
        full = sum(s.steps_per_epoch * s.section.epochs for s in stages)
        self.total = full if cap is None else min(cap, full)

    def position(self, step: int) -> tuple[int, int, int]:
        """(stage, epoch in stage, batch in epoch) of the ``step``-th step (0-based)."""
        for stage in self.stages:
            span = stage.steps_per_epoch * stage.section.epochs
            if step < stage.first_step + span:
                local = step - stage.first_step
                return stage.index, local // stage.steps_per_epoch, local % stage.steps_per_epoch
        last = self.stages[-1]
        return last.index, last.section.epochs, 0

    def lr_factor(self, step: int, optim: OptimSection) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            warm = (step + 1) / optim.warmup_steps
        else:
            warm = 1.0
        progress = min(step / max(self.total, 1), 1.0)
        if optim.schedule == "poly":
            decay = (1.0 - progress) ** 0.9
        elif optim.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        stage = self.stages[self.position(min(step, self.total - 1))[0]]
        return warm * decay * stage.section.lr_scale


def param_groups(model, lr: float, optim: OptimSection) -> list[dict]:
    """AdamW groups: the backbone's parameters (``model.backbone_prefix``) at ``backbone_lr_scale``; no weight
    decay for norms, biases and the query embeddings (``model.embedding_names``); frozen parameters left out."""
    prefix = getattr(model, "backbone_prefix", "backbone.")
    embeddings = set(getattr(model, "embedding_names", ("query_feat", "query_pos")))
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.dim() < 2 or name in embeddings
        backbone = name.startswith(prefix)
        groups.setdefault((backbone, no_decay), []).append(param)
    return [{"params": params, "lr": lr * (optim.backbone_lr_scale if backbone else 1.0),
             "weight_decay": 0.0 if no_decay else optim.weight_decay}
            for (backbone, no_decay), params in sorted(groups.items())]


def build_stages(config: TrainConfig, world_size: int) -> list[Stage]:
    """The config's stages with their datasets and step counts (each process takes 1/world_size of a dataset)."""
    stages, first = [], 0
    for i, section in enumerate(config.stages):
        dataset = open_split(config, config.data.split, section.subsets)
        if len(dataset) == 0:
            raise ConfigError(f"stage {section.name!r}: the {config.data.split} split of {config.data.root} has no "
                              "clips" + (f" in subsets {section.subsets}" if section.subsets else ""))
        per_rank = math.ceil(len(dataset) / world_size)
        steps = math.ceil(per_rank / config.data.batch_size)
        stages.append(Stage(i, section, dataset, steps, first))
        first += steps * section.epochs
    return stages



__all__ = ["Plan", "Stage", "build_stages", "param_groups"]
