"""The evaluation runner: prediction batches, audio conditions, and the metrics table built from them."""

from __future__ import annotations


import pytest
import torch

from coavs.eval.metrics import SemanticAVSMetrics
from coavs.eval.runner import (AUDIO_CONDITIONS, evaluate, format_table, misaligned_audio, predict_batches,
                               silence_audio)
from coavs.training.trainer import TrainConfig, load_model, open_split, train
from tests.support.tiny_run import make_tiny_set, tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A debias-trained tiny model (4 steps) and the val split of its set."""
    root = tmp_path_factory.mktemp("runner")
    data = make_tiny_set(root / "tiny")
    config = tiny_config(data, root / "cache", debias={"strategy": "fixed", "biased_audio": "mute"})
    train(TrainConfig.from_dict(config), root / "run")
    model, config = load_model(root / "run")
    return model, open_split(config, "val")


def test_prediction_batches_hold_labels_scores_targets_and_outputs(trained):
    model, dataset = trained
    batches = list(predict_batches(model, dataset, batch_size=3, mode="debias"))
    assert sum(len(b["uid"]) for b in batches) == sum(int(dataset[i]["annotated"].sum()) for i in range(len(dataset)))
    for b in batches:
        n, h, w = b["labels"].shape
        assert b["pred_labels"].shape == (n, h, w) and b["pred_labels"].dtype == torch.long
        assert b["fg_score"].shape == (n, h, w) and b["fg_score"].is_floating_point()
        assert 0.0 <= float(b["fg_score"].min()) and float(b["fg_score"].max()) <= 1.0
        assert int(b["pred_labels"].max()) < dataset.num_classes
        assert b["annotated"].all() and len(b["uid"]) == n == b["clip_index"].numel() == b["frame_index"].numel()
        assert b["outputs"]["pred_masks"].shape[0] == n and "biased" in b["outputs"]
        assert b["sounding"].shape == (n, dataset.num_classes)  # Co-AVS extras travel with the batch
    # the debiased labels are the fused op's output on the two branches
    import coavs.ops as ops

    b = batches[0]
    expected = ops.semantic_inference(b["outputs"]["pred_masks"], b["outputs"]["pred_logits"], (h, w),
                                      gate=b["outputs"]["gate"], biased=(b["outputs"]["biased"]["pred_masks"],
                                                                         b["outputs"]["biased"]["pred_logits"]))
    assert torch.equal(b["pred_labels"], expected)


def test_negative_audio_conditions(trained):
    model, dataset = trained
    batch = next(iter(predict_batches(model, dataset, batch_size=4)))
    silent = silence_audio(batch["audio"], "logmel")
    assert torch.all(silent == silent.flatten()[0]) and silent.shape == batch["audio"].shape
    donors, checked = misaligned_audio(dataset, batch["clip_index"], batch["frame_index"])
    assert donors.shape == batch["audio"].shape and not torch.equal(donors, batch["audio"])
    assert checked.dtype == torch.bool and checked.shape == batch["clip_index"].shape
    for clip in batch["clip_index"].unique().tolist():
        try:
            donor = dataset.misaligned_index(clip)
        except ValueError:
            continue
        assert not (dataset.sounding_classes(donor) & dataset.visible_classes(clip))
    runs = {c: next(iter(predict_batches(model, dataset, batch_size=4, audio=c))) for c in AUDIO_CONDITIONS}
    assert all(r["audio_condition"] == c for c, r in runs.items())
    assert not torch.equal(runs["noise"]["outputs"]["pred_logits"], runs["normal"]["outputs"]["pred_logits"])
    with pytest.raises(ValueError, match="audio must be one of"):
        next(iter(predict_batches(model, dataset, audio="loud")))
    with pytest.raises(ValueError, match="mode must be one of"):
        next(iter(predict_batches(model, dataset, mode="best")))


def test_evaluate_matches_the_metrics_of_the_prediction_batches(trained):
    model, dataset = trained
    rows = evaluate(model, dataset, batch_size=2, modes=("vanilla", "debias"), bias=True)
    assert set(rows) == {"vanilla", "debias"}
    metric = SemanticAVSMetrics(dataset.num_classes)
    for b in predict_batches(model, dataset, batch_size=3, mode="vanilla"):
        metric.update(b["pred_labels"], b["labels"])
    assert rows["vanilla"]["miou"] == pytest.approx(metric.compute()["miou"], abs=1e-12)
    for condition in ("silence", "noise", "misaligned"):
        batches = list(predict_batches(model, dataset, batch_size=4, mode="debias", audio=condition))
        fractions = torch.cat([(b["pred_labels"] != 0).flatten(1).double().mean(1)[b.get("misaligned_checked", ...)]
                               for b in batches])  # misaligned: the frames with a class-checked partner
        assert rows["debias"][f"fpr_{condition}"] == pytest.approx(float(fractions.mean()), abs=1e-12), condition
    # the batch size changes nothing (noise is drawn per clip), up to float64 summation order
    again = evaluate(model, dataset, batch_size=4, modes=("debias",))["debias"]
    assert again == pytest.approx(rows["debias"], rel=1e-12, abs=1e-15)
    assert set(evaluate(model, dataset, modes=("vanilla",), bias=False, max_clips=2)["vanilla"]) == {
        "miou", "fscore", "frames", "miou_present_classes", "fscore_present_classes"}


def test_format_table():
    text = format_table({"vanilla": {"miou": 0.5, "fscore": 0.25, "fpr_silence": 0.125},
                         "debias": {"miou": 0.75, "fscore": float("nan")}}, title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and "FPR silence" in lines[2] and "FPR noise" not in text
    assert "| vanilla |" in text and "0.5000" in text and "0.1250" in text
    assert lines[-1].split("|")[3].strip() == "-"  # NaN and missing values print as "-"
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns


def test_counterfactual_score_in_evaluate_and_in_the_trainers_evaluation(tmp_path):
    """Frames with two sounding sources; the audio of a clip where only one of them sounds is played: the
    row's ``counterfactual_iou`` is the mean IoU of the prediction with that source (BiasEvaluator's score)."""
    import json

    from coavs.data.synth import SynthConfig, generate
    from coavs.eval.metrics import frame_iou
    from coavs.eval.runner import _lone_sounders, counterfactual_cases, postprocess
    from coavs.inference.batches import collate_frames, select_frames

    data = tmp_path / "two_sources"
    generate(data, SynthConfig(num_clips=24, frames_per_clip=2, image_size=32, classes=("violin", "dog", "car"),
                               silent_prob=0.3, eval_silent_prob=0.4, split_fractions=(0.4, 0.2, 0.4), seed=4))
    config = TrainConfig.from_dict(tiny_config(data, tmp_path / "cache", run={"max_steps": 2},
                                               eval={"split": "test", "bias": True, "every": 1}))
    summary = train(config, tmp_path / "run")
    assert "counterfactual_iou" in summary["eval"]["vanilla"]  # the trainer's evaluation reports it too
    model, loaded = load_model(tmp_path / "run")
    dataset = open_split(loaded, "test")
    row = evaluate(model, dataset, batch_size=3, modes=("vanilla",))["vanilla"]
    assert row["counterfactual_iou"] == pytest.approx(summary["eval"]["vanilla"]["counterfactual_iou"], abs=1e-12)
    lone = _lone_sounders(dataset)
    follow, leak, silent_fp, frames = [], [], [], 0
    for start in range(0, len(dataset), 3):
        batch = collate_frames([dataset[i] for i in range(start, min(start + 3, len(dataset)))])
        batch = select_frames(batch, batch["annotated"])
        case = counterfactual_cases(dataset, batch, lone)
        if case is None:
            continue
        rows, audio, masks = case
        for i, row_index in enumerate(rows.tolist()):
            values = batch["labels"][row_index].unique().tolist()
            assert len([v for v in values if v not in (0, 255)]) >= 2
            for side in (0, 1):
                cls = int(batch["labels"][row_index][masks[side][i]].unique()[0])
                assert any(dataset.sounding_classes(j) == {cls} and any(
                    torch.equal(audio[side][i], a) for a in dataset.load_audio(j)) for j in lone[cls])
        for side in (0, 1):
            with torch.no_grad():
                labels, _ = postprocess(model(batch["frames"][rows], audio[side]), (32, 32))
            follow.append(frame_iou(labels != 0, masks[side]))
            leak.append(frame_iou(labels != 0, masks[1 - side]))
            silent = masks[1 - side]
            silent_fp.append(((labels != 0) & silent).flatten(1).sum(1) / silent.flatten(1).sum(1))
            frames += rows.numel()
    assert frames > 0 and row["counterfactual_frames"] == frames
    assert row["counterfactual_iou"] == pytest.approx(float(torch.cat(follow).mean()), abs=1e-6)
    assert row["counterfactual_leak_iou"] == pytest.approx(float(torch.cat(leak).mean()), abs=1e-6)
    assert row["fp_swapped"] == pytest.approx(float(torch.cat(silent_fp).double().mean()), abs=1e-6)
    assert "CF IoU" in format_table({"m": row}) and "FP swapped" in format_table({"m": row})
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "counterfactual_iou" in logged[-1]["eval"]["vanilla"]
