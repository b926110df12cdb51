"""DataTimer: clips per second and the share of step time spent waiting for data."""

from __future__ import annotations

import time

import pytest
import torch

from coavs.data.loader import DataTimer, default_workers


class SlowBatches:
    def __init__(self, n: int, delay: float, batch: int = 4):
        self.n, self.delay, self.batch = n, delay, batch

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.delay)
            yield {"uid": [f"c{i}"] * self.batch, "frames": torch.zeros(self.batch, 1)}


def test_wait_fraction_and_throughput():
    timer = DataTimer(SlowBatches(6, delay=0.03), skip_first=1)
    for _ in timer:
        time.sleep(0.01)
    stats = timer.summary()
    assert stats["steps"] == 5 and stats["clips"] == 20
    assert 0.5 < stats["data_wait_fraction"] < 0.9  # 30 ms wait vs 10 ms step
    assert stats["clips_per_s"] == pytest.approx(20 / stats["seconds"])
    assert 40 < stats["clips_per_s"] <= 100  # at most 4 clips per 40 ms
    assert timer.recent()["steps"] == 5
    timer.reset()
    assert timer.summary()["steps"] == 0 and timer.summary()["clips_per_s"] == 0.0


def test_compute_bound_loop_waits_little():
    timer = DataTimer([torch.zeros(2, 3)] * 5, window=3)
    for _ in timer:
        time.sleep(0.01)
    assert timer.summary()["clips"] == 10 and timer.summary()["data_wait_fraction"] < 0.05
    assert timer.recent()["steps"] == 3


def test_default_workers():
    assert 0 <= default_workers() <= 8
