"""The sounding head ("does anything sound?"): detached from the segmenter, trained on positives against the
``audio_only`` negatives, read by the ``any`` gate."""

from __future__ import annotations

import pytest
import torch

from coavs.eval.gate import Gate, apply_gate, calibrate_gate
from coavs.models import AVSModel, ModelConfig
from coavs.training.config import ConfigError
from coavs.training.trainer import TrainConfig, load_model, open_split, train
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

NEGATIVES = {"ratio": 1.0, "kinds": ["silence", "noise"], "audio_only": ["silence", "noise"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sounding")
    return make_tiny_set(root / "tiny"), root / "cache"


def small(**overrides) -> ModelConfig:
    return ModelConfig.small(audio_input="logmel", num_clusters=0, hidden_dim=32, num_layers=1, ffn_dim=64,
                             num_heads=4, backbone_widths=(8, 8, 16, 16), audio_channels=(4, 8), **overrides)


def test_the_head_is_detached_and_leaves_every_other_parameter_as_it_was():
    torch.manual_seed(0)
    plain = AVSModel(small())
    torch.manual_seed(0)
    headed = AVSModel(small(sounding_head=True))
    for name, value in plain.state_dict().items():  # built last: the other initial weights are unchanged
        assert torch.equal(value, headed.state_dict()[name]), name
    frames, audio = torch.rand(3, 3, 32, 32), torch.randn(3, 1, 96, 64)
    out = headed(frames, audio)
    assert out["sounding_logit"].shape == (3,) and plain(frames, audio)["sounding_logit"] is None
    out["sounding_logit"].sum().backward()
    assert all(p.grad is None for p in headed.prompt_encoder.parameters())  # the segmenter never learns from it
    assert all(p.grad is not None for p in headed.sounding.parameters())
    heads = headed.audio_heads(audio)
    assert torch.allclose(heads["sounding_logit"], out["sounding_logit"])
    assert heads["audio_logits"].shape == (3, headed.config.num_audio_classes)


def test_any_gate_reads_the_sounding_head_and_the_class_gate_does_not():
    labels = torch.tensor([[[1, 2]], [[1, 0]]])
    fg = torch.ones(2, 1, 2)
    audio_logits = torch.logit(torch.tensor([[0.9, 0.9], [0.9, 0.1]]))  # the classifier hears both frames
    sounding = torch.logit(torch.tensor([0.05, 0.95]))  # the head hears only the second
    gated, _ = apply_gate(labels, fg, audio_logits, Gate("any", 0.5), False, sounding)
    assert gated.tolist() == [[[0, 0]], [[1, 0]]]
    by_class, _ = apply_gate(labels, fg, audio_logits, Gate("class", 0.5), False, sounding)
    assert by_class.tolist() == [[[1, 2]], [[1, 0]]]


def test_the_audio_only_negatives_train_the_sounding_head_not_the_classifier(tiny, tmp_path, monkeypatch):
    from coavs.training import trainer as trainer_module

    data, cache = tiny
    calls = []
    loss = trainer_module.audio_classification_loss

    def spy(logits, wanted, rows=None):
        calls.append((tuple(logits.shape), wanted.clone(), rows.clone()))
        return loss(logits, wanted, rows)

    monkeypatch.setattr(trainer_module, "audio_classification_loss", spy)
    config = TrainConfig.from_dict(tiny_config(data, cache, model={"sounding_head": True}, negatives=NEGATIVES,
                                               run={"max_steps": 2}))
    records = []
    train(config, tmp_path / "run", on_step=lambda step, terms: records.append(terms))
    assert all("sounding" in r and "audio_cls" in r for r in records)
    classifier, sounding = calls[0], calls[1]
    n = classifier[0][0]  # the positive frames only
    assert sounding[0] == (2 * n, 1)  # ratio 1: as many negatives, all "nothing sounds"
    assert (sounding[1][n:] == 0).all() and sounding[2][n:].all()
    model, loaded = load_model(tmp_path / "run")
    assert model.sounding is not None and loaded.model["sounding_head"] is True
    gate, stats = calibrate_gate(model, open_split(loaded, "val"), "any", 0.9)
    assert gate.mode == "any" and stats["positives"] > 0 and stats["negatives"] > 0


def test_a_sounding_head_without_silence_or_noise_negatives_is_refused(tiny):
    data, cache = tiny
    with pytest.raises(ConfigError, match="sounding_head"):
        TrainConfig.from_dict(tiny_config(data, cache, model={"sounding_head": True}))
    with pytest.raises(ConfigError, match="sounding_head"):
        TrainConfig.from_dict(tiny_config(data, cache, model={"sounding_head": True},
                                          negatives={"ratio": 0.5, "kinds": ["misaligned"]}))
