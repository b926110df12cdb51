"""What ``coavs info`` reports: versions, devices, the extension, and every op's backends."""

from __future__ import annotations

import platform
import sys

import torch

import coavs.ops  # noqa: F401  (registers every op)
from coavs import _native
from coavs.ops import _dispatch


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as exc:  # report, never fail
        return f"unavailable ({type(exc).__name__})"


def collect() -> dict:
    """Everything ``coavs info`` prints, as a dict (also used by benchmarks to label results)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                    for i in range(torch.cuda.device_count())]
    else:
        devices.append("no CUDA device visible (cuda/triton backends cannot run here)")
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ops = {}
    for name, spec in sorted(_dispatch.REGISTRY.items()):
        ops[name] = {
            dev: {b: _dispatch.availability(spec, b, dev) for b in _dispatch.BACKENDS}
            for dev in device_types
        }
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "coavs": _version("coavs"),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "cuda_runtime": torch.version.cuda,
        "devices": devices,
        "extension": _native.load_error() or ("loaded, with CUDA kernels" if _native.built_with_cuda()
                                             else "loaded, CPU kernels only"),
        "forced_backend": _dispatch.forced_backend(),
        "ops": ops,
        "notes": {name: spec.note for name, spec in _dispatch.REGISTRY.items() if spec.note},
        "selected": {name: {dev: _dispatch.select(name, torch.device(dev)) if not _dispatch.forced_backend() else
                            _dispatch.forced_backend() for dev in device_types} for name in ops},
    }


def format_report(info: dict) -> str:
    lines = [
        f"coavs {info['coavs']}  python {info['python']}  torch {info['torch']}  triton {info['triton']}  "
        f"numpy {info['numpy']}  cuda runtime {info['cuda_runtime']}",
        f"platform: {info['platform']}",
        f"devices: {', '.join(info['devices'])}",
        f"extension coavs._C: {info['extension']}",
        f"forced backend (COAVS_BACKEND): {info['forced_backend'] or 'none'}",
        "",
        "op backends (+ available, - not available: why)",
    ]
    for name, per_device in info["ops"].items():
        for dev, backends in per_device.items():
            lines.append(f"  {name} on {dev}  -> uses {info['selected'][name][dev]}")
            if info["notes"].get(name):
                lines.append(f"    note: {info['notes'][name]}")
            for backend, (ok, reason) in backends.items():
                lines.append(f"    {'+' if ok else '-'} {backend:<9} {reason}")
    return "\n".join(lines)
