"""The area (A.1) and semantics (A.2) analyses on hand-made prediction batches: the CSV numbers equal what the
metric classes give for the same frames, and the figures are written."""

import pytest
import torch
from PIL import Image

from coavs.analysis.area import area_analysis, write_area_outputs
from coavs.analysis.semantics import semantics_analysis, write_semantics_outputs
from coavs.analysis.stats import area_bin_index, count_instances, count_semantics, sounding_area
from coavs.analysis.tables import read_csv
from coavs.eval.metrics import BinaryAVSMetrics, SemanticAVSMetrics

CLASSES = 5
EDGES = (0.0, 0.1, 0.25, 0.5, 1.0)


def prediction_batches(seed=0, batches=4, n=6, size=24):
    """Batches shaped like ``predict_batches``' output: squares of random size and class, noisy predictions,
    one unannotated frame per batch (it must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        labels = torch.zeros(n, size, size, dtype=torch.long)
        for i in range(n):
            for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
                s, y, x = (int(v) for v in torch.randint(2, 14, (3,), generator=g))
                labels[i, y:y + s, x:x + s] = int(torch.randint(1, CLASSES, (1,), generator=g))
        labels[-1] = 255
        fg = ((labels > 0) & (labels != 255)).float() * 0.6 + torch.rand(n, size, size, generator=g) * 0.5
        pred = torch.where(fg > 0.5, torch.randint(1, CLASSES, (n, size, size), generator=g), 0)
        annotated = torch.ones(n, dtype=torch.bool)
        annotated[-1] = False
        out.append({"pred_labels": pred, "fg_score": fg, "labels": labels, "annotated": annotated,
                    "uid": [f"clip{b}"] * n, "clip_index": torch.full((n,), b), "frame_index": torch.arange(n)})
    return out


def all_frames(batches):
    keep = [b["annotated"] for b in batches]
    cat = lambda key: torch.cat([b[key][k] for b, k in zip(batches, keep)])  # noqa: E731
    return cat("labels"), cat("fg_score"), cat("pred_labels")


def expected_metrics(rows, labels, fg, pred):
    binary = BinaryAVSMetrics(scores="probabilities")
    binary.update(fg[rows], (labels[rows] > 0))
    semantic = SemanticAVSMetrics(CLASSES)
    semantic.update(pred[rows], labels[rows])
    b, s = binary.compute(), semantic.compute()
    return {"frames": b["frames"], "binary_miou": b["miou"], "binary_fscore": b["fscore"],
            "semantic_miou_present": s["miou_present_classes"], "semantic_fscore_present": s["fscore_present_classes"]}


def assert_row_matches(row: dict, expected: dict):
    assert int(row["frames"]) == expected["frames"]
    for key in ("binary_miou", "binary_fscore", "semantic_miou_present", "semantic_fscore_present"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key


def test_area_csv_equals_the_metrics_of_each_bin(tmp_path):
    batches = prediction_batches()
    shifted = prediction_batches(seed=1)  # stands in for the rescaled frames (same clips and frame indices)
    result = area_analysis(batches, CLASSES, EDGES, rescaled_batches=shifted, class_names=tuple("bgabcd"),
                           target=(0.3, 0.4))
    paths = write_area_outputs(result, tmp_path, "test")
    assert {p.name for p in paths.values()} == {"area.csv", "area_frames.csv", "area_classes.csv", "area.png"}
    Image.open(paths["figure"]).verify()

    labels, fg, pred = all_frames(batches)
    bins = area_bin_index(sounding_area(labels), EDGES)
    rows = {(r["condition"], r["bin"]): r for r in read_csv(paths["table"])}
    labels_of_bin = {-1: "none", 0: "0-10%", 1: "10-25%", 2: "25-50%", 3: "50-100%"}
    for index, name in labels_of_bin.items():
        chosen = (bins == index).nonzero().flatten()
        if chosen.numel() == 0:
            assert ("original", name) not in rows
            continue
        assert_row_matches(rows[("original", name)], expected_metrics(chosen, labels, fg, pred))
    assert_row_matches(rows[("original", "all")], expected_metrics(torch.arange(len(labels)), labels, fg, pred))
    assert int(rows[("original", "all")]["frames"]) == 4 * 5  # the unannotated frames are left out

    # rescaled rows: the rescaled predictions grouped by the ORIGINAL frame's bin
    labels2, fg2, pred2 = all_frames(shifted)
    for index, name in labels_of_bin.items():
        chosen = (bins == index).nonzero().flatten()
        if chosen.numel():
            assert_row_matches(rows[("rescaled", name)], expected_metrics(chosen, labels2, fg2, pred2))
            assert float(rows[("rescaled", name)]["mean_area"]) == pytest.approx(
                float(sounding_area(labels2[chosen]).mean()), rel=1e-12)

    # per class: IoU over the whole set and mean area where the class sounds
    semantic = SemanticAVSMetrics(CLASSES)
    semantic.update(pred, labels)
    per_class = semantic.compute()["per_class_iou"]
    for row in read_csv(paths["classes"]):
        c = int(row["class"])
        assert float(row["iou"]) == pytest.approx(per_class[c], rel=1e-12)
        shown = (labels == c).flatten(1).any(1)
        assert int(row["frames"]) == int(shown.sum())
        assert float(row["mean_area"]) == pytest.approx(float((labels[shown] == c).double().mean()), rel=1e-12)

    frames = read_csv(paths["frames"])
    assert len(frames) == 20 and {"uid", "frame", "area", "iou", "rescaled_area", "rescaled_iou"} <= set(frames[0])


def test_semantics_csv_equals_the_metrics_of_each_count(tmp_path):
    batches = prediction_batches(seed=3)
    result = semantics_analysis(batches, CLASSES)
    paths = write_semantics_outputs(result, tmp_path, "test")
    Image.open(paths["figure"]).verify()
    labels, fg, pred = all_frames(batches)
    counts = {"semantics": count_semantics(labels), "instances": count_instances(labels)}
    rows = read_csv(paths["table"])
    seen = set()
    for row in rows:
        chosen = (torch.arange(len(labels)) if row["count"] == "all"
                  else (counts[row["by"]] == int(row["count"])).nonzero().flatten())
        assert_row_matches(row, expected_metrics(chosen, labels, fg, pred))
        seen.add((row["by"], row["count"]))
    for by, values in counts.items():
        assert {(by, str(v)) for v in values.unique().tolist()} | {(by, "all")} == {s for s in seen if s[0] == by}


def test_binary_data_has_no_semantic_columns(tmp_path):
    batches = prediction_batches()
    for b in batches:
        b["labels"] = torch.where(b["labels"] == 255, 255, (b["labels"] > 0).long())
    result = area_analysis(batches, None, EDGES)
    paths = write_area_outputs(result, tmp_path)
    header = read_csv(paths["table"])[0].keys()
    assert "semantic_miou_present" not in header and "classes" not in paths
    sem = write_semantics_outputs(semantics_analysis(batches, None), tmp_path)
    assert "semantic_miou_present" not in read_csv(sem["table"])[0]


def test_rescaled_frames_must_be_frames_of_the_original_batches():
    batches = prediction_batches()
    other = prediction_batches(seed=2)
    other[0]["clip_index"] = other[0]["clip_index"] + 100
    with pytest.raises(ValueError, match="rescaled batches"):
        area_analysis(batches, CLASSES, EDGES, rescaled_batches=other)
