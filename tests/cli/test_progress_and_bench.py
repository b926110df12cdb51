"""Where output goes: training progress in a log file is plain lines (no tqdm carriage returns), and ``coavs
bench`` writes its results into ``--out`` (default: the current folder), never into the source checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coavs.progress import PlainProgress
from tests.support.cli import REPO, run_cli
from tests.support.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_progress_into_a_log_file_is_plain_lines(workspace, tmp_path):
    config = tiny_config(workspace / "tiny", workspace / "cache", stages=[{"epochs": 2}],
                         run={"progress": True, "log_every": 3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "train.err"
    with open(log, "wb") as stderr:  # stderr is a file, not a terminal
        result = subprocess.run([sys.executable, "-m", "coavs", "train", str(tmp_path / "c.yaml"), "--out",
                                 str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=stderr, cwd=REPO)
    text = log.read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    progress = [line for line in text.splitlines() if line.startswith("train: ")]
    assert [line.split()[1] for line in progress] == ["3/8", "6/8", "8/8"], text
    assert "loss=" in progress[-1] and "(100%)" in progress[-1]


def test_plain_progress_prints_every_n_and_at_the_end(capsys):
    bar = PlainProgress(total=7, desc="x", unit="clip", every=3)
    for _ in range(7):
        bar.set_postfix(k=1)
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"] and all("k=1" in ln for ln in lines)


@pytest.fixture
def fake_checkout(tmp_path) -> Path:
    """A source checkout with one benchmark that writes where ``--out`` says."""
    root = tmp_path / "checkout"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "common.py").write_text("")
    (root / "benchmarks" / "bench_fake.py").write_text(
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser(); p.add_argument('--out', type=pathlib.Path,"
        " default=pathlib.Path(__file__).parent / 'results'); p.add_argument('--quick', action='store_true')\n"
        "a = p.parse_args(); a.out.mkdir(parents=True, exist_ok=True); (a.out / 'fake.json').write_text('{}')\n")
    return root


def test_bench_writes_into_the_current_folder_by_default(fake_checkout, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run_cli(["bench", "fake", "--quick", "--repo", fake_checkout], capsys)
    assert code == 0, err
    assert (work / "fake.json").is_file()
    assert not (fake_checkout / "benchmarks" / "results").exists()


def test_bench_writes_into_out(fake_checkout, tmp_path, capsys):
    code, _, err = run_cli(["bench", "fake", "--repo", fake_checkout, "--out", tmp_path / "res"], capsys)
    assert code == 0, err
    assert (tmp_path / "res" / "fake.json").is_file()
    assert not (fake_checkout / "benchmarks" / "results").exists()
