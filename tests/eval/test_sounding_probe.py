"""The sounding probe: fitted after training on the frozen audio embedding (training split), read by the ``any``
gate, stored next to ``gate.json``; the segmenter is never touched."""

from __future__ import annotations

import json

import pytest
import torch

from coavs.eval.gate import (Gate, GateSection, SoundingProbe, apply_gate, calibrate_gate, fit_sounding_probe,
                             load_gate, save_gate)
from coavs.eval.runner import evaluate
from coavs.training.config import ConfigError
from coavs.training.trainer import TrainConfig, load_model, open_split, train
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    data = make_tiny_set(root / "tiny")
    config = TrainConfig.from_dict(tiny_config(data, root / "cache", gate={"mode": "any", "probe": True},
                                               run={"max_steps": 3}))
    train(config, root / "run")
    return root / "run"


def test_the_any_gate_reads_the_probe_on_the_embedding_and_not_the_classifier():
    probe = SoundingProbe(2)
    with torch.no_grad():  # logit = 10·(e0 − e1): "sounds" when the first coordinate is larger
        probe.net[0].weight.copy_(torch.eye(2))
        probe.net[0].bias.zero_()
        probe.net[2].weight.copy_(torch.tensor([[10.0, -10.0]]))
        probe.net[2].bias.zero_()
    labels, fg = torch.ones(2, 1, 2, dtype=torch.long), torch.ones(2, 1, 2)
    loud = torch.logit(torch.tensor([[0.99], [0.99]]))  # the classifier hears both frames
    embedding = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the probe hears only the second
    gated, gated_fg = apply_gate(labels, fg, loud, Gate("any", 0.5, probe), False, embedding)
    assert gated.tolist() == [[[0, 0]], [[1, 1]]] and gated_fg.tolist() == [[[0.0, 0.0]], [[1.0, 1.0]]]
    with pytest.raises(ValueError, match="audio_embedding"):
        apply_gate(labels, fg, loud, Gate("any", 0.5, probe), False, None)
    with pytest.raises(ValueError, match="mode 'any'"):
        Gate("class", 0.5, probe)
    with pytest.raises(ValueError, match=r"\[N,2\]"):
        probe(torch.zeros(3, 4))


def test_the_probe_separates_the_training_frames_from_silence_and_noise(trained):
    model, config = load_model(trained)
    probe, stats = fit_sounding_probe(model, open_split(config, "train"), steps=200)
    # every annotated frame once as silence and once as noise; positives: those with a sounding pixel
    assert stats["negatives"] % 2 == 0 and 0 < stats["positives"] <= stats["negatives"] // 2
    assert stats["accuracy"] > 0.9
    again, _ = fit_sounding_probe(model, open_split(config, "train"), steps=200)
    assert all(torch.equal(a, b) for a, b in zip(probe.state_dict().values(), again.state_dict().values()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gate, stats = calibrate_gate(model, open_split(config, "val"), "any", 0.9, probe=probe)
    assert gate.probe is probe and stats["positive_kept"] >= 0.9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def test_the_trainer_fits_saves_and_eval_reloads_the_probe(trained, tmp_path):
    stored = json.loads((trained / "gate.json").read_text())
    assert stored["mode"] == "any" and stored["probe"] == "gate_probe.pt" and "probe" in stored["stats"]
    gate = load_gate(trained)
    assert gate.probe is not None and gate.mode == "any"
    model, config = load_model(trained)
    test = open_split(config, "test")
    gated = evaluate(model, test, modes=("vanilla",), bias=True, gate=gate)["vanilla"]
    plain = evaluate(model, test, modes=("vanilla",), bias=True)["vanilla"]
    for key in ("fpr_silence", "fpr_noise", "fpr_misaligned"):
        assert gated[key] <= plain[key] + 1e-12
    save_gate(tmp_path, gate)
    assert load_gate(tmp_path) == gate
    (tmp_path / "gate_probe.pt").unlink()
    with pytest.raises(FileNotFoundError, match="probe"):
        load_gate(tmp_path)


@pytest.mark.parametrize("changes, message", [(dict(mode="class", probe=True), "gate.mode any"),
                                              (dict(mode="any", probe=True, threshold=0.5), "threshold")])
def test_section_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        GateSection(**changes)
