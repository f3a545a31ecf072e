"""Small pieces the evaluation protocols share: the error type, device and precision
choice, deterministic hashing and seeding."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from radengine.errors import UserError

__all__ = [
    "EvalError",
    "amp_dtype",
    "autocast",
    "module_digest",
    "resolve_device",
    "stable_hash",
    "sub_seed",
]


class EvalError(UserError, RuntimeError):
    """An evaluation that cannot run; the message says what is wrong and what to do."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvalError(f"device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). ``auto``: bf16 on CUDA and on CPUs that compute
    bf16 natively (AVX512-BF16/AMX), else fp32 (as pretraining chooses)."""
    if precision == "auto":
        from radengine.engine.setup import cpu_has_native_bf16

        native = device.type == "cuda" or cpu_has_native_bf16()
        precision = "bf16" if native else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def stable_hash(*parts: object) -> str:
    """SHA-256 hex of the parts' ``repr``: a cache key that is the same in every process."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def sub_seed(seed: int, *salt: object) -> int:
    """A 62-bit seed derived from ``seed`` and a salt (independent streams per purpose)."""
    digest = hashlib.sha256(repr((seed, *salt)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**62 - 1)


def module_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes): identifies the
    exact weights, e.g. to key the feature cache."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, restoring its mode afterwards."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
