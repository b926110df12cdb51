"""The build description: one source list, every source listed, shared arithmetic checked in plain C++."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.loads((ROOT / "csrc" / "build.json").read_text())


def test_every_native_source_is_listed_once_and_exists():
    listed = CONFIG["cpu_sources"] + CONFIG["cuda_sources"]
    assert len(listed) == len(set(listed)), "a source is listed twice in csrc/build.json"
    for src in listed + CONFIG["header_tests"]:
        assert (ROOT / src).is_file(), f"csrc/build.json lists {src}, which does not exist"
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu")}
    unlisted = on_disk - set(listed) - set(CONFIG["header_tests"])
    assert not unlisted, f"sources not in csrc/build.json (not built): {sorted(unlisted)}"


def test_cpp_and_cu_sources_do_not_share_a_basename():
    stems = [Path(s).stem for s in CONFIG["cpu_sources"] + CONFIG["cuda_sources"]]
    assert len(stems) == len(set(stems))


def test_cmake_and_setup_read_the_same_list():
    assert "csrc/build.json" in (ROOT / "CMakeLists.txt").read_text()
    assert '"csrc" / "build.json"' in (ROOT / "setup.py").read_text()


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("test_source", CONFIG["header_tests"])
def test_shared_host_device_arithmetic(tmp_path, test_source):
    exe = tmp_path / Path(test_source).stem
    include = [f"-I{ROOT / d}" for d in CONFIG["include_dirs"]]
    subprocess.run(["g++", "-std=c++17", "-O1", *include, str(ROOT / test_source), "-o", str(exe)], check=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_coavs_info_runs_and_lists_backends():
    out = subprocess.run([sys.executable, "-m", "coavs", "info"], capture_output=True, text=True, check=True).stdout
    assert "torch 2." in out and "debias_logits on cpu" in out and "native" in out
