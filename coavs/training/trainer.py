"""The trainer: a config file → a run folder with the resolved config, logs, per-epoch metrics and checkpoints.

    config = TrainConfig.from_file("configs/demo_debias.yaml", overrides=["data.root=data/coavs"])
    summary = train(config, "runs/debias")                 # or: coavs train CONFIG --out runs/debias
    model, config = load_model("runs/debias")              # the last checkpoint, in eval mode

The config (sections, overrides, validation) is :mod:`coavs.training.config`; the step plan and schedule
:mod:`coavs.training.plan`; checkpoints and :func:`load_model` :mod:`coavs.training.checkpoint`; dataset splits
:mod:`coavs.data.splits`. This module is the loop.

The run folder (:class:`coavs.training.runtime.RunFolder`): ``config.json`` (the resolved config), ``train.log``
(readable), ``log.jsonl`` (a record every ``run.log_every`` steps: loss, learning rate, clips/s and the share of
step time spent waiting for data), ``metrics.jsonl`` (a record per epoch), ``summary.json`` and
``checkpoints/last.pt``.

Exact resume: a checkpoint holds model, optimizer, scheduler, grad scaler, every RNG state of every process and
the position in the plan (stage, epoch, batch); the sampler restarts mid-epoch at that batch, so on CPU a resumed
run repeats the uninterrupted run's loss sequence bit for bit. SIGTERM (or Ctrl-C) ends the current step, saves
a checkpoint and returns; ``train(..., resume=True)`` continues. Under ``torchrun`` every process trains on its
share of each epoch (DDP; NCCL on GPU, gloo on CPU) and logged and evaluated numbers are reduced over processes.
"""


from __future__ import annotations

import dataclasses
import random
import signal
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from coavs.data.loader import make_loader
from coavs import jsonio
from coavs.data.splits import is_binary, open_split
from coavs.errors import UserError
from coavs.inference.batches import collate_frames, select_frames, to_device
from coavs.inference.precision import autocast
from coavs.models import build_model
from coavs.progress import progress_bar, write
from coavs.training import checkpoint as ckpt
from coavs.training import distributed as dist_utils
from coavs.training.checkpoint import checkpoint_path, load_model
from coavs.training.config import (ConfigError, DataSection, EvalSection, LossSection, OptimSection, RunSection,
                                   StageSection, TrainConfig, apply_overrides, config_differences, prepare_segmenter,
                                   resolve, stored_config)
from coavs.training.debias import DebiasObjective
from coavs.training.evaluation import calibrate_run_gate, check_gate_split, evaluate_run
from coavs.training.losses import SetCriterion, audio_classification_loss, targets_from_labels
from coavs.training.markers import file_markers, install_markers
from coavs.training.negatives import NegativeSampler, check_dataset, classifier_rows, split_negatives
from coavs.training.plan import Plan, Stage, build_stages, param_groups
from coavs.training.run_lock import RunLock
from coavs.training.runtime import ResumableSampler, RunFolder, StopSignal, Throughput, resolve_threads


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _SignalProofWorker:
    """DataLoader ``worker_init_fn`` wrapper: workers ignore SIGTERM and SIGINT, so a signal sent to the whole
    process group (a scheduler, Ctrl-C) reaches the training loop, which saves and stops, instead of killing
    the workers under it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


# ------------------------------------------------------------------------------------------------ trainer
class _Trainer:
    def __init__(self, config: TrainConfig, run_dir, info, on_step: Callable | None):
        self.config = config
        self.info = info
        self.device = info.device
        self.folder = RunFolder(run_dir)
        self.on_step = on_step
        self.main = info.is_main

    # ------------------------------------------------------------------------------------ set-up
    def build(self, resume: bool) -> None:
        cfg = self.config
        folder = self.folder
        if self.main:  # the run lock is held: a temporary checkpoint file is what a killed run left behind
            ckpt.remove_temporaries(folder.checkpoints)
        has_checkpoint = folder.last_checkpoint.is_file()
        if resume and not has_checkpoint:
            raise FileNotFoundError(2, "nothing to resume: no checkpoint in the run folder",
                                    str(folder.last_checkpoint))
        if not resume and has_checkpoint:
            raise ConfigError(f"{folder.root} already holds a run (checkpoints/last.pt); resume it (--resume) "
                              "or choose another folder")
        if resume:
            path = folder.root / "config.json"
            stored = stored_config(jsonio.read_json(path, "run config", ConfigError), "run config", path)
            if cfg is not None:
                cfg = prepare_segmenter(cfg)
                given = resolve(cfg, open_split(cfg, cfg.data.split, cfg.stages[0].subsets), self.info.world_size)
                changed = config_differences(stored, given)
                if changed:
                    raise ConfigError(f"the config differs from the run's config.json in {', '.join(changed[:6])}; "
                                      "a resumed run keeps its config")
                # Settings that do not change the computation may differ (progress bar, workers, logging).
                stored = dataclasses.replace(stored, run=dataclasses.replace(
                    stored.run, progress=cfg.run.progress, log_every=cfg.run.log_every,
                    checkpoint_every=cfg.run.checkpoint_every, threads=cfg.run.threads), data=dataclasses.replace(
                    stored.data, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory,
                    cache_dir=cfg.data.cache_dir))
            cfg = self.config = stored
        # Which run this folder holds: config.json and every checkpoint carry it, so a checkpoint copied in from
        # another run folder is refused on resume instead of mixing the two runs.
        self.run_id = cfg.resolved.get("run_id") if resume else uuid.uuid4().hex[:16]

        cfg = self.config = prepare_segmenter(cfg)  # hf_mask2former: the checkpoint's sizes and preprocessing
        _seed_everything(cfg.run.seed)
        stages = build_stages(cfg, self.info.world_size)
        cfg = self.config = resolve(cfg, stages[0].dataset, self.info.world_size)
        if self.run_id is not None:
            cfg.resolved["run_id"] = self.run_id
        self.binary = cfg.resolved["binary"]
        self.plan = Plan(stages, cfg.run.max_steps)
        self.model_config = cfg.model_config()
        # the weights of an earlier run (markers included) replace the pretrained ones: nothing to load twice
        model = build_model(self.model_config, pretrained=not resume and not cfg.run.init_from)
        if not resume and cfg.run.init_from:
            ckpt.initialise_from(model, cfg, cfg.run.init_from)
        elif self.model_config.num_clusters and not resume and not cfg.data.marker_files:
            install_markers(model, self.config, self.model_config, self.folder.root, self.main)
        self.raw_model = model.to(self.device)
        threads = resolve_threads(cfg.run.threads, self.device, sum(p.numel() for p in model.parameters()),
                                  cfg.data.batch_size * (cfg.data.image_size or 224) ** 2)
        if threads is not None:
            torch.set_num_threads(threads)
        self.class_to_marker = model.class_to_marker().to(self.device)

        debias = cfg.debias_config()
        lr = cfg.optim.lr  # each stage's factor (debias_lr_scale in debias stages) is in the schedule
        self.optimizer = torch.optim.AdamW(param_groups(model, lr, cfg.optim), lr=lr, betas=tuple(cfg.optim.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda step: self.plan.lr_factor(step, cfg.optim))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.precision == "fp16")
        criterion = SetCriterion(self.model_config.num_classes, class_weight=cfg.loss.class_weight,
                                 mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight,
                                 no_object_weight=cfg.loss.no_object_weight, num_points=cfg.loss.num_points,
                                 aux_loss=cfg.loss.aux)
        # one objective per stage: a vanilla stage trains without the biased branch (stages[i].debias: false)
        vanilla = dataclasses.replace(debias, enabled=False)
        self.objectives = [DebiasObjective(criterion, dataclasses.replace(debias, enabled=True) if stage.debias
                                           else vanilla, binary=self.binary) for stage in stages]
        self.negatives = _negative_sampler(cfg, model)
        for stage in stages:
            check_dataset(cfg.negatives, stage.dataset)
        check_gate_split(cfg)

        self.step = 0
        self.checkpoint_step = -1
        self.epoch_loss = [0.0, 0]
        self.last_train_loss = None
        if resume:
            self._load_checkpoint()
        else:
            # Each process its own stream after the (shared) initialisation; DDP broadcasts rank 0's weights.
            _seed_everything(cfg.run.seed + 1 + 1000 * self.info.rank)
            if self.main:  # a fresh start: logs of an earlier attempt that never saved a checkpoint go
                for name in ("log.jsonl", "metrics.jsonl", "train.log", "summary.json"):
                    (folder.root / name).unlink(missing_ok=True)
                folder.create(cfg.to_dict())
        dist_utils.barrier()

        self.model = self.raw_model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            find_unused = cfg.run.ddp_find_unused
            if find_unused is None:
                find_unused = cfg.loss.audio_class_weight == 0 or bool(cfg.data.marker_files)  # classifier idle
            self.model = DistributedDataParallel(self.raw_model, device_ids=ids, find_unused_parameters=find_unused)
        if cfg.run.compile:
            backend = cfg.run.compile if isinstance(cfg.run.compile, str) else "inductor"
            self.model = torch.compile(self.model, backend=backend)

    # ---------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        rng = ckpt.all_ranks_rng(self.info)
        if self.main:
            state = {
                "format": ckpt.CHECKPOINT_FORMAT, "version": 1, "run_id": self.run_id,
                "config": jsonio.dumps(self.config.to_dict()),
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "step": self.step,
                "position": list(self.plan.position(self.step)),
                "epoch_loss": list(self.epoch_loss),
            }
            ckpt.save_atomic(state, self.folder.last_checkpoint)
        self.checkpoint_step = self.step
        dist_utils.barrier()

    def _load_checkpoint(self) -> None:
        state = ckpt.load(self.folder.last_checkpoint, map_location=self.device)
        if not isinstance(state, dict) or state.get("format") != ckpt.CHECKPOINT_FORMAT:
            raise UserError(f"{self.folder.last_checkpoint} is not a coavs training checkpoint")
        ckpt.check_same_run(state, self.run_id, self.config, self.folder.last_checkpoint)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        base_lrs = list(self.scheduler.base_lrs)
        self.scheduler.load_state_dict(state["scheduler"])
        # the config (checked equal) sets the base rates: checkpoints of runs that folded debias_lr_scale into
        # them (before per-stage debias) resume at the same rate through the schedule's stage factor
        self.scheduler.base_lrs = base_lrs
        for group, base in zip(self.optimizer.param_groups, base_lrs):
            group["initial_lr"] = base
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.checkpoint_step = int(state["step"])
        self.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        rngs = state["rng"]
        if len(rngs) != self.info.world_size:
            raise ConfigError(f"the checkpoint was written by {len(rngs)} process(es); resume it with as many "
                              f"(this run has {self.info.world_size})")
        ckpt.set_rng_state(rngs[self.info.rank])
        if self.main:  # drop records written after the checkpoint, and a line cut off by a crash
            for name in ("log.jsonl", "metrics.jsonl"):
                records = self.folder.read(name, partial_end=True)
                kept = [r for r in records if r.get("step", 0) <= self.step]
                if len(kept) != len(records) or not self.folder.ends_cleanly(name):
                    jsonio.write_jsonl(self.folder.root / name, kept)

    # -------------------------------------------------------------------------------------- logging
    def say(self, message: str) -> None:
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.folder.root / "train.log", "a") as f:
            f.write(f"{stamp} {message}\n")
        if self.config.run.progress:
            write(message)

    # ----------------------------------------------------------------------------------------- loop
    def loader(self, stage: Stage, epoch: int, start_batch: int):
        d = self.config.data
        sampler = ResumableSampler(len(stage.dataset), self.info.rank, self.info.world_size,
                                   seed=self.config.run.seed + 7919 * stage.index, shuffle=True)
        sampler.set_epoch(epoch, start=start_batch * d.batch_size)
        pin = d.pin_memory if d.pin_memory is not None else self.device.type == "cuda"
        loader = make_loader(stage.dataset, d.batch_size, sampler=sampler, num_workers=d.num_workers,
                             pin_memory=pin, collate_fn=collate_frames, persistent_workers=False,
                             seed=self.config.run.seed)
        if loader.num_workers:
            loader.worker_init_fn = _SignalProofWorker(loader.worker_init_fn)
        return loader

    def train_step(self, batch: dict) -> tuple[float, dict, int]:
        """One optimisation step on a frame batch → (loss, detached loss terms, frames used)."""
        cfg = self.config
        batch = self._training_frames(batch)
        negative_audio = None
        if self.negatives is not None:  # negative-audio frames with empty targets (coavs.training.negatives)
            stage = self.plan.stages[self.plan.position(self.step)[0]]
            batch = self.negatives.augment(batch, self.step, stage.dataset)
            batch, negative_audio = split_negatives(batch, self.negatives.section.audio_only)
        batch = to_device(batch, self.device, non_blocking=True)
        objective = self.objectives[self.plan.position(self.step)[0]]
        targets = targets_from_labels(batch["labels"], self.model_config.num_classes, self.class_to_marker,
                                      background_is_class=not self.binary)
        classes = self.model_config.num_audio_classes
        presence = targets.presence[:, 1:1 + classes]
        forced = presence if cfg.loss.teacher_forcing and classes else None
        with autocast(self.device, cfg.run.precision):
            outputs = self.model(batch["frames"], batch["audio"], biased=objective.biased_audio,
                                 class_presence=forced, marker_scores=file_markers(batch, forced),
                                 clip_index=batch["clip_index"])
        if bool(targets.annotated.any()):
            result = objective(outputs, targets.targets, targets.annotated)
            loss, terms = result.total, dict(result.terms)
            for name, (weight, term) in self._audio_losses(outputs, targets, presence, batch,
                                                           negative_audio).items():
                terms[name] = term
                loss = loss + weight * term
        else:  # nothing annotated: a zero step that keeps every process in step
            loss, terms = outputs["pred_logits"].float().sum() * 0.0, {}
        if self.negatives is not None and "misaligned" in self.negatives.section.kinds:
            terms["negatives_fallback"] = torch.tensor(float(self.negatives.fallbacks))  # this step's
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # fp16: the scaler skips the optimizer on inf/NaN gradients; the
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)  # plan goes on
            self.scheduler.step()
        return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, int(batch["frames"].shape[0])

    def _audio_losses(self, outputs: dict, targets, presence: Tensor, batch: dict,
                      negative_audio: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        """``{term: (weight, loss)}`` of the audio classifier (``audio_cls``): the batch's annotated frames (minus
        misaligned negatives, whose audio does sound) and ``negative_audio``, the ``audio_only`` negatives, with
        every class absent."""
        cfg = self.config
        if outputs.get("audio_logits") is None or cfg.loss.audio_class_weight <= 0:
            return {}
        logits, wanted, keep = outputs["audio_logits"], presence, classifier_rows(targets.annotated, batch)
        if negative_audio is not None:
            with autocast(self.device, cfg.run.precision):
                extra = self.raw_model.audio_outputs(negative_audio.to(self.device, non_blocking=True))["audio_logits"]
            logits = torch.cat([logits, extra.to(logits.dtype)])
            wanted = torch.cat([wanted, wanted.new_zeros(extra.shape)])
            keep = torch.cat([keep, keep.new_ones(extra.shape[0])])
        return {"audio_cls": (cfg.loss.audio_class_weight, audio_classification_loss(logits, wanted, keep))}

    def _training_frames(self, batch: dict) -> dict:
        """Annotated frames only; ``frames_per_clip`` of them per clip drawn at random (global torch RNG)."""
        annotated = batch["annotated"]
        keep = annotated.clone()
        k = self.config.data.frames_per_clip
        if k:
            clip = batch["clip_index"]
            for c in clip.unique().tolist():
                rows = (annotated & (clip == c)).nonzero().flatten()
                if rows.numel() > k:
                    drop = rows[torch.randperm(rows.numel())[k:]]
                    keep[drop] = False
        if not bool(keep.any()):
            return batch
        return select_frames(batch, keep)

    def run(self, max_steps: int | None) -> dict:
        cfg, plan = self.config, self.plan
        stop_at = plan.total if max_steps is None else min(plan.total, max_steps)
        resumed = self.step > 0
        if self.main:
            self.folder.log({"event": "resume" if resumed else "start", "step": self.step, "total_steps": plan.total,
                             "world_size": self.info.world_size, "time": time.time()})
        self.say(f"{'resuming at' if resumed else 'starting'} step {self.step} of {plan.total} "
                 f"({self.info.world_size} process(es) on {self.device}; {self.model_config.queries} queries; "
                 f"debias {cfg.debias.get('strategy', 'none')})")
        bar = None
        if self.main and cfg.run.progress:  # a tqdm bar on a terminal, else a plain line every log_every steps
            bar = progress_bar(plan.total, initial=self.step, unit="step", desc="train", every=cfg.run.log_every,
                               dynamic_ncols=True)
        last_eval, reason, started = None, None, time.perf_counter()
        window = Throughput()
        window_loss = [0.0, 0]
        self.raw_model.train()
        with StopSignal() as stop:
            while self.step < stop_at and reason is None:
                stage_index, epoch, batch_index = plan.position(self.step)
                stage = plan.stages[stage_index]
                epoch_meter = Throughput()
                window.restart_clock()
                batches = iter(self.loader(stage, epoch, batch_index))
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except BaseException:  # a worker's error (a damaged file): stop the workers now, as they
                        shutdown = getattr(batches, "_shutdown_workers", None)  # ignore SIGTERM (see above)
                        if shutdown is not None:
                            shutdown()
                        raise
                    window.data_ready()
                    epoch_meter.data_ready()
                    loss, terms, _ = self.train_step(batch)
                    clips = int(batch["clip_index"].unique().numel())
                    window.step_done(clips)
                    epoch_meter.step_done(clips)
                    self.step += 1
                    batch_index += 1
                    self.epoch_loss[0] += loss
                    self.epoch_loss[1] += 1
                    window_loss[0] += loss
                    window_loss[1] += 1
                    if self.on_step is not None:
                        self.on_step(self.step, {"loss": loss, **terms})
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", stage=stage.section.name, epoch=epoch + 1)
                        bar.update(1)
                    epoch_done = batch_index == stage.steps_per_epoch or self.step == plan.total
                    if self.step % cfg.run.log_every == 0 or epoch_done or self.step == stop_at:
                        self._log_window(window, window_loss, loss, terms, stage, epoch)
                    if epoch_done:
                        last_eval = self._end_epoch(stage, epoch, epoch_meter) or last_eval
                        window.restart_clock()
                    elif cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self._stop_requested(stop):
                        reason = signal.Signals(stop.requested).name
                        break
                    if self.step >= stop_at or epoch_done:
                        break
                del batches
        if bar is not None:
            bar.close()
        finished = self.step >= plan.total
        if not finished and reason is None:
            reason = "max_steps"
        if finished:
            self.calibrate_gate()
        if self.checkpoint_step != self.step:
            self.save_checkpoint()
        seconds = time.perf_counter() - started
        summary = {"run_dir": str(self.folder.root), "step": self.step, "total_steps": plan.total,
                   "finished": finished, "stopped": None if finished else reason,
                   "train_loss": self.last_train_loss, "eval": last_eval, "seconds": seconds}
        if self.main:
            self.folder.log({"event": "done" if finished else "stopped", "step": self.step, "reason": reason,
                             "time": time.time()})
            jsonio.write_json(self.folder.root / "summary.json", summary)
        if finished:
            self.say(f"done: {self.step} steps in {seconds:.1f} s -> {self.folder.root}")
        else:
            self.say(f"stopped ({reason}) after step {self.step}; checkpoint saved, continue with --resume")
        return summary

    def _stop_requested(self, stop: StopSignal) -> bool:
        """A signal on any process stops every process (reduced, so all leave the loop at the same step)."""
        if not self.info.enabled:
            return stop.requested is not None
        flag = torch.tensor([0.0 if stop.requested is None else 1.0], device=self.device)
        dist_utils.all_reduce_sum(flag)
        if flag.item() > 0 and stop.requested is None:
            stop.requested = signal.SIGTERM
        return flag.item() > 0

    def _log_window(self, window: Throughput, window_loss: list, loss: float, terms: dict, stage: Stage,
                    epoch: int) -> None:
        rates = window.report()
        sums = torch.tensor([window_loss[0], window_loss[1], rates["clips_per_s"], rates["data_wait_frac"]],
                            dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_sum(sums)
        window_loss[0], window_loss[1] = 0.0, 0
        if not self.main:
            return
        record = {"step": self.step, "stage": stage.section.name, "epoch": epoch + 1, "loss": loss,
                  "loss_mean": float(sums[0] / sums[1]) if sums[1] else None,
                  "lr": self.optimizer.param_groups[-1]["lr"], "clips_per_s": float(sums[2]),
                  "data_wait_fraction": float(sums[3]) / self.info.world_size, **terms}
        self.folder.log(record)

    def _end_epoch(self, stage: Stage, epoch: int, meter: Throughput) -> dict | None:
        cfg = self.config
        seconds = meter.total
        rates = meter.report()
        sums = torch.tensor([*self.epoch_loss, rates["clips_per_s"], rates["data_wait_frac"]], dtype=torch.float64,
                            device=self.device)
        dist_utils.all_reduce_sum(sums)
        summary = {"clips_per_s": float(sums[2]), "data_wait_fraction": float(sums[3]) / self.info.world_size,
                   "seconds": seconds}
        self.last_train_loss = float(sums[0] / sums[1]) if sums[1] else None
        is_last = self.step >= self.plan.total
        eval_result = None
        due = cfg.eval.every and (epoch + 1) % cfg.eval.every == 0
        if cfg.eval.split and (due or is_last):
            eval_result = self.evaluate()
        record = {"step": self.step, "stage": stage.section.name, "epoch": epoch + 1,
                  "train_loss": self.last_train_loss,
                  "clips_per_s": summary["clips_per_s"], "data_wait_fraction": summary["data_wait_fraction"],
                  "seconds": summary["seconds"]}
        if eval_result is not None:
            record["eval"] = eval_result
        if self.main:
            self.folder.log(record, "metrics.jsonl")
            text = ", ".join(f"{mode} mIoU {row['miou']:.4f} F {row['fscore']:.4f}"
                             for mode, row in (eval_result or {}).items())
            self.say(f"{stage.section.name} epoch {epoch + 1}/{stage.section.epochs}: train loss "
                     f"{record['train_loss']:.4f}, {summary['clips_per_s']:.1f} clips/s, data wait "
                     f"{100 * summary['data_wait_fraction']:.0f}%" + (f"; {text}" if text else ""))
        self.epoch_loss = [0.0, 0]
        self.save_checkpoint()
        return eval_result

    def calibrate_gate(self):
        return calibrate_run_gate(self)

    def evaluate(self) -> dict:
        return evaluate_run(self)


def _negative_sampler(cfg: TrainConfig, model):
    return NegativeSampler(cfg.negatives, cfg.run.seed, cfg.data.audio, model) if cfg.negatives.enabled else None


def train(config, run_dir, resume: bool = False, max_steps: int | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train as ``config`` says (a :class:`TrainConfig`, a dict, or a YAML/JSON path) into ``run_dir``.

    Args:
        resume: continue the run in ``run_dir`` from its last checkpoint (exactly; the config must be the run's).
        max_steps: stop after this global step (checkpoint saved; resumable) without changing the plan or the
            schedule — unlike ``run.max_steps``, which shortens the plan.
        on_step: called on every process after every step with ``(step, {"loss": …, <terms>})``.

    Returns a summary: ``step``, ``total_steps``, ``finished``, ``stopped`` (None, ``SIGTERM``, ``SIGINT`` or
    ``max_steps``), ``train_loss`` (mean of the last epoch so far), ``eval`` (the last evaluation: mode → metrics),
    ``seconds``, ``run_dir``. Runs under ``torchrun`` as DDP (one process per device).
    """
    if isinstance(config, (str, Path)):
        config = TrainConfig.from_file(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if resume and max_steps is not None and max_steps < 0:
        raise ValueError("max_steps must be >= 0")
    if config.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda, but no CUDA device is visible (use run.device=auto or cpu)")
    if config.data.audio == "vggish" and not Path(config.data.vggish_dir).is_dir():
        raise ConfigError(f"data.vggish_dir {config.data.vggish_dir} is not a folder (data.audio=vggish reads "
                          "<uid>.npy VGGish features from it)")
    was_initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    threads = torch.get_num_threads()
    info = dist_utils.setup(config.run.device)
    lock = RunLock(run_dir) if info.is_main else None  # one run per folder, for the run's whole life
    trainer = None
    try:
        if lock is not None:
            lock.acquire()
        trainer = _Trainer(config, run_dir, info, on_step)
        trainer.build(resume)
        if lock is not None and lock.previous_pid is not None:
            trainer.say(f"took over the run folder from pid {lock.previous_pid}, which ended without releasing it")
        return trainer.run(max_steps)
    finally:
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads)  # run.threads applies to the run only
        if not was_initialised:
            del trainer  # its DDP model holds the process group, which must end before the interpreter does
            dist_utils.teardown()


# Public names documented as coavs.training.trainer's (README "Training"): they live in the modules above.
__all__ = ["TrainConfig", "DataSection", "LossSection", "OptimSection", "StageSection", "EvalSection", "RunSection",
           "train", "load_model", "checkpoint_path", "open_split", "is_binary", "apply_overrides"]
