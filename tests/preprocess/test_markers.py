"""``coavs markers`` with random-weight tiny AST and HuBERT folders (transformers ``save_pretrained``), the marker
files it writes checked against the models run independently, and training + evaluation with
``data.marker_files`` end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from coavs.data.audio import load_seconds
from coavs.data.dataset import open_dataset
from coavs.errors import UserError
from coavs.eval.runner import predict_batches
from coavs.models import AVSModel, load_kmeans
from coavs.preprocess.common import open_output
from coavs.training.checkpoint import load_model
from tests.support.cli import assert_one_line_error, run_cli, snapshot
from tests.support.pretrained import write_tiny_ast, write_tiny_hubert
from tests.support.tiny_run import make_tiny_set, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ["Violin, fiddle", "Dog", "Car", "Bird", "Speech"]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("markers")
    data = make_tiny_set(root / "tiny")  # classes violin, dog, car, bird
    write_tiny_ast(root / "ast", LABELS)
    write_tiny_hubert(root / "hubert")
    (root / "map.json").write_text(json.dumps({"violin": ["Violin, fiddle"]}))
    return root, data


def _markers(space, out, *extra, capsys):
    root, data = space
    return run_cli(["markers", data, "--classifier", root / "ast", "--class-map", root / "map.json", "--hubert",
                    root / "hubert", "--clusters", "3", "--hubert-layer", "2", "--out", out, "--device", "cpu",
                    "--quiet", *extra], capsys)


@pytest.fixture(scope="module")
def marker_folder(space, tmp_path_factory):
    from coavs.cli import main

    out = tmp_path_factory.mktemp("written") / "markers"
    root, data = space
    code = main([str(a) for a in ["markers", data, "--classifier", root / "ast", "--class-map", root / "map.json",
                                  "--hubert", root / "hubert", "--clusters", "3", "--hubert-layer", "2", "--out",
                                  out, "--device", "cpu", "--quiet"]])
    assert code == 0
    return out


def test_marker_files_equal_the_models_run_independently(space, marker_folder):
    from transformers import ASTFeatureExtractor, ASTForAudioClassification, HubertModel

    root, data = space
    info = json.loads((marker_folder / "markers.json").read_text())
    assert (info["num_classes"], info["num_clusters"], info["threshold"]) == (4, 3, 0.4)
    assert info["class_names"] == ["violin", "dog", "car", "bird"]
    assert info["class_map"] == {"violin": ["Violin, fiddle"], "dog": ["Dog"], "car": ["Car"], "bird": ["Bird"]}
    assert {"silence.pth", "noise.pth", "kmeans.pt"} <= {p.name for p in marker_folder.iterdir()}

    ast = ASTForAudioClassification.from_pretrained(root / "ast").eval()
    extractor = ASTFeatureExtractor.from_pretrained(root / "ast")
    hubert = HubertModel.from_pretrained(root / "hubert").eval()
    fit, kind = load_kmeans(marker_folder / "kmeans.pt")
    assert kind == "hubert-layer2" and fit.centroids.shape == (3, 32)
    dataset = open_dataset(data, "train")
    for record in dataset.records[:3]:
        seconds = load_seconds(record.audio_path, record.num_frames)  # window 1 s centred on t + 0.5: second t
        with torch.no_grad():
            inputs = extractor([s.numpy() for s in seconds], sampling_rate=16000, return_tensors="pt")
            probs = ast(**inputs).logits.sigmoid()[:, :4]  # labels 0..3 are the four classes, in order
            wave = seconds.flatten()
            normalised = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
            hidden = hubert(normalised[None], output_hidden_states=True).hidden_states[2][0]
        per_second = torch.stack([hidden[t * 50:(t + 1) * 50].mean(0) for t in range(record.num_frames)])
        clusters = torch.cdist((per_second - fit.mean) / fit.std, fit.centroids).argmin(1)
        expected = [sorted((probs[t] >= 0.4).nonzero().flatten().tolist()) + [4 + int(clusters[t])]
                    for t in range(record.num_frames)]
        written = torch.load(marker_folder / f"{record.uid}.pth", weights_only=True)
        assert isinstance(written, list) and all(r.dtype == torch.long for r in written)
        assert [r.tolist() for r in written] == expected


def test_rerun_reuses_the_cached_model_outputs(space, tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, _ = _markers(space, out, capsys=capsys)
    assert code == 0 and "16 files written" in stdout and "data.marker_files=" in stdout
    cache = snapshot(out / ".cache")
    first = {p.name: [r.tolist() for r in torch.load(p, weights_only=True)] for p in out.glob("*.pth")}
    code, _, _ = _markers(space, out, "--threshold", "0.6", capsys=capsys)
    assert code == 0 and snapshot(out / ".cache") == cache  # no model ran again
    second = {p.name: [r.tolist() for r in torch.load(p, weights_only=True)] for p in out.glob("*.pth")}
    assert first != second and json.loads((out / "markers.json").read_text())["threshold"] == 0.6


def test_training_and_evaluation_read_the_marker_files(space, marker_folder, tmp_path, capsys, monkeypatch):
    root, data = space
    config = tiny_config(data, tmp_path / "cache", data={"marker_files": str(marker_folder)},
                         debias={"strategy": "fixed"}, run={"max_steps": 2})
    del config["model"]["num_clusters"]  # from markers.json
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    seen = []
    forward = AVSModel.forward

    def spy(self, frames, audio, *args, **kwargs):
        seen.append(kwargs.get("marker_scores"))
        return forward(self, frames, audio, *args, **kwargs)

    monkeypatch.setattr(AVSModel, "forward", spy)
    code, _, err = run_cli(["train", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 0, err
    assert len(seen) == 2 and all(s is not None and s.shape[1] == 7 for s in seen)
    model, resolved = load_model(tmp_path / "run")
    assert (model.config.num_audio_classes, model.config.num_clusters) == (4, 3)
    assert model.config.biased_queries == "all"  # audio-free: the files only prompt the vanilla branch

    monkeypatch.setattr(AVSModel, "forward", forward)
    dataset = open_dataset(data, "test", marker_dir=marker_folder)
    for out in predict_batches(model, dataset, batch_size=4, mode="debias"):
        expected = torch.cat([dataset.load_markers(int(c))[int(t):int(t) + 1]
                              for c, t in zip(out["clip_index"], out["frame_index"])])
        torch.testing.assert_close(out["outputs"]["marker_scores"], expected)
    silent = next(predict_batches(model, dataset, batch_size=4, audio="silence"))
    silence = [r.tolist() for r in torch.load(marker_folder / "silence.pth", weights_only=True)][0]
    assert silent["outputs"]["marker_scores"][0].nonzero().flatten().tolist() == silence
    code, stdout, err = run_cli(["eval", tmp_path / "run", "--split", "test", "--quiet"], capsys)
    assert code == 0 and "FPR silence" in stdout, err


def test_predict_needs_the_clips_marker_file(space, marker_folder, tmp_path, capsys):
    root, data = space
    config = tiny_config(data, tmp_path / "cache", data={"marker_files": str(marker_folder)}, run={"max_steps": 1})
    del config["model"]["num_clusters"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["train", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress"], capsys)[0] == 0
    record = open_dataset(data, "test").records[0]
    frames = record.frame_paths[0].parent
    args = ["predict", tmp_path / "run", "--frames", frames, "--audio", record.audio_path, "--out", tmp_path / "p"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "pass --markers FILE.pth")
    code, stdout, err = run_cli(args + ["--markers", marker_folder / f"{record.uid}.pth"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("change, message", [
    (["--classifier", "{root}/nowhere"], "--classifier folder not found: {root}/nowhere"),
    (["--classifier", "{root}"], "has no config.json"),
    (["--class-map", "{root}/absent.json"], "--class-map file not found"),
    (["--class-map", "{root}/broken.json"], "--class-map {root}/broken.json: not valid JSON (line 1, column 19: "),
    (["--class-map", "{root}/bad_key.json"], "not classes of the dataset"),
    (["--class-map", "{root}/bad_label.json"], "'Violn' is not a label of the classifier (close: ['Violin, fiddle'])"),
    (["--class-map", "{root}/empty.json"], "no classifier label is named like the dataset class(es) ['violin']"),
    (["--clusters", "500"], "--clusters 500 needs at least as many seconds"),
    (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["--beats", "{root}"], "BEATs is not in transformers"),
    (["--hubert", "{root}/ast", "--hubert-layer", "-1"], "--hubert-layer must be >= 0"),
])
def test_markers_user_mistakes_are_one_line(change, message, space, tmp_path, capsys):
    root, data = space
    (root / "bad_key.json").write_text(json.dumps({"lion": ["Dog"]}))
    (root / "bad_label.json").write_text(json.dumps({"violin": ["Violn"]}))
    (root / "empty.json").write_text("{}")
    (root / "broken.json").write_text('{"violin": ["Dog"]')
    base = {"--classifier": root / "ast", "--class-map": root / "map.json", "--hubert": root / "hubert",
            "--clusters": "3"}
    extra = []
    for key, value in zip(change[::2], change[1::2]):
        if key in base:
            base[key] = value.format(root=root)
        else:
            extra += [key, value.format(root=root)]
    argv = ["markers", data, "--out", tmp_path / "m", "--quiet", "--device", "cpu"]
    for key, value in base.items():
        argv += [key, value]
    code, _, err = run_cli(argv + extra, capsys)
    assert_one_line_error(code, err, message.format(root=root))


def test_markers_needs_a_model(space, capsys):
    _, data = space
    code, _, err = run_cli(["markers", data], capsys)
    assert_one_line_error(code, err, "give --classifier FOLDER")


def test_an_unreadable_manifest_counts_as_other_settings(tmp_path):
    (tmp_path / "manifest.json").write_text('{"weights": ')
    with pytest.raises(UserError, match="use --overwrite"):
        open_output(tmp_path, "manifest.json", {"weights": "a"}, overwrite=False)
    open_output(tmp_path, "manifest.json", {"weights": "a"}, overwrite=True)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"weights": "a"}


@pytest.mark.parametrize("section, message", [
    ({"data": {"marker_files": "{root}/nowhere"}}, "data.marker_files: folder not found"),
    ({"data": {"marker_files": "{markers}"}, "gate": {"mode": "any"}}, "gate.mode needs the model's own"),
    ({"data": {"marker_files": "{markers}"}, "negatives": {"ratio": 0.5}}, "negatives train the model's own"),
    ({"data": {"marker_files": "{markers}"}, "model": {"biased_queries": "own"}}, "use all (every marker-owned"),
    ({"data": {"marker_files": "{markers}"}, "model": {"num_clusters": 5}}, "holds 4 class + 3 cluster markers"),
    ({"data": {"marker_files": "{bare}"}}, "has no markers.json; set model.num_audio_classes"),
])
def test_marker_file_configs_refuse_mistakes_in_one_line(section, message, space, marker_folder, tmp_path, capsys):
    root, data = space
    bare = tmp_path / "bare"
    bare.mkdir()
    names = {"root": root, "markers": marker_folder, "bare": bare}
    sections = json.loads(json.dumps(section).replace("{root}", str(root)).replace("{markers}", str(marker_folder))
                          .replace("{bare}", str(bare)))
    config = tiny_config(data, tmp_path / "cache", run={"max_steps": 1}, **{k: v for k, v in sections.items()
                                                                            if k != "model"})
    config["model"].update(sections.get("model", {}))
    if "num_clusters" not in sections.get("model", {}):
        del config["model"]["num_clusters"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["train", tmp_path / "c.yaml", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message.format(**names))


@pytest.mark.parametrize("command", ["features", "markers"])
def test_help(command, capsys):
    from coavs.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and f"usage: coavs {command}" in capsys.readouterr().out


def test_windows_centre_on_each_second():
    from coavs.preprocess.markers import windows_of

    wave = torch.arange(3 * 16000, dtype=torch.float32)
    one = windows_of(wave, 3, 1.0)
    assert [w[0] for w in one] == [0, 16000, 32000] and all(len(w) == 16000 for w in one)
    two = windows_of(wave, 3, 2.0)
    assert two[0][:8000].sum() == 0 and two[0][8000] == 0 and two[1][0] == 8000 and np.all(two[2][-8000:] == 0)


def test_markers_on_the_s4_layout_map_the_sounding_class(space, tmp_path, capsys):
    from tests.support.datasets import make_s4

    root, _ = space
    data = make_s4(tmp_path / "s4")
    out = tmp_path / "m"
    args = ["markers", data, "--classifier", root / "ast", "--hubert", root / "hubert", "--clusters", "2", "--out",
            out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "['sounding']", "{\"sounding\": \"*\"}")
    (tmp_path / "any.json").write_text(json.dumps({"sounding": "*"}))
    code, _, err = run_cli(args + ["--class-map", tmp_path / "any.json"], capsys)
    assert code == 0, err
    info = json.loads((out / "markers.json").read_text())
    assert (info["num_classes"], info["num_clusters"], info["class_map"]) == (1, 2, {"sounding": "*"})
    assert info["layout"] == "s4"
    for name in ("clip0", "clip1", "clip2"):
        rows = torch.load(out / f"{name}.pth", weights_only=True)
        assert len(rows) == 5 and all(int(r[-1]) in (1, 2) for r in rows)  # its cluster marker: C + k
