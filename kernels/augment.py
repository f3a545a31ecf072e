"""augment_views in Triton. Math: radengine/ops/augment.py (module docstring, steps 1-9;
reference_augment_views is the oracle). CUDA tensors, and CPU tensors under TRITON_INTERPRET=1.

Rows are (view, sample) pairs n = v * B + b; every kernel works on flattened tiles of
BLOCK output pixels of one row (a 1-D grid, sample-major, so the views of one slice run
back to back). CU channels are computed: 3 for RGB, 1 for a CT view whose channels share
one window (the reference's ``gray`` rule: computed once, expanded to the C outputs before
the noise), else C. CU = 3 (RGB, or three distinct windows: where saturation, hue and
grayscale apply) runs as three (BLOCK,) tensors and CU = 1 as one, so that nothing is
reduced across channels: in a (4, BLOCK) tile Triton may spread the channel dim over warps
and every gray/hue/saturation would go through shared memory. Other window counts use a
(CP, BLOCK) tile (CP = CU rounded up to a power of two), reduced over channels only for
contrast's mean.

Kernels, in launch order:

1. Tables (torch, no host sync): per row the geometry coefficients, jitter factors and
   order, flags, noise key and blur slot; per row and channel (lo, span, 1 / span); the
   u/v coordinates; normalisation. Built on the host and uploaded in one pinned,
   non-blocking copy; cos/sin of rotations, the blur weights and (min-max mode) each
   slice's range (amin/amax on the int16 input) and windows are computed on the device.
2. ``_contrast_mean_kernel``, only over rows whose contrast factor is not 1: steps 1-2 and
   the jitter ops ordered before contrast, gray per pixel, one fp32 partial sum per
   program; torch then sums each row's partials in a fixed order (fp64), so the mean is
   deterministic (no float atomics) and lands in the row table.
3. ``_augment_kernel`` over all rows: steps 1-6 per pixel (bilinear taps mapped to
   intensity one by one, colour jitter in the row's order, grayscale, gamma, solarize).
   Rows without blur finish here: noise (the integer ``noise_hash`` + Box-Muller),
   normalisation, one rounding to the output dtype, stored through the output's strides
   (contiguous (V, B, C, h, w) or channels_last per view). Rows with blur store the fp32
   pre-blur view into a scratch of (blurred rows, CU, h, w).
4. ``_blur_rows_kernel`` (horizontal taps, scratch -> scratch) and ``_blur_cols_kernel``
   (vertical taps, then noise, normalisation and the store), over blurred rows only.

Numerics: fp32 throughout with FMA contraction switched off (``enable_fp_fusion=False``),
so every operation rounds where the reference's does; the multiply-adds that torch's
grid_sample fuses (unnormalise, 4-tap blend) are explicit ``tl.fma``. Divisions by a
per-row or per-channel constant (windowing, RGB / 255, normalisation) are a multiply by the
correctly rounded reciprocal plus one Markstein correction (``_div``: two FMAs), which
gives the IEEE quotient; the hue's per-pixel division is ``tl.div_rn``. The tables are
computed by torch with the reference's own expressions (transcendentals on x's device, as
the reference), so they carry the same bits. log/exp/cos are Cephes-style polynomials
(about 1 ulp; sqrt correctly rounded), not the GPU's approximate intrinsics. The noise
words are 32-bit unsigned integer ops giving the bits of ``noise_hash``; the per-row part
of the key (seed and view) is mixed on the host.

Memory traffic: the output written once; the input read through the taps (4 per output
pixel, from L1/L2: the views of one sample run next to each other); contrast rows read
their taps twice (the mean, then the view); min-max mode reads each slice once more for its
range; blurred rows add a fp32 scratch of CU planes written once, read and written by the
horizontal pass and read (2r + 1 taps, from cache) by the vertical pass. Per-row
parameters come from a small table read once per program. No input-sized intermediate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

# Per-row float32 table (V * B, _NF), built in augment_views() below.
_F_C0X = tl.constexpr(0)  # grid x at u = v = 0 (grid units, [-1, 1] spans the image)
_F_C0Y = tl.constexpr(1)
_F_A2X = tl.constexpr(2)  # d grid / d u
_F_A2Y = tl.constexpr(3)
_F_B2X = tl.constexpr(4)  # d grid / d v
_F_B2Y = tl.constexpr(5)
_F_JITTER = tl.constexpr(6)  # 6..9: brightness, contrast, saturation, hue
_F_ORDER = tl.constexpr(10)  # 10..13: the jitter ops in the order applied
_F_GRAYSCALE = tl.constexpr(14)
_F_GAMMA = tl.constexpr(15)
_F_SOLARIZE = tl.constexpr(16)
_F_THRESHOLD = tl.constexpr(17)
_F_NOISE_STD = tl.constexpr(18)
_F_CSTEP = tl.constexpr(19)  # the step at which contrast runs
_F_CMEAN = tl.constexpr(20)  # contrast's mean gray (from _contrast_mean_kernel)
_NF = 21
# Per-row int32 table (V * B, 2): the noise key after (seed, view), the blur slot (-1: none).
_I_KEY = tl.constexpr(0)
_I_SLOT = tl.constexpr(1)

_TWO_PI = tl.constexpr(2.0 * math.pi)  # rounded to fp32 in the kernel, as torch's mul_
_INV_255 = tl.constexpr(1.0 / 255.0)
_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------- scalar math


@triton.jit
def _clamp01(y):
    return tl.minimum(tl.maximum(y, 0.0), 1.0)


@triton.jit
def _div(a, b, inv):
    """a / b rounded as IEEE division, given inv = 1 / b correctly rounded (Markstein: the
    residual a - b q is exact in an FMA, one correction step rounds correctly). inv = 0
    gives 0 (the windows' span <= 0 case)."""
    q = a * inv
    r = tl.fma(-q, b, a)
    return tl.fma(r, inv, q)


@triton.jit
def _log(x):
    """ln(x) for x > 0 (subnormals too) within about 1 ulp: Cephes logf."""
    tiny = x < 1.1754943508222875e-38
    xs = tl.where(tiny, x * 16777216.0, x)
    bits = xs.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 126  # x = m 2^e, m in [0.5, 1)
    e = tl.where(tiny, e - 24, e)
    m = ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    small = m < 0.70710678118654752440
    e = tl.where(small, e - 1, e)
    f = tl.where(small, (m + m) - 1.0, m - 1.0)  # exact; in [-0.293, 0.414)
    z = f * f
    p = tl.fma(f, 7.0376836292e-2, -1.1514610310e-1)
    p = tl.fma(p, f, 1.1676998740e-1)
    p = tl.fma(p, f, -1.2420140846e-1)
    p = tl.fma(p, f, 1.4249322787e-1)
    p = tl.fma(p, f, -1.6668057665e-1)
    p = tl.fma(p, f, 2.0000714765e-1)
    p = tl.fma(p, f, -2.4999993993e-1)
    p = tl.fma(p, f, 3.3333331174e-1)
    fe = e.to(tl.float32)
    y = (p * f) * z + fe * -2.12194440e-4
    y = y - 0.5 * z
    return (f + y) + fe * 0.693359375


@triton.jit
def _exp(t):
    """exp(t) for t <= 88 within about 1 ulp (Cephes expf); 0 below -87.3 (where the result
    would be subnormal)."""
    k = tl.floor(t * 1.44269504088896341 + 0.5)
    r = t - k * 0.693359375
    r = r - k * -2.12194440e-4
    p = tl.fma(r, 1.9875691500e-4, 1.3981999507e-3)
    p = tl.fma(p, r, 8.3334519073e-3)
    p = tl.fma(p, r, 4.1665795894e-2)
    p = tl.fma(p, r, 1.6666665459e-1)
    p = tl.fma(p, r, 5.0000001201e-1)
    p = tl.fma(p, r * r, r) + 1.0
    ki = tl.maximum(k.to(tl.int32), -126)
    scale = ((ki + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(t < -87.3, 0.0, p * scale)


@triton.jit
def _cos(t):
    """cos(t) for 0 <= t < 8 within about 2e-7 absolute (Cephes cosf: octant reduction
    with a 3-part pi/4, then the sin or cos polynomial)."""
    j = (t * 1.27323954473516).to(tl.int32)  # t >= 0: truncation is floor
    j = j + (j & 1)
    y = j.to(tl.float32)
    j = j & 7
    neg = j > 3
    j = tl.where(neg, j - 4, j)
    neg = neg ^ (j > 1)
    r = ((t - y * 0.78515625) - y * 2.4187564849853515625e-4) - y * 3.77489497744594108e-8
    z = r * r
    s = tl.fma(tl.fma(tl.fma(z, -1.9515295891e-4, 8.3321608736e-3), z, -1.6666654611e-1) * z, r, r)
    c = tl.fma(z, 2.443315711809948e-5, -1.388731625493765e-3)
    c = tl.fma(c, z, 4.166664568298827e-2) * z
    c = tl.fma(c, z, -0.5 * z) + 1.0
    res = tl.where(j == 2, s, c)
    return tl.where(neg, -res, res)


@triton.jit
def _pow01(y, g):
    """y ** g for y in [0, 1] (torch.pow's values up to about 1 ulp)."""
    res = _exp(tl.minimum(g * _log(tl.maximum(y, 1e-45)), 88.0))
    return tl.where(y > 0.0, res, tl.where(g > 0.0, 0.0, 1.0))


@triton.jit
def _mix32(h):
    """lowbias32 on uint32 (``_mix32`` in radengine/ops/augment.py)."""
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x846CA68B
    return h ^ (h >> 16)


# ----------------------------------------------------------------------------- colour
# The 3-channel path (_view3: RGB, or CT with 3 distinct windows) carries r, g, b as three
# (BLOCK,) tensors; the other CT views (_view_tile: (BLOCK,) for one computed channel, else
# a (CP, BLOCK) tile) have only brightness and contrast to apply (see the module docstring).


@triton.jit
def _luma(r, g, b):
    return (r * 0.299 + g * 0.587) + b * 0.114


@triton.jit
def _gray_tile(y, ch, CU: tl.constexpr):
    """gray(y): y itself for one channel ((BLOCK,)), else the tile's channel mean."""
    if CU == 1:
        return y
    return tl.div_rn(tl.sum(tl.where(ch[:, None] < CU, y, 0.0), axis=0), CU * 1.0)


@triton.jit
def _hue_channel(h6, n: tl.constexpr, maxc, chroma):
    """One channel of _adjust_hue's closed form: V - X clamp(min(m, 4 - m), 0, 1)."""
    m = h6 + n
    # torch.remainder(m, 6); exact for the values here (and the ramp is continuous across
    # the period, so an edge case could not move the result anyway).
    m = m - tl.floor(m * (1.0 / 6.0)) * 6.0
    m = tl.where(m >= 6.0, m - 6.0, m)
    m = tl.where(m < 0.0, m + 6.0, m)
    return maxc - _clamp01(tl.minimum(m, 4.0 - m)) * chroma


@triton.jit
def _hue(r, g, b, d):
    maxc = tl.maximum(tl.maximum(r, g), b)
    chroma = maxc - tl.minimum(tl.minimum(r, g), b)
    is_r = maxc == r
    is_g = maxc == g
    h6 = tl.where(is_r, g - b, tl.where(is_g, b - r, r - g))
    h6 = tl.div_rn(h6, tl.where(chroma > 0.0, chroma, 1.0))
    h6 = h6 + tl.where(is_r, 0.0, tl.where(is_g, 2.0, 4.0))
    h6 = h6 + 6.0 * d
    return (
        _hue_channel(h6, 5.0, maxc, chroma),
        _hue_channel(h6, 3.0, maxc, chroma),
        _hue_channel(h6, 1.0, maxc, chroma),
    )


@triton.jit
def _jitter3(r, g, b, rows_n, nsteps):
    """Step 3 on 3 channels: the row's ops at steps < nsteps, in its order; identities
    skipped."""
    fb = tl.load(rows_n + _F_JITTER)
    fc = tl.load(rows_n + _F_JITTER + 1)
    fs = tl.load(rows_n + _F_JITTER + 2)
    fh = tl.load(rows_n + _F_JITTER + 3)
    for step in tl.static_range(4):
        if step < nsteps:
            op = tl.load(rows_n + _F_ORDER + step).to(tl.int32)
            if op == 0:
                if fb != 1.0:
                    r = _clamp01(r * fb)
                    g = _clamp01(g * fb)
                    b = _clamp01(b * fb)
            elif op == 1:
                if fc != 1.0:
                    add = (1.0 - fc) * tl.load(rows_n + _F_CMEAN)
                    r = _clamp01(r * fc + add)
                    g = _clamp01(g * fc + add)
                    b = _clamp01(b * fc + add)
            elif op == 2:
                if fs != 1.0:
                    gray = _luma(r, g, b) * (1.0 - fs)
                    r = _clamp01(r * fs + gray)
                    g = _clamp01(g * fs + gray)
                    b = _clamp01(b * fs + gray)
            else:
                if fh != 0.0:
                    r, g, b = _hue(r, g, b, fh)
    return r, g, b


@triton.jit
def _jitter_tile(y, rows_n, ch, nsteps, CU: tl.constexpr):
    """Step 3 on a (CP, BLOCK) tile: brightness and contrast (saturation and hue need 3
    distinct channels: identities here)."""
    fb = tl.load(rows_n + _F_JITTER)
    fc = tl.load(rows_n + _F_JITTER + 1)
    for step in tl.static_range(4):
        if step < nsteps:
            op = tl.load(rows_n + _F_ORDER + step).to(tl.int32)
            if op == 0:
                if fb != 1.0:
                    y = _clamp01(y * fb)
            elif op == 1:  # noqa: SIM102 (one branch per op)
                if fc != 1.0:
                    y = _clamp01(y * fc + (1.0 - fc) * tl.load(rows_n + _F_CMEAN))
    return y


# ----------------------------------------------------------------------------- steps 1-6


@triton.jit
def _coords(
    rows_n, u_ptr, v_ptr, i, j, pmask, H, W, half_w, half_h, max_x, max_y, sxy, sxx, use_mask
):
    """Step 1 and grid_sample's bilinear set-up (align_corners=False, border): per pixel the
    top-left tap's offset, the offsets to its right/lower neighbours (0 at the last
    column/row), the 4 weights and whether the point lies outside the image."""
    u = tl.load(u_ptr + j, mask=pmask, other=0.0)
    v = tl.load(v_ptr + i, mask=pmask, other=0.0)
    gx = (tl.load(rows_n + _F_C0X) + tl.load(rows_n + _F_A2X) * u) + tl.load(rows_n + _F_B2X) * v
    gy = (tl.load(rows_n + _F_C0Y) + tl.load(rows_n + _F_A2Y) * u) + tl.load(rows_n + _F_B2Y) * v
    outside = ((tl.abs(gx) > 1.0) | (tl.abs(gy) > 1.0)) & (use_mask != 0)
    ix = tl.minimum(tl.maximum(tl.fma(gx + 1.0, half_w, -0.5), 0.0), max_x)
    iy = tl.minimum(tl.maximum(tl.fma(gy + 1.0, half_h, -0.5), 0.0), max_y)
    xi = ix.to(tl.int32)  # ix >= 0: truncation is floor
    yi = iy.to(tl.int32)
    wx = ix - xi.to(tl.float32)
    wy = iy - yi.to(tl.float32)
    e = 1.0 - wx
    so = 1.0 - wy
    off = yi * sxy + xi * sxx
    dx = tl.where(xi < W - 1, sxx, 0)
    dy = tl.where(yi < H - 1, sxy, 0)
    return off, dx, dy, so * e, so * wx, wy * e, wy * wx, outside


@triton.jit
def _blend(v00, v01, v10, v11, nw, ne, sw, se, outside):
    """The 4 mapped taps blended as torch's grid_sample (fused multiply-adds), 0 outside."""
    val = tl.fma(v11, se, tl.fma(v10, sw, tl.fma(v01, ne, v00 * nw)))
    return tl.where(outside, 0.0, val)


@triton.jit
def _window(t, lo, span, inv):
    return _clamp01(_div(t - lo, span, inv))


@triton.jit
def _rgb_plane(ptr, dx, dy, pmask, nw, ne, sw, se, outside):
    """One channel of an RGB view: each tap / 255, then blended."""
    v00 = _div(tl.load(ptr, mask=pmask, other=0).to(tl.float32), 255.0, _INV_255)
    v01 = _div(tl.load(ptr + dx, mask=pmask, other=0).to(tl.float32), 255.0, _INV_255)
    v10 = _div(tl.load(ptr + dy, mask=pmask, other=0).to(tl.float32), 255.0, _INV_255)
    v11 = _div(tl.load(ptr + dx + dy, mask=pmask, other=0).to(tl.float32), 255.0, _INV_255)
    return _blend(v00, v01, v10, v11, nw, ne, sw, se, outside)


@triton.jit
def _ct_plane(
    t00, t01, t10, t11, win_n, c: tl.constexpr, CU: tl.constexpr, nw, ne, sw, se, outside
):
    """Channel c of a CT view: each tap windowed with (lo, span, 1 / span), then blended."""
    lo = tl.load(win_n + c)
    span = tl.load(win_n + CU + c)
    inv = tl.load(win_n + 2 * CU + c)
    return _blend(
        _window(t00, lo, span, inv), _window(t01, lo, span, inv), _window(t10, lo, span, inv),
        _window(t11, lo, span, inv), nw, ne, sw, se, outside,
    )  # fmt: skip


@triton.jit
def _view3(
    x_ptr, x_base, sxy, sxx, sxc, H, W, half_w, half_h, max_x, max_y, rows_n, win_n,
    u_ptr, v_ptr, i, j, pmask, use_mask, nsteps, RGB: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    """Steps 1-2, the jitter steps < nsteps and, with FULL, steps 4-6 of a 3-channel view."""
    off, dx, dy, nw, ne, sw, se, outside = _coords(
        rows_n, u_ptr, v_ptr, i, j, pmask, H, W, half_w, half_h, max_x, max_y, sxy, sxx, use_mask
    )
    base = x_ptr + x_base + off
    if RGB:
        r = _rgb_plane(base, dx, dy, pmask, nw, ne, sw, se, outside)
        g = _rgb_plane(base + sxc, dx, dy, pmask, nw, ne, sw, se, outside)
        b = _rgb_plane(base + 2 * sxc, dx, dy, pmask, nw, ne, sw, se, outside)
    else:  # one int16 plane, three windows
        t00 = tl.load(base, mask=pmask, other=0).to(tl.float32)
        t01 = tl.load(base + dx, mask=pmask, other=0).to(tl.float32)
        t10 = tl.load(base + dy, mask=pmask, other=0).to(tl.float32)
        t11 = tl.load(base + dx + dy, mask=pmask, other=0).to(tl.float32)
        r = _ct_plane(t00, t01, t10, t11, win_n, 0, 3, nw, ne, sw, se, outside)
        g = _ct_plane(t00, t01, t10, t11, win_n, 1, 3, nw, ne, sw, se, outside)
        b = _ct_plane(t00, t01, t10, t11, win_n, 2, 3, nw, ne, sw, se, outside)
    r, g, b = _jitter3(r, g, b, rows_n, nsteps)
    if FULL:
        if tl.load(rows_n + _F_GRAYSCALE) != 0.0:
            gray = _luma(r, g, b)
            r = gray
            g = gray
            b = gray
        gm = tl.load(rows_n + _F_GAMMA)
        if gm != 1.0:
            r = _clamp01(_pow01(r, gm))
            g = _clamp01(_pow01(g, gm))
            b = _clamp01(_pow01(b, gm))
        if tl.load(rows_n + _F_SOLARIZE) != 0.0:
            thr = tl.load(rows_n + _F_THRESHOLD)
            r = tl.where(r >= thr, 1.0 - r, r)
            g = tl.where(g >= thr, 1.0 - g, g)
            b = tl.where(b >= thr, 1.0 - b, b)
    return r, g, b


@triton.jit
def _view_tile(
    x_ptr, x_base, sxy, sxx, H, W, half_w, half_h, max_x, max_y, rows_n, win_n, u_ptr, v_ptr,
    i, j, pmask, ch, use_mask, nsteps, CU: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    """The same for a CT view: (BLOCK,) for one computed channel, else a (CP, BLOCK) tile of
    its CU channels' windows."""
    off, dx, dy, nw, ne, sw, se, outside = _coords(
        rows_n, u_ptr, v_ptr, i, j, pmask, H, W, half_w, half_h, max_x, max_y, sxy, sxx, use_mask
    )
    base = x_ptr + x_base + off
    t00 = tl.load(base, mask=pmask, other=0).to(tl.float32)
    t01 = tl.load(base + dx, mask=pmask, other=0).to(tl.float32)
    t10 = tl.load(base + dy, mask=pmask, other=0).to(tl.float32)
    t11 = tl.load(base + dx + dy, mask=pmask, other=0).to(tl.float32)
    if CU == 1:  # (BLOCK,): no 2-D layout at all on the common gray path
        y = _ct_plane(t00, t01, t10, t11, win_n, 0, 1, nw, ne, sw, se, outside)
    else:
        cmask = ch < CU
        lo = tl.load(win_n + ch, mask=cmask, other=0.0)[:, None]
        span = tl.load(win_n + CU + ch, mask=cmask, other=1.0)[:, None]
        inv = tl.load(win_n + 2 * CU + ch, mask=cmask, other=0.0)[:, None]
        y = _blend(
            _window(t00[None, :], lo, span, inv), _window(t01[None, :], lo, span, inv),
            _window(t10[None, :], lo, span, inv), _window(t11[None, :], lo, span, inv),
            nw[None, :], ne[None, :], sw[None, :], se[None, :], outside[None, :],
        )  # fmt: skip
    y = _jitter_tile(y, rows_n, ch, nsteps, CU)
    if FULL:
        gm = tl.load(rows_n + _F_GAMMA)
        if gm != 1.0:
            y = _clamp01(_pow01(y, gm))
        if tl.load(rows_n + _F_SOLARIZE) != 0.0:
            thr = tl.load(rows_n + _F_THRESHOLD)
            y = tl.where(y >= thr, 1.0 - y, y)
    return y


# ----------------------------------------------------------------------------- steps 8-9


@triton.jit
def _normal(kc, iu, j2):
    """Standard normal z from noise_hash's words: kc = the key after the channel word,
    iu = the row word, j2 = 2 x (uint32; broadcastable), Box-Muller as the reference."""
    k = _mix32(kc ^ iu)
    wa = _mix32(k ^ j2)
    wb = _mix32(k ^ (j2 + 1))
    u1 = ((wa >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    u2 = (wb >> 8).to(tl.float32) * 5.9604644775390625e-08
    return tl.sqrt_rn(_log(u1) * -2.0) * _cos(u2 * _TWO_PI)


@triton.jit
def _to_output(o, out_row, INTERPRET: tl.constexpr):
    """fp32 -> the output dtype, rounding to nearest even."""
    if out_row.dtype.element_ty == tl.bfloat16 and INTERPRET:
        # The interpreter truncates fp32 -> bf16; round by hand as the GPU's conversion
        # does (finite values only here).
        bits = o.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        o = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return o.to(out_row.dtype.element_ty)


@triton.jit
def _finish_plane(
    yc, c: tl.constexpr, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr,
    CPO: tl.constexpr, FLAT: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Noise, normalisation and the store of output channel c, (BLOCK,) pixels. FLAT:
    so_i = w so_j (contiguous and channels_last views), so the tile's pixels are addressed
    as p so_j and the compiler sees the contiguous runs (vector stores)."""
    if noise_std > 0.0:
        z = _normal(_mix32(key ^ c), i.to(tl.uint32), (j * 2).to(tl.uint32))
        yc = _clamp01(yc + z * noise_std)
    o = _div(
        yc - tl.load(norm_ptr + c), tl.load(norm_ptr + CPO + c), tl.load(norm_ptr + 2 * CPO + c)
    )
    if FLAT:  # noqa: SIM108 (a constexpr branch)
        ptrs = out_row + c * so_c + p * so_j
    else:
        ptrs = out_row + c * so_c + i * so_i + j * so_j
    tl.store(ptrs, _to_output(o, out_row, INTERPRET), mask=pmask)


@triton.jit
def _finish_tile(
    y, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr, C: tl.constexpr,
    CPO: tl.constexpr, FLAT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The same for all C channels of a tile; y is (CPO, BLOCK) or (1, BLOCK) (a gray view,
    expanded here: the noise differs per channel)."""
    co = tl.arange(0, CPO)
    yo = tl.broadcast_to(y, (CPO, BLOCK))
    if noise_std > 0.0:
        kc = _mix32(key ^ co.to(tl.uint32))[:, None]
        z = _normal(kc, i.to(tl.uint32)[None, :], (j * 2).to(tl.uint32)[None, :])
        yo = _clamp01(yo + z * noise_std)
    mean = tl.load(norm_ptr + co)[:, None]
    sd = tl.load(norm_ptr + CPO + co)[:, None]
    inv = tl.load(norm_ptr + 2 * CPO + co)[:, None]
    o = _div(yo - mean, sd, inv)
    if FLAT:
        ptrs = out_row + co[:, None] * so_c + (p * so_j)[None, :]
    else:
        ptrs = out_row + co[:, None] * so_c + (i * so_i + j * so_j)[None, :]
    mask = (co < C)[:, None] & pmask[None, :]
    tl.store(ptrs, _to_output(o, out_row, INTERPRET), mask=mask)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _contrast_mean_kernel(
    x_ptr,
    sxb,
    sxy,
    sxx,
    sxc,
    H,
    W,
    half_w,
    half_h,
    max_x,
    max_y,
    rows_ptr,
    win_ptr,
    u_ptr,
    v_ptr,
    crows_ptr,  # int32 (rows with contrast,)
    partial_ptr,  # float32 (rows with contrast * n_tiles,)
    B,
    h,
    w,
    n_tiles,
    use_mask,
    NF: tl.constexpr,
    CU: tl.constexpr,
    CP: tl.constexpr,
    RGB: tl.constexpr,
    THREE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per (row with contrast, tile): the sum of gray over the tile of the view as it is
    right before contrast."""
    pid = tl.program_id(0)
    slot = pid // n_tiles
    tile = pid - slot * n_tiles
    n = tl.load(crows_ptr + slot)
    b = n % B
    p = tile * BLOCK + tl.arange(0, BLOCK)
    pmask = p < h * w
    i = p // w
    j = p - i * w
    rows_n = rows_ptr + n * NF
    win_n = win_ptr + n * (3 * CU)
    x_base = b.to(tl.int64) * sxb
    nsteps = tl.load(rows_n + _F_CSTEP).to(tl.int32)
    if THREE:
        r, g, bl = _view3(
            x_ptr, x_base, sxy, sxx, sxc, H, W, half_w, half_h, max_x, max_y, rows_n, win_n,
            u_ptr, v_ptr, i, j, pmask, use_mask, nsteps, RGB, False,
        )  # fmt: skip
        gray = _luma(r, g, bl)
    else:
        ch = tl.arange(0, CP)
        y = _view_tile(
            x_ptr, x_base, sxy, sxx, H, W, half_w, half_h, max_x, max_y, rows_n, win_n,
            u_ptr, v_ptr, i, j, pmask, ch, use_mask, nsteps, CU, False,
        )  # fmt: skip
        gray = _gray_tile(y, ch, CU)
    tl.store(partial_ptr + pid, tl.sum(tl.where(pmask, gray, 0.0), axis=0))


@triton.jit
def _augment_kernel(
    x_ptr,
    sxb,
    sxy,
    sxx,
    sxc,
    H,
    W,
    half_w,
    half_h,
    max_x,
    max_y,
    rows_ptr,
    irows_ptr,
    win_ptr,
    u_ptr,
    v_ptr,
    norm_ptr,
    out_ptr,
    so_v,
    so_b,
    so_c,
    so_i,
    so_j,
    pre_ptr,  # float32 (blurred rows, CU, h, w)
    V,
    B,
    h,
    w,
    n_tiles,
    use_mask,
    NF: tl.constexpr,
    CU: tl.constexpr,
    CP: tl.constexpr,
    C: tl.constexpr,
    CPO: tl.constexpr,
    RGB: tl.constexpr,
    THREE: tl.constexpr,
    FLAT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per (row, tile): steps 1-6, then steps 8-9 and the store, or (rows with blur) the
    pre-blur view into the scratch."""
    pid = tl.program_id(0)
    r = pid // n_tiles
    tile = pid - r * n_tiles
    b = r // V  # sample-major: the views of one slice run back to back (its taps stay in L2)
    v = r - b * V
    n = v * B + b
    hw = h * w
    p = tile * BLOCK + tl.arange(0, BLOCK)
    pmask = p < hw
    i = p // w
    j = p - i * w
    rows_n = rows_ptr + n * NF
    win_n = win_ptr + n * (3 * CU)
    x_base = b.to(tl.int64) * sxb
    slot = tl.load(irows_ptr + 2 * n + _I_SLOT)
    key = tl.load(irows_ptr + 2 * n + _I_KEY).to(tl.uint32, bitcast=True)
    noise_std = tl.load(rows_n + _F_NOISE_STD)
    out_row = out_ptr + v.to(tl.int64) * so_v + b.to(tl.int64) * so_b
    if THREE:
        rr, gg, bb = _view3(
            x_ptr, x_base, sxy, sxx, sxc, H, W, half_w, half_h, max_x, max_y, rows_n, win_n,
            u_ptr, v_ptr, i, j, pmask, use_mask, 4, RGB, True,
        )  # fmt: skip
        if slot >= 0:
            pre = pre_ptr + slot.to(tl.int64) * (3 * hw) + p
            tl.store(pre, rr, mask=pmask)
            tl.store(pre + hw, gg, mask=pmask)
            tl.store(pre + 2 * hw, bb, mask=pmask)
        else:
            _finish_plane(
                rr, 0, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr,
                CPO, FLAT, INTERPRET,
            )  # fmt: skip
            _finish_plane(
                gg, 1, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr,
                CPO, FLAT, INTERPRET,
            )  # fmt: skip
            _finish_plane(
                bb, 2, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr,
                CPO, FLAT, INTERPRET,
            )  # fmt: skip
    else:
        ch = tl.arange(0, CP)
        y = _view_tile(
            x_ptr, x_base, sxy, sxx, H, W, half_w, half_h, max_x, max_y, rows_n, win_n,
            u_ptr, v_ptr, i, j, pmask, ch, use_mask, 4, CU, True,
        )  # fmt: skip
        if CU == 1:
            if slot >= 0:
                tl.store(pre_ptr + slot.to(tl.int64) * hw + p, y, mask=pmask)
            else:  # expanded to the C channels here: the noise differs per channel
                for c in tl.static_range(C):
                    _finish_plane(
                        y, c, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std,
                        norm_ptr, CPO, FLAT, INTERPRET,
                    )  # fmt: skip
        elif slot >= 0:
            pre = pre_ptr + slot.to(tl.int64) * (CU * hw) + (ch * hw)[:, None] + p[None, :]
            tl.store(pre, y, mask=(ch < CU)[:, None] & pmask[None, :])
        else:
            _finish_tile(
                y, p, i, j, pmask, out_row, so_c, so_i, so_j, key, noise_std, norm_ptr, C,
                CPO, FLAT, INTERPRET, BLOCK,
            )  # fmt: skip


@triton.jit
def _blur_rows_kernel(
    src_ptr,
    dst_ptr,
    wts_ptr,  # float32 (blurred rows, 2 R + 1): the reference's normalised weights
    radius_ptr,  # int32 (blurred rows,)
    h,
    w,
    n_tiles,
    R,
    CU: tl.constexpr,
    CP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Horizontal taps, borders replicated: dst = sum_k w_k src[i, clamp(j + k)]."""
    pid = tl.program_id(0)
    slot = pid // n_tiles
    tile = pid - slot * n_tiles
    hw = h * w
    p = tile * BLOCK + tl.arange(0, BLOCK)
    pmask = p < hw
    i = p // w
    j = p - i * w
    ch = tl.arange(0, CP)
    mask = (ch < CU)[:, None] & pmask[None, :]
    plane = slot.to(tl.int64) * (CU * hw) + (ch * hw)[:, None]
    line = src_ptr + plane + (i * w)[None, :]
    rad = tl.load(radius_ptr + slot)
    wrow = wts_ptr + slot * (2 * R + 1) + (R - rad)
    acc = tl.zeros((CP, BLOCK), tl.float32)
    for t in range(0, 2 * rad + 1):
        jj = tl.minimum(tl.maximum(j + (t - rad), 0), w - 1)
        acc = acc + tl.load(wrow + t) * tl.load(line + jj[None, :], mask=mask, other=0.0)
    tl.store(dst_ptr + plane + p[None, :], acc, mask=mask)


@triton.jit
def _blur_cols_kernel(
    src_ptr,
    wts_ptr,
    radius_ptr,
    brows_ptr,  # int32 (blurred rows,): the row n of each slot
    irows_ptr,
    rows_ptr,
    norm_ptr,
    out_ptr,
    so_v,
    so_b,
    so_c,
    so_i,
    so_j,
    B,
    h,
    w,
    n_tiles,
    R,
    NF: tl.constexpr,
    CU: tl.constexpr,
    CP: tl.constexpr,
    C: tl.constexpr,
    CPO: tl.constexpr,
    FLAT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Vertical taps, borders replicated, then steps 8-9 and the store."""
    pid = tl.program_id(0)
    slot = pid // n_tiles
    tile = pid - slot * n_tiles
    hw = h * w
    p = tile * BLOCK + tl.arange(0, BLOCK)
    pmask = p < hw
    i = p // w
    j = p - i * w
    ch = tl.arange(0, CP)
    mask = (ch < CU)[:, None] & pmask[None, :]
    col = src_ptr + slot.to(tl.int64) * (CU * hw) + (ch * hw)[:, None] + j[None, :]
    rad = tl.load(radius_ptr + slot)
    wrow = wts_ptr + slot * (2 * R + 1) + (R - rad)
    acc = tl.zeros((CP, BLOCK), tl.float32)
    for t in range(0, 2 * rad + 1):
        ii = tl.minimum(tl.maximum(i + (t - rad), 0), h - 1)
        acc = acc + tl.load(wrow + t) * tl.load(col + (ii * w)[None, :], mask=mask, other=0.0)
    n = tl.load(brows_ptr + slot)
    v = n // B
    b = n - v * B
    key = tl.load(irows_ptr + 2 * n + _I_KEY).to(tl.uint32, bitcast=True)
    out_row = out_ptr + v.to(tl.int64) * so_v + b.to(tl.int64) * so_b
    _finish_tile(
        acc, p, i, j, pmask, out_row, so_c, so_i, so_j, key,
        tl.load(rows_ptr + n * NF + _F_NOISE_STD), norm_ptr, C, CPO, FLAT, INTERPRET, BLOCK,
    )  # fmt: skip


# ----------------------------------------------------------------------------- host side


def _block(channels: int, pixels: int) -> int:
    """Pixels per program: about 1024 (channel, pixel) values, no more than the view has."""
    block = 256 if channels <= 4 else max(32, 1024 // channels)
    return max(16, min(block, triton.next_power_of_2(pixels)))


def _noise_keys(seed: torch.Tensor, V: int) -> torch.Tensor:
    """(V, B) int32 bits of noise_hash's key after the seed and view words."""
    from radengine.ops.augment import _mix32

    k = _mix32((seed & _M32) ^ 0x9E3779B9)
    k = _mix32(k ^ ((seed >> 32) & _M32))
    k = _mix32(k ^ torch.arange(V, dtype=torch.int64)[:, None])
    return torch.where(k >= 2**31, k - 2**32, k).to(torch.int32)


def _geometry(crop, fx, fy, angle, H: int, W: int) -> torch.Tensor:
    """(N, 6) c0x, c0y, a2x, a2y, b2x, b2y: _sampling_grid's per-sample coefficients, with
    its own torch ops (so with its bits on the device they run on). crop (N, 4); fx, fy
    (N,) -1 / 1 for the flips; angle (N,) degrees."""
    y0, x0, ch, cw = crop.unbind(-1)
    theta = torch.deg2rad(angle)
    cos, sin = torch.cos(theta), torch.sin(theta)
    size = torch.tensor([W, H], dtype=torch.float32, device=crop.device)
    centre = torch.stack([x0 + cw / 2 - 0.5, y0 + ch / 2 - 0.5], -1)
    a = torch.stack([cos * cw * fx, sin * cw * fx], -1)
    b = torch.stack([-sin * ch * fy, cos * ch * fy], -1)
    return torch.cat([(2 * centre + 1) / size - 1, 2 * a / size, 2 * b / size], -1)


def _upload(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """CPU float32/int32 tensors -> the same on ``device`` in one copy: pinned and
    non-blocking on CUDA, so the call never waits for the GPU."""
    words = [t.contiguous().reshape(-1).view(torch.int32) for t in parts]
    packed = torch.cat(words)
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    pieces = packed.split([t.numel() for t in words])
    return [q.view(t.dtype).view(t.shape) for q, t in zip(pieces, parts, strict=True)]


def augment_views(
    x: torch.Tensor,
    params,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    """The triton backend of radengine.ops.augment.augment_views (same arguments as
    reference_augment_views): a (V, B, C, h, w) tensor of ``dtype`` on x's device.

    The per-row tables are built on the host with torch's basic fp32 ops (+ - * /, the
    same bits on every device) and go to the device in one non-blocking copy; what involves
    transcendentals (cos/sin of a rotation, the blur weights) or the data (min-max ranges)
    is computed on the device by torch, as the reference computes it there. No host sync.
    """
    from radengine.ops.augment import _new_output, blur_radius

    dev = x.device
    f32, i32 = torch.float32, torch.int32
    p = params.to("cpu")
    V, B, C = p.views, x.shape[0], len(mean)
    N = V * B
    h, w = (int(s) for s in size)
    hw = h * w
    rgb = x.dtype == torch.uint8
    if rgb:
        H, W = x.shape[1], x.shape[2]
        sxb, sxy, sxx, sxc = x.stride()
        CU = 3
    else:
        H, W = x.shape[-2], x.shape[-1]
        sxb, sxy, sxx, sxc = x.stride(0), x.stride(-2), x.stride(-1), 0
        gray = C > 1 and bool((p.window == p.window[:, :, :1]).all())
        CU = 1 if gray else C
    if (H - 1) * sxy + W * sxx + 2 * sxc >= 2**31:  # in-slice tap offsets are int32
        if x.is_contiguous():
            raise ValueError(f"augment_views (triton): one image of {H}x{W} is too large")
        return augment_views(x.contiguous(), params, size, mean, std, minmax, dtype, channels_last)
    THREE = CU == 3 and C == 3
    CP, CPO = triton.next_power_of_2(CU), triton.next_power_of_2(C)
    out = _new_output(V, B, C, h, w, dtype, dev, channels_last)
    FLAT = out.stride(3) == w * out.stride(4)

    # Host tables.
    crop = p.crop.reshape(N, 4)
    fx = torch.where(p.hflip, -1.0, 1.0).to(f32).reshape(N)
    fy = torch.where(p.vflip, -1.0, 1.0).to(f32).reshape(N)
    angle = p.angle.reshape(N)
    rotated = bool((angle != 0).any())  # the reference masks the outside only then
    rows = torch.cat(
        [
            _geometry(crop, fx, fy, angle, H, W),  # without rotation: cos 1, sin 0 anywhere
            p.jitter.reshape(N, 4),
            p.order.reshape(N, 4).to(f32),
            torch.stack(
                [
                    p.grayscale.to(f32),
                    p.gamma,
                    p.solarize.to(f32),
                    p.solarize_threshold,
                    p.noise_std,
                    (p.order == 1).to(torch.uint8).argmax(-1).to(f32),  # contrast's step
                    torch.zeros_like(p.gamma),  # contrast's mean, filled in below
                ],
                -1,
            ).reshape(N, 7),
        ],
        -1,
    )
    assert rows.shape[1] == _NF
    u_tab = (torch.arange(w, dtype=f32) + 0.5) / w - 0.5
    v_tab = (torch.arange(h, dtype=f32) + 0.5) / h - 0.5
    if rgb:
        win = torch.zeros(1, dtype=f32)  # unused
    else:
        win = p.window[:, :, :CU].reshape(N, CU, 2)  # gray: channel 0's stands for all
        if not minmax:  # (lo, span, 1 / span) per channel; 1 / span = 0 maps to 0
            lo, span = win[..., 0], win[..., 1] - win[..., 0]
            win = torch.cat([lo, span, torch.where(span > 0, 1.0 / span, 0.0)], -1)
    mean_t = torch.zeros(CPO, dtype=f32)
    std_t = torch.ones(CPO, dtype=f32)
    mean_t[:C] = torch.tensor(mean, dtype=f32)
    std_t[:C] = torch.tensor(std, dtype=f32)
    norm = torch.cat([mean_t, std_t, 1.0 / std_t])
    sigma = p.blur_sigma.reshape(N)
    brows = (sigma > 0).nonzero().squeeze(1)
    n_blur = brows.numel()
    radius = blur_radius(sigma[brows])
    slots = torch.full((N,), -1, dtype=i32)
    slots[brows] = torch.arange(n_blur, dtype=i32)
    irows = torch.stack([_noise_keys(p.noise_seed, V).reshape(N), slots], -1)
    crows = (p.jitter.reshape(N, 4)[:, 1] != 1).nonzero().squeeze(1)
    n_contrast = crows.numel()

    (rows, irows, win, u_tab, v_tab, norm, crows_d, brows_d, radius_d, sigma_b, crop, fx, fy,
     angle) = _upload(
        [rows, irows, win, u_tab, v_tab, norm, crows.to(i32), brows.to(i32), radius.to(i32),
         sigma[brows], crop, fx, fy, angle],
        dev,
    )  # fmt: skip
    # Device tables: what the reference computes with device transcendentals or the data.
    if rotated:
        rows[:, :6] = _geometry(crop, fx, fy, angle, H, W)
    if not rgb and minmax:  # fractions of each slice's range
        lo_img = x.amin(dim=(-2, -1)).reshape(1, B, 1).to(f32)
        hi_img = x.amax(dim=(-2, -1)).reshape(1, B, 1).to(f32)
        rng = hi_img - lo_img
        frac = win.view(V, B, CU, 2)
        lo, hi = lo_img + frac[..., 0] * rng, lo_img + frac[..., 1] * rng
        span = hi - lo
        win = torch.cat([lo, span, torch.where(span > 0, 1.0 / span, 0.0)], -1).reshape(N, -1)

    geo = dict(H=H, W=W, half_w=W / 2, half_h=H / 2, max_x=W - 1.0, max_y=H - 1.0)
    xargs = (x, sxb, sxy, sxx, sxc, *geo.values())
    use_mask = int(rotated)
    launch = dict(num_warps=4, enable_fp_fusion=False)
    interpret = dev.type == "cpu"  # CPU tensors only run under TRITON_INTERPRET=1
    f32d = dict(dtype=f32, device=dev)

    # Contrast's mean gray, per row that has contrast.
    if n_contrast > 0:
        block = _block(CP, hw)
        n_tiles = triton.cdiv(hw, block)
        partial = torch.empty(n_contrast * n_tiles, **f32d)
        _contrast_mean_kernel[(partial.numel(),)](
            *xargs, rows, win, u_tab, v_tab, crows_d, partial,
            B, h, w, n_tiles, use_mask,
            NF=_NF, CU=CU, CP=CP, RGB=rgb, THREE=THREE, BLOCK=block, **launch,
        )  # fmt: skip
        sums = partial.view(n_contrast, n_tiles).to(torch.float64).sum(1)
        rows[crows_d.long(), _F_CMEAN.value] = (sums / hw).to(f32)

    pre = torch.empty((n_blur, CU, h, w), **f32d) if n_blur else rows
    block = _block(max(CP, CPO), hw)
    n_tiles = triton.cdiv(hw, block)
    _augment_kernel[(N * n_tiles,)](
        *xargs, rows, irows, win, u_tab, v_tab, norm, out, *out.stride(), pre,
        V, B, h, w, n_tiles, use_mask,
        NF=_NF, CU=CU, CP=CP, C=C, CPO=CPO, RGB=rgb, THREE=THREE,
        FLAT=FLAT, INTERPRET=interpret, BLOCK=block, **launch,
    )  # fmt: skip
    if n_blur == 0:
        return out

    # Blur: the reference's weights (its ops, its R = the largest radius; exp on the device),
    # then the two passes over the blurred rows' scratch.
    R = int(radius.max())
    k = torch.arange(-R, R + 1, **f32d)
    wts = torch.exp(-0.5 * (k / sigma_b[:, None]) ** 2)
    wts = torch.where(k.abs() <= radius_d[:, None], wts, 0.0)
    wts = (wts / wts.sum(1, keepdim=True)).contiguous()
    tmp = torch.empty_like(pre)
    block = _block(CP, hw)
    n_tiles = triton.cdiv(hw, block)
    _blur_rows_kernel[(n_blur * n_tiles,)](
        pre, tmp, wts, radius_d, h, w, n_tiles, R, CU=CU, CP=CP, BLOCK=block, **launch
    )
    block = _block(max(CP, CPO), hw)
    n_tiles = triton.cdiv(hw, block)
    _blur_cols_kernel[(n_blur * n_tiles,)](
        tmp, wts, radius_d, brows_d, irows, rows, norm, out, *out.stride(),
        B, h, w, n_tiles, R,
        NF=_NF, CU=CU, CP=CP, C=C, CPO=CPO, FLAT=FLAT, INTERPRET=interpret, BLOCK=block,
        **launch,
    )  # fmt: skip
    return out
