"""How every launcher in ``kernels/`` starts a Triton kernel, so that ``torch.compile`` can see it.

The ops of ``coavs.ops`` are ``torch.library.triton_op`` s (see ``coavs.ops._dispatch.define_op``): under
``torch.compile`` their implementation is traced on fake tensors, and a Triton kernel called there must go
through ``torch.library.wrap_triton`` to land in the graph (Inductor then calls it directly, and CUDA graphs
capture it). On real tensors (eager) and under the interpreter the kernel is called as it is.
"""

from __future__ import annotations

import os

import torch


def _traced(t) -> bool:
    """A tensor subclass (fake, functional, proxy): the call is being traced, not run."""
    return isinstance(t, torch.Tensor) and type(t) not in (torch.Tensor, torch.nn.Parameter)


def launcher(kernel, *tensors):
    """``kernel`` itself, or ``torch.library.wrap_triton(kernel)`` when ``tensors`` are being traced."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or not any(_traced(t) for t in tensors):
        return kernel
    return torch.library.wrap_triton(kernel)
