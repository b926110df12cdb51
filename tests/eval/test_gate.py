"""The classifier's "nothing sounds" gate: what it removes, how τ is chosen (never on the test split)."""

from __future__ import annotations

import json

import pytest
import torch

from coavs.eval.gate import (Gate, GateSection, SoundingProbe, apply_gate, calibrate_gate, choose_threshold, load_gate,
                             save_gate)
from coavs.eval.runner import evaluate
from coavs.training.config import ConfigError
from coavs.training.trainer import TrainConfig, load_model, open_split, train
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def logit(p):
    return torch.logit(torch.tensor(p))


def test_any_gate_empties_frames_whose_top_class_is_unlikely():
    labels = torch.tensor([[[1, 2], [0, 3]], [[2, 2], [0, 1]]])
    fg = torch.full((2, 2, 2), 0.8)
    audio_logits = torch.stack([logit([0.1, 0.2, 0.3]), logit([0.1, 0.9, 0.2])])
    gated, gated_fg = apply_gate(labels, fg, audio_logits, Gate("any", 0.5), binary=False)
    assert (gated[0] == 0).all() and (gated_fg[0] == 0).all()  # max 0.3 < 0.5: nothing sounds
    assert torch.equal(gated[1], labels[1]) and torch.equal(gated_fg[1], fg[1])
    same, same_fg = apply_gate(labels, fg, audio_logits, None, binary=False)
    assert same is labels and same_fg is fg


def test_class_gate_removes_only_the_classes_not_heard():
    labels = torch.tensor([[[1, 2], [0, 3]]])
    fg = torch.ones(1, 2, 2)
    audio_logits = logit([[0.9, 0.2, 0.6]])  # class 1 and 3 heard, class 2 not
    gated, gated_fg = apply_gate(labels, fg, audio_logits, Gate("class", 0.5), binary=False)
    assert gated.tolist() == [[[1, 0], [0, 3]]] and gated_fg.tolist() == [[[1.0, 0.0], [1.0, 1.0]]]
    # labels beyond the classifier's classes are never gated; binary models gate as "any"
    wide = torch.tensor([[[4, 2]]])
    assert apply_gate(wide, torch.ones(1, 1, 2), audio_logits, Gate("class", 0.5), False)[0].tolist() == [[[4, 0]]]
    binary, _ = apply_gate(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2), logit([[0.3]]),
                           Gate("class", 0.5), binary=True)
    assert (binary == 0).all()
    with pytest.raises(ValueError, match="audio classifier"):
        apply_gate(labels, fg, None, Gate("any", 0.5), False)


def test_threshold_keeps_the_positives_and_moves_towards_separable_negatives():
    positive = torch.linspace(0.5, 1.0, 101)
    assert choose_threshold(positive, torch.zeros(0), keep=0.98) == pytest.approx(0.51)
    # negatives far below: τ sits midway between their 95th percentile and the kept positives
    tau = choose_threshold(positive, torch.full((50,), 0.1), keep=0.98)
    assert tau == pytest.approx((0.51 + 0.1) / 2)
    assert (positive >= tau).double().mean() >= 0.98
    # overlapping negatives do not pull τ down below what keeps the positives
    assert choose_threshold(positive, torch.full((50,), 0.9), keep=0.98) == pytest.approx(0.51)
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold(torch.zeros(0), torch.zeros(3), 0.9)


@pytest.mark.parametrize("changes, message", [
    (dict(mode="maybe"), "gate.mode"), (dict(split="test"), "never the test split"),
    (dict(threshold=1.5), "gate.threshold"), (dict(keep=0.0), "gate.keep"),
])
def test_section_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        GateSection(**changes)


def test_a_corrupt_gate_file_is_a_config_error_naming_the_file(tmp_path):
    (tmp_path / "gate.json").write_text('{"mode": "any", "threshold": }')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_gate(tmp_path)
    assert str(tmp_path / "gate.json") in str(info.value)


@pytest.mark.parametrize("stored, reason", [
    ([0.5], "not a JSON object (got a list)"),
    ({"threshold": 0.5}, '"mode" is missing'),
    ({"mode": "any"}, '"threshold" is missing'),
    ({"mode": "any", "threshold": "high"}, '"threshold" must be a number, got "high"'),
    ({"mode": "any", "threshold": None}, '"threshold" must be a number, got null'),
    ({"mode": "any", "threshold": 0.5, "probe": 1}, '"probe" must be a string or null, got 1'),
    ({"mode": "maybe", "threshold": 0.5}, "Gate.mode must be 'any' or 'class', got 'maybe'"),
    ({"mode": "any", "threshold": 1.5}, "Gate.threshold must be in [0, 1], got 1.5"),
])
def test_a_gate_file_of_the_wrong_shape_is_a_config_error_naming_the_file(tmp_path, stored, reason):
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(stored))
    with pytest.raises(ConfigError) as info:
        load_gate(tmp_path)
    assert str(info.value) == f"gate {path}: {reason}"


def _damaged_probe(path, kind):
    """Writes a probe file that load_gate must refuse."""
    weights = SoundingProbe(4).state_dict()
    if kind == "random":
        path.write_bytes(b"\x80\x02not a torch file" * 8)
        return
    stored = {"list": [1, 2], "no_state_dict": {"dim": 4},
              "missing_weights": {"dim": 4, "state_dict": {"net.0.weight": weights["net.0.weight"]}},
              "huge_dim": {"dim": 10**6, "state_dict": weights}}[kind]
    torch.save(stored, path)


@pytest.mark.parametrize("kind, reason", [
    ("random", "not a readable torch file (UnpicklingError)"),
    ("list", "not a sounding probe saved by coavs gate (a dict of dim and state_dict)"),
    ("no_state_dict", "not a sounding probe saved by coavs gate (a dict of dim and state_dict)"),
    ("missing_weights", "its state_dict is not that of a sounding probe of dim 4"),
    ("huge_dim", "its state_dict is not that of a sounding probe of dim 1000000"),  # refused before allocating
])
def test_a_damaged_probe_file_is_a_config_error_naming_the_file(tmp_path, kind, reason):
    (tmp_path / "gate.json").write_text(json.dumps({"mode": "any", "threshold": 0.5, "probe": "gate_probe.pt"}))
    _damaged_probe(tmp_path / "gate_probe.pt", kind)
    with pytest.raises(ConfigError) as info:
        load_gate(tmp_path)
    assert str(info.value) == f"gate probe {tmp_path / 'gate_probe.pt'}: {reason}; recalibrate the gate"


def test_a_saved_probe_gate_loads_back(tmp_path):
    gate = Gate("any", 0.25, SoundingProbe(4).eval())
    save_gate(tmp_path, gate)
    assert load_gate(tmp_path) == gate


def test_the_trainer_calibrates_on_the_val_split_and_eval_applies_the_gate(tmp_path):
    data = make_tiny_set(tmp_path / "tiny")
    config = TrainConfig.from_dict(tiny_config(data, tmp_path / "cache", negatives={"ratio": 0.5},
                                               gate={"mode": "class", "keep": 0.9}, run={"max_steps": 2}))
    train(config, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "gate.json").read_text())
    assert stored["split"] == "val" and stored["mode"] == "class"
    gate = load_gate(tmp_path / "run")
    model, loaded = load_model(tmp_path / "run")
    again, stats = calibrate_gate(model, open_split(loaded, "val"), "class", 0.9)
    assert again == gate and stats["positive_kept"] >= 0.9
    test = open_split(loaded, "test")
    plain = evaluate(model, test, modes=("vanilla",))["vanilla"]
    gated = evaluate(model, test, modes=("vanilla",), gate=gate)["vanilla"]
    shut = evaluate(model, test, modes=("vanilla",), gate=Gate("any", 1.0))["vanilla"]  # nothing ever sounds
    for key in ("fpr_silence", "fpr_noise", "fpr_misaligned"):
        assert gated[key] <= plain[key] + 1e-12 and shut[key] == 0.0
    assert load_gate(tmp_path / "nowhere") is None
