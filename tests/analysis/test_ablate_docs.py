"""``coavs ablate`` as docs/analysis.md describes it (issue 25): the counts of variants and trainings and which
variants share a training are the plan's, a finished training is reused whatever variant first needed it (its run
record read once), and a corrupt run record or one of the wrong shape is named in one line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from coavs import jsonio
from coavs.analysis import ablate
from coavs.analysis.ablate import default_base_config, plan_trainings, select_variants, train_one
from coavs.errors import UserError

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def _plan(tmp_path, names="all"):
    return plan_trainings(default_base_config(str(tmp_path / "data"), device="cpu"), select_variants(names), 5,
                          tmp_path / "out")


def test_the_documented_counts_are_the_plans(tmp_path):
    text = DOC.read_text()
    match = re.search(r"(\d+) variants and (\d+) trainings", text)
    assert match, "docs/analysis.md must state 'N variants and M trainings'"
    runs = _plan(tmp_path)
    assert (int(match.group(1)), int(match.group(2))) == (len(select_variants("all")), len(runs))


def test_the_documented_shared_trainings_are_the_plans(tmp_path):
    text = DOC.read_text()
    block = text.split("<!-- docs-test: ablation-runs", 1)[1].split("\n\n", 1)[0]
    documented = {frozenset(re.findall(r"`([^`]+)`", line)) for line in block.splitlines() if " = " in line}
    shared = {frozenset(v.name for v in run.variants) for run in _plan(tmp_path) if len(run.variants) > 1}
    assert documented == shared


def test_a_finished_training_is_reused_under_another_variant_name(tmp_path):
    first = [run for run in _plan(tmp_path, "scheme/separate")]
    assert len(first) == 1 and first[0].run_dir.name.startswith("scheme-separate-")
    first[0].run_dir.mkdir(parents=True)
    (first[0].run_dir / "ablation_run.json").write_text(json.dumps({"key": first[0].key, "finished": True}))
    later = _plan(tmp_path, "strategy/fixed,biased/mute")  # the same training, first needed by another variant
    assert len(later) == 1 and later[0].key == first[0].key
    assert later[0].run_dir == first[0].run_dir
    other = _plan(tmp_path, "strategy/uncertainty")  # another training gets its own folder
    assert other[0].run_dir.name.startswith("strategy-uncertainty-")


def test_a_corrupt_run_record_is_a_user_error_naming_the_file(tmp_path):
    run = _plan(tmp_path, "scheme/separate")[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "ablation_run.json").write_text('{"key": "' + run.key + '", "finished": tru}')
    assert _plan(tmp_path, "scheme/separate")[0].run_dir == run.run_dir  # planning reads it as unfinished
    with pytest.raises(UserError, match="not valid JSON") as info:
        train_one(run)
    assert str(run.run_dir / "ablation_run.json") in str(info.value)


@pytest.mark.parametrize("record, reason", [
    ([], "not a JSON object (got a list)"),
    ({"finished": True}, '"key" is missing'),
    ({"key": "{key}"}, '"finished" is missing'),
    ({"key": 7, "finished": True}, '"key" must be a string, got 7'),
    ({"key": "{key}", "finished": "yes"}, '"finished" must be true or false, got "yes"'),
    ({"key": "{key}", "finished": True, "step_ms": "fast"}, '"step_ms" must be a number or null, got "fast"'),
])
def test_a_run_record_of_the_wrong_shape_is_a_user_error_naming_the_file(tmp_path, record, reason):
    run = _plan(tmp_path, "scheme/separate")[0]
    run.run_dir.mkdir(parents=True)
    path = run.run_dir / "ablation_run.json"
    path.write_text(json.dumps(record).replace("{key}", run.key))
    assert _plan(tmp_path, "scheme/separate")[0].run_dir == run.run_dir  # planning reads it as unfinished
    with pytest.raises(UserError) as info:
        train_one(run)
    assert str(info.value) == f"ablation run record {path}: {reason}"


def _count_reads(monkeypatch) -> list:
    """The paths of every read_json call from now on (read_json_object goes through it)."""
    reads, real = [], jsonio.read_json

    def counting(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(jsonio, "read_json", counting)
    return reads


def test_a_finished_run_is_reused_from_one_read_of_its_record(tmp_path, monkeypatch):
    run = _plan(tmp_path, "scheme/separate")[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "ablation_run.json").write_text(json.dumps({"key": run.key, "finished": True, "step_ms": 12.5,
                                                               "seconds": None}))
    reads = _count_reads(monkeypatch)
    train_one(run)
    assert run.reused and run.step_ms == 12.5 and math.isnan(run.seconds)
    assert reads == [run.run_dir / "ablation_run.json"]


@pytest.mark.parametrize("key, resumed", [("same", True), ("other", False)])
def test_an_interrupted_run_is_resumed_after_one_read_of_its_record(tmp_path, monkeypatch, key, resumed):
    run = _plan(tmp_path, "scheme/separate")[0]
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run.run_dir / "ablation_run.json").write_text(json.dumps({"key": run.key if key == "same" else "0" * 12,
                                                               "finished": False}))
    calls = []

    def fake_train(config, run_dir, resume=False, on_step=None):
        calls.append((resume, run_dir.exists()))
        run_dir.mkdir(parents=True, exist_ok=True)
        return {"finished": True, "step": 5}

    monkeypatch.setattr(ablate, "train", fake_train)
    reads = _count_reads(monkeypatch)
    train_one(run)
    assert calls == [(resumed, resumed)]  # a record of another training: its folder is cleared and trained anew
    assert reads == [run.run_dir / "ablation_run.json"]
    assert json.loads((run.run_dir / "ablation_run.json").read_text())["key"] == run.key
