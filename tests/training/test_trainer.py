"""The trainer: exact resume (SIGTERM and max_steps stops), DDP over gloo, atomic checkpoints, the config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coavs.training import checkpoint as ckpt
from coavs.training.config import ConfigError
from coavs.training.plan import Plan, Stage
from coavs.training.trainer import OptimSection, StageSection, TrainConfig, load_model, train
from tests.support.tiny_run import logged_losses, make_tiny_set, tiny_config

# Two stages (a curriculum), random frame choice and DDPM biased audio: every RNG and the stage switch matter.
RESUME_SECTIONS = dict(
    data={"frames_per_clip": 1},
    debias={"strategy": "fixed", "biased_audio": "ddpm", "weight": 2.0},
    stages=[{"name": "first", "epochs": 1}, {"name": "second", "epochs": 1, "lr_scale": 0.5}],
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return make_tiny_set(tmp_path_factory.mktemp("trainer_data") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer_cache")


@pytest.fixture(scope="module")
def straight_run(tiny_set, cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    summary = train(TrainConfig.from_dict(tiny_config(tiny_set, cache, **RESUME_SECTIONS)), run_dir)
    assert summary["finished"] and summary["step"] == 8  # 8 train clips / 2 per step × 2 stages
    return run_dir


def test_resume_after_sigterm_and_max_steps_repeats_the_uninterrupted_run(straight_run, tiny_set, cache, tmp_path):
    config = TrainConfig.from_dict(tiny_config(tiny_set, cache, **RESUME_SECTIONS))
    run_dir = tmp_path / "run"

    def terminate_at_step_3(step, _):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes the step, saves and returns

    first = train(config, run_dir, on_step=terminate_at_step_3)
    assert (first["finished"], first["stopped"], first["step"]) == (False, "SIGTERM", 3)
    second = train(config, run_dir, resume=True, max_steps=6)  # crosses the stage boundary, stops mid-stage
    assert (second["stopped"], second["step"]) == ("max_steps", 6)
    third = train(config, run_dir, resume=True)
    assert third["finished"] and third["step"] == 8

    assert logged_losses(run_dir) == logged_losses(straight_run)
    assert [step for step, _ in logged_losses(run_dir)] == list(range(1, 9))
    resumed, _ = load_model(run_dir)
    reference, _ = load_model(straight_run)
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert _epoch_losses(run_dir) == _epoch_losses(straight_run) and len(_epoch_losses(run_dir)) == 2


def _epoch_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_holds_resolved_config_logs_and_checkpoint(straight_run, tiny_set):
    stored = json.loads((straight_run / "config.json").read_text())
    assert "preset" not in stored["model"] and stored["model"]["num_classes"] == 5  # background + 4 classes
    assert stored["model"]["audio_input"] == "logmel" and stored["data"]["kind"] == "avss"
    assert stored["resolved"]["class_names"][0] == "background" and stored["resolved"]["binary"] is False
    records = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"lr", "clips_per_s", "data_wait_fraction", "debias_total", "stage", "epoch"} <= set(steps[0])
    assert 0.0 <= steps[-1]["data_wait_fraction"] <= 1.0 and steps[-1]["clips_per_s"] > 0
    assert [r["stage"] for r in steps] == ["first"] * 4 + ["second"] * 4
    # the second stage runs at half the learning rate of the schedule
    state = ckpt.load(straight_run / "checkpoints" / "last.pt")
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "step", "config"}
    assert state["step"] == 8 and len(state["rng"]) == 1
    model, config = load_model(straight_run)
    assert not model.training and config.debias_config().biased_audio == "ddpm"
    assert bool(model.perception.clusters_fitted)  # k-means markers fitted on the training split


def test_a_crash_mid_save_leaves_the_previous_checkpoint(straight_run, tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_atomic({"step": 1, "weights": torch.ones(3)}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"step": 2, "weights": torch.zeros(3)}, path)
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]

    # A process killed mid-write (no clean-up at all) leaves only a stray temp file beside the old checkpoint.
    # (The checkpoint is serialised in memory first, so the process dies while the file is being written.)
    script = ("import os, torch\nfrom coavs.training import checkpoint as c\n"
              "def die(fd):\n    os._exit(9)\n"
              f"os.fsync = die\nc.save_atomic({{'step': 3}}, {str(path)!r})\n")
    assert subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2]).returncode == 9
    assert ckpt.load(path)["step"] == 1
    assert any(p.name.startswith(".last.pt.tmp-") for p in path.parent.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: dict, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(TrainConfig.from_dict(config), run_dir)
    # The child then exits through the normal interpreter teardown: the process group ended inside train()
    # (tests/training/test_torchrun_exit.py), so no gloo thread is left to abort it.


def test_two_process_gloo_run_reports_the_metrics_of_one_process(tiny_set, cache, tmp_path):
    """DDP under gloo (as torchrun sets it up): each process trains and evaluates its share; the all-reduced
    evaluation equals a single process evaluating the same final model on the whole split."""
    from coavs.eval.runner import evaluate
    from coavs.training.trainer import open_split

    config = tiny_config(tiny_set, cache, eval={"split": "val", "every": 0, "bias": True, "batch_size": 1})
    run_dir = tmp_path / "ddp"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config, str(run_dir)), nprocs=2, join=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert summary["finished"] and summary["step"] == 2 and len(state["rng"]) == 2  # 8 clips / 2 ranks / 2

    model, trained = load_model(run_dir)
    assert trained.resolved["world_size"] == 2
    single = evaluate(model, open_split(trained, "val"), batch_size=3, modes=("vanilla",), bias=True)
    distributed = summary["eval"]
    assert single["vanilla"]["frames"] == distributed["vanilla"]["frames"] == 8
    for key, value in single["vanilla"].items():
        assert distributed["vanilla"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_existing_run_needs_resume_and_resume_keeps_the_config(straight_run, tiny_set, cache, tmp_path):
    config = TrainConfig.from_dict(tiny_config(tiny_set, cache, **RESUME_SECTIONS))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config, straight_run)
    changed = TrainConfig.from_dict(tiny_config(tiny_set, cache, **{**RESUME_SECTIONS, "optim": {"lr": 0.5}}))
    with pytest.raises(ConfigError, match="optim.lr"):
        train(changed, straight_run, resume=True)
    with pytest.raises(FileNotFoundError):
        train(config, tmp_path / "empty", resume=True)


@pytest.mark.parametrize("data, message", [
    ({"data": {"batchsize": 2}}, "data.batchsize"),
    ({"data": {"batch_size": "two"}}, "data.batch_size must be an integer"),
    ({"optim": {"schedule": "step"}}, "optim.schedule"),
    ({"debias": {"strategy": "sometimes"}}, "debias.mode"),
    ({"debias": {"strategy": "fixed", "weigth": 3}}, "debias.weigth"),
    ({"debias": {"strategy": "fixed", "biased_audio": "loud"}}, "biased_audio"),
    ({"model": {"hidden_dims": 3}}, "hidden_dims"),
    ({"model": {"preset": "huge"}}, "model.preset"),
    ({"model": {"audio_input": "vggish"}}, "must match data.audio"),
    ({"stages": []}, "at least one stage"),
    ({"stages": [{"epochs": 0}]}, r"stages\[0\].epochs"),
    ({"run": {"precision": "fp8"}}, "run.precision"),
    ({"eval": {"modes": ["best"]}}, "eval.modes"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


def test_config_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: /data/x\nstages:\n  - {name: v1s, epochs: 2, subsets: [v1s]}\n"
                    "  - {name: v2, epochs: 1, subsets: [v2], lr_scale: 0.5}\n")
    config = TrainConfig.from_file(path, ["run.seed=3", "data.batch_size=8", "debias.mode=bias_only",
                                          "model.preset=small"])
    assert config.run.seed == 3 and config.data.batch_size == 8 and config.data.root == "/data/x"
    assert [s.subsets for s in config.stages] == [["v1s"], ["v2"]]
    assert config.debias_config().strategy == "bias_only" and config.eval_modes() == ["vanilla", "debias"]
    assert config.model_config(num_classes=11).num_audio_classes == 10
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_file(json_path).to_dict() == config.to_dict()
    with pytest.raises(ConfigError, match="section.key=value"):
        TrainConfig.from_file(path, ["seed"])
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_plan_positions_and_schedule():
    stages = [Stage(0, StageSection(epochs=2), None, 3, 0),
              Stage(1, StageSection(epochs=1, lr_scale=0.1), None, 4, 6)]
    plan = Plan(stages, cap=None)
    assert plan.total == 10
    assert [plan.position(s) for s in (0, 2, 3, 5, 6, 9)] == [(0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 2), (1, 0, 0),
                                                              (1, 0, 3)]
    optim = OptimSection(schedule="constant", warmup_steps=2)
    assert [plan.lr_factor(s, optim) for s in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, pytest.approx(0.1)]
    assert Plan(stages, cap=4).total == 4
    poly = OptimSection(schedule="poly")
    assert plan.lr_factor(0, poly) == 1.0 and plan.lr_factor(5, poly) == pytest.approx(0.5 ** 0.9)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training(precision, tiny_set, cache, tmp_path):
    config = TrainConfig.from_dict(tiny_config(tiny_set, cache, debias={"strategy": "fixed"},
                                               run={"precision": precision, "max_steps": 2}))
    summary = train(config, tmp_path / "run")
    losses = [loss for _, loss in logged_losses(tmp_path / "run")]
    assert summary["finished"] and len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    scaler = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"]
    assert bool(scaler) == (precision == "fp16")  # a grad scaler only for fp16
