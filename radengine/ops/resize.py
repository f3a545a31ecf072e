"""resize: antialiased bilinear resampling of CT slices (int16 HU) and images (uint8 RGB).

Each output pixel is a normalised triangle-filter average of the input, the filter widened
by the downscale factor so that shrinking a 512x512 slice to 256 px averages instead of
aliasing (PIL's and torch's ``antialias=True`` bilinear, ``align_corners=False``). Integer
outputs are rounded half to even and clamped to the dtype's range.

Backends: ``reference`` (``torch.nn.functional.interpolate``, the oracle) and ``cpu``
(csrc/cpu/resize.cpp), which data-loader and ingest workers call on numpy buffers too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from radengine import _native
from radengine.numpy_ops import resize_array
from radengine.ops import _dispatch

DTYPES = (torch.int16, torch.uint8, torch.float32)
__all__ = ["reference_resize", "resize", "resize_array"]


def resize(x: Tensor, size: int | Sequence[int], *, backend: str | None = None) -> Tensor:
    """Resample images to ``size`` with an antialiased bilinear filter.

    Args:
        x: (B, H, W) single-channel or (B, H, W, C) channels-last images; int16, uint8 or
            float32; on CPU.
        size: output (h, w), or one int for (size, size).
        backend: force ``reference`` or ``cpu`` (else RADENGINE_BACKEND, else the fastest).

    Returns:
        (B, h, w) or (B, h, w, C), same dtype as ``x``, contiguous.

    Raises:
        ValueError: wrong dtype, rank, or a non-positive size.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be int16, uint8 or float32, got {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must have shape (B, H, W) or (B, H, W, C), got {tuple(x.shape)}")
    hw = [size, size] if isinstance(size, int) else [int(s) for s in size]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or an (h, w) pair, got {size!r}")
    if min(x.shape[1:3]) < 1:
        raise ValueError(f"x has an empty image side: shape {tuple(x.shape)}")
    return torch.ops.radengine.resize(x, hw, _dispatch.requested_backend(backend) or "")


def reference_resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """The oracle: torch's antialiased bilinear interpolation, computed in float64 (torch's
    float32 path loses up to ~1e-5 of the input range), rounded for integer dtypes."""
    channels_last = x.dim() == 4
    v = x.permute(0, 3, 1, 2) if channels_last else x.unsqueeze(1)
    y = F.interpolate(
        v.to(torch.float64), size=tuple(size), mode="bilinear", antialias=True, align_corners=False
    )
    if x.dtype != torch.float32:
        info = torch.iinfo(x.dtype)
        y = y.round().clamp(info.min, info.max)
    y = y.to(x.dtype)
    return (y.permute(0, 2, 3, 1) if channels_last else y.squeeze(1)).contiguous()


def _resize_cpu(x: Tensor, size: Sequence[int]) -> Tensor:
    x = x.contiguous()
    B, H, W = x.shape[:3]
    C = x.shape[3] if x.dim() == 4 else 1
    h, w = size
    out = torch.empty((B, h, w, *x.shape[3:]), dtype=x.dtype)
    code = _native.DTYPE_CODES[str(x.dtype).removeprefix("torch.")]
    _native.cpu.resize(
        x.data_ptr(), out.data_ptr(), B, H, W, C, h, w, code, torch.get_num_threads()
    )
    return out


IMPLS = {"reference": reference_resize, "cpu": _resize_cpu}


@torch.library.custom_op("radengine::resize", mutates_args=())
def _resize_op(x: Tensor, size: list[int], backend: str) -> Tensor:
    if x.shape[0] == 0:
        return x.new_empty((0, *size, *x.shape[3:]))
    _, impl = _dispatch.select("resize", IMPLS, x.device, backend or None)
    return impl(x, size)


@_resize_op.register_fake
def _(x, size, backend):
    return x.new_empty((x.shape[0], *size, *x.shape[3:]))
