"""``coavs analyze area|semantics|queries`` and ``coavs ablate`` end to end on a tiny trained model: each command
runs, writes its files, and its numbers equal what the metric functions give for the same predictions."""

import json

import pytest
import torch
from PIL import Image

from coavs.analysis.common import inference_settings, open_eval_dataset
from coavs.analysis.tables import read_csv
from coavs.cli import main
from coavs.eval.metrics import BinaryAVSMetrics, SemanticAVSMetrics
from coavs.eval.runner import evaluate, predict_batches
from coavs.training.trainer import load_model
from tests.support.analysis_run import tiny_base_config
from tests.support.datasets import make_s4


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def predictions(tiny_run):
    """The tiny model's test-split predictions as the analyses make them (its run's inference settings)."""
    model, config = load_model(tiny_run)
    dataset = open_eval_dataset(config, "test")
    batches = list(predict_batches(model, dataset, batch_size=4, **inference_settings(config)))
    labels = torch.cat([b["labels"] for b in batches])
    return {"labels": labels, "fg": torch.cat([b["fg_score"] for b in batches]),
            "pred": torch.cat([b["pred_labels"] for b in batches]), "num_classes": dataset.num_classes,
            "uid": [u for b in batches for u in b["uid"]], "frame": torch.cat([b["frame_index"] for b in batches])}


def metrics_of(predictions, rows) -> dict:
    binary = BinaryAVSMetrics(scores="probabilities")
    binary.update(predictions["fg"][rows], predictions["labels"][rows] > 0)
    semantic = SemanticAVSMetrics(predictions["num_classes"])
    semantic.update(predictions["pred"][rows], predictions["labels"][rows])
    b, s = binary.compute(), semantic.compute()
    return {"binary_miou": b["miou"], "binary_fscore": b["fscore"], "semantic_miou_present": s["miou_present_classes"]}


def check_row(row, expected):
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_analyze_area(tiny_run, predictions, tmp_path, capsys):
    out = tmp_path / "area"
    assert run_cli("analyze", "area", tiny_run, "--out", out, "--quiet", "--bins", "0,0.2,0.4,1") == 0
    assert "mIoU of the sounding pixels per area bin" in capsys.readouterr().out
    for name in ("area.csv", "area_frames.csv", "area_classes.csv", "area.png"):
        assert (out / name).is_file(), name
    Image.open(out / "area.png").verify()
    rows = {(r["condition"], r["bin"]): r for r in read_csv(out / "area.csv")}
    area = ((predictions["labels"] > 0) & (predictions["labels"] != 255)).flatten(1).double().mean(1)
    check_row(rows[("original", "all")], metrics_of(predictions, torch.arange(len(area))))
    for name, lo, hi in (("0-20%", 0.0, 0.2), ("20-40%", 0.2, 0.4), ("40-100%", 0.4, 1.01)):
        chosen = ((area > lo) & (area < hi) if lo == 0 else (area >= lo) & (area < hi)).nonzero().flatten()
        if chosen.numel():
            check_row(rows[("original", name)], metrics_of(predictions, chosen))
            assert int(rows[("original", name)]["frames"]) == chosen.numel()
    rescaled = [r for k, r in rows.items() if k[0] == "rescaled"]
    assert rescaled and int(rows[("rescaled", "all")]["frames"]) == len(area)


def test_analyze_semantics(tiny_run, predictions, tmp_path):
    out = tmp_path / "semantics"
    assert run_cli("analyze", "semantics", tiny_run, "--out", out, "--quiet") == 0
    Image.open(out / "semantics.png").verify()
    frames = read_csv(out / "semantics_frames.csv")
    assert len(frames) == len(predictions["uid"])
    for row in read_csv(out / "semantics.csv"):
        if row["count"] == "all":
            chosen = torch.arange(len(frames))
        else:
            chosen = torch.tensor([i for i, f in enumerate(frames) if f[row["by"]] == row["count"]])
        check_row(row, metrics_of(predictions, chosen))


def test_analyze_queries(tiny_run, tmp_path):
    out = tmp_path / "queries"
    model, config = load_model(tiny_run)
    dataset = open_eval_dataset(config, "test")
    uid = dataset.uids[1]
    assert run_cli("analyze", "queries", tiny_run, "--out", out, "--quiet", "--frame", f"{uid}:1",
                   "--frame", "0", "--max-markers", "3") == 0
    for name in (f"queries_{uid}_1.png", f"queries_{dataset.uids[0]}_0.png", "queries_examples.png"):
        Image.open(out / name).verify()
    rows = read_csv(out / "queries.csv")
    q = model.config.queries
    assert len(rows) == 2 * 2 * q  # 2 frames x 2 conditions x every query

    # the table is the model's output for that frame
    item = dataset[1]
    with torch.no_grad():
        outputs = model(item["frames"][1:2], item["audio"][1:2])
    probs = torch.softmax(outputs["pred_logits"][0], -1)
    mine = [r for r in rows if r["uid"] == uid and r["condition"] == "normal"]
    assert [r["active"] == "True" for r in mine] == outputs["active"][0].tolist()
    for r in mine:
        assert float(r["class_prob"]) == pytest.approx(float(probs[int(r["query"])].max()), rel=1e-5)
        assert int(r["class"]) == int(probs[int(r["query"])].argmax())
        assert int(r["marker"]) == int(outputs["query_marker"][int(r["query"])])
    silent = [r for r in rows if r["uid"] == uid and r["condition"] == "silence"]
    assert len(silent) == q


def test_ablate_two_variants(tiny_set, tiny_cache, tmp_path, capsys):
    base = tiny_base_config(tiny_set, tiny_cache)
    config_file = tmp_path / "base.json"
    config_file.write_text(json.dumps(base))
    out = tmp_path / "ablate"
    args = ("ablate", "--config", config_file, "--variants", "vanilla,scheme/overall,gate/probe", "--steps", 2,
            "--out", out, "--quiet", "--device", "cpu")
    assert run_cli(*args) == 0
    text = (out / "ablation.md").read_text()
    assert "| vanilla |" in text and "| scheme/overall |" in text and "FPR silence" in text
    Image.open(out / "ablation.png").verify()
    rows = {r["variant"]: r for r in read_csv(out / "ablation.csv")}
    assert set(rows) == {"vanilla", "scheme/overall", "gate/probe"}
    assert rows["gate/probe"]["run"] == rows["vanilla"]["run"]  # the probe needs no training of its own
    for key in ("fpr_silence", "fpr_noise"):
        assert float(rows["gate/probe"][key]) <= float(rows["vanilla"][key])
    # the table's numbers are evaluate()'s for that run and inference setting
    for name, mode, scheme in (("vanilla", "vanilla", "separate"), ("scheme/overall", "debias", "overall")):
        model, config = load_model(rows[name]["run"])
        expected = evaluate(model, open_eval_dataset(config, "test"), batch_size=4, modes=(mode,), bias=True,
                            scheme=scheme)[mode]
        for key in ("miou", "fscore", "fpr_silence", "fpr_noise", "fpr_misaligned"):
            assert float(rows[name][key]) == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (name, key)
        assert float(rows[name]["step_ms"]) > 0
    assert config.debias_config().scheme == "overall"  # D.3: trained with the per-pixel loss on the overall scores
    # a second call reuses the finished runs
    capsys.readouterr()
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert printed.count(": reused 2 steps") == 2 and "0 run, 2 reused" in printed
    # an interrupted run (not finished) is resumed from its checkpoint, not retrained
    run_dir = next((out / "runs").glob("vanilla-*"))
    info = json.loads((run_dir / "ablation_run.json").read_text())
    (run_dir / "ablation_run.json").write_text(json.dumps({**info, "finished": False}))
    assert run_cli(*args) == 0
    assert json.loads((run_dir / "ablation_run.json").read_text())["finished"]
    assert "resuming at step 2" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize("argv, message", [
    (("analyze", "area", "{run}", "--bins", "0.5,0.1"), "--bins"),
    (("analyze", "area", "{run}", "--target", "0.5-0.2"), "target area"),
    (("analyze", "queries", "{run}", "--frame", "no_such_clip:0"), "no clip with uid"),
    (("analyze", "queries", "{run}", "--conditions", "loud"), "--conditions"),
    (("analyze", "semantics", "{run}", "--batch-size", "0"), "--batch-size"),
    (("ablate", "--data", "{data}", "--variants", "nonsense", "--out", "{tmp}"), "unknown variant"),
    (("ablate", "--out", "{tmp}"), "--data"),
    (("analyze", "area", "{run}", "--data", "{s4}"), "classes"),
])
def test_user_errors(tiny_run, tiny_set, tmp_path, capsys, argv, message):
    s4 = make_s4(tmp_path / "s4", size=32) if "{s4}" in argv else None
    argv = [a.format(run=tiny_run, data=tiny_set, tmp=tmp_path / "x", s4=s4) for a in argv]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_binary_dataset_end_to_end(tmp_path, tiny_cache):
    """An S4-layout (binary) dataset: the analyses fall back to the binary metrics and still match them."""
    from coavs.training.trainer import TrainConfig, train

    root = make_s4(tmp_path / "s4", size=32)
    config = tiny_base_config(root, tiny_cache)
    config["model"]["num_clusters"] = 0
    config["data"]["batch_size"] = 1
    train(TrainConfig.from_dict(config), tmp_path / "run")
    out = tmp_path / "analysis"
    for kind in ("area", "semantics", "queries"):
        assert run_cli("analyze", kind, tmp_path / "run", "--out", out, "--quiet") == 0
    rows = {(r["condition"], r["bin"]): r for r in read_csv(out / "area.csv")}
    assert "semantic_miou_present" not in rows[("original", "all")]
    model, loaded = load_model(tmp_path / "run")
    batches = list(predict_batches(model, open_eval_dataset(loaded, "test"), **inference_settings(loaded)))
    binary = BinaryAVSMetrics(scores="probabilities")
    binary.update(torch.cat([b["fg_score"] for b in batches]), torch.cat([b["labels"] for b in batches]) == 1)
    assert float(rows[("original", "all")]["binary_miou"]) == pytest.approx(binary.compute()["miou"], rel=1e-12)
    assert {r["count"] for r in read_csv(out / "semantics.csv") if r["by"] == "semantics"} <= {"0", "1", "all"}
