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


def _importable_names_at_root() -> set[str]:
    """Top-level names a Python started in the checkout's root can import from it: regular packages
    (folders with ``__init__.py``) and modules. A folder without ``__init__.py`` is at most a namespace portion,
    which never wins over an installed package of the same name."""
    names = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in ROOT.glob("*.py")}
    return names


def test_kernels_folder_is_not_a_regular_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the checkout's kernels/ a regular package that shadows Hugging Face's "
        "`kernels` (imported by transformers) for every Python started in the checkout; see coavs/kernels/__init__.py")


def test_the_checkout_shadows_no_installed_distribution():
    import importlib.metadata
    providers = importlib.metadata.packages_distributions()
    clashes = {name: providers[name] for name in _importable_names_at_root()
               if name in providers and set(providers[name]) != {"coavs"}}
    assert not clashes, f"names importable from the checkout's root shadow installed distributions: {clashes}"


def test_the_checkout_shadowing_check_sees_a_regular_package(tmp_path, monkeypatch):
    fake_root = tmp_path / "checkout"
    (fake_root / "kernels").mkdir(parents=True)
    (fake_root / "kernels" / "__init__.py").write_text("")
    (fake_root / "notes").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert _importable_names_at_root() == {"kernels"}


def test_coavs_kernels_come_from_the_top_level_folder():
    import coavs.kernels.debias_logits as module
    assert Path(module.__file__).resolve().parent == ROOT / "kernels"


def test_transformers_mask2former_imports_from_the_checkout_root():
    """transformers 5.25 imports Hugging Face's ``kernels`` when it finds one; a Python started in the root (as
    pytest and ``python -m`` are) must find the installed distribution, not the checkout's folder."""
    pytest.importorskip("transformers")
    code = ("import kernels, sys; from transformers import Mask2FormerForUniversalSegmentation; "
            "print(getattr(kernels, '__file__', None))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    origin = result.stdout.strip().splitlines()[-1]
    assert origin == "None" or Path(origin).resolve().parent != ROOT / "kernels", origin
