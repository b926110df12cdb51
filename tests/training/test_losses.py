"""Targets from labels, Mask2Former's set loss, the audio classifier loss, and training on a fixed batch."""

import pytest
import torch
import torch.nn.functional as F

from coavs.models import AVSModel, ModelConfig, fit_kmeans
from coavs.training.losses import (SetCriterion, audio_classification_loss, classification_loss, dice_loss,
                                   sigmoid_ce_loss, targets_from_labels)
from tests.support.losses import FirstQueriesMatcher, fake_outputs
from tests.support.synthetic import make_batch


# ------------------------------------------------------------------------------------------------ targets
def test_targets_one_mask_per_present_class_with_markers():
    labels = torch.tensor([[[0, 2], [2, 255]], [[255, 255], [255, 255]], [[0, 0], [1, 1]]])
    ft = targets_from_labels(labels, 4, class_to_marker=torch.tensor([-1, 0, 1, 2]))
    assert ft.annotated.tolist() == [True, False, True]
    assert ft.presence.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    first = ft.targets[0]
    assert first["labels"].tolist() == [0, 2] and first["markers"].tolist() == [-1, 1]
    assert first["masks"].tolist() == [[[1, 0], [0, 0]], [[0, 1], [1, 0]]]  # 255 belongs to no mask
    assert ft.targets[1]["labels"].numel() == 0 and ft.targets[1]["masks"].shape == (0, 2, 2)
    binary = targets_from_labels(labels, 4, background_is_class=False)
    assert binary.targets[2]["labels"].tolist() == [1] and binary.targets[2]["markers"].tolist() == [-1]


def test_targets_reject_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        targets_from_labels(torch.tensor([[[0, 3]]]), 3)
    with pytest.raises(TypeError, match="integer"):
        targets_from_labels(torch.zeros(1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        targets_from_labels(torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="class_to_marker"):
        targets_from_labels(torch.zeros(1, 2, 2, dtype=torch.long), 3, class_to_marker=[0, 1])


# -------------------------------------------------------------------------------------------- loss pieces
def test_dice_and_bce_follow_mask2former():
    logits, targets = torch.randn(3, 50), (torch.rand(3, 50) > 0.5).float()
    p = logits.sigmoid()
    dice = (1 - (2 * (p * targets).sum(1) + 1) / (p.sum(1) + targets.sum(1) + 1)).sum() / 2.0
    torch.testing.assert_close(dice_loss(logits, targets, 2.0), dice)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / 2.0
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, 2.0), bce)


def test_classification_loss_weights_no_object():
    logits = torch.randn(2, 3, 4)  # K = 3 classes + no object
    targets = [{"labels": torch.tensor([2])}, {"labels": torch.tensor([0, 1])}]
    indices = [(torch.tensor([1]), torch.tensor([0])), (torch.tensor([2, 0]), torch.tensor([1, 0]))]
    want_classes = torch.tensor([[3, 2, 3], [0, 3, 1]])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    want = F.cross_entropy(logits.transpose(1, 2), want_classes, weight)
    torch.testing.assert_close(classification_loss(logits, targets, indices, 0.1), want)


def test_audio_classification_loss_skips_unannotated_frames():
    logits, presence = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    got = audio_classification_loss(logits, presence, torch.tensor([True, False, True]))
    want = F.binary_cross_entropy_with_logits(logits[[0, 2]], presence[[0, 2]])
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------- criterion
def test_criterion_total_is_the_weighted_sum_over_every_prediction():
    labels = torch.randint(0, 3, (3, 16, 16))
    ft = targets_from_labels(labels, 3)
    out = fake_outputs()
    criterion = SetCriterion(3, matcher=FirstQueriesMatcher(), num_points=64)
    criterion.generator = torch.Generator().manual_seed(0)
    result = criterion(out, ft.targets)
    assert len(result.indices) == 3
    assert set(result.terms) == {f"{t}{s}" for t in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    total = sum({"ce": 2.0, "mask": 5.0, "dice": 5.0}[name.split("_")[0]] * v for name, v in result.terms.items())
    torch.testing.assert_close(result.total, total)
    criterion.aux_loss = False
    assert len(criterion(out, ft.targets).indices) == 1


def test_criterion_leaves_out_unannotated_frames():
    labels = torch.randint(0, 3, (3, 16, 16))
    labels[1] = 255
    ft = targets_from_labels(labels, 3)
    out = fake_outputs()
    criterion = SetCriterion(3, matcher=FirstQueriesMatcher(), num_points=64)
    criterion.generator = torch.Generator().manual_seed(0)
    got = criterion(out, ft.targets, ft.annotated)
    keep = [0, 2]
    subset = {key: (value[keep] if key in ("pred_logits", "pred_masks", "active") else value)
              for key, value in out.items()}
    subset["aux_outputs"] = [{k: v[keep] for k, v in a.items()} for a in out["aux_outputs"]]
    criterion.generator = torch.Generator().manual_seed(0)
    want = criterion(subset, [ft.targets[i] for i in keep])
    torch.testing.assert_close(got.total, want.total)


def test_frames_without_ground_truth_train_no_object_only():
    ft = targets_from_labels(torch.zeros(2, 8, 8, dtype=torch.long), 3, background_is_class=False)
    out = fake_outputs(n=2, requires_grad=True)
    result = SetCriterion(3, matcher=FirstQueriesMatcher(), num_points=16)(out, ft.targets)
    assert result.terms["mask"] == 0 and result.terms["dice"] == 0
    result.total.backward()
    assert out["pred_masks"].grad.abs().sum() == 0 and out["pred_logits"].grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ training
def _train_setup(seed=0):
    torch.manual_seed(seed)
    config = ModelConfig.small(hidden_dim=32, num_layers=2, ffn_dim=64, num_heads=4, backbone_widths=(8, 16, 16, 32),
                               audio_channels=(4, 8))
    model = AVSModel(config)
    frames, audio, labels = make_batch(4, size=32, seed=seed)
    model.perception.set_clusters(fit_kmeans(audio, config.num_clusters, iters=10))
    ft = targets_from_labels(labels, config.num_classes, model.class_to_marker())
    criterion = SetCriterion(config.num_classes, num_points=128)
    criterion.generator = torch.Generator().manual_seed(seed)
    return model, criterion, frames, audio, ft


def _loss(model, criterion, frames, audio, ft):
    out = model(frames, audio, class_presence=ft.presence[:, 1:])
    total = criterion(out, ft.targets, ft.annotated).total
    return total + audio_classification_loss(out["audio_logits"], ft.presence[:, 1:], ft.annotated)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    model, criterion, frames, audio, ft = _train_setup()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion.generator.manual_seed(1)
    before = _loss(model, criterion, frames, audio, ft)
    opt.zero_grad()
    before.backward()
    opt.step()
    criterion.generator.manual_seed(1)
    with torch.no_grad():
        after = _loss(model, criterion, frames, audio, ft)
    assert after < before


def test_overfits_a_tiny_batch_within_100_steps():
    model, criterion, frames, audio, ft = _train_setup()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        loss = _loss(model, criterion, frames, audio, ft)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step >= 10 and sum(losses[-5:]) / 5 < 0.25 * losses[0]:
            break
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0], f"loss {losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps"
