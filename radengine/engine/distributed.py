"""Process-group setup for torchrun (single node with ``--standalone``, multi-node with a
c10d rendezvous) and the few collectives the trainer needs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
job is one process and nothing is initialised. NCCL is used on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from radengine.config import ConfigError

__all__ = ["DistInfo", "all_reduce_mean", "broadcast_object", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool  # we created the process group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(
            f"train.device must be auto, cpu, cuda or cuda:N, got {requested!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA GPU is available; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def setup(device: str = "auto", timeout_min: float = 30.0) -> DistInfo:
    """Join the torchrun job described by the environment (or run as one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(minutes=timeout_min),
        device_id=dev if dev.type == "cuda" else None,
    )
    return DistInfo(rank, world, local_rank, dev, True)


def cleanup(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (a copy; ``t`` itself when single-process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
