"""Negative-audio training: the sampler (empty targets, ratio, balance, determinism, donors) and the trainer."""

from __future__ import annotations

import pytest
import torch

from coavs.training.config import ConfigError
from coavs.training.negatives import (NEGATIVE_KINDS, NegativeSampler, NegativesSection, classifier_rows,
                                      negative_count, split_negatives)
from coavs.training.trainer import TrainConfig, load_model, open_split, train
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("negatives")
    data = make_tiny_set(root / "tiny")
    return data, root / "cache"


def batch_of(dataset, clips):
    from coavs.inference.batches import collate_frames, select_frames

    batch = collate_frames([dataset[i] for i in clips])
    return select_frames(batch, batch["annotated"])


def test_negatives_have_empty_targets_their_kind_of_audio_and_the_positives_are_untouched(tiny):
    data, cache = tiny
    config = TrainConfig.from_dict(tiny_config(data, cache))
    dataset = open_split(config, "train")
    batch = batch_of(dataset, range(4))
    n = batch["frames"].shape[0]
    sampler = NegativeSampler(NegativesSection(ratio=1.5), seed=3, audio_kind="logmel")
    out = sampler.augment(batch, step=7, dataset=dataset)
    kind = out["negative_kind"]
    assert out["frames"].shape[0] == out["audio"].shape[0] == out["labels"].shape[0] == len(out["uid"]) == n + (
        kind >= 0).sum()
    assert (kind[:n] == -1).all() and (kind[n:] >= 0).all()
    for key in ("frames", "audio", "labels"):
        assert torch.equal(out[key][:n], batch[key])  # positives unchanged
    negatives = kind >= 0
    assert (out["labels"][negatives] == 0).all() and out["annotated"][negatives].all()  # EMPTY targets
    from coavs.training.losses import targets_from_labels

    targets = targets_from_labels(out["labels"], dataset.num_classes, background_is_class=False)
    assert all(t["labels"].numel() == 0 for t, neg in zip(targets.targets, negatives.tolist()) if neg)
    silence = kind == NEGATIVE_KINDS.index("silence")
    assert silence.any() and torch.allclose(out["audio"][silence], out["audio"][silence].flatten()[0])
    # the frames of a negative are frames of the batch (the visual input is the training set's own)
    for row in negatives.nonzero().flatten().tolist():
        assert any(torch.equal(out["frames"][row], batch["frames"][i]) for i in range(n))
    # a misaligned negative plays a training clip that sounds nothing seen or heard in the frame's clip
    misaligned = (kind == NEGATIVE_KINDS.index("misaligned")).nonzero().flatten().tolist()
    assert misaligned
    for row in misaligned:
        clip = int(out["clip_index"][row])
        matches = [j for j in range(len(dataset)) if any(
            torch.equal(out["audio"][row], a) for a in dataset.load_audio(j))]
        assert matches and all(not (dataset.sounding_classes(j) & (dataset.visible_classes(clip)
                                                                   | dataset.sounding_classes(clip)))
                               for j in matches)
    # the classifier's loss leaves misaligned rows out (their audio does sound)
    rows = classifier_rows(out["annotated"], out)
    assert not rows[misaligned].any() and rows[~(kind == NEGATIVE_KINDS.index("misaligned"))].all()


def test_ratio_is_respected_and_kinds_are_balanced():
    gen = torch.Generator().manual_seed(0)
    assert [negative_count(8, 0.5, gen) for _ in range(5)] == [4] * 5
    counts = [negative_count(7, 0.3, gen) for _ in range(4000)]  # 2.1 per step on average
    assert set(counts) == {2, 3} and sum(counts) / len(counts) == pytest.approx(2.1, abs=0.03)
    assert negative_count(5, 0.0, gen) == 0
    section = NegativesSection(ratio=1.0, kinds=["silence", "noise"])
    sampler = NegativeSampler(section, seed=0)
    batch = {"frames": torch.rand(6, 3, 8, 8), "audio": torch.randn(6, 1, 96, 64), "labels": torch.ones(
        6, 8, 8, dtype=torch.long), "annotated": torch.ones(6, dtype=torch.bool), "clip_index": torch.arange(6),
        "frame_index": torch.zeros(6, dtype=torch.long), "uid": [str(i) for i in range(6)]}
    out = sampler.augment(batch, step=0)
    kind = out["negative_kind"]
    assert (kind >= 0).sum() == 6
    assert (kind == 0).sum() == 3 and (kind == 1).sum() == 3  # round robin: counts differ by at most one
    replace = NegativeSampler(NegativesSection(ratio=0.5, mode="replace"), seed=0).augment(batch, step=0)
    assert replace["frames"].shape[0] == 6 and (replace["negative_kind"] >= 0).sum() == 3
    assert (replace["labels"][replace["negative_kind"] >= 0] == 0).all()
    assert (replace["labels"][replace["negative_kind"] < 0] == 1).all()


def test_negatives_are_deterministic_by_seed_and_step():
    batch = {"frames": torch.rand(5, 3, 8, 8), "audio": torch.randn(5, 1, 96, 64), "labels": torch.ones(
        5, 8, 8, dtype=torch.long), "annotated": torch.ones(5, dtype=torch.bool), "clip_index": torch.arange(5),
        "frame_index": torch.zeros(5, dtype=torch.long), "uid": [str(i) for i in range(5)]}
    section = NegativesSection(ratio=0.7, kinds=["silence", "noise"])
    a = NegativeSampler(section, seed=1).augment(batch, step=3)
    b = NegativeSampler(section, seed=1).augment(batch, step=3)
    c = NegativeSampler(section, seed=2).augment(batch, step=3)
    for key in ("frames", "audio", "negative_kind"):
        assert torch.equal(a[key], b[key])
    assert not (a["audio"].shape == c["audio"].shape and torch.equal(a["audio"], c["audio"]))


@pytest.mark.parametrize("changes, message", [
    (dict(ratio=-0.1), "ratio"), (dict(kinds=["hum"]), "kinds"), (dict(kinds=[]), "kinds"),
    (dict(mode="swap"), "mode"), (dict(ratio=1.5, mode="replace"), "replace"), (dict(audio_only=["hum"]), "audio_only"),
    (dict(kinds=["noise"], audio_only=["silence"]), "audio_only"),
    (dict(audio_only=["misaligned"]), "misaligned"),
    (dict(audio_only=["silence"], mode="replace"), "replace"),
])
def test_section_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        NegativesSection(**changes)


@pytest.mark.parametrize("debias", [{"strategy": "none"}, {"strategy": "fixed"}, {"strategy": "uncertainty"},
                                    {"strategy": "bias_only"}, {"strategy": "fixed", "scheme": "overall"}])
def test_negative_training_composes_with_every_debias_strategy(tiny, tmp_path, debias):
    data, cache = tiny
    config = TrainConfig.from_dict(tiny_config(data, cache, debias=debias, negatives={"ratio": 0.5},
                                               run={"max_steps": 2}))
    frames = []
    summary = train(config, tmp_path / "run", on_step=lambda step, terms: frames.append(terms))
    assert summary["step"] == 2 and all(torch.isfinite(torch.tensor(t["loss"])) for t in frames)
    model, loaded = load_model(tmp_path / "run")
    assert loaded.negatives.ratio == 0.5
    # an old config (no negatives section) trains exactly as before: negatives default to off
    assert not TrainConfig.from_dict(tiny_config(data, cache)).negatives.enabled


def test_the_trainer_adds_the_configured_share_of_negatives(tiny, tmp_path, monkeypatch):
    from coavs.training import negatives as negatives_module

    data, cache = tiny
    seen = []
    original = negatives_module.NegativeSampler.augment

    def spy(self, batch, step, dataset=None):
        out = original(self, batch, step, dataset)
        seen.append((batch["frames"].shape[0], int((out["negative_kind"] >= 0).sum())))
        return out

    monkeypatch.setattr(negatives_module.NegativeSampler, "augment", spy)
    config = TrainConfig.from_dict(tiny_config(data, cache, negatives={"ratio": 1.0}, run={"max_steps": 3}))
    train(config, tmp_path / "run")
    assert len(seen) == 3 and all(neg == pos for pos, neg in seen)


def test_split_negatives_keeps_the_positive_frames_and_hands_back_the_negatives_audio():
    batch = {"frames": torch.rand(4, 3, 8, 8), "audio": torch.randn(4, 1, 96, 64), "labels": torch.ones(
        4, 8, 8, dtype=torch.long), "annotated": torch.ones(4, dtype=torch.bool), "clip_index": torch.arange(4),
        "frame_index": torch.zeros(4, dtype=torch.long), "uid": list("abcd")}
    out = NegativeSampler(NegativesSection(ratio=0.75, kinds=["silence", "noise"]), seed=0).augment(batch, step=0)
    positives, audio = split_negatives(out, ["silence", "noise"])
    assert torch.equal(positives["frames"], batch["frames"]) and positives["uid"] == batch["uid"]
    assert (positives["negative_kind"] == -1).all()
    assert torch.equal(audio, out["audio"][4:]) and audio.shape[0] == 3
    silence = NEGATIVE_KINDS.index("silence")
    kept, audio = split_negatives(out, ["noise"])  # only the named kinds leave the batch
    assert kept["frames"].shape[0] == 4 + int((out["negative_kind"] == silence).sum())
    assert audio.shape[0] == int((out["negative_kind"] == NEGATIVE_KINDS.index("noise")).sum())
    assert split_negatives(batch, ["silence"])[1] is None and split_negatives(out, [])[1] is None


def test_audio_only_negatives_never_reach_the_segmentation_loss(tiny, tmp_path, monkeypatch):
    """``audio_only`` kinds: the segmentation objective sees exactly the positive frames; the audio classifier
    sees them plus the negatives' audio with an all-absent target."""
    from coavs.models.avs_model import AVSModel
    from coavs.training import losses

    data, cache = tiny
    seen_frames, classifier_calls, targets = [], [], []
    forward, audio_outputs = AVSModel.forward, AVSModel.audio_outputs
    bce = losses.audio_classification_loss

    def spy_forward(self, frames, audio, **kwargs):
        seen_frames.append(frames.shape[0])
        return forward(self, frames, audio, **kwargs)

    def spy_logits(self, audio):
        classifier_calls.append(audio.shape[0])
        return audio_outputs(self, audio)

    def spy_bce(logits, presence, rows=None):
        targets.append((presence.clone(), rows.clone()))
        return bce(logits, presence, rows)

    monkeypatch.setattr(AVSModel, "forward", spy_forward)
    monkeypatch.setattr(AVSModel, "audio_outputs", spy_logits)
    monkeypatch.setattr("coavs.training.trainer.audio_classification_loss", spy_bce)
    section = {"ratio": 1.0, "kinds": ["silence", "noise"], "audio_only": ["silence", "noise"]}
    config = TrainConfig.from_dict(tiny_config(data, cache, negatives=section, run={"max_steps": 2}))
    train(config, tmp_path / "run")
    assert len(classifier_calls) == 2 and classifier_calls == seen_frames[:2]  # ratio 1: one negative per frame
    for (presence, rows), n in zip(targets, seen_frames):
        assert presence.shape[0] == 2 * n and rows[n:].all() and (presence[n:] == 0).all()


def test_swapped_negatives_play_some_of_the_frames_sources_and_keep_only_their_pixels(tiny):
    """Counterfactual audio: a frame where two classes sound gets a training clip sounding a strict subset of them;
    the target keeps those classes' pixels only, and the classifier trains on it (its audio names its target)."""
    data, cache = tiny
    dataset = open_split(TrainConfig.from_dict(tiny_config(data, cache)), "train")
    batch = batch_of(dataset, range(len(dataset)))
    sampler = NegativeSampler(NegativesSection(ratio=1.0, kinds=["swapped"]), seed=1, audio_kind="logmel")
    out = sampler.augment(batch, step=0, dataset=dataset)
    n = batch["frames"].shape[0]
    swapped = (out["negative_kind"] == NEGATIVE_KINDS.index("swapped")).nonzero().flatten().tolist()
    assert swapped and min(swapped) >= n
    for row in swapped:
        source = next(i for i in range(n) if torch.equal(out["frames"][row], batch["frames"][i]))
        classes = {int(c) for c in batch["labels"][source].unique().tolist() if c not in (0, 255)}
        assert len(classes) >= 2
        donors = [j for j in range(len(dataset)) if any(torch.equal(out["audio"][row], a)
                                                        for a in dataset.load_audio(j))]
        heard = dataset.sounding_classes(donors[0])
        assert donors and heard and heard < classes  # a strict, non-empty subset of the frame's sources
        kept = batch["labels"][source].clone()
        kept[~torch.isin(kept, torch.tensor(sorted(heard)))] = 0
        assert torch.equal(out["labels"][row], kept) and (out["labels"][row] != 0).any()
    assert classifier_rows(out["annotated"], out)[swapped].all()
    # a batch with no two-source frame gets no swapped negative (and no error)
    lone = [i for i in range(len(dataset)) if len(dataset.sounding_classes(i)) == 1][:2]
    single = batch_of(dataset, lone)
    assert (sampler.augment(single, step=0, dataset=dataset)["negative_kind"] == -1).all()


def test_negatives_that_need_class_labels_are_refused_on_sets_that_cannot_name_them(tmp_path):
    from coavs.training.negatives import check_dataset
    from tests.support.datasets import make_ms3, make_s4

    ms3 = open_split(TrainConfig.from_dict(tiny_config(make_ms3(tmp_path / "ms3"), tmp_path / "cache")), "train")
    with pytest.raises(ConfigError, match="misaligned needs a dataset that says which classes"):
        check_dataset(NegativesSection(ratio=0.2), ms3)
    check_dataset(NegativesSection(ratio=0.2, kinds=["silence", "noise"]), ms3)  # these need no labels
    s4 = open_split(TrainConfig.from_dict(tiny_config(make_s4(tmp_path / "s4"), tmp_path / "cache")), "train")
    check_dataset(NegativesSection(ratio=0.2), s4)  # S4 names each clip's sound category
    with pytest.raises(ConfigError, match="swapped needs"):
        check_dataset(NegativesSection(ratio=0.2, kinds=["swapped"]), s4)  # one source per clip: nothing to swap
    with pytest.raises(ConfigError, match="cannot hold swapped"):
        NegativesSection(ratio=0.2, kinds=["swapped"], audio_only=["swapped"])
