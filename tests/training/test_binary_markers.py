"""Binary AVS (S4, MS3): the markers are a learned "sounding" class marker plus k-means clusters (the reference
code's C classes + 1 cluster), and the foreground may be matched to any active query — the class marker's or the
cluster's — so the dilated queries of whichever markers the audio switched on learn the foreground."""

from __future__ import annotations

import pytest
import torch

import coavs.ops as ops
from coavs.models import ModelConfig
from coavs.training.config import TrainConfig
from coavs.training.losses import targets_from_labels
from coavs.training.matcher import ConstrainedHungarianMatcher


def binary_config(**model) -> ModelConfig:
    config = TrainConfig.from_dict({"data": {"root": "x"}, "model": {"preset": "small", **model}})
    return config.model_config(num_classes=2, binary=True)


def test_binary_runs_let_any_active_query_take_the_foreground():
    config = binary_config()
    assert config.target_markers == "any" and config.num_audio_classes == 1
    assert config.class_to_marker() == [-1, -1]
    semantic = TrainConfig.from_dict({"data": {"root": "x"}, "model": {"preset": "small"}}).model_config(6)
    assert semantic.target_markers == "class" and semantic.class_to_marker() == [-1, 0, 1, 2, 3, 4]


def _match(config: ModelConfig, scores: torch.Tensor):
    """Match one frame's foreground mask when the markers ``scores [1,S]`` are present."""
    torch.manual_seed(0)
    q = config.queries
    assigned = ops.assign_queries(scores, torch.zeros(1, 8), torch.zeros(q, 8), config.dilation)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    targets = targets_from_labels(labels, 2, torch.tensor(config.class_to_marker()), background_is_class=False)
    matcher = ConstrainedHungarianMatcher(num_points=64)
    result = matcher.match(torch.randn(1, q, 3), torch.randn(1, q, 8, 8), targets.targets, assigned.query_marker,
                           assigned.active)
    return result, assigned


def test_a_cluster_query_learns_the_foreground_when_the_sounding_marker_is_off():
    """Frame whose classifier says "not sounding" (0.1) but whose audio falls in cluster 2: the foreground goes to
    one of cluster 2's dilated queries. Under the semantic rule (class marker 0 only) it could not be matched."""
    config = binary_config(num_clusters=3, dilation=2)
    scores = torch.tensor([[0.1, 0.0, 0.0, 1.0]])  # [sounding, cluster 0, cluster 1, cluster 2]
    result, assigned = _match(config, scores)
    (query,), _ = result.indices[0]
    assert int(assigned.query_marker[query]) == 3 and bool(assigned.active[0, query])
    semantic = config.replace(target_markers="class")
    with pytest.warns(UserWarning, match="cannot be matched under the query-assignment constraint"):
        result, _ = _match(semantic, scores)
    assert result.indices[0][0].numel() == 0 and result.unmatched[0].tolist() == [0]


def test_with_both_markers_on_the_foreground_may_go_to_either_block():
    config = binary_config(num_clusters=2, dilation=3)
    result, assigned = _match(config, torch.tensor([[0.9, 1.0, 0.0]]))
    (query,), _ = result.indices[0]
    assert int(assigned.query_marker[query]) in (0, 1) and bool(assigned.active[0, query])
