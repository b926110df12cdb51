"""User mistakes on the command line that used to end in a traceback or a silently wrong result (issue 24): eval
on a dataset with other classes, predict --vggish on a log-mel model, bench --out that cannot be written (checked
before any benchmark runs), strict JSON from eval even when a metric is undefined, verify --limit."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from coavs.data.synth import SynthConfig, generate
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.tiny_run import TINY_SET

pytestmark = pytest.mark.usefixtures("one_thread")


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("classes, fragment", [
    (("violin", "dog", "car"), "has 4 classes (with background), the model was trained on 5"),
    (("violin", "dog", "car", "siren"), "names class 4 'siren', the model was trained with 'bird' there"),
])
def test_eval_on_a_dataset_with_other_classes(classes, fragment, trained_run, tmp_path, capsys):
    other = tmp_path / "other"
    generate(other, SynthConfig(num_clips=8, frames_per_clip=2, image_size=32, classes=classes, seed=2,
                                split_fractions=(0.5, 0.25, 0.25)))
    rows = tmp_path / "rows.json"
    code, _, err = run_cli(["eval", trained_run, "--data", other, "--split", "val", "--quiet", "--out", rows], capsys)
    assert_one_line_error(code, err, fragment)
    assert not rows.exists()


def test_eval_on_another_copy_of_the_same_classes_runs(trained_run, tmp_path, capsys):
    same = tmp_path / "same"
    generate(same, TINY_SET)
    code, _, err = run_cli(["eval", trained_run, "--data", same, "--split", "val", "--quiet", "--no-bias"], capsys)
    assert code == 0, err


def test_predict_vggish_on_a_logmel_model_names_the_mismatch(trained_run, clip, tmp_path, capsys):
    features = tmp_path / "clip.npy"
    np.save(features, np.zeros((2, 128), np.float32))
    code, _, err = run_cli(["predict", trained_run, "--frames", clip / "frames", "--vggish", features, "--out",
                            tmp_path / "pred", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "this model takes logmel audio", "not VGGish features")
    assert not (tmp_path / "pred").exists()


def test_eval_json_is_strict_when_a_metric_is_undefined(trained_run, tmp_path, capsys, monkeypatch):
    import coavs.cli

    real = coavs.cli.evaluate

    def with_undefined(*args, **kwargs):
        rows = real(*args, **kwargs)
        for row in rows.values():
            row["counterfactual_iou"], row["fpr_noise"] = math.nan, math.inf
        return rows

    monkeypatch.setattr(coavs.cli, "evaluate", with_undefined)
    out = tmp_path / "rows.json"
    code, printed, err = run_cli(["eval", trained_run, "--split", "val", "--quiet", "--modes", "vanilla", "--json",
                                  "--out", out, "--no-bias"], capsys)
    assert code == 0, err
    for rows in (_strict(printed), _strict(out.read_text())):
        assert rows["vanilla"]["counterfactual_iou"] is None and rows["vanilla"]["fpr_noise"] is None


@pytest.mark.parametrize("count", ["0", "-1"])
@pytest.mark.parametrize("command", ["eval", "gate"])
def test_max_clips_below_one_is_refused_before_any_work(command, count, trained_run, tmp_path, capsys):
    before = sorted(p.name for p in trained_run.iterdir())
    code, _, err = run_cli([command, trained_run, "--max-clips", count, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--max-clips must be >= 1")
    assert sorted(p.name for p in trained_run.iterdir()) == before  # no gate.json written


def test_verify_limit_below_one_and_a_partial_check(workspace, capsys):
    code, _, err = run_cli(["verify", workspace / "tiny", "--limit", "-1"], capsys)
    assert_one_line_error(code, err, "--limit must be >= 1")
    code, out, _ = run_cli(["verify", workspace / "tiny", "--limit", "2", "--quiet"], capsys)
    assert code == 0 and out.strip().splitlines()[-1] == "OK for the first 2 of 16 clips"
    code, out, _ = run_cli(["verify", workspace / "tiny", "--limit", "2", "--json", "--quiet"], capsys)
    report = _strict(out)
    assert report["partial"] and report["clips_checked"] == 2


@pytest.mark.parametrize("where", ["file", "below_a_file", "unwritable"])
def test_bench_out_is_checked_before_any_benchmark_runs(where, tmp_path, capsys, monkeypatch):
    import coavs.cli

    ran = []
    monkeypatch.setattr(coavs.cli.subprocess, "run", lambda *a, **k: ran.append(a) or subprocess.CompletedProcess(a, 0))
    target = tmp_path / "results"
    if where in ("file", "below_a_file"):
        target.write_text("not a folder")
        if where == "below_a_file":
            target = target / "sub"
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(tmp_path))
        monkeypatch.setattr(coavs.cli.tempfile, "NamedTemporaryFile", refuse)
    code, _, err = run_cli(["bench", "debias", "--quick", "--out", target], capsys)
    assert_one_line_error(code, err, "--out", str(target))
    assert not ran
