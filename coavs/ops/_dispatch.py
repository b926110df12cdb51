"""Backend choice for every op in ``coavs.ops`` (the only module that knows about backends).

Backends:
  reference  plain PyTorch (coavs/ops/reference.py), any device
  native     C++ kernel on CPU tensors (coavs._C)
  cuda       CUDA kernel on CUDA tensors (coavs._C built with nvcc)
  triton     Triton kernel on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (tests)

Default: CPU tensors go to the op's CPU order (native, then reference), CUDA tensors to its GPU order.
``COAVS_BACKEND=<name>`` or ``with coavs.ops.use_backend(name):`` forces one; a forced backend that is not
available for the op and device raises ``BackendUnavailable`` instead of falling back.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from coavs import _native

BACKENDS = ("reference", "native", "triton", "cuda")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("coavs_backend", default=None)


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run this op on this device."""


@dataclass
class OpSpec:
    """What an op implements. ``impls`` maps backend name to the callable that runs it."""

    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    cpu_order: tuple[str, ...] = ("native", "reference")
    gpu_order: tuple[str, ...] = ("cuda", "triton", "reference")
    native_op: str | None = None  # name in torch.ops.coavs_C needed by "native" and "cuda"
    note: str = ""  # shown by `coavs info`, e.g. why an op has no native kernel


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    REGISTRY[spec.name] = spec
    return spec


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken triton install must not break the package
        return f"triton failed to import: {exc}"
    return None


def availability(spec: OpSpec, backend: str, device_type: str) -> tuple[bool, str]:
    """(available, reason) for running ``spec`` with ``backend`` on tensors of ``device_type``."""
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    if backend not in spec.impls:
        return False, f"coavs.{spec.name} has no {backend} implementation"
    if backend == "reference":
        return True, "plain PyTorch"
    if backend in ("native", "cuda") and spec.native_op is not None:
        if _native.load_error() is not None:
            return False, _native.load_error()
        if not _native.has_op(spec.native_op):
            return False, f"coavs._C has no kernel coavs_C::{spec.native_op} (stale build? reinstall)"
    if backend == "native":
        if device_type != "cpu":
            return False, "the native backend runs CPU tensors"
        return True, "C++ CPU kernel" if spec.native_op else "CPU path in PyTorch, no coavs C++ kernel (see note)"
    if backend == "cuda":
        if device_type != "cuda":
            return False, "the cuda backend runs CUDA tensors"
        if spec.native_op is not None and not _native.built_with_cuda():
            return False, "coavs._C was built without CUDA (nvcc not found at build time, or COAVS_CUDA=0)"
        return True, "CUDA kernel"
    # triton
    err = triton_import_error()
    if err:
        return False, err
    if device_type == "cuda":
        return True, "Triton kernel"
    if device_type == "cpu" and triton_interpreting():
        return True, "Triton kernel under TRITON_INTERPRET=1"
    return False, f"Triton runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {device_type}"


def forced_backend() -> str | None:
    forced = _forced.get() or os.environ.get("COAVS_BACKEND") or None
    if forced is not None and forced not in BACKENDS:
        raise BackendUnavailable(f"COAVS_BACKEND={forced!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return forced


def select(name: str, device: torch.device) -> str:
    """The backend that runs op ``name`` on ``device`` now."""
    spec = REGISTRY[name]
    forced = forced_backend()
    if forced is not None:
        ok, reason = availability(spec, forced, device.type)
        if not ok:
            raise BackendUnavailable(f"backend {forced!r} was forced for coavs.{name} on {device}, but {reason}")
        return forced
    order = spec.gpu_order if device.type == "cuda" else spec.cpu_order
    for backend in order:
        if availability(spec, backend, device.type)[0]:
            return backend
    return "reference"


def run(name: str, device: torch.device, *args, **kwargs):
    """Runs op ``name`` with the backend chosen for ``device``."""
    return REGISTRY[name].impls[select(name, device)](*args, **kwargs)


def define_op(qualname: str, fn: Callable, mutates_args=()):
    """The ``torch.library`` custom op of one coavs op, implemented by ``fn`` (which calls :func:`run`).

    Where Triton compiles real kernels it is a ``torch.library.triton_op``: eager calls run ``fn``;
    ``torch.compile`` traces ``fn`` on fake tensors, so the graph holds the Triton kernels themselves
    (``kernels/_launch.py`` wraps them with ``wrap_triton`` while traced: Inductor calls them directly and CUDA
    graphs capture them) or, on other backends, their ATen or ``coavs_C`` ops. ``fn`` therefore never reads
    tensor values on the host (``tests/ops/test_host_sync.py``). Under ``TRITON_INTERPRET=1`` (CPU tests) the
    interpreter cannot be traced, so the op is an opaque ``custom_op`` there. Fake kernels registered afterwards
    (``register_fake``) override the traced implementation for shape propagation.
    """
    if triton_interpreting() or triton_import_error() is not None:
        return torch.library.custom_op(qualname, fn, mutates_args=mutates_args)
    return torch.library.triton_op(qualname, fn, mutates_args=mutates_args)


@contextlib.contextmanager
def use_backend(backend: str | None):
    """Forces ``backend`` for every op inside the block (None restores automatic choice)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    token = _forced.set(backend)
    try:
        yield
    finally:
        _forced.reset(token)
