"""Pieces of the training loop that do not depend on the model: run folder, stop signals, a resumable
distributed sampler, and a throughput meter (clips/s and the share of time spent waiting for data)."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import torch
from torch.utils.data import Sampler

from coavs.jsonio import append_jsonl, read_jsonl, write_json


class RunFolder:
    """``<root>/``: ``config.json`` (resolved), ``log.jsonl`` (per logged step), ``metrics.jsonl`` (per epoch),
    ``checkpoints/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"

    def create(self, resolved_config: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "config.json", resolved_config)

    def log(self, record: dict, file: str = "log.jsonl") -> None:
        append_jsonl(self.root / file, record)

    def read(self, file: str = "log.jsonl", partial_end: bool = False) -> list[dict]:
        """The records of ``file``; ``partial_end``: a last line cut off without its newline (a crash while
        appending it) is left out instead of refused."""
        path = self.root / file
        if not path.exists():
            return []
        return read_jsonl(path, "run log", partial_end=partial_end)

    def ends_cleanly(self, file: str = "log.jsonl") -> bool:
        """False when ``file``'s last line was cut off before its newline."""
        path = self.root / file
        if not path.exists() or path.stat().st_size == 0:
            return True
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"


class StopSignal:
    """Catches SIGTERM (and SIGINT) while active: the loop checks ``requested`` after each step, saves, exits."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested: int | None = None
        self._previous = {}

    def __enter__(self):
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


class ResumableSampler(Sampler[int]):
    """Each epoch a permutation from ``seed + epoch``, split across ranks like ``DistributedSampler``
    (padded to equal length), that can start ``start`` samples into this rank's share (mid-epoch resume)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("the dataset is empty")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        self.per_rank = math.ceil(size / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class Throughput:
    """Accumulates data-wait and step time between reports."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.wait = 0.0
        self.total = 0.0
        self.clips = 0
        self._mark = time.perf_counter()

    def restart_clock(self) -> None:
        """Forget the time since the last step (evaluation or checkpointing in between is not data wait)."""
        self._mark = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.wait += now - self._mark
        self._data_at = now

    def step_done(self, clips: int) -> None:
        now = time.perf_counter()
        self.total += now - self._mark
        self.clips += clips
        self._mark = now

    def report(self) -> dict:
        out = {"clips_per_s": self.clips / self.total if self.total else 0.0,
               "data_wait_frac": self.wait / self.total if self.total else 0.0}
        self.reset()
        return out


# CPU threads for `run.threads: auto`. Measured on the 2-core development machine (shared with other jobs, load
# average ~13), one process, one training step (forward + matching + debias loss + backward + AdamW, biased branch
# "mute"), 1 and 2 threads alternating step by step, medians of 5 (2026-12-02):
#   ModelConfig.small(num_layers=2), 0.65M parameters, 4 frames of 64x64:  1 thread 3.82 steps/s (48 ms CPU),
#                                                                         2 threads 0.11 steps/s (2172 ms CPU)
#   ModelConfig.small(), 0.70M parameters, 8 frames of 96x96:            1 thread 0.92 steps/s (138 ms CPU),
#                                                                         2 threads 0.05 steps/s (3310 ms CPU)
# Two threads were 18-35x slower: the OpenMP workers spin at every intra-op barrier and the ops of a small model
# are too short to hide it, the more so on a busy machine. The limits below extrapolate (x7 parameters, x1.8
# pixels) from these runs and stay under the paper-sized model (22.9M parameters), which keeps PyTorch's
# default; for a small model, run one process per core instead of more threads.
AUTO_THREADS_MAX_PARAMS = 5_000_000
AUTO_THREADS_MAX_PIXELS = 8 * 128 * 128  # clips per batch x image side², per process


def resolve_threads(requested, device, num_params: int, pixels_per_step: int) -> int | None:
    """The thread count for ``run.threads``: an int is used as given, None keeps PyTorch's default, ``"auto"`` is
    1 on CPU for models under AUTO_THREADS_MAX_PARAMS parameters with batches under AUTO_THREADS_MAX_PIXELS
    pixels (where one thread was measured faster), else PyTorch's default (None)."""
    if requested is None or (isinstance(requested, int) and not isinstance(requested, bool)):
        return requested
    if requested != "auto":
        raise ValueError(f"run.threads must be an int >= 1, null or 'auto', got {requested!r}")
    if torch.device(device).type != "cpu":
        return None
    small = num_params < AUTO_THREADS_MAX_PARAMS and pixels_per_step < AUTO_THREADS_MAX_PIXELS
    return 1 if small else None
