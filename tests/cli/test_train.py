"""``coavs train | eval | predict | bench | demo``: help, a tiny end-to-end run, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from coavs.cli import build_parser, find_benchmarks, main
from tests.support.tiny_run import make_tiny_set, tiny_config

SUBCOMMANDS = ("info", "synth", "verify", "fit-markers", "train", "eval", "gate", "predict", "bench", "demo")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: coavs {command}" in capsys.readouterr().out


def test_parser_lists_every_subcommand():
    help_text = build_parser().format_help()
    assert all(command in help_text for command in SUBCOMMANDS)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = make_tiny_set(root / "tiny")
    config = tiny_config(data, root / "cache", debias={"strategy": "fixed"}, run={"max_steps": 3})
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def trained_run(workspace) -> Path:
    run_dir = workspace / "run"
    assert main(["train", str(workspace / "tiny.yaml"), "--out", str(run_dir), "--set", "run.seed=1"]) == 0
    return run_dir


def test_train_writes_a_run_folder_and_resume_continues(trained_run, workspace, capsys):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 3
    assert json.loads((trained_run / "config.json").read_text())["run"]["seed"] == 1
    stopped = workspace / "stopped"
    assert main(["train", str(workspace / "tiny.yaml"), "--out", str(stopped), "--max-steps", "1"]) == 0
    assert "continue with: coavs train --resume" in capsys.readouterr().out
    assert main(["train", "--resume", "--out", str(stopped)]) == 0  # the run's own config.json
    assert "trained 3 steps" in capsys.readouterr().out


def test_gate_fits_a_probe_on_a_finished_run_and_eval_applies_it(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the module's run stays without a gate
    assert main(["gate", str(run), "--probe", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "sounding probe:" in out and "gate any + probe: tau" in out
    stored = json.loads((run / "gate.json").read_text())
    assert stored["probe"] == "gate_probe.pt" and (run / "gate_probe.pt").is_file()
    rows = tmp_path / "rows.json"
    assert main(["eval", str(run), "--split", "val", "--quiet", "--modes", "vanilla", "--out", str(rows)]) == 0
    gated = json.loads(rows.read_text())["vanilla"]
    assert main(["eval", str(run), "--split", "val", "--quiet", "--modes", "vanilla", "--no-gate", "--out",
                 str(rows)]) == 0
    plain = json.loads(rows.read_text())["vanilla"]
    assert gated["fpr_silence"] <= plain["fpr_silence"] and gated["fpr_noise"] <= plain["fpr_noise"]
    capsys.readouterr()
    assert main(["gate", str(run), "--mode", "class", "--probe"]) == 1
    assert "use it with --mode any" in capsys.readouterr().err
    assert main(["gate", str(tmp_path / "nowhere")]) == 1


def test_eval_prints_the_table_with_bias_metrics(trained_run, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["eval", str(trained_run), "--split", "val", "--quiet", "--max-clips", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| vanilla" in text and "| debias" in text and "FPR misaligned" in text
    rows = json.loads(out.read_text())
    assert set(rows) == {"vanilla", "debias"} and 0.0 <= rows["debias"]["fpr_silence"] <= 1.0
    assert main(["eval", str(trained_run / "checkpoints" / "last.pt"), "--split", "val", "--modes", "debias",
                 "--no-bias", "--json", "--max-clips", "1"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"debias"}
    assert main(["eval", str(trained_run), "--modes", "ensemble", "--no-bias", "--max-clips", "1"]) == 1
    assert "debias.strategy: ensemble" in capsys.readouterr().err


def test_predict_on_a_folder_of_frames_and_a_wav(trained_run, workspace, tmp_path, capsys):
    clip = next(p for p in (workspace / "tiny" / "synth").iterdir() if (p / "audio.wav").is_file())
    frames = tmp_path / "frames"
    shutil.copytree(clip / "frames", frames)
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), "--frames", str(frames), "--audio", str(clip / "audio.wav"),
                 "--out", str(out), "--device", "cpu"]) == 0
    names = sorted(p.stem for p in frames.iterdir())
    assert sorted(p.stem for p in (out / "masks").iterdir()) == names
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == names
    from PIL import Image

    with Image.open(next((out / "masks").iterdir())) as mask, Image.open(next(frames.iterdir())) as frame:
        assert mask.size == frame.size and mask.mode == "P"
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["frames"]) == len(names) and summary["class_names"][0] == "background"
    assert "debias" in capsys.readouterr().out  # a debias-trained model predicts with debias by default
    # the run's calibrated gate applies, as in coavs eval: a gate that hears nothing empties every frame
    from coavs.eval.gate import save_gate
    from coavs.inference.gate import Gate

    gated_run = tmp_path / "gated_run"
    shutil.copytree(trained_run, gated_run)
    save_gate(gated_run, Gate("any", 1.0), {}, "val")
    for extra, empty in (([], True), (["--no-gate"], False)):
        target = tmp_path / f"gated{len(extra)}"
        assert main(["predict", str(gated_run), "--frames", str(frames), "--audio", str(clip / "audio.wav"),
                     "--out", str(target), "--device", "cpu", *extra]) == 0
        shares = [f["sounding_fraction"] for f in json.loads((target / "predictions.json").read_text())["frames"]]
        assert (max(shares) == 0.0) == empty
        if not empty:
            assert shares == [f["sounding_fraction"] for f in summary["frames"]]


@pytest.mark.parametrize("argv, message", [
    (["train", "{tmp}/missing.yaml", "--out", "{tmp}/r"], "config file not found"),
    (["train", "{tmp}/bad.yaml", "--out", "{tmp}/r"], "unknown key(s) data.batchsize"),
    (["train", "--out", "{tmp}/r"], "give a CONFIG file"),
    (["train", "{tmp}/no_data.yaml", "--out", "{tmp}/r"], "dataset folder does not exist"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "file not found"),
    (["eval", "{tmp}/nothing"], "file not found"),
    (["predict", "{tmp}/nothing", "--out", "{tmp}/p"], "exactly one of --frames"),
    (["bench", "--repo", "{tmp}"], "no benchmarks/ folder"),
])
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data:\n  batchsize: 2\n")
    (tmp_path / "no_data.yaml").write_text(f"data:\n  root: {tmp_path / 'absent'}\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bench_finds_the_repository_benchmarks(capsys):
    root = find_benchmarks()
    assert root is not None and (root / "benchmarks" / "common.py").is_file()
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "debias" in listed
    assert main(["bench", "no_such_benchmark"]) == 1
    assert "unknown benchmark" in capsys.readouterr().err


def test_demo_quick_trains_the_four_models_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("| vanilla ", "| paper debias (fine-tuned from vanilla) ", "| negative + swapped audio + gate ",
                "| negative + swapped audio + gate, then paper debias "):
        assert row in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["rows"]) == 4
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in results["rows"].values():
        assert {"miou", "fscore", "fpr_silence", "fpr_noise", "fpr_misaligned", "fp_swapped",
                "counterfactual_iou"} <= set(row)
    names = ("vanilla", "debias", "negatives", "combined")
    configs = [json.loads((tmp_path / "runs" / f"{n}-s0" / "config.json").read_text()) for n in names]
    assert [c["debias"]["strategy"] for c in configs] == ["none", "fixed", "none", "fixed"]
    assert [c["negatives"]["ratio"] > 0 for c in configs] == [False, False, True, True]
    # the paper's recipe: the debias rows fine-tune the vanilla / negatives runs (--init-from)
    assert [c["run"]["init_from"] for c in configs] == [None, str(tmp_path / "runs" / "vanilla-s0"), None,
                                                        str(tmp_path / "runs" / "negatives-s0")]
    assert all((tmp_path / "runs" / f"{n}-s0" / "gate.json").is_file() for n in ("negatives", "combined"))
    assert set(results["without_gate"]) == {"negative + swapped audio + gate (no gate)",
                                            "negative + swapped audio + gate, then paper debias (no gate)"}


def test_sigterm_to_the_process_group_saves_and_exits_cleanly(workspace, tmp_path, capsys):
    """A scheduler's SIGTERM reaches the trainer and its DataLoader workers alike; the trainer ends the step,
    saves and exits 0, and --resume finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tiny_config(workspace / "tiny", workspace / "cache", data={"num_workers": 1}, stages=[{"epochs": 4}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "coavs", "train", str(tmp_path / "c.yaml"), "--out",
                                str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=Path(__file__).parents[2])
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    assert "stopped (SIGTERM)" in output and "Traceback" not in output
    stopped_at = json.loads((run_dir / "summary.json").read_text())["step"]
    assert 2 <= stopped_at < 16
    assert main(["train", "--resume", "--out", str(run_dir)]) == 0
    assert "trained 16 steps" in capsys.readouterr().out
