"""Process-group setup for torchrun (single node with ``--standalone``, multi-node with a
c10d rendezvous) and the few collectives the trainer needs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
job is one process and nothing is initialised. NCCL is used on CUDA, gloo on CPU. Joining
says what it waits for and fails after ``dist.timeout_min`` with a message naming that key,
so a missing or frozen rank is an error in minutes, not a silent hang (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from radengine.config import ConfigError, DistConfig
from radengine.errors import UserError

__all__ = [
    "DistInfo",
    "DistributedError",
    "all_reduce_max",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "setup",
]


class DistributedError(UserError, RuntimeError):
    """The process group could not form (a rank missing, frozen or unreachable), or a
    collective failed mid-run (``broken``): then the group is unusable, and its C++ teardown
    (gloo's threads, at ``destroy_process_group`` or at interpreter exit) can abort the process
    with a dying peer, so the CLI ends such a process at once after its message
    (``os._exit(2)``) and :func:`cleanup` does not destroy the group."""

    def __init__(self, message: str, *, broken: bool = False) -> None:
        super().__init__(message)
        self.broken = broken


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


def setup(
    device: str = "auto",
    timeout_min: float = DistConfig.timeout_min,
    echo: Callable[[str], None] | None = None,
) -> DistInfo:
    """Join the torchrun job described by the environment (or run as one process).

    Args:
        device: ``train.device`` (see :func:`resolve_device`).
        timeout_min: ``dist.timeout_min``, how long joining and every later collective may
            wait for the other ranks before failing.
        echo: where the progress lines go (default: stderr). The first process of each
            node says what it waits for; rank 0 says when the group is ready.

    Raises:
        DistributedError: the group did not form within ``timeout_min`` (the message
            names the address waited on and the key to raise).
        ConfigError: a bad device, a non-positive timeout, or WORLD_SIZE > 1 without the
            rendezvous address torchrun sets.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if not timeout_min > 0:
        raise ConfigError(f"config key 'dist.timeout_min' must be > 0 minutes, got {timeout_min}")
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if not addr or not port:
        raise ConfigError(
            f"WORLD_SIZE={world} but MASTER_ADDR and MASTER_PORT are not both set: start "
            "distributed runs with torchrun (see docs/distributed.md)"
        )
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if local_rank == 0:  # one line per node: its processes all wait on the same address
        say(
            f"waiting for {world} processes to join at {addr}:{port} (rank {rank} of {world}, "
            f"timeout {timeout_min:g} min: dist.timeout_min)"
        )
        note = _unreachable_master_note(addr, world)
        if note:
            say(note)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    start = time.monotonic()
    try:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=timeout_min),
            device_id=dev if dev.type == "cuda" else None,
        )
    except RuntimeError as exc:  # DistStoreError, DistNetworkError, gloo/NCCL errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise DistributedError(
            f"the process group did not form: rank {rank} of {world} waited at "
            f"{addr}:{port} for up to dist.timeout_min={timeout_min:g} min ({first}). "
            "Check that every rank was started (torchrun on every node, the same --nnodes, "
            "--rdzv-endpoint and --rdzv-id), that every node reaches that address (multi-node: "
            "--local-addr, GLOO_SOCKET_IFNAME or NCCL_SOCKET_IFNAME; see docs/distributed.md), "
            "or raise dist.timeout_min"
        ) from None
    if rank == 0:
        say(f"process group ready: {world} ranks in {time.monotonic() - start:.1f} s ({backend})")
    return DistInfo(rank, world, local_rank, dev, True)


def _unreachable_master_note(addr: str, world: int) -> str | None:
    """A warning when a job spanning several nodes points its ranks at a loopback address.

    torchrun hands every worker the rank-0 node's ``--local-addr``, or its fully qualified
    hostname when that flag is missing, which is ``localhost`` where /etc/hosts maps the
    hostname to 127.0.0.1: the other nodes then connect to themselves and wait until the
    timeout. A name is checked only on the other nodes (node 0 may resolve its own name to
    loopback while the others resolve it right); a loopback literal is wrong everywhere. All
    "nodes" may share one machine, where loopback works, so this warns rather than fails.
    """
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if local_world >= world:
        return None
    literal = addr == "localhost" or _loopback_literal(addr)
    if not literal and (_env_int("GROUP_RANK", 0) == 0 or not _resolves_to_loopback(addr)):
        return None
    return (
        f"warning: MASTER_ADDR {addr} is a loopback address here but only {local_world} of the "
        f"{world} processes run on this node: processes on other machines cannot reach it. "
        "Start torchrun with --local-addr <this node's address on the network the nodes "
        "share> on every node (docs/distributed.md)"
    )


def _loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolves_to_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # unresolvable: init_process_group reports it
    return bool(infos) and all(_loopback_literal(str(i[4][0])) for i in infos)


def cleanup(info: DistInfo, *, broken: bool = False) -> None:
    """Destroy the process group this process made, unless a collective broke it."""
    if info.initialised_here and dist.is_initialized() and not broken:
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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
