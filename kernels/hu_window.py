"""hu_window in Triton. Math: radengine/ops/hu_window.py (reference_hu_window).

Each program takes BLOCK pixels of one image and writes all C channels as one
(BLOCK, CP) tile, CP = C rounded up to a power of two (masked). With channels_last the tile
is contiguous in memory; with NCHW it is CP contiguous runs of BLOCK. Traffic: the int16
input read once (twice in min-max mode, where ``_image_range_kernel`` first reduces each
image's range with atomics) and the output written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _image_range_kernel(x_ptr, ranges_ptr, HW, B, BLOCK: tl.constexpr):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    v = tl.load(x_ptr + b * HW + offs, mask=mask, other=0).to(tl.int32)
    tl.atomic_min(ranges_ptr + b, tl.min(tl.where(mask, v, 2147483647), axis=0))
    tl.atomic_max(ranges_ptr + B + b, tl.max(tl.where(mask, v, -2147483648), axis=0))


@triton.jit
def _hu_window_kernel(
    x_ptr,
    out_ptr,
    params_ptr,  # float32 (4, C): lo, 1/(hi-lo), 1/std, -mean/std
    ranges_ptr,  # int32 (2, B) per-image min and max, read when MINMAX
    HW,
    B,
    stride_ob,
    stride_oc,
    stride_op,
    C: tl.constexpr,
    CP: tl.constexpr,
    MINMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < HW
    chans = tl.arange(0, CP)
    cmask = chans < C
    x = tl.load(x_ptr + b.to(tl.int64) * HW + offs, mask=pmask, other=0).to(tl.float32)
    if MINMAX:
        vmin = tl.load(ranges_ptr + b).to(tl.float32)
        vmax = tl.load(ranges_ptr + B + b).to(tl.float32)
        lo = tl.zeros((CP,), tl.float32) + vmin
        # Spans are whole numbers, so max(span, 1) only avoids computing 1/0 for constants.
        span = tl.maximum(vmax - vmin, 1.0)
        inv = tl.zeros((CP,), tl.float32) + tl.where(vmax > vmin, 1.0 / span, 0.0)
    else:
        lo = tl.load(params_ptr + chans, mask=cmask, other=0.0)
        inv = tl.load(params_ptr + C + chans, mask=cmask, other=0.0)
    scale = tl.load(params_ptr + 2 * C + chans, mask=cmask, other=0.0)
    shift = tl.load(params_ptr + 3 * C + chans, mask=cmask, other=0.0)
    y = (x[:, None] - lo[None, :]) * inv[None, :]
    y = tl.minimum(tl.maximum(y, 0.0), 1.0)
    y = y * scale[None, :] + shift[None, :]
    ptrs = (
        out_ptr
        + b.to(tl.int64) * stride_ob
        + offs[:, None].to(tl.int64) * stride_op
        + chans[None, :] * stride_oc
    )
    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


def hu_window(
    x: torch.Tensor,
    out: torch.Tensor,
    params: torch.Tensor,
    per_image_minmax: bool,
    block: int = 1024,
) -> None:
    """x: contiguous int16 (B, H, W); out: (B, C, H, W) in any layout whose H, W flatten
    to one stride (contiguous or channels_last); params: float32 (4, C) on x's device."""
    B, H, W = x.shape
    C = out.shape[1]
    HW = H * W
    cp = triton.next_power_of_2(C)
    block = max(16, min(block, 4096 // cp))
    # CUDA caps grid axis 1 at 65535, so very large batches go in chunks of images.
    for b0 in range(0, B, 65535):
        xb, ob = x[b0 : b0 + 65535], out[b0 : b0 + 65535]
        nb = xb.shape[0]
        ranges = torch.empty((2, nb), dtype=torch.int32, device=x.device)
        if per_image_minmax:
            ranges[0].fill_(2**31 - 1)
            ranges[1].fill_(-(2**31))
            _image_range_kernel[(triton.cdiv(HW, 4096), nb)](xb, ranges, HW, nb, BLOCK=4096)
        _hu_window_kernel[(triton.cdiv(HW, block), nb)](
            xb,
            ob,
            params,
            ranges,
            HW,
            nb,
            ob.stride(0),
            ob.stride(1),
            ob.stride(3),
            C=C,
            CP=cp,
            MINMAX=per_image_minmax,
            BLOCK=block,
        )
