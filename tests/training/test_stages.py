"""Debias as the paper trains it: a vanilla stage, then a debias fine-tuning stage at a smaller learning rate — as
one config (``stages:`` with ``debias`` and ``restart_schedule``) and as ``coavs train --init-from RUN``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coavs.cli import main
from coavs.models import AVSModel
from coavs.training.config import ConfigError
from coavs.training.plan import Plan, Stage
from coavs.training.trainer import OptimSection, StageSection, TrainConfig, load_model, train
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER_STAGES = [{"name": "vanilla", "epochs": 1, "debias": False},
                {"name": "debias", "epochs": 1, "debias": True, "restart_schedule": True}]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return make_tiny_set(tmp_path_factory.mktemp("stages_data") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages_cache")


def test_a_restarted_stage_has_its_own_warm_up_and_decay():
    stages = [Stage(0, StageSection(epochs=1), None, 4, 0, debias=False, debias_lr_scale=0.1),
              Stage(1, StageSection(epochs=1, restart_schedule=True), None, 6, 4, debias=True, debias_lr_scale=0.1)]
    plan = Plan(stages, cap=None)
    assert plan.segment(3) == (0, 4) and plan.segment(4) == (4, 6) and plan.segment(9) == (4, 6)
    optim = OptimSection(schedule="poly", warmup_steps=2)
    assert plan.lr_factor(0, optim) == pytest.approx(0.5)  # warm-up of the first segment
    assert plan.lr_factor(3, optim) == pytest.approx(0.25 ** 0.9)  # 3 of 4 steps into its decay
    assert plan.lr_factor(4, optim) == pytest.approx(0.1 * 0.5)  # the second stage warms up again, at its scale
    assert plan.lr_factor(7, optim) == pytest.approx(0.1 * 0.5 ** 0.9)
    # without the restart: one schedule over the whole plan (the curriculum's behaviour, unchanged)
    stages[1].section.restart_schedule = False
    assert plan.segment(7) == (0, 10)
    assert plan.lr_factor(7, optim) == pytest.approx(0.1 * 0.3 ** 0.9)


def test_stage_debias_flags_decide_what_the_model_is():
    both = TrainConfig.from_dict({"debias": {"strategy": "fixed"}, "stages": PAPER_STAGES})
    assert both.debias_enabled and both.debias_config().enabled
    assert [both.stage_trains_debias(s) for s in both.stages] == [False, True]
    vanilla_only = TrainConfig.from_dict({"debias": {"strategy": "fixed"}, "stages": [{"debias": False}]})
    assert not vanilla_only.debias_enabled and not vanilla_only.debias_config().enabled
    with pytest.raises(ConfigError, match=r"stages\[1\]\.debias is true but debias.strategy is none"):
        TrainConfig.from_dict({"stages": PAPER_STAGES})


def test_the_paper_recipe_as_stages_trains_vanilla_then_debias_at_the_smaller_rate(tiny_set, cache, tmp_path,
                                                                                    monkeypatch):
    seen = []
    forward = AVSModel.forward

    def spy(self, frames, audio, biased=None, **kwargs):
        seen.append(biased)
        return forward(self, frames, audio, biased=biased, **kwargs)

    monkeypatch.setattr(AVSModel, "forward", spy)
    config = TrainConfig.from_dict(tiny_config(
        tiny_set, cache, debias={"strategy": "fixed", "biased_audio": "mute"}, stages=PAPER_STAGES,
        optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "constant", "debias_lr_scale": 0.1}))
    summary = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    per_stage = summary["total_steps"] // 2
    assert [r["stage"] for r in steps] == ["vanilla"] * per_stage + ["debias"] * per_stage
    assert seen == [None] * per_stage + ["mute"] * per_stage  # the biased branch runs only in the debias stage
    lrs = [r["lr"] for r in steps]  # a record's lr is the rate of the step that follows it
    assert lrs[:per_stage - 1] == pytest.approx([1e-3] * (per_stage - 1))
    assert lrs[per_stage - 1:] == pytest.approx([1e-4] * (per_stage + 1))
    assert "debias_total" in steps[-1] and "debias_total" not in steps[0]
    _, loaded = load_model(tmp_path / "run")
    assert loaded.debias_enabled  # evaluated debiased


def test_init_from_starts_a_debias_fine_tuning_from_a_vanilla_run(tiny_set, cache, tmp_path, capsys):
    vanilla = tmp_path / "vanilla"
    train(TrainConfig.from_dict(tiny_config(tiny_set, cache, run={"max_steps": 2})), vanilla)
    source, _ = load_model(vanilla)
    config_path = tmp_path / "debias.json"
    config_path.write_text(json.dumps(tiny_config(
        tiny_set, cache, debias={"strategy": "fixed"}, run={"max_steps": 1},
        optim={"lr": 1e-12, "weight_decay": 0.0, "warmup_steps": 0})))
    assert main(["train", str(config_path), "--out", str(tmp_path / "debias"), "--init-from", str(vanilla)]) == 0
    tuned, config = load_model(tmp_path / "debias")
    assert config.run.init_from == str(vanilla.absolute()) and config.debias_enabled
    for (name, a), b in zip(source.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)  # one step at lr 1e-12: the source's weights
    # a model that does not match: one line naming what differs
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(tiny_config(tiny_set, cache, model={**tiny_config(tiny_set, cache)["model"],
                                                                    "hidden_dim": 16})))
    assert main(["train", str(other), "--out", str(tmp_path / "bad"), "--init-from", str(vanilla)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.hidden_dim 32 there, 16 here" in err[0]
    assert main(["train", str(other), "--out", str(tmp_path / "bad2"), "--init-from", str(tmp_path / "none")]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err


def test_the_demos_two_stage_config_is_its_vanilla_run_then_its_debias_fine_tuning():
    """configs/demo_debias_stages.yaml (one config) and demo_vanilla.yaml + demo_debias.yaml --init-from (two runs)
    are the same recipe: they must not drift apart."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    stages = TrainConfig.from_file(configs / "demo_debias_stages.yaml").to_dict()
    vanilla = TrainConfig.from_file(configs / "demo_vanilla.yaml").to_dict()
    debias = TrainConfig.from_file(configs / "demo_debias.yaml").to_dict()
    for section in ("data", "model", "loss", "negatives", "gate"):
        assert stages[section] == vanilla[section] == debias[section], section
    assert stages["debias"] == debias["debias"]
    first, second = stages["stages"]
    assert (first["epochs"], first["debias"]) == (vanilla["stages"][0]["epochs"], False)
    assert (second["epochs"], second["debias"], second["restart_schedule"]) == (debias["stages"][0]["epochs"], True,
                                                                                True)
    optim = {k: v for k, v in stages["optim"].items()}
    assert optim == debias["optim"] and {k: v for k, v in optim.items() if k != "debias_lr_scale"} == {
        k: v for k, v in vanilla["optim"].items() if k != "debias_lr_scale"}
