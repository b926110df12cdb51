"""configs/paper/{s4,ms3,avss}.yaml end to end without a download: tiny folders in AVSBench's released layouts,
random VGGish files and a random-weight Mask2Former written with ``save_pretrained`` (tests/support/released.py);
each config trains a few steps through ``coavs train`` (sizes overridden to fit the CPU) and is evaluated through
``coavs eval``; a config given another layout is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from coavs.data.avsbench import read_records
from tests.support.cli import REPO, assert_one_line_error, run_cli
from tests.support.released import (QUERIES, make_released_avss, make_released_ms3, make_released_s4,
                                    write_tiny_mask2former, write_vggish)

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'coavs[hf]')")
pytestmark = pytest.mark.usefixtures("one_thread")

MAKERS = {"s4": make_released_s4, "ms3": make_released_ms3, "avss": make_released_avss}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """The three tiny layouts, their VGGish folders and the tiny Mask2Former checkpoint."""
    root = tmp_path_factory.mktemp("released")
    out = {"checkpoint": write_tiny_mask2former(root / "mask2former-tiny-ade")}
    for kind, make in MAKERS.items():
        data = make(root / kind)
        uids = [r.uid for r in read_records(data)[1]]
        out[kind] = (data, write_vggish(root / f"{kind}_vggish", uids))
    return out


def _overrides(kind: str, released: dict, tmp_path: Path) -> list[str]:
    """The paper config's sizes cut to the CPU: tiny model, 1 epoch per stage, a few steps, no decode cache."""
    data, vggish = released[kind]
    sets = [f"data.root={data}", f"data.vggish_dir={vggish}", f"model.checkpoint={released['checkpoint']}",
            "data.num_workers=0", "data.cache_dir=none", "loss.num_points=64", "eval.every=1", "run.threads=1",
            "run.log_every=1", "run.progress=false"]
    if kind == "avss":  # 70 class + 30 cluster markers need the reference's 100 queries (the checkpoint has 12)
        sets += ["model.num_queries=100", "run.max_steps=3", "eval.max_clips=2",
                 "stages=[{name: v1s, subsets: [v1s], epochs: 1}, {name: v1s+v2, subsets: [v1s, v2], epochs: 1},"
                 " {name: all, subsets: [v1s, v2, v1m], epochs: 1}]"]
    else:
        sets += [f"model.num_queries={QUERIES}", "model.num_clusters=3", "model.dilation=3", "run.max_steps=2",
                 "stages=[{epochs: 1}]"]
    return sum((["--set", s] for s in sets), [])


@pytest.mark.parametrize("kind", ["s4", "ms3", "avss"])
def test_paper_config_trains_and_evaluates(kind, released, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", REPO / "configs" / "paper" / f"{kind}.yaml", "--out", run,
                              *_overrides(kind, released, tmp_path)], capsys)
    assert code == 0, err
    resolved = json.loads((run / "config.json").read_text())
    model = resolved["model"]
    assert model["segmenter"] == "hf_mask2former" and model["hf_config"]["model_type"] == "mask2former"
    assert resolved["data"]["image_size"] == 64  # the checkpoint's image processor size
    assert model["target_markers"] == ("class" if kind == "avss" else "any")
    assert resolved["resolved"]["binary"] == (kind != "avss")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r for r in log if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    assert any("debias/mask" in r for r in losses)  # the debiased loss trained alongside
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["eval"]) == {"vanilla", "debias"}

    # coavs eval rebuilds the model from the run alone: no checkpoint folder needed
    (Path(released["checkpoint"]) / "model.safetensors").rename(tmp_path / "moved.safetensors")
    try:
        code, out, err = run_cli(["eval", run, "--split", "test", "--no-bias", "--json", "--max-clips", "2"], capsys)
    finally:
        (tmp_path / "moved.safetensors").rename(Path(released["checkpoint"]) / "model.safetensors")
    assert code == 0, err
    rows = json.loads(out)
    for mode in ("vanilla", "debias"):
        assert 0.0 <= rows[mode]["miou"] <= 1.0 and 0.0 <= rows[mode]["fscore"] <= 1.0


@pytest.mark.parametrize("config, data, layout", [("s4", "avss", "AVSS"), ("avss", "s4", "S4"), ("ms3", "s4", "S4")])
def test_a_paper_config_refuses_another_layout(config, data, layout, released, tmp_path, capsys):
    sets = ["--set", f"data.root={released[data][0]}", "--set", f"data.vggish_dir={released[data][1]}",
            "--set", f"model.checkpoint={released['checkpoint']}", "--set", "run.progress=false"]
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
    data, vggish = released["s4"]
    code, _, err = run_cli(["train", REPO / "configs" / "paper" / "s4.yaml", "--out", tmp_path / "run",
                            "--set", f"data.root={data}", "--set", f"data.vggish_dir={vggish}",
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
