"""Catch device-to-host reads and count device launches in an op's Python path, on the CPU.

On a GPU, a host read (``.item()``, ``bool(t)``, ``torch.equal``, ``.tolist()``, ``.cpu()``, boolean indexing,
``nonzero``, a tensor built from Python data, ...) waits for the device queue to drain: it costs a round trip per
call, breaks CUDA-graph capture and stalls the launch pipeline. On the CPU the same calls are cheap and silent, so
this module makes them visible while an op runs on CPU tensors:

- a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ATen op the Python path dispatches. Ops
  that return host values or need the data to know their output's shape are *host reads* (:data:`HOST_READ_OPS`;
  ``index``/``index_put_`` only with boolean indices); every other op that is not a view, an allocation or a
  metadata query counts as one *device launch* (on a GPU each is a kernel or a copy);
- ``Tensor.tolist``/``numpy``/``__array__``/``cpu`` and ``to(<cpu device>)`` are patched for the duration
  (on CPU tensors they never reach the dispatcher);
- each Triton launch (a JIT or interpreted kernel's ``run``) counts as one launch, and the Triton interpreter's
  own host work (it copies the arguments to NumPy and back) is not attributed to the op;
- coavs's own Python custom ops (``torch.ops.coavs.*``) are entered with the mode still active, so what their
  implementations do is seen too; a C++ op (``torch.ops.coavs_C.*``) counts as one launch.

Usage::

    with HostSyncCheck() as check:
        out = op(...)
        out.sum().backward()
    assert not check.host_reads, check.report()
    check.launches  # {"aten": n, "triton": n, "native": n}
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ATen ops that read device data on the host: a Python scalar out, or an output shape that depends on values.
HOST_READ_OPS = {
    "aten::_local_scalar_dense",  # .item(), int(t), float(t), bool(t), if t: ...
    "aten::is_nonzero",
    "aten::equal",  # torch.equal
    "aten::allclose",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",
    "aten::lift_fresh",  # torch.tensor(<Python data>): a host-to-device copy, which synchronises on a GPU
    "aten::lift_fresh_copy",
}
# Ops that launch nothing on a device: views, allocations without a fill, metadata.
NO_LAUNCH_OPS = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::as_strided", "aten::expand", "aten::permute",
    "aten::transpose", "aten::t", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::detach",
    "aten::alias", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::narrow",
    "aten::diagonal", "aten::unfold", "aten::view_as_real", "aten::view_as_complex", "aten::_conj", "aten::_neg_view",
    "aten::resolve_conj", "aten::resolve_neg", "aten::scalar_tensor", "aten::sym_size", "aten::sym_stride",
    "aten::sym_numel", "aten::sym_storage_offset", "aten::is_same_size", "aten::_has_compatible_shallow_copy_type",
    "aten::set_", "aten::resize_", "aten::lift_fresh", "aten::lift_fresh_copy", "aten::_local_scalar_dense",
    "aten::is_nonzero", "aten::equal", "aten::allclose", "aten::detach_",
}

_state = threading.local()


def _active() -> "HostSyncCheck | None":
    check = getattr(_state, "check", None)
    return check if check is not None and check.paused == 0 else None


@dataclass
class HostRead:
    what: str
    where: str


@dataclass
class HostSyncCheck:
    """Context manager: records host reads and counts launches of the code run inside (one thread)."""

    host_reads: list[HostRead] = field(default_factory=list)
    launches: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)  # launch ops by name, for reports
    paused: int = 0

    # ------------------------------------------------------------------ recording
    def record_read(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "host_sync.py" not in f.filename]
        where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames[-4:][::-1])
        self.host_reads.append(HostRead(what, where))

    def record_launch(self, kind: str, name: str) -> None:
        self.launches[kind] += 1
        self.ops[name] += 1

    @property
    def total_launches(self) -> int:
        return sum(self.launches.values())

    def report(self) -> str:
        lines = [f"{len(self.host_reads)} host read(s):"]
        lines += [f"  {r.what}  at {r.where}" for r in self.host_reads[:20]]
        return "\n".join(lines)

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    # ------------------------------------------------------------------ entering
    def __enter__(self) -> "HostSyncCheck":
        if getattr(_state, "check", None) is not None:
            raise RuntimeError("HostSyncCheck does not nest")
        _state.check = self
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(_patched_tensor_methods())
        self._stack.enter_context(_patched_triton())
        self._mode = _DispatchRecorder(self)
        self._stack.enter_context(self._mode)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            _state.check = None


# ---------------------------------------------------------------------------------------------- dispatch
def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _crosses_devices(func, args, kwargs) -> bool:
    """A copy between devices (``_to_copy``/``copy_`` with another device)."""
    name = func._schema.name
    if name == "aten::_to_copy":
        device = kwargs.get("device")
        return device is not None and torch.device(device) != args[0].device
    if name == "aten::copy_":
        return args[0].device != args[1].device
    return False


class _DispatchRecorder(TorchDispatchMode):
    def __init__(self, check: HostSyncCheck):
        super().__init__()
        self.check = check

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if self.check.paused:
            return func(*args, **kwargs)
        if name in HOST_READ_OPS:
            self.check.record_read(name)
        elif name in ("aten::index", "aten::_index_put_impl_", "aten::index_put", "aten::index_put_") and \
                _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices")):
            self.check.record_read(f"{name} with a boolean index (nonzero)")
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None and len(args) <= 1:
            self.check.record_read("aten::repeat_interleave without output_size")
        elif _crosses_devices(func, args, kwargs):
            self.check.record_read(f"{name} across devices")
        namespace = func.namespace
        if func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            # A composite (``to``, ``item``, ``contiguous``, ...): count what it decomposes into, not itself.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        if namespace == "coavs":
            # coavs's own Python custom ops: run their implementation with this mode still active.
            opdef = custom_ops.OPDEFS.get(name)
            if opdef is not None:
                self.check.ops[name] += 0  # seen, not itself a launch
                with self:
                    return opdef._init_fn(*args, **kwargs)
        result = func(*args, **kwargs)
        if namespace == "coavs_C":
            self.check.record_launch("native", name)
        elif name not in NO_LAUNCH_OPS and _computes_something(result, args):
            self.check.record_launch("aten", name)
        return result


def _computes_something(result, args) -> bool:
    """False when every tensor the op wrote is empty: a GPU launches nothing for that (TensorIterator returns
    early). In-place ops return their (first) argument."""
    tensors = [t for t in (result if isinstance(result, (tuple, list)) else [result]) if isinstance(t, torch.Tensor)]
    if not tensors:
        return True
    return any(t.numel() > 0 for t in tensors)


# ---------------------------------------------------------------------------------------------- patches
@contextlib.contextmanager
def _patched_tensor_methods():
    Tensor = torch.Tensor
    saved = {name: getattr(Tensor, name) for name in ("tolist", "numpy", "__array__", "cpu", "to")}

    def reading(name):
        original = saved[name]

        def method(self, *args, **kwargs):
            check = _active()
            if check is not None:
                check.record_read(f"Tensor.{name}()")
                with check.pause():
                    return original(self, *args, **kwargs)
            return original(self, *args, **kwargs)
        return method

    def to(self, *args, **kwargs):
        check = _active()
        if check is not None:
            target = kwargs.get("device")
            for a in args:
                if isinstance(a, (str, torch.device)):
                    target = a
            if target is not None and torch.device(target).type == "cpu" and self.device.type != "meta":
                check.record_read("Tensor.to(cpu)")
        return saved["to"](self, *args, **kwargs)

    try:
        for name in ("tolist", "numpy", "__array__", "cpu"):
            setattr(Tensor, name, reading(name))
        Tensor.to = to
        yield
    finally:
        for name, original in saved.items():
            setattr(Tensor, name, original)


@contextlib.contextmanager
def _patched_triton():
    """Counts Triton launches (one per kernel ``run``) and hides the interpreter's host work."""
    try:
        from triton.runtime import autotuner, interpreter, jit
    except ImportError:
        yield
        return
    targets = [(jit.JITFunction, "run"), (interpreter.InterpretedFunction, "run"), (autotuner.Autotuner, "run")]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in targets if name in cls.__dict__]

    def wrap(original):
        def run(self, *args, **kwargs):
            check = _active()
            if check is None:
                return original(self, *args, **kwargs)
            if kwargs.get("warmup"):
                return original(self, *args, **kwargs)
            kernel = getattr(getattr(self, "fn", None), "__name__", type(self).__name__)
            check.record_launch("triton", f"triton::{kernel}")
            with check.pause():  # an autotuner's inner runs and the interpreter's copies are not the op's
                return original(self, *args, **kwargs)
        return run

    try:
        for cls, name, original in saved:
            setattr(cls, name, wrap(original))
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)
