"""The CUDA kernels' device code runs on the CPU in CI.

csrc/tests/test_device_code.cpp compiles the kernel headers of csrc/cuda (the code nvcc compiles) with g++ and
runs every kernel over an emulated grid (csrc/common/cuda_emulation.h); tests/test_build.py builds and runs it
with the other header tests of csrc/build.json. These tests keep that true: every kernel lives in a header the
test includes and is launched by it, and the test fails when a kernel's index arithmetic is broken.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
DEVICE_TEST = ROOT / "csrc" / "tests" / "test_device_code.cpp"

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _kernels(path: Path) -> list[str]:
    """Names of the __global__ functions defined in a CUDA source or header."""
    text = path.read_text()
    return re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", text)


def test_every_cuda_kernel_is_in_a_header_that_the_device_test_launches():
    test_text = DEVICE_TEST.read_text()
    headers = sorted(CUDA_DIR.glob("*.cuh"))
    assert headers, "no kernel headers in csrc/cuda"
    for cu in sorted(CUDA_DIR.glob("*.cu")):
        assert "__global__" not in cu.read_text(), (
            f"{cu.name} defines a kernel itself; kernels belong in a csrc/cuda/*_kernel.cuh header that "
            "csrc/tests/test_device_code.cpp runs on the emulated grid")
        assert re.search(r'#include "cuda/\w+_kernel\.cuh"', cu.read_text()), f"{cu.name} includes no kernel header"
    kernels = []
    for header in headers:
        assert f'#include "cuda/{header.name}"' in test_text, f"test_device_code.cpp does not include {header.name}"
        kernels += _kernels(header)
    assert len(kernels) >= 3
    for name in kernels:
        assert re.search(rf"run\([^;]*::{name}<", test_text, re.S), f"test_device_code.cpp never launches {name}"


def _build_and_run(tmp_path: Path, include_first: Path | None = None) -> subprocess.CompletedProcess:
    exe = tmp_path / "test_device_code"
    includes = ([f"-I{include_first}"] if include_first else []) + [f"-I{ROOT / 'csrc'}"]
    subprocess.run(["g++", "-std=c++17", "-O1", *includes, str(DEVICE_TEST), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)


@needs_gxx
@pytest.mark.parametrize("header,original,mutant", [
    # The last tile's tail: one element past the end is read and written (the guard page faults).
    ("debias_logits_kernel.cuh", "if (i < mask_numel)", "if (i <= mask_numel)"),
    # The warp reduction of the presence state stops one step early (lanes 16-31 are never merged).
    ("assign_queries_kernel.cuh", "for (int offset = kWarp / 2; offset > 0; offset >>= 1) {\n    PresenceState",
     "for (int offset = kWarp / 4; offset > 0; offset >>= 1) {\n    PresenceState"),
    # The backward's block column sum leaves out the first warp's share (the batch or queries it summed).
    ("assign_queries_kernel.cuh", "for (int w = 0; w < kWarps; ++w) total += parts[w][lane];",
     "for (int w = 1; w < kWarps; ++w) total += parts[w][lane];"),
])
def test_the_emulated_grid_catches_a_broken_kernel(tmp_path, header, original, mutant):
    """The device test is not vacuous: a one-token index bug in a kernel makes it fail."""
    text = (CUDA_DIR / header).read_text()
    assert original in text, f"{header} changed; update this mutation"
    mutated = tmp_path / "include" / "cuda"
    mutated.mkdir(parents=True)
    for other in CUDA_DIR.glob("*.cuh"):
        (mutated / other.name).write_text(other.read_text())
    (mutated / header).write_text(text.replace(original, mutant, 1))
    result = _build_and_run(tmp_path, include_first=tmp_path / "include")
    assert result.returncode != 0, "the device-code test passed a kernel with a broken index:\n" + result.stdout
