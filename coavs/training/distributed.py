"""``torchrun`` support: process-group set-up (NCCL on GPU, gloo on CPU), rank helpers, metric all-reduce."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported here, while no process group exists, on purpose: this module's functions take ``group=group.WORLD`` as a
# default argument, evaluated at its first import. DistributedDataParallel imports it (through torch._dynamo) when
# the first DDP model is built, after the group exists, and then ten default arguments hold the default group for
# good: ``destroy_process_group`` cannot end it, its gloo threads outlive the training and are destroyed during
# interpreter shutdown, where one process in a few died with "terminate called without an active exception"
# (SIGABRT) after a finished run (issue 25). Imported first, the defaults are None (the default group at call time).
import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Joins the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); picks the device.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Ends the process group, so that its backend's threads end here rather than during interpreter shutdown.

    The caller drops its DDP models first: a DDP model (its reducer) holds the group, and a model caught in a
    reference cycle lives until a garbage collection, hence the collection here. See also the import of
    ``torch.distributed.nn.functional`` above."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
