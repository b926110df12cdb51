"""The step plan of a run: its stages × epochs × batches on one global step counter, the learning-rate schedule
over it (warm-up, then poly / cosine / constant, restarted at every stage with ``restart_schedule``, times each
stage's factor and, in the stages that train with debias, ``optim.debias_lr_scale``), and the optimizer's parameter
groups."""


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
    debias: bool = False  # trains with the debias section
    debias_lr_scale: float = 1.0  # optim.debias_lr_scale, applied when the stage trains with debias

    @property
    def lr_scale(self) -> float:
        """The stage's learning-rate factor: its ``lr_scale``, times ``debias_lr_scale`` in a debias stage."""
        return self.section.lr_scale * (self.debias_lr_scale if self.debias else 1.0)


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

    def segment(self, step: int) -> tuple[int, int]:
        """``(first step, steps)`` of the schedule segment holding ``step``: from the last stage at or before it
        that restarts the schedule (or the start) to the next one (or the end of the plan)."""
        starts = [0] + [st.first_step for st in self.stages[1:] if st.section.restart_schedule]
        first = max(s for s in starts if s <= step)
        later = [s for s in starts if s > first]
        end = min(later[0], self.total) if later else self.total
        return first, max(end - first, 1)

    def lr_factor(self, step: int, optim: OptimSection) -> float:
        first, length = self.segment(step)
        local = step - first
        if optim.warmup_steps and local < optim.warmup_steps:
            warm = (local + 1) / optim.warmup_steps
        else:
            warm = 1.0
        progress = min(local / length, 1.0)
        if optim.schedule == "poly":
            decay = (1.0 - progress) ** 0.9
        elif optim.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        stage = self.stages[self.position(min(step, self.total - 1))[0]]
        return warm * decay * stage.lr_scale


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
        stages.append(Stage(i, section, dataset, steps, first, config.stage_trains_debias(section),
                            config.optim.debias_lr_scale))
        first += steps * section.epochs
    return stages



__all__ = ["Plan", "Stage", "build_stages", "param_groups"]
