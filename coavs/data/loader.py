"""DataLoader set-up for training and a timer that tells whether the input pipeline keeps up.

``make_loader`` gives worker processes (seeded per worker and epoch), pinned memory when CUDA is available,
persistent workers and prefetching. ``DataTimer`` wraps any iterable of batches and measures, per step, the time
the loop waited for the next batch versus the time spent in the step itself::

    timer = DataTimer(loader)
    for batch in timer:
        loss = step(batch)           # a step that synchronises (e.g. loss.item()) makes the split exact on GPU
    timer.summary()  # {'steps': ..., 'clips': ..., 'clips_per_s': ..., 'data_wait_fraction': ..., ...}
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on, minus one for the main loop, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # differs per worker and epoch (DataLoader's base seed + worker id)
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, num_workers: int | None = None,
                pin_memory: bool | None = None, drop_last: bool = False, seed: int = 0, prefetch_factor: int = 4,
                persistent_workers: bool = True, sampler=None, collate_fn=None) -> DataLoader:
    """A DataLoader for the clip datasets. ``num_workers`` None: :func:`default_workers`; ``pin_memory`` None: on
    when CUDA is available. ``seed`` fixes the shuffling order (through a generator), so runs repeat."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = default_workers() if num_workers is None else num_workers
    generator = torch.Generator()
    generator.manual_seed(seed)
    extra = {}
    if workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
                 "worker_init_fn": _seed_worker}
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      drop_last=drop_last, generator=generator, collate_fn=collate_fn, **extra)


def _count_clips(batch) -> int:
    if isinstance(batch, dict):
        if "uid" in batch:
            return len(batch["uid"])
        batch = next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0]) if hasattr(batch, "shape") else 1


class DataTimer:
    """Iterate over ``batches`` while timing data waits and steps.

    ``wait`` of a step = time blocked in ``next()``; ``step`` = time from getting the batch to asking for the next
    one. ``data_wait_fraction`` = total wait / (total wait + total step). ``clips_of(batch)`` counts clips (default:
    ``len(batch["uid"])`` or the first tensor's batch dimension). ``skip_first`` steps (worker start-up, compile)
    are left out of the totals; ``window`` recent steps are kept for :meth:`recent`."""

    def __init__(self, batches: Iterable, clips_of: Callable | None = None, skip_first: int = 0, window: int = 50):
        self.batches = batches
        self.clips_of = clips_of or _count_clips
        self.skip_first = skip_first
        self._recent = collections.deque(maxlen=window)
        self.reset()

    def reset(self) -> None:
        self.steps = self.clips = 0
        self.wait_s = self.step_s = 0.0
        self._seen = 0
        self._recent.clear()

    def __iter__(self) -> Iterator:
        iterator = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            got = time.perf_counter()
            yield batch
            self._record(got - start, time.perf_counter() - got, self.clips_of(batch))

    def _record(self, wait: float, step: float, clips: int) -> None:
        self._seen += 1
        if self._seen <= self.skip_first:
            return
        self.steps += 1
        self.clips += clips
        self.wait_s += wait
        self.step_s += step
        self._recent.append((wait, step, clips))

    @staticmethod
    def _summarise(steps: int, clips: int, wait: float, step: float) -> dict:
        total = wait + step
        return {
            "steps": steps, "clips": clips, "seconds": total,
            "clips_per_s": clips / total if total > 0 else 0.0,
            "data_wait_fraction": wait / total if total > 0 else 0.0,
            "mean_wait_ms": 1e3 * wait / steps if steps else 0.0,
            "mean_step_ms": 1e3 * step / steps if steps else 0.0,
        }

    def summary(self) -> dict:
        """Totals since the last :meth:`reset`."""
        return self._summarise(self.steps, self.clips, self.wait_s, self.step_s)

    def recent(self) -> dict:
        """The same numbers over the last ``window`` steps (for periodic logging)."""
        waits, steps, clips = zip(*self._recent) if self._recent else ((), (), ())
        return self._summarise(len(self._recent), sum(clips), sum(waits), sum(steps))
