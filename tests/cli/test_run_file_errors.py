"""A run folder's own files that parse but hold the wrong shape (``gate.json`` and its probe, ``config.json``,
``log.jsonl``) stop ``eval`` and ``train --resume`` with one line naming the file, and exit 1."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import assert_one_line_error, run_cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("gate, reason", [
    ({"mode": "any"}, '"threshold" is missing'),
    ({"mode": "any", "threshold": "high"}, '"threshold" must be a number, got "high"'),
    ("any", 'not a JSON object (got "any")'),
])
def test_eval_of_a_run_whose_gate_file_has_the_wrong_shape(gate, reason, run_copy, tmp_path, capsys):
    (run_copy / "gate.json").write_text(json.dumps(gate))
    rows = tmp_path / "rows.json"
    code, _, err = run_cli(["eval", run_copy, "--split", "val", "--out", rows], capsys)
    assert_one_line_error(code, err, f"gate {run_copy / 'gate.json'}: {reason}")
    assert not rows.exists()


def test_eval_of_a_run_whose_gate_probe_is_damaged(run_copy, capsys):
    (run_copy / "gate.json").write_text(json.dumps({"mode": "any", "threshold": 0.5, "probe": "gate_probe.pt"}))
    (run_copy / "gate_probe.pt").write_bytes(b"not a torch file")
    code, _, err = run_cli(["eval", run_copy, "--split", "val"], capsys)
    assert_one_line_error(code, err, f"gate probe {run_copy / 'gate_probe.pt'}: not a readable torch file")


@pytest.mark.parametrize("config, reason", [
    ([1], "not a JSON object (got a list)"),
    ({"nonsense": 1}, "unknown key(s) nonsense"),
])
def test_resume_of_a_run_whose_config_json_has_the_wrong_shape(config, reason, run_copy, workspace, capsys):
    (run_copy / "config.json").write_text(json.dumps(config))
    before = snapshot(run_copy)
    code, _, err = run_cli(["train", workspace / "tiny.yaml", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, f"run config {run_copy / 'config.json'}: {reason}")
    after = snapshot(run_copy)
    after.pop(".lock", None)
    assert after == before


@pytest.mark.parametrize("bad, reason", [
    ('{"step": 1, "loss"\n', "not valid JSON (line 2, column 19: Expecting ':' delimiter)"),
    ("[1]\n", "line 2 is not a JSON object (got a list)"),
])
def test_resume_of_a_run_whose_log_has_a_broken_line(bad, reason, run_copy, capsys):
    log = run_copy / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + bad + "".join(lines[1:]))
    code, _, err = run_cli(["train", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, f"run log {log}: {reason}")


def test_resume_drops_a_log_line_cut_off_by_a_crash(run_copy, capsys):
    """A crash while appending leaves a last line without its newline: resume drops it and the log parses."""
    log = run_copy / "log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 99999, "lo')
    code, _, err = run_cli(["train", "--resume", "--out", run_copy], capsys)
    assert code == 0, err
    text = log.read_text()
    assert text.endswith("\n") and '"lo\n' not in text and "99999" not in text
    assert all(json.loads(line) for line in text.splitlines() if line.strip())
