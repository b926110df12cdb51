"""Per-frame ground-truth statistics, area bins, and grouped metrics against the metric classes."""

import math

import pytest
import torch

from coavs.analysis.stats import (GroupedMetrics, area_bin_index, area_bin_label, count_instances, count_semantics,
                                  frame_statistics, parse_edges, sounding_area)
from coavs.eval.metrics import BinaryAVSMetrics, SemanticAVSMetrics


def hand_labels() -> torch.Tensor:
    """Frame 0: two separate squares of class 1, one of class 2, a 1-pixel speck of class 3.
    Frame 1: background only. Frame 2: one L-shaped (8-connected through a corner) object of class 4."""
    labels = torch.zeros(3, 20, 20, dtype=torch.long)
    labels[0, 0:4, 0:4] = 1
    labels[0, 10:14, 10:14] = 1
    labels[0, 0:5, 15:20] = 2
    labels[0, 19, 0] = 3
    labels[2, 2:5, 2:5] = 4
    labels[2, 5:8, 5:8] = 4  # touches the first square only at a corner
    return labels


def test_area_semantics_and_instances_by_hand():
    labels = hand_labels()
    assert sounding_area(labels).tolist() == pytest.approx([(16 + 16 + 25 + 1) / 400, 0.0, 18 / 400])
    assert count_semantics(labels).tolist() == [3, 0, 1]
    # the speck (1 pixel = 0.25 % of the frame) is an instance only when the threshold allows it
    assert count_instances(labels, min_instance_fraction=0.0).tolist() == [4, 0, 1]
    assert count_instances(labels, min_instance_fraction=0.005).tolist() == [3, 0, 1]
    stats = frame_statistics(labels, 0.005)
    assert stats.semantics.tolist() == [3, 0, 1] and stats.instances.tolist() == [3, 0, 1]


def test_unannotated_pixels_are_not_sounding():
    labels = torch.full((1, 4, 4), 255, dtype=torch.long)
    labels[0, 0, 0] = 2
    assert sounding_area(labels).tolist() == [1 / 16]
    assert count_semantics(labels).tolist() == [1]
    assert count_instances(labels, 0.0).tolist() == [1]


def test_statistics_reject_bad_labels():
    with pytest.raises(ValueError, match="labels must be a \\[N,H,W\\]"):
        sounding_area(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        count_semantics(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="min_instance_fraction"):
        count_instances(torch.zeros(1, 4, 4, dtype=torch.long), 1.5)


def test_area_bins():
    edges = (0.0, 0.1, 0.3, 1.0)
    area = torch.tensor([0.0, 0.05, 0.1, 0.29, 0.3, 0.99, 1.0])
    assert area_bin_index(area, edges).tolist() == [-1, 0, 1, 1, 2, 2, 2]
    assert area_bin_index(torch.tensor([0.05, 0.5]), (0.1, 0.4)).tolist() == [-1, -1]  # outside the edges
    assert [area_bin_label(i, edges) for i in (-1, 0, 1, 2)] == ["none", "0-10%", "10-30%", "30-100%"]
    assert area_bin_label(0, (0.025, 0.05)) == "2.5-5%"


@pytest.mark.parametrize("text", ["0.3", "0.3,0.1", "a,b", "-0.1,0.5", "0,1.5", ""])
def test_bad_edges(text):
    with pytest.raises(ValueError, match="bins"):
        parse_edges(text)


def test_parse_edges():
    assert parse_edges("0, 0.25,1") == (0.0, 0.25, 1.0)
    assert parse_edges([0, 0.5]) == (0.0, 0.5)


def random_predictions(n=10, size=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, size, size), generator=g)
    labels[0] = 0  # a frame without sounding object
    fg = torch.rand(n, size, size, generator=g)
    pred = torch.where(fg > 0.5, torch.randint(1, classes, (n, size, size), generator=g), 0)
    return labels, fg, pred


def test_grouped_metrics_equal_the_metric_classes_on_each_group():
    labels, fg, pred = random_predictions()
    keys = ["a", "b", "a", "c", "b", "a", "c", "c", "a", "b"]
    grouped = GroupedMetrics(num_classes=4)
    # two batches, to check that groups accumulate across updates
    grouped.update(keys[:6], fg[:6], labels[:6], pred[:6])
    grouped.update(keys[6:], fg[6:], labels[6:], pred[6:])
    assert grouped.groups == ["a", "b", "c"]
    for row in grouped.rows():
        rows = torch.tensor([i for i, k in enumerate(keys) if k == row["group"]])
        binary = BinaryAVSMetrics(scores="probabilities")
        binary.update(fg[rows], labels[rows] > 0)
        semantic = SemanticAVSMetrics(4)
        semantic.update(pred[rows], labels[rows])
        expected_b, expected_s = binary.compute(), semantic.compute()
        assert row["frames"] == len(rows)
        assert row["binary_miou"] == pytest.approx(expected_b["miou"], rel=1e-12)
        assert row["binary_fscore"] == pytest.approx(expected_b["fscore"], rel=1e-12)
        assert row["semantic_miou_present"] == pytest.approx(expected_s["miou_present_classes"], rel=1e-12)
        assert row["semantic_fscore_present"] == pytest.approx(expected_s["fscore_present_classes"], rel=1e-12)
        ious = [float(((fg[i] > 0.5) & (labels[i] > 0)).sum() / (((fg[i] > 0.5) | (labels[i] > 0)).sum() + 1e-7))
                if labels[i].any() else float(((fg[i] <= 0.5) & (labels[i] == 0)).sum() / (144 + 1e-7))
                for i in rows.tolist()]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / len(ious))
        assert row["binary_iou_std"] == pytest.approx(std, abs=1e-6)
        assert row["mean_area"] == pytest.approx(float((labels[rows] > 0).double().mean()), rel=1e-12)


def test_grouped_metrics_binary_data_and_bad_input():
    labels, fg, _ = random_predictions(classes=2)
    grouped = GroupedMetrics(None)
    grouped.update([0] * 10, fg, labels)
    assert "semantic_miou_present" not in grouped.row(0)
    with pytest.raises(ValueError, match="same frames"):
        grouped.update([0] * 9, fg, labels)
    with pytest.raises(ValueError, match="pred_labels"):
        GroupedMetrics(4).update([0] * 10, fg, labels)
    with pytest.raises(ValueError, match="num_classes"):
        GroupedMetrics(1)
