"""``eval.protocol``: S4/MS3 scored per dataset (every frame alike) or per batch (AVSBench's test.py and the paper's
code: the mean of per-batch numbers), through the evaluation runner's meters and the config."""

from __future__ import annotations

import pytest
import torch

from coavs.errors import ConfigError
from coavs.eval.metrics import BinaryAVSMetrics
from coavs.eval.runner import _ModeMeters
from coavs.training.config import TrainConfig


def _batches():
    g = torch.Generator().manual_seed(0)
    for n, signal in ((5, 0.7), (5, 0.5), (2, 0.0)):  # a short, poor last batch weighs as much as a full one
        gt = torch.rand(n, 16, 16, generator=g) > 0.6
        fg = (gt.float() * signal + torch.rand(n, 16, 16, generator=g) * 0.6).clamp(0, 1)
        yield fg, gt.long()


@pytest.mark.parametrize("protocol", ["per_dataset", "per_batch"])
def test_runner_meters_follow_the_protocol(protocol):
    meters = _ModeMeters(True, 2, ("normal",), protocol=protocol)
    reference = BinaryAVSMetrics(scores="probabilities", per_batch=protocol == "per_batch")
    for fg, gt in _batches():
        meters.update("normal", (fg > 0.5).long(), fg, gt)
        reference.update(fg, gt == 1)
    row, expected = meters.row(), reference.compute()
    assert row["miou"] == pytest.approx(expected["miou"]) and row["fscore"] == pytest.approx(expected["fscore"])


def test_the_two_protocols_differ_and_the_config_checks_the_name():
    rows = {}
    for protocol in ("per_dataset", "per_batch"):
        meters = _ModeMeters(True, 2, ("normal",), protocol=protocol)
        for fg, gt in _batches():
            meters.update("normal", (fg > 0.5).long(), fg, gt)
        rows[protocol] = meters.row()
    assert rows["per_dataset"]["miou"] != pytest.approx(rows["per_batch"]["miou"])
    with pytest.raises(ConfigError, match="eval.protocol must be per_dataset or per_batch"):
        TrainConfig.from_dict({"data": {"root": "x"}, "eval": {"protocol": "per_clip"}})
