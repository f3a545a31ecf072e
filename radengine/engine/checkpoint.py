"""Atomic training checkpoints and exact resume.

A checkpoint is one file ``step-<8 digits>.pt`` in the run's ``checkpoints/`` folder,
written to a temporary name in the same folder, fsynced and renamed, so a kill at any moment
leaves either the old set or the old set plus a complete new file, never a torn one. It
holds everything that decides the rest of the run: model, optimizer, schedule and grad
scaler states, the step and data position, every RNG state and the resolved config (which
a resume is checked against). ``latest`` skips unreadable files (e.g. a disk that lied
about fsync) with a warning, falling back to the previous checkpoint.

A write that fails (no space left, quota, permissions) removes its temporary file and raises
:class:`CheckpointError` naming the file (and, for a full disk, the space it needs), so the
previous checkpoints stay the run's last good state and nothing half-written is left behind.
When the disk has no room for a new checkpoint next to the keep-set, the checkpoints it
makes surplus are deleted first (:func:`save`), so a run needs room for ``keep`` of them.

The checkpoint written at the end of a run's schedule does not repeat the encoder's weights:
they are in the run's ``encoder.pt`` (written first), and the checkpoint names that file
(``encoder_file``, relative to the run folder) and the prefix of its keys in the model
(``encoder_prefix``). :func:`load` puts them back, so every reader sees a whole model; a
checkpoint whose encoder.pt is gone is unusable and says so (``latest`` then falls back to
the previous checkpoint).
"""

from __future__ import annotations

import errno
import io
import math
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radengine.data.store import atomic_write_bytes
from radengine.errors import UserError, describe_os_error

__all__ = [
    "CheckpointError",
    "atomic_write",
    "attach_encoder",
    "find",
    "latest",
    "load",
    "rng_state",
    "save",
    "set_rng_state",
    "state_bytes",
]

_NAME = re.compile(r"^step-(\d{8,})\.pt$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def path_for(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def find(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save(folder: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as ``folder/step-<step>.pt``; keep the newest ``keep``.

    The checkpoints the new one makes surplus (beyond the newest ``keep - 1``) are deleted
    before it is written when the disk has no room for it next to them (free space checked
    first, and again on a write that fails for space), so a run needs room for its keep-set,
    not for the keep-set plus one. The newest existing checkpoint is never deleted before
    the new one is complete, whatever ``keep`` is: a kill mid-write must leave one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    path = path_for(folder, step)
    older = [p for p in find(folder) if p != path]
    surplus = older[: max(0, len(older) - max(1, keep - 1))]
    if surplus and not _fits(folder, len(data)):
        _remove(surplus)
        surplus = []
    try:
        atomic_write(path, data)
    except CheckpointError as exc:
        # free space is not always what statvfs says (quotas, reserved blocks)
        cause = exc.__cause__
        if not surplus or getattr(cause, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _remove(surplus)
        atomic_write(path, data)
    for old in find(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


# Room left beside a new checkpoint: the file system's own metadata, the directory entry.
_SLACK = 1 << 20


def _fits(folder: Path, size: int) -> bool:
    try:
        return shutil.disk_usage(folder).free >= size + _SLACK
    except OSError:
        return True  # unknown: try the write; a failure for space prunes and retries


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary file next to ``path``, are fsynced and renamed over it. On
    any failure the temporary file is removed; an OSError becomes a CheckpointError naming
    ``path`` (with the bytes needed and free for a full disk or quota)."""
    path = Path(path)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise CheckpointError(_write_failure(path, exc, len(data))) from exc


def _write_failure(path: Path, exc: OSError, size: int) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        try:
            free = f", {_size(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = ""
        return (
            f"could not write {path}: {what} (it needs {_size(size)}{free}); free space "
            f"in {path.parent} or choose another train.out, then continue with --resume "
            "(earlier checkpoints are kept)"
        )
    named = OSError(exc.errno, exc.strerror or str(exc), str(path))
    return f"could not write {describe_os_error(named)}"


def _size(n: int) -> str:
    """``n`` bytes for people: 512 bytes, 3.2 MiB, 1.5 GiB."""
    if n < 1024:
        return f"{n} bytes"
    power = min(3, int(math.log(n, 1024)))
    return f"{n / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def state_bytes(module: torch.nn.Module) -> bytes:
    """``module``'s state dict, detached and on the CPU, as ``torch.save`` bytes (encoder.pt)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; CheckpointError naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "unusable"
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "delete it to resume from the previous one"
        ) from exc
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a radengine training checkpoint")
    if state.get("encoder_file"):
        attach_encoder(state, path.parent.parent / state["encoder_file"], path)
    return state


def attach_encoder(state: dict[str, Any], encoder: str | Path, path: str | Path) -> None:
    """Put the encoder's weights, kept in ``encoder`` (the run's encoder.pt), back into the
    model of checkpoint ``state`` (read from ``path``), in place."""
    encoder = Path(encoder)
    if not encoder.is_file():
        raise CheckpointError(
            f"checkpoint {path} keeps its encoder's weights in {encoder}, which is missing; "
            "copy or keep the run folder whole (encoder.pt next to checkpoints/)"
        )
    try:
        weights = torch.load(encoder, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{encoder}, which holds the encoder of checkpoint {path}, cannot be read "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    prefix = state.pop("encoder_prefix", "")
    state.pop("encoder_file", None)
    if not isinstance(weights, dict):
        raise CheckpointError(f"{encoder} is not an encoder state dict")
    state["model"] = {**{prefix + k: v for k, v in weights.items()}, **state["model"]}


def latest(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``folder`` (None if there is none)."""
    for path in reversed(find(folder)):
        try:
            return path, load(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches: Python, numpy, torch CPU and CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _numpy_state() -> tuple[Any, ...]:
    # As tensors and numbers so the file loads with weights_only=True.
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)
