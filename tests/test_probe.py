"""The probe of bad and edge inputs (tests/support/probe.py; issue 24): every data, config, training-fault and
command-line case is refused as one clear error or gives the right result, and every ops case (masked attention's
mask safety and the NaN/Inf gradient policy of every op, in forked children) matches its reference."""

from __future__ import annotations

import pytest

from tests.support.probe import run_probe, summary

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_every_probe_case_is_handled(tmp_path, monkeypatch):
    monkeypatch.setenv("COAVS_CACHE", str(tmp_path / "cache"))
    results = run_probe(("data", "config", "training", "cli"), root=tmp_path)
    failed = [f"{r['status']} {r['group']}: {r['case']}: {r['detail']}" for r in results if r["status"] != "ok"]
    assert len(results) >= 350, summary(results)
    assert not failed, summary(results) + "\n" + "\n".join(failed)


def test_every_ops_case_is_handled(tmp_path, monkeypatch):
    monkeypatch.setenv("COAVS_CACHE", str(tmp_path / "cache"))
    results = run_probe(("ops",), root=tmp_path)
    failed = [f"{r['status']} {r['group']}: {r['case']}: {r['detail']}" for r in results if r["status"] != "ok"]
    assert len(results) >= 18, summary(results)
    assert not failed, summary(results) + "\n" + "\n".join(failed)
