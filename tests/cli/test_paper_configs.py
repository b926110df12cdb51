"""configs/paper/{s4,ms3,avss}.yaml end to end without a download: tiny folders in AVSBench's released layouts,
random VGGish files, a random-weight Mask2Former written with ``save_pretrained`` (tests/support/released.py) and
marker files written by ``coavs markers`` with random-weight AST and HuBERT folders (tests/support/pretrained.py);
each config trains its stages — the vanilla stage(s), then the debias fine-tuning — one epoch each through
``coavs train`` (sizes overridden to fit the CPU) and is evaluated through ``coavs eval``; a config given another
layout, or no marker files, is refused with one line, and ``data.marker_files=null`` switches to learned markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from coavs.data.avsbench import read_records
from coavs.cli import main
from coavs.data.avsbench import AVSS_NUM_CLASSES
from tests.support.cli import REPO, assert_one_line_error, run_cli
from tests.support.pretrained import write_tiny_ast, write_tiny_hubert
from tests.support.released import (QUERIES, make_released_avss, make_released_ms3, make_released_s4,
                                    write_tiny_mask2former, write_vggish)

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'coavs[hf]')")
pytestmark = pytest.mark.usefixtures("one_thread")

MAKERS = {"s4": make_released_s4, "ms3": make_released_ms3, "avss": make_released_avss}
CLUSTERS = 3  # k-means clusters of the tiny marker files (the configs' 24 / 30 need more training seconds)


def _paper_config(kind: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "paper" / f"{kind}.yaml").read_text())


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """The three tiny layouts with their VGGish folders and marker files (``coavs markers``: a tiny AST whose labels
    are the AVSS class names, S4/MS3's ``sounding`` mapped to any label, a tiny HuBERT), and the tiny Mask2Former."""
    root = tmp_path_factory.mktemp("released")
    out = {"checkpoint": write_tiny_mask2former(root / "mask2former-tiny-ade")}
    avss_names = [f"class_{j:02d}" for j in range(1, AVSS_NUM_CLASSES)]  # make_released_avss's placeholder names
    write_tiny_ast(root / "ast", ["Speech", "Dog", *avss_names])
    write_tiny_hubert(root / "hubert")
    (root / "sounding.json").write_text(json.dumps({"sounding": "*"}))
    for kind, make in MAKERS.items():
        data = make(root / kind)
        uids = [r.uid for r in read_records(data)[1]]
        markers = root / f"{kind}_markers"
        class_map = [] if kind == "avss" else ["--class-map", root / "sounding.json"]
        code = main([str(a) for a in ["markers", data, "--classifier", root / "ast", *class_map, "--hubert",
                                      root / "hubert", "--hubert-layer", "2", "--clusters", CLUSTERS, "--out",
                                      markers, "--device", "cpu", "--quiet"]])
        assert code == 0
        out[kind] = (data, write_vggish(root / f"{kind}_vggish", uids), markers)
    return out


def _one_epoch_stages(kind: str) -> str:
    """The config's own stages (names, subsets, debias flags, restarts) at one epoch each, as a --set value."""
    return json.dumps([dict(stage, epochs=1) for stage in _paper_config(kind)["stages"]])


def _overrides(kind: str, released: dict, markers: bool = True) -> list[str]:
    """The paper config's sizes cut to the CPU: tiny model, 1 epoch per stage, no decode cache."""
    data, vggish, marker_files = released[kind]
    sets = [f"data.root={data}", f"data.vggish_dir={vggish}", f"model.checkpoint={released['checkpoint']}",
            "data.num_workers=0", "data.cache_dir=none", "loss.num_points=64", "eval.every=1", "run.threads=1",
            "run.log_every=1", "run.progress=false", f"model.num_clusters={CLUSTERS}",
            f"stages={_one_epoch_stages(kind)}"]
    sets += [f"data.marker_files={marker_files}" if markers else "data.marker_files=null"]
    if kind == "avss":  # 70 class + 3 cluster markers need the reference's 100 queries (the checkpoint has 12)
        sets += ["model.num_queries=100", "eval.max_clips=2"]
    else:
        sets += [f"model.num_queries={QUERIES}", "model.dilation=3"]
    return sum((["--set", s] for s in sets), [])


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("kind", ["s4", "ms3", "avss"])
def test_paper_config_trains_vanilla_then_debias_and_evaluates(kind, released, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", REPO / "configs" / "paper" / f"{kind}.yaml", "--out", run,
                              *_overrides(kind, released)], capsys)
    assert code == 0, err
    resolved = json.loads((run / "config.json").read_text())
    model = resolved["model"]
    assert model["segmenter"] == "hf_mask2former" and model["hf_config"]["model_type"] == "mask2former"
    assert resolved["data"]["image_size"] == 64  # the checkpoint's image processor size
    assert model["target_markers"] == ("class" if kind == "avss" else "any")
    assert model["biased_queries"] == "all"  # the audio-free biased branch, also with marker files
    assert (model["num_audio_classes"], model["num_clusters"]) == (AVSS_NUM_CLASSES - 1 if kind == "avss" else 1,
                                                                   CLUSTERS)  # as the files' markers.json says
    assert resolved["data"]["marker_files"] == str(released[kind][2])
    assert resolved["resolved"]["binary"] == (kind != "avss")

    # every stage of the config ran, in order; the biased branch trained only in the last (debias) one, at
    # optim.debias_lr_scale times the vanilla stages' rate (a record's lr is the rate of the step after it)
    stages = _paper_config(kind)["stages"]
    assert [s["debias"] for s in stages] == [False] * (len(stages) - 1) + [True] and stages[-1]["restart_schedule"]
    steps = _steps(run)
    assert [s["name"] for s in stages] == list(dict.fromkeys(r["stage"] for r in steps))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    debiased = [r for r in steps if r["stage"] == "debias"]
    assert debiased and all("debias/mask" in r for r in debiased)
    assert not any("debias/mask" in r for r in steps if r["stage"] != "debias")
    assert not any("audio_cls" in r for r in steps)  # the files replace the learned classifier
    scale = _paper_config(kind)["optim"]["debias_lr_scale"]
    assert debiased[0]["lr"] == pytest.approx(scale * steps[0]["lr"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["eval"]) == {"vanilla", "debias"}

    # coavs eval rebuilds the model from the run alone: no checkpoint folder needed
    checkpoint = Path(released["checkpoint"])
    (checkpoint / "model.safetensors").rename(tmp_path / "moved.safetensors")
    try:
        code, out, err = run_cli(["eval", run, "--split", "test", "--no-bias", "--json", "--max-clips", "2"], capsys)
    finally:
        (tmp_path / "moved.safetensors").rename(checkpoint / "model.safetensors")
    assert code == 0, err
    rows = json.loads(out)
    for mode in ("vanilla", "debias"):
        assert 0.0 <= rows[mode]["miou"] <= 1.0 and 0.0 <= rows[mode]["fscore"] <= 1.0


def test_the_recipe_as_two_runs_with_init_from(released, tmp_path, capsys):
    """docs/reproduce.md's other way: the vanilla stage alone, then the debias stage from it (``--init-from``)."""
    base = [REPO / "configs" / "paper" / "s4.yaml", *_overrides("s4", released)]
    code, _, err = run_cli(["train", *base, "--out", tmp_path / "vanilla", "--set",
                            "stages=[{name: vanilla, epochs: 1, debias: false}]"], capsys)
    assert code == 0, err
    assert not any("debias/mask" in r for r in _steps(tmp_path / "vanilla"))
    code, _, err = run_cli(["train", *base, "--init-from", tmp_path / "vanilla", "--out", tmp_path / "debias",
                            "--set", "stages=[{name: debias, epochs: 1, debias: true}]"], capsys)
    assert code == 0, err
    steps = _steps(tmp_path / "debias")
    assert steps and all("debias/mask" in r for r in steps)
    vanilla_lr = _steps(tmp_path / "vanilla")[0]["lr"]
    assert steps[0]["lr"] == pytest.approx(_paper_config("s4")["optim"]["debias_lr_scale"] * vanilla_lr)


def test_a_paper_config_without_marker_files_says_how_to_give_them_or_switch(released, tmp_path, capsys):
    data, vggish, _ = released["s4"]
    code, _, err = run_cli(["train", REPO / "configs" / "paper" / "s4.yaml", "--out", tmp_path / "run",
                            "--set", f"data.root={data}", "--set", f"data.vggish_dir={vggish}",
                            "--set", f"model.checkpoint={released['checkpoint']}"], capsys)
    assert_one_line_error(code, err, "data.marker_files", "`coavs markers`", "--set data.marker_files=DIR", "null")


def test_marker_files_null_switches_a_paper_config_to_learned_markers(released, tmp_path, capsys):
    """The documented switch: ``--set data.marker_files=null`` trains the k-means + classifier markers instead."""
    run = tmp_path / "run"
    code, _, err = run_cli(["train", REPO / "configs" / "paper" / "s4.yaml", "--out", run,
                            *_overrides("s4", released, markers=False), "--set", "run.max_steps=2"], capsys)
    assert code == 0, err
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["data"]["marker_files"] is None and (run / "markers.pt").is_file()  # k-means fitted
    assert all("audio_cls" in r for r in _steps(run))  # the learned classifier trains


@pytest.mark.parametrize("config, data, layout", [("s4", "avss", "AVSS"), ("avss", "s4", "S4"), ("ms3", "s4", "S4")])
def test_a_paper_config_refuses_another_layout(config, data, layout, released, tmp_path, capsys):
    sets = ["--set", f"data.root={released[data][0]}", "--set", f"data.vggish_dir={released[data][1]}",
            "--set", f"data.marker_files={released[data][2]}", "--set", f"model.checkpoint={released['checkpoint']}",
            "--set", "run.progress=false"]
    code, _, err = run_cli(["train", REPO / "configs" / "paper" / f"{config}.yaml", "--out", tmp_path / "run", *sets],
                           capsys)
    assert_one_line_error(code, err, f"holds the {layout} layout", "configs/paper/")


def test_the_curriculum_config_refuses_s4_with_one_clear_line(released, tmp_path, capsys):
    """configs/avss_curriculum.yaml on an S4 folder: the message says what the config needs and what to use."""
    code, _, err = run_cli(["train", REPO / "configs" / "avss_curriculum.yaml", "--out", tmp_path / "run", "--set",
                            f"data.root={released['s4'][0]}", "--set", "run.progress=false"], capsys)
    assert_one_line_error(code, err, "needs the AVSS layout (metadata.csv)", "holds the S4 layout",
                          "configs/paper/s4.yaml")


def test_a_missing_checkpoint_folder_is_one_line(released, tmp_path, capsys):
    data, vggish, markers = released["s4"]
    code, _, err = run_cli(["train", REPO / "configs" / "paper" / "s4.yaml", "--out", tmp_path / "run",
                            "--set", f"data.root={data}", "--set", f"data.vggish_dir={vggish}",
                            "--set", f"data.marker_files={markers}",
                            "--set", f"model.checkpoint={tmp_path / 'nowhere'}"], capsys)
    assert_one_line_error(code, err, "model.checkpoint", str(tmp_path / "nowhere"), "is not a folder")


def test_paper_configs_name_a_source_for_every_value():
    """Every value line of the paper configs carries a comment (its source or why)."""
    for kind in MAKERS:
        text = (REPO / "configs" / "paper" / f"{kind}.yaml").read_text()
        loaded = yaml.safe_load(text)
        assert loaded["model"]["segmenter"] == "hf_mask2former"
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.endswith(":"):
                continue
            assert "#" in line, f"{kind}.yaml: no source for {stripped!r}"
