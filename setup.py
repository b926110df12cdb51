"""Build for coavs: Python packages plus the native extension ``coavs._C``.

Sources and flags come from ``csrc/build.json`` (CMakeLists.txt reads the same file).
CUDA sources are compiled whenever nvcc is found; ``COAVS_CUDA=0|1`` forces the choice.
``TORCH_CUDA_ARCH_LIST`` overrides the default architectures (sm_80, sm_90).
"""

import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CONFIG = json.loads((ROOT / "csrc" / "build.json").read_text())


def _find_cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for candidate in ("/usr/local/cuda",):
        if (Path(candidate) / "bin" / "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def _want_cuda(cuda_home):
    forced = os.environ.get("COAVS_CUDA")
    found = cuda_home is not None and (Path(cuda_home) / "bin" / "nvcc").exists()
    if forced == "0":
        return False
    if forced == "1":
        if not found:
            sys.exit("COAVS_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit")
        return True
    if forced not in (None, ""):
        sys.exit(f"COAVS_CUDA must be 0 or 1, got {forced!r}")
    return found


cuda_home = _find_cuda_home()
with_cuda = _want_cuda(cuda_home)
if with_cuda:
    # cpp_extension reads CUDA_HOME at import time.
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CONFIG["default_cuda_archs"])

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

print(f"coavs: building {CONFIG['module']} {'with CUDA for ' + os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else 'CPU only'}")

sources = list(CONFIG["cpu_sources"]) + (list(CONFIG["cuda_sources"]) if with_cuda else [])
extension_cls = CUDAExtension if with_cuda else CppExtension
define_macros = [("COAVS_WITH_CUDA", None)] if with_cuda else []
extra_compile_args = {"cxx": list(CONFIG["cxx_flags"])}
if with_cuda:
    extra_compile_args["nvcc"] = list(CONFIG["nvcc_flags"])

ext = extension_cls(
    name=CONFIG["module"],
    sources=sources,
    include_dirs=[str(ROOT / d) for d in CONFIG["include_dirs"]],
    define_macros=define_macros,
    extra_compile_args=extra_compile_args,
)


class BuildPyWithKernels(build_py):
    """Installs the Triton sources of the top-level ``kernels/`` folder as modules of ``coavs.kernels``.

    ``kernels/`` has no ``__init__.py`` (see ``coavs/kernels/__init__.py``), so it cannot be a package of its own.
    """

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "coavs.kernels":
            modules += [(package, source.stem, str(source.relative_to(ROOT)))
                        for source in sorted((ROOT / "kernels").glob("*.py"))]
        return modules


setup(
    packages=find_packages(include=["coavs", "coavs.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithKernels},
)
