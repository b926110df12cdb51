import math

import pytest
import torch

from coavs.eval.metrics import (AVSS_IOU_EPS, BinaryAVSMetrics, SemanticAVSMetrics, f_thresholds, frame_f_curves,
                                frame_iou)

EPS = 1e-7
BIG = 10.0  # σ(10) < 1.0 = the last threshold in float32, σ(−10) < the second threshold


def f_measure(p, r):
    return 0.0 if p == 0 and r == 0 else 1.3 * p * r / (0.3 * p + r)


def logits_of(mask):
    return torch.where(mask.bool(), torch.tensor(BIG), torch.tensor(-BIG))


# 4x4 frames: (prediction, ground truth)
def _frames():
    top = torch.zeros(4, 4, dtype=torch.bool)
    top[:2] = True
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    corner = torch.zeros(4, 4, dtype=torch.bool)
    corner[:2, :2] = True
    empty = torch.zeros(4, 4, dtype=torch.bool)
    return {
        "perfect": (corner, corner),          # IoU 4/4
        "half_overlap": (top, left),          # IoU 4/12
        "empty_both": (empty, empty),         # empty GT: 16 correct empty pixels of 16
        "empty_gt_fp": (corner, empty),       # empty GT: 12 of 16
        "empty_pred": (empty, corner),        # IoU 0
    }


FRAMES = _frames()
HAND_IOU = {"perfect": 4 / (4 + EPS), "half_overlap": 4 / (12 + EPS), "empty_both": 16 / (16 + EPS),
            "empty_gt_fp": 12 / (16 + EPS), "empty_pred": 0.0}


def hand_curve(name):
    """F at threshold 0 (every pixel predicted), at thresholds 1..253 (the ±10 logits), at 1.0 (nothing)."""
    pred, gt = FRAMES[name]
    g = gt.sum().item()
    all_in = f_measure(g / 16, 1.0)
    tp = (pred & gt).sum().item()
    middle = f_measure(tp / pred.sum().item(), tp / g) if pred.any() else 0.0
    return [all_in] + [middle] * 253 + [0.0]


def batch(*names):
    preds = torch.stack([logits_of(FRAMES[n][0]) for n in names])
    gts = torch.stack([FRAMES[n][1].float() for n in names])
    return preds, gts


def test_frame_iou_hand_cases():
    names = list(FRAMES)
    preds = torch.stack([FRAMES[n][0] for n in names])
    gts = torch.stack([FRAMES[n][1] for n in names])
    got = frame_iou(preds, gts)
    for name, value in zip(names, got.tolist()):
        assert value == pytest.approx(HAND_IOU[name], abs=1e-15), name


def test_thresholds_are_avsbench_float32():
    th = f_thresholds()
    assert th.dtype == torch.float32 and th.numel() == 255
    assert th[0].item() == 0.0 and th[-1].item() == 1.0  # 1 − 1e-10 rounds to 1.0 in float32
    torch.testing.assert_close(th, torch.linspace(0, 1 - 1e-10, 255), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["perfect", "half_overlap", "empty_pred"])
def test_f_curve_hand_cases(name):
    preds, gts = batch(name)
    curves, valid = frame_f_curves(torch.sigmoid(preds), gts.bool(), f_thresholds())
    assert valid.tolist() == [True]
    torch.testing.assert_close(curves[0], torch.tensor(hand_curve(name), dtype=torch.float64), rtol=1e-12,
                               atol=1e-12)


def test_empty_prediction_still_scores_at_threshold_zero():
    """AVSBench's first threshold is 0, where every pixel counts as predicted: F = 1.3·(4/16)/(0.3·4/16 + 1)."""
    metrics = BinaryAVSMetrics()
    metrics.update(*batch("empty_pred"))
    result = metrics.compute()
    assert result["miou"] == 0.0
    assert result["fscore"] == pytest.approx(1.3 * 0.25 / (0.075 + 1), abs=1e-12)


def test_binary_metrics_hand_computed_dataset():
    names = ["perfect", "half_overlap", "empty_both", "empty_gt_fp"]
    metrics = BinaryAVSMetrics()
    metrics.update(*batch(*names))
    result = metrics.compute()
    assert result["miou"] == pytest.approx(sum(HAND_IOU[n] for n in names) / 4, abs=1e-12)
    # F: only the two frames with a ground truth; mean curve max = (1 + 0.5) / 2 at the middle thresholds.
    mean_curve = [(a + b) / 2 for a, b in zip(hand_curve("perfect"), hand_curve("half_overlap"))]
    assert result["fscore"] == pytest.approx(max(mean_curve), abs=1e-12)
    assert result["fscore"] == pytest.approx(0.75, abs=1e-12)
    assert (result["frames"], result["fscore_frames"], result["aggregation"]) == (4, 2, "per_dataset")


def test_perfect_prediction():
    metrics = BinaryAVSMetrics()
    metrics.update(*batch("perfect", "perfect"))
    result = metrics.compute()
    assert result["miou"] == pytest.approx(1.0, abs=1e-7) and result["miou"] < 1.0  # the 1e-7 epsilon
    assert result["fscore"] == 1.0


def test_per_batch_reproduces_the_original_averaging():
    # Batch 2 has no ground-truth frame: the original scores its F as 0 and averages it in.
    per_dataset, per_batch = BinaryAVSMetrics(), BinaryAVSMetrics(per_batch=True)
    for names in (["perfect", "half_overlap"], ["empty_both", "empty_gt_fp"]):
        per_dataset.update(*batch(*names))
        per_batch.update(*batch(*names))
    assert per_dataset.compute()["fscore"] == pytest.approx(0.75, abs=1e-12)
    assert per_batch.compute()["fscore"] == pytest.approx(0.375, abs=1e-12)
    # Unequal batches: a one-frame batch weighs as much as a three-frame one.
    per_batch = BinaryAVSMetrics(per_batch=True)
    per_batch.update(*batch("perfect"))
    per_batch.update(*batch("half_overlap", "empty_both", "empty_pred"))
    expected = (HAND_IOU["perfect"] + (HAND_IOU["half_overlap"] + HAND_IOU["empty_both"]) / 3) / 2
    assert per_batch.compute()["miou"] == pytest.approx(expected, abs=1e-12)
    assert per_batch.compute()["batches"] == 2


def test_probabilities_input_equals_logits_input():
    preds, gts = random_binary_batch(6, 9, 7)
    a, b = BinaryAVSMetrics("logits"), BinaryAVSMetrics("probabilities")
    a.update(preds, gts)
    b.update(torch.sigmoid(preds), gts)
    assert a.compute() == b.compute()


# ----------------------------------------------------------------------------------- property tests
def random_binary_batch(n, h, w, generator=None):
    logits = torch.randn(n, h, w, generator=generator) * 3
    gts = (torch.rand(n, h, w, generator=generator) < 0.3).float()
    gts[:: max(1, n // 3)] = 0  # some frames with empty ground truth
    gts[1::4] = (torch.randn(gts[1::4].shape, generator=generator) > 0).float()
    return logits, gts


def run_in_batches(metrics, logits, gts, batch_size):
    for i in range(0, logits.shape[0], batch_size):
        metrics.update(logits[i:i + batch_size], gts[i:i + batch_size])
    return metrics.compute()


@pytest.mark.parametrize("seed", range(4))
def test_per_dataset_is_invariant_to_batch_size(seed):
    g = torch.Generator().manual_seed(seed)
    logits, gts = random_binary_batch(23, 12, 10, g)
    results = [run_in_batches(BinaryAVSMetrics(), logits, gts, bs) for bs in (1, 2, 5, 7, 23)]
    for r in results[1:]:
        assert r["miou"] == pytest.approx(results[0]["miou"], abs=1e-12)
        assert r["fscore"] == pytest.approx(results[0]["fscore"], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_per_batch_depends_on_batch_size(seed):
    g = torch.Generator().manual_seed(seed)
    logits, gts = random_binary_batch(23, 12, 10, g)
    whole = run_in_batches(BinaryAVSMetrics(per_batch=True), logits, gts, 23)
    dataset = run_in_batches(BinaryAVSMetrics(), logits, gts, 23)
    assert whole["miou"] == pytest.approx(dataset["miou"], abs=1e-12)  # one batch: the same thing
    assert whole["fscore"] == pytest.approx(dataset["fscore"], abs=1e-12)
    split = [run_in_batches(BinaryAVSMetrics(per_batch=True), logits, gts, bs) for bs in (2, 5, 7)]
    assert any(abs(r["miou"] - whole["miou"]) > 1e-6 for r in split)
    assert any(abs(r["fscore"] - whole["fscore"]) > 1e-6 for r in split)


def avsbench_style_binary(logits_batches, gt_batches):
    """An independent, literal per-frame/per-threshold evaluation in float32 the way AVSBench's scripts run:
    per batch ``Σ iou / N`` and ``max(mean F curve)``, averaged over batches."""
    ious, fs = [], []
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    for logits, gt in zip(logits_batches, gt_batches):
        pred = (torch.sigmoid(logits) > 0.5).int()
        total = torch.tensor(0.0)
        for i in range(pred.shape[0]):
            if gt[i].sum() == 0:
                inter, union = ((1 - gt[i]) * (1 - pred[i])).sum(), float(gt[i].numel())
            else:
                inter, union = (pred[i] * gt[i]).sum(), torch.max(pred[i], gt[i]).sum()
            total = total + inter / (union + 1e-7)
        ious.append((total / pred.shape[0]).item())
        probs, curve_sum, counted = torch.sigmoid(logits), torch.zeros(255), 0
        for i in range(probs.shape[0]):
            if torch.mean(gt[i]) == 0.0:
                continue
            curve = torch.zeros(255)
            for t in range(255):
                hit = (probs[i] >= thresholds[t]).float()
                tp = (hit * gt[i]).sum()
                p, r = tp / (hit.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
                curve[t] = (1.3 * p * r / (0.3 * p + r)).nan_to_num(0.0)
            curve_sum += curve
            counted += 1
        fs.append((curve_sum / counted).max().item() if counted else 0.0)
    return sum(ious) / len(ious), sum(fs) / len(fs)


@pytest.mark.parametrize("seed", range(2))
def test_per_batch_matches_a_literal_avsbench_evaluation(seed):
    g = torch.Generator().manual_seed(100 + seed)
    logits, gts = random_binary_batch(11, 9, 8, g)
    bounds = [0, 4, 5, 11]
    lb = [logits[a:b] for a, b in zip(bounds, bounds[1:])]
    gb = [gts[a:b] for a, b in zip(bounds, bounds[1:])]
    metrics = BinaryAVSMetrics(per_batch=True)
    for lo, gt in zip(lb, gb):
        metrics.update(lo, gt)
    miou, fscore = avsbench_style_binary(lb, gb)
    result = metrics.compute()
    assert result["miou"] == pytest.approx(miou, abs=1e-6)
    assert result["fscore"] == pytest.approx(fscore, abs=1e-6)


def test_binary_merge_equals_one_stream():
    logits, gts = random_binary_batch(10, 6, 6)
    whole, a, b = BinaryAVSMetrics(), BinaryAVSMetrics(), BinaryAVSMetrics()
    whole.update(logits, gts)
    a.update(logits[:3], gts[:3])
    b.update(logits[3:], gts[3:])
    a.merge(b)
    assert a.compute()["miou"] == pytest.approx(whole.compute()["miou"], abs=1e-12)
    assert a.compute()["fscore"] == pytest.approx(whole.compute()["fscore"], abs=1e-12)


def test_binary_bad_inputs():
    metrics = BinaryAVSMetrics()
    with pytest.raises(ValueError, match="binary mask"):
        metrics.update(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        metrics.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="scores must be"):
        BinaryAVSMetrics(scores="labels")
    assert math.isnan(BinaryAVSMetrics().compute()["miou"])


def test_binary_accepts_channel_dim_and_bool_gt():
    logits, gts = random_binary_batch(4, 5, 5)
    a, b = BinaryAVSMetrics(), BinaryAVSMetrics()
    a.update(logits, gts)
    b.update(logits[:, None], gts.bool()[:, None])
    assert a.compute() == b.compute()


# ----------------------------------------------------------------------------------------------- AVSS
def avss_hand_frames():
    gt = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [0, 0]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 0], [0, 0]]])
    return pred, gt


def test_avss_hand_computed():
    pred, gt = avss_hand_frames()
    metrics = SemanticAVSMetrics(num_classes=4)  # class 3 never appears: it counts as 0 in the mean
    metrics.update(pred, gt)
    r = metrics.compute()
    iou = {0: (0.5 + 2 / 3) / 2, 1: 2 / 3, 2: 0.5, 3: 0.0}
    f = {0: (0.8125 + f_measure(2 / 3, 1.0)) / 2, 1: f_measure(2 / 3, 1.0), 2: 0.8125, 3: 0.0}
    for c in range(4):
        assert r["per_class_iou"][c] == pytest.approx(iou[c], abs=1e-12)
        assert r["per_class_fscore"][c] == pytest.approx(f[c], abs=1e-12)
    assert r["class_frames"] == [2, 1, 1, 0]
    assert r["miou"] == pytest.approx(sum(iou.values()) / 4, abs=1e-12)
    assert r["fscore"] == pytest.approx(sum(f.values()) / 4, abs=1e-12)
    assert r["miou_present_classes"] == pytest.approx(sum(iou[c] for c in range(3)) / 3, abs=1e-12)
    assert r["fscore_present_classes"] == pytest.approx(sum(f[c] for c in range(3)) / 3, abs=1e-12)
    assert r["frames"] == 2


def test_avss_false_positive_class_counts_with_zero():
    gt = torch.zeros(1, 2, 2, dtype=torch.long)
    pred = torch.tensor([[[0, 0], [0, 2]]])
    metrics = SemanticAVSMetrics(num_classes=3)
    metrics.update(pred, gt)
    r = metrics.compute()
    assert r["class_frames"] == [1, 0, 1]  # class 2's union is 1 pixel: a frame with IoU 0
    assert r["per_class_iou"] == pytest.approx([3 / 4, 0.0, 0.0])
    assert r["miou"] == pytest.approx(0.25)


def test_avss_negative_ground_truth_is_ignored_and_large_labels_are_no_class():
    pred = torch.tensor([[[1, 1], [1, 1]]])
    metrics = SemanticAVSMetrics(num_classes=2)
    metrics.update(pred, torch.tensor([[[1, -1], [-1, -1]]]))
    assert metrics.compute()["per_class_iou"] == pytest.approx([0.0, 1.0])
    metrics = SemanticAVSMetrics(num_classes=2)
    metrics.update(pred, torch.tensor([[[1, 255], [255, 255]]]))  # predictions on "no class" pixels are FPs
    assert metrics.compute()["per_class_iou"] == pytest.approx([0.0, 0.25])


def test_avss_scores_input_is_argmax_of_softmax():
    scores = torch.randn(3, 5, 6, 7)
    gt = torch.randint(0, 5, (3, 6, 7))
    a, b = SemanticAVSMetrics(5), SemanticAVSMetrics(5)
    a.update(scores, gt)
    b.update(torch.softmax(scores, 1).argmax(1), gt)
    assert a.compute() == b.compute()


def avsbench_style_semantic(preds, gts, num_classes):
    """Independent float32 evaluation with torch.histc of the shifted labels, summed over frames."""
    ious_sum, f_sum, counts = torch.zeros(num_classes), torch.zeros(num_classes), torch.zeros(num_classes)
    for pred, gt in zip(preds, gts):
        target = gt.float() + 1
        predict = (pred.float() + 1) * (target > 0).float()
        inter = predict * (predict == target).float()
        area_inter = torch.histc(inter, bins=num_classes, min=1, max=num_classes)
        area_pred = torch.histc(predict, bins=num_classes, min=1, max=num_classes)
        area_lab = torch.histc(target, bins=num_classes, min=1, max=num_classes)
        union = area_pred + area_lab - area_inter
        ious_sum += area_inter / (AVSS_IOU_EPS + union)
        counts[union.nonzero().squeeze(-1)] += 1
        p, r = area_inter / area_pred, area_inter / area_lab
        f = 1.3 * p * r / (0.3 * p + r)
        f_sum += f.nan_to_num(0.0)
    miou = (ious_sum / counts).nan_to_num(0.0).mean().item()
    fscore = (f_sum / counts).nan_to_num(0.0).mean().item()
    return miou, fscore


@pytest.mark.parametrize("seed", range(3))
def test_avss_matches_a_histc_evaluation_and_is_batch_invariant(seed):
    g = torch.Generator().manual_seed(seed)
    classes = 71
    gts = torch.randint(0, 6, (13, 16, 16), generator=g)
    gts[3] = 0
    gts[5, :4] = torch.randint(60, 71, (4, 16), generator=g)
    preds = torch.where(torch.rand(13, 16, 16, generator=g) < 0.7, gts, torch.randint(0, 9, (13, 16, 16),
                                                                                        generator=g))
    expected = avsbench_style_semantic(preds, gts, classes)
    for bs in (1, 4, 13):
        metrics = SemanticAVSMetrics(classes)
        for i in range(0, 13, bs):
            metrics.update(preds[i:i + bs], gts[i:i + bs])
        r = metrics.compute()
        assert r["miou"] == pytest.approx(expected[0], abs=1e-6)
        assert r["fscore"] == pytest.approx(expected[1], abs=1e-6)


def test_avss_bad_inputs():
    metrics = SemanticAVSMetrics(3)
    with pytest.raises(ValueError, match=r"predicted labels must lie in \[0, 3\)"):
        metrics.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="gt must be an integer label tensor"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"score predictions must be \[N,C,H,W\] with C=3"):
        metrics.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SemanticAVSMetrics(1)
    assert math.isnan(SemanticAVSMetrics().compute()["miou"])


def test_nan_scores_are_refused_not_counted_as_background():
    """semantic_inference gives score NaN to a sample with non-finite outputs (no host-side check in the op):
    the metric must say so instead of scoring it as background."""
    import coavs.ops as ops
    mask = torch.randn(2, 3, 4, 4)
    mask[1, 0, 0, 0] = float("nan")
    fg = ops.semantic_inference(mask, None, (8, 8), mode="binary")
    assert fg[1].isnan().all() and not fg[0].isnan().any()
    with pytest.raises(ValueError, match="NaN scores"):
        BinaryAVSMetrics(scores="probabilities").update(fg, torch.zeros(2, 8, 8))
    labels = ops.semantic_inference(mask, torch.randn(2, 3, 5), (8, 8))
    with pytest.raises(ValueError, match=r"predicted labels must lie in \[0, 71\)"):
        SemanticAVSMetrics().update(labels, torch.zeros(2, 8, 8, dtype=torch.long))
