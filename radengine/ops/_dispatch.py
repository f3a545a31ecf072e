"""Backend selection shared by every op.

Each op has a table of implementations keyed by backend name (``reference``, ``cpu``,
``cuda``, ``triton``). The first backend of :data:`DEFAULT_ORDER` for the tensor's device
that the op has and that is available runs. ``RADENGINE_BACKEND=<name>`` (or an op's
``backend=`` argument) forces one backend and fails loudly when it cannot run.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Mapping

import torch

from radengine import _native
from radengine.errors import UserError

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Triton on CPU tensors only runs under TRITON_INTERPRET=1 (tests), so it is never a CPU
# default; on CUDA the hand-written kernel comes first.
DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}


class BackendUnavailableError(UserError, RuntimeError):
    """A backend was requested by name but cannot run here."""


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken triton install must not break radengine
        return f"triton failed to import: {exc}"
    return None


@functools.cache
def _cuda_device_error() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch (torch.cuda.is_available() is False)"
    if torch.version.hip is not None:
        return "ROCm build of torch: the CUDA kernels are NVIDIA-only"
    return None


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` tensors, or None if it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device_type != "cpu":
            return f"the cpu backend takes CPU tensors, not {device_type}"
        return _native.ERRORS.get("_cpu") if _native.cpu is None else None
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend takes CUDA tensors, not {device_type}"
        if _native.cuda is None:
            return _native.ERRORS.get("_cuda")
        return _cuda_device_error()
    if backend == "triton":
        if (err := _triton_import_error()) is not None:
            return err
        if device_type == "cpu":
            if not _triton_interpret():
                return "triton on CPU tensors needs TRITON_INTERPRET=1 (an interpreter, for tests)"
            return None
        if device_type == "cuda":
            return _cuda_device_error()
        return f"triton does not run on {device_type} tensors"
    return f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"


def requested_backend(explicit: str | None = None) -> str | None:
    """The backend forced by an op argument, else by RADENGINE_BACKEND, else None."""
    name = explicit or os.environ.get("RADENGINE_BACKEND", "").strip() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(
            f"backend {name!r} is not one of {', '.join(BACKENDS)} "
            "(check the backend= argument or RADENGINE_BACKEND)"
        )
    return name


def select(
    op: str, impls: Mapping[str, Callable], device: torch.device, explicit: str | None = None
) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` that runs for tensors on ``device``."""
    name = requested_backend(explicit)
    if name is not None:
        if name not in impls:
            raise BackendUnavailableError(
                f"{op} has no {name!r} backend (its backends: {', '.join(impls)})"
            )
        if (why := unavailable_reason(name, device.type)) is not None:
            raise BackendUnavailableError(f"{op}: backend {name!r} requested but {why}")
        return name, impls[name]
    name = default_backend(impls, device.type)
    return name, impls[name]


def default_backend(impls: Mapping[str, Callable], device_type: str) -> str:
    """The backend that runs for ``device_type`` tensors when none is forced."""
    for name in DEFAULT_ORDER.get(device_type, ()):
        if name in impls and unavailable_reason(name, device_type) is None:
            return name
    return "reference"


def status(impls: Mapping[str, Callable], device_type: str) -> dict[str, str | None]:
    """For ``radengine info``: the op's backends that can take ``device_type`` tensors, each
    with why it cannot run now (None = it can)."""
    relevant = (*DEFAULT_ORDER.get(device_type, ()), "triton")
    return {n: unavailable_reason(n, device_type) for n in impls if n in relevant}
