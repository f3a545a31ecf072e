"""augment_views: the reference against independent per-sample implementations (a slow
per-pixel bilinear sampler, F.interpolate on the explicit crop, colorsys and hand-written
torchvision ColorJitter formulas, a direct 2-D convolution, a pure-Python noise hash), the
parameter distributions, shapes and dtypes, the presets, bad input, dispatch and opcheck."""

from __future__ import annotations

import colorsys
import dataclasses
import math
import random

import pytest
import torch
import torch.nn.functional as F

from radengine import _native
from radengine.ops import _dispatch, reference_hu_window
from radengine.ops.augment import (
    IMPLS,
    PRESETS,
    AugmentParams,
    AugmentSpec,
    augment_views,
    noise_hash,
    reference_augment_views,
    sample_params,
    view_seed,
)
from radengine.ops.hu_window import WindowSpec
from tests.conftest import DEVICES

CPU_MISSING = _dispatch.unavailable_reason("cpu", "cpu") or "radengine._cpu lacks augment_views"
HAVE_CPU = "cpu" in IMPLS and _dispatch.unavailable_reason("cpu", "cpu") is None
needs_cpu = pytest.mark.skipif(not HAVE_CPU, reason=CPU_MISSING)

TOL = {
    torch.float32: dict(rtol=0, atol=2e-5),
    torch.float16: dict(rtol=2**-10, atol=2e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=2e-5),
}
M32 = 0xFFFFFFFF


def random_hu(gen, shape, lo=-1024, hi=3072):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int16)


def random_rgb(gen, shape):
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def plain_params(V, B, H, W, window=None, **fields) -> AugmentParams:
    """Full-image crop, nothing random; ``fields`` override."""
    base = dict(
        crop=torch.tensor([0.0, 0.0, H, W]).repeat(V, B, 1),
        hflip=torch.zeros(V, B, dtype=torch.bool),
        vflip=torch.zeros(V, B, dtype=torch.bool),
        angle=torch.zeros(V, B),
        window=window,
        jitter=torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(V, B, 1),
        order=torch.arange(4).repeat(V, B, 1),
        grayscale=torch.zeros(V, B, dtype=torch.bool),
        gamma=torch.ones(V, B),
        solarize=torch.zeros(V, B, dtype=torch.bool),
        solarize_threshold=torch.full((V, B), 0.5),
        blur_sigma=torch.zeros(V, B),
        noise_std=torch.zeros(V, B),
        noise_seed=torch.arange(V * B, dtype=torch.int64).view(V, B) + 12345,
    )
    base.update(fields)
    return AugmentParams(**base)


def reference(x, params, size, minmax=False, mean=None, std=None, dtype=torch.float32, cl=False):
    C = params.channels
    return reference_augment_views(
        x,
        params,
        size,
        mean if mean is not None else [0.0] * C,
        std if std is not None else [1.0] * C,
        minmax,
        dtype,
        cl,
    )


def fixed_window(V, B, pairs) -> torch.Tensor:
    """(V, B, C, 2) window tensor from (lo, hi) pairs, the same for every view/sample."""
    return torch.tensor(pairs, dtype=torch.float32).repeat(V, B, 1, 1)


# ----------------------------------------------------------------------------- geometry


def slow_view(x, params, v, b, size, minmax):
    """Per output pixel, in float64 Python: the mapping and the per-tap intensity of the
    module docstring, written independently of the reference."""
    h, w = size
    rgb = x.dtype == torch.uint8
    img = x[b].double().permute(2, 0, 1) if rgb else x[b].reshape(1, *x.shape[-2:]).double()
    H, W = img.shape[-2:]
    C = params.channels
    y0, x0, ch, cw = params.crop[v, b].double().tolist()
    th = math.radians(params.angle[v, b].item())
    fx = -1.0 if params.hflip[v, b] else 1.0
    fy = -1.0 if params.vflip[v, b] else 1.0
    out = torch.zeros(C, h, w, dtype=torch.float64)
    for c in range(C):
        if rgb:
            plane = img[c] / 255.0
        else:
            lo, hi = params.window[v, b, c].double().tolist()
            if minmax:
                mn, mx = img.min().item(), img.max().item()
                lo, hi = mn + lo * (mx - mn), mn + hi * (mx - mn)
            plane = ((img[0] - lo) / (hi - lo)).clamp(0, 1) if hi > lo else img[0] * 0
        for i in range(h):
            for j in range(w):
                uu = ((j + 0.5) / w - 0.5) * fx
                vv = ((i + 0.5) / h - 0.5) * fy
                sx = x0 + cw / 2 - 0.5 + math.cos(th) * cw * uu - math.sin(th) * ch * vv
                sy = y0 + ch / 2 - 0.5 + math.sin(th) * cw * uu + math.cos(th) * ch * vv
                if not (-0.5 <= sx <= W - 0.5 and -0.5 <= sy <= H - 0.5):
                    continue  # fill 0
                sx, sy = min(max(sx, 0.0), W - 1.0), min(max(sy, 0.0), H - 1.0)
                ix, iy = min(int(sx), W - 1), min(int(sy), H - 1)
                ax, ay = sx - ix, sy - iy
                ix1, iy1 = min(ix + 1, W - 1), min(iy + 1, H - 1)
                out[c, i, j] = (
                    (1 - ay) * ((1 - ax) * plane[iy, ix] + ax * plane[iy, ix1])
                    + ay * ((1 - ax) * plane[iy1, ix] + ax * plane[iy1, ix1])
                ).item()
    return out


@pytest.mark.parametrize("minmax", [False, True], ids=["windows", "minmax"])
def test_geometry_and_windows_match_slow_oracle(gen, minmax):
    V, B, H, W, size = 2, 3, 7, 9, (5, 6)
    x = random_hu(gen, (B, H, W), -1500, 2500)
    spec = AugmentSpec(
        crop_scale=(0.3, 1.0),
        vflip_p=0.5,
        rotate_p=0.7,
        rotate_deg=40,
        window_jitter_p=0.7,
        window_center_shift=0.3,
        window_width_scale=(0.5, 1.5),
        jitter_p=0.0,
        grayscale_p=0.0,
    )
    ws = WindowSpec.parse("minmax", repeat=2) if minmax else WindowSpec.parse(["lung", "bone"])
    p = sample_params(spec, V, B, (H, W), ws, seed=int(torch.randint(1 << 30, (1,), generator=gen)))
    out = reference(x, p, size, minmax=minmax)
    assert out.shape == (V, B, 2, *size)
    for v in range(V):
        for b in range(B):
            torch.testing.assert_close(
                out[v, b].double(), slow_view(x, p, v, b, size, minmax), rtol=0, atol=1e-4
            )


def test_rgb_geometry_matches_slow_oracle(gen):
    V, B, H, W, size = 2, 2, 6, 5, (8, 3)
    x = random_rgb(gen, (B, H, W, 3))
    spec = AugmentSpec(crop_scale=(0.2, 1), rotate_p=1.0, rotate_deg=180, jitter_p=0)
    spec = dataclasses.replace(spec, grayscale_p=0.0)
    p = sample_params(spec, V, B, (H, W), None, seed=7)
    out = reference(x, p, size)
    for v in range(V):
        for b in range(B):
            torch.testing.assert_close(
                out[v, b].double(), slow_view(x, p, v, b, size, False), rtol=0, atol=1e-4
            )


def test_crop_and_flips_match_interpolate_on_the_crop(gen):
    """Crops not smaller than the output: exactly torchvision's resized_crop + flips."""
    V, B, H, W, size = 3, 6, 32, 40, (8, 11)
    x = random_hu(gen, (B, H, W))
    spec = AugmentSpec(crop_scale=(0.3, 1.0), vflip_p=0.5, jitter_p=0, grayscale_p=0)
    p = sample_params(spec, V, B, (H, W), WindowSpec.parse("soft_tissue"), seed=3)
    assert bool((p.crop[..., 2] >= size[0]).all() and (p.crop[..., 3] >= size[1]).all())
    out = reference(x, p, size)
    windowed = reference_hu_window(x, [-160.0], [240.0], [0.0], [1.0], False, torch.float32, False)
    for v in range(V):
        for b in range(B):
            y0, x0, ch, cw = (int(t) for t in p.crop[v, b].tolist())
            expected = F.interpolate(
                windowed[b : b + 1, :, y0 : y0 + ch, x0 : x0 + cw],
                size=size,
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )[0]
            if p.hflip[v, b]:
                expected = expected.flip(-1)
            if p.vflip[v, b]:
                expected = expected.flip(-2)
            torch.testing.assert_close(out[v, b], expected, **TOL[torch.float32])


def test_each_tap_is_windowed_before_blending():
    # Taps -1000 and 200 HU, window (0, 400) = [-200, 200]: windowed taps 0 and 1, so the
    # midpoint is 0.5. Interpolating first would give -400 HU -> 0.
    x = torch.tensor([[[-1000, 200]]], dtype=torch.int16)
    p = plain_params(1, 1, 1, 2, window=fixed_window(1, 1, [(-200.0, 200.0)]))
    assert reference(x, p, (1, 1)).item() == pytest.approx(0.5)
    # Min-max: the range is the whole slice's, not the crop's: taps 0 and 50 of [0, 100].
    x = torch.tensor([[[0, 50, 100]]], dtype=torch.int16)
    p = plain_params(1, 1, 1, 3, window=fixed_window(1, 1, [(0.0, 1.0)]))
    p.crop[:] = torch.tensor([0.0, 0.0, 1.0, 2.0])
    out = reference(x, p, (1, 2), minmax=True).flatten().tolist()
    assert out == pytest.approx([0.0, 0.5], abs=1e-6)


def test_rotation_direction_and_fill():
    x = torch.zeros(1, 5, 5, dtype=torch.int16)
    x[0, 2, 4] = 100  # right of the centre
    win = fixed_window(1, 1, [(0.0, 100.0)])
    p = plain_params(1, 1, 5, 5, window=win, angle=torch.tensor([[90.0]]))
    out = reference(x, p, (5, 5))[0, 0, 0]
    # counter-clockwise: what was right of the centre is now above it (torch.rot90, k=1)
    expected = torch.rot90(x[0].float() / 100, 1, (0, 1))
    assert expected[0, 2] == 1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # 45 degrees of a bright square: the corners fall outside the image -> fill 0.
    x = torch.full((1, 8, 8), 100, dtype=torch.int16)
    p = plain_params(1, 1, 8, 8, window=win, angle=torch.tensor([[45.0]]))
    out = reference(x, p, (8, 8))[0, 0, 0]
    assert out[0, 0] == 0 and out[-1, -1] == 0 and out[0, -1] == 0
    assert torch.all(out[3:5, 3:5] == 1)


# ----------------------------------------------------------------------------- colour


def tv_gray(img):
    return 0.299 * img[0:1] + 0.587 * img[1:2] + 0.114 * img[2:3]


def tv_blend(a, b, r):
    return (r * a + (1 - r) * b).clamp(0, 1)


def tv_hue(img, d):
    out = torch.empty_like(img)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            hh, s, v = colorsys.rgb_to_hsv(*img[:, i, j].tolist())
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((hh + d) % 1.0, s, v))
    return out


TV_OPS = {
    0: lambda img, f: tv_blend(img, torch.zeros_like(img), f),
    1: lambda img, f: tv_blend(img, tv_gray(img).mean(), f),
    2: lambda img, f: tv_blend(img, tv_gray(img), f),
    3: tv_hue,
}


def tv_jitter(img, factors, order):
    for op in order.tolist():
        f = factors[op].item()
        if f != (0.0 if op == 3 else 1.0):
            img = TV_OPS[op](img, f)
    return img


@pytest.mark.parametrize("source", ["rgb", "ct_gray"])
def test_color_jitter_matches_torchvision_formulas(gen, source):
    V, B, H, W = 2, 4, 5, 6
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    jitter = torch.stack(
        [
            0.2 + 1.6 * torch.rand(V, B, generator=g),
            0.2 + 1.6 * torch.rand(V, B, generator=g),
            0.2 + 1.6 * torch.rand(V, B, generator=g),
            -0.4 + 0.8 * torch.rand(V, B, generator=g),
        ],
        -1,
    )
    jitter[0, 0] = torch.tensor([1.3, 1.0, 1.0, 0.0])  # single ops
    jitter[0, 1] = torch.tensor([1.0, 0.6, 1.0, 0.0])
    jitter[0, 2] = torch.tensor([1.0, 1.0, 1.7, 0.0])
    jitter[0, 3] = torch.tensor([1.0, 1.0, 1.0, 0.3])
    order = torch.rand(V, B, 4, generator=g).argsort(-1)
    if source == "rgb":
        x = random_rgb(gen, (B, H, W, 3))
        base = x.permute(0, 3, 1, 2).double() / 255
        p = plain_params(V, B, H, W, jitter=jitter, order=order)
        out = reference(x, p, (H, W))
    else:  # one min-max channel x 3: the gray fast path must equal the RGB formulas
        x = random_hu(gen, (B, H, W))
        xf = x.double()
        mn, mx = xf.amin((1, 2), keepdim=True), xf.amax((1, 2), keepdim=True)
        base = ((xf - mn) / (mx - mn)).unsqueeze(1).expand(B, 3, H, W)
        p = plain_params(V, B, H, W, fixed_window(V, B, [(0, 1)] * 3), jitter=jitter, order=order)
        out = reference(x, p, (H, W), minmax=True)
    for v in range(V):
        for b in range(B):
            expected = tv_jitter(base[b], jitter[v, b].double(), order[v, b])
            torch.testing.assert_close(out[v, b].double(), expected, rtol=0, atol=1e-4)


def test_grayscale_gamma_solarize(gen):
    V, B, H, W = 1, 4, 4, 5
    x = random_rgb(gen, (B, H, W, 3))
    base = x.permute(0, 3, 1, 2).double() / 255
    p = plain_params(
        V,
        B,
        H,
        W,
        grayscale=torch.tensor([[True, False, True, False]]),
        gamma=torch.tensor([[1.0, 0.6, 1.7, 1.0]]),
        solarize=torch.tensor([[False, False, True, True]]),
        solarize_threshold=torch.tensor([[0.5, 0.5, 0.3, 0.6]]),
    )
    out = reference(x, p, (H, W))[0].double()
    luma = (0.299 * base[:, 0] + 0.587 * base[:, 1] + 0.114 * base[:, 2]).unsqueeze(1)
    exp = base.clone()
    exp[0] = luma[0].expand(3, H, W)
    exp[1] = base[1] ** 0.6
    g2 = luma[2].expand(3, H, W) ** 1.7
    exp[2] = torch.where(g2 >= 0.3, 1 - g2, g2)
    exp[3] = torch.where(base[3] >= 0.6, 1 - base[3], base[3])
    torch.testing.assert_close(out, exp, rtol=0, atol=1e-5)
    # CT with two windows: grayscale is skipped (C != 3)
    ct = random_hu(gen, (1, H, W))
    win = fixed_window(1, 1, [(-160, 240), (-1350, 150)])
    plain = reference(ct, plain_params(1, 1, H, W, win), (H, W))
    gs = reference(
        ct, plain_params(1, 1, H, W, win, grayscale=torch.ones(1, 1, dtype=bool)), (H, W)
    )
    assert torch.equal(plain, gs)


def test_blur_matches_direct_2d_convolution(gen):
    V, B, H, W = 2, 3, 9, 14
    x = random_rgb(gen, (B, H, W, 3))
    sigma = torch.tensor([[0.0, 0.4, 1.0], [2.0, 0.1, 3.3]])
    out = reference(x, plain_params(V, B, H, W, blur_sigma=sigma), (H, W)).double()
    base = x.permute(0, 3, 1, 2).double() / 255
    for v in range(V):
        for b in range(B):
            s = sigma[v, b].item()
            if s == 0:
                torch.testing.assert_close(out[v, b], base[b], rtol=0, atol=1e-5)
                continue
            r = math.ceil(3 * s)
            k = torch.arange(-r, r + 1, dtype=torch.float64)
            k1 = torch.exp(-(k**2) / (2 * s * s))
            k2 = torch.outer(k1, k1) / k1.sum() ** 2
            padded = F.pad(base[b : b + 1], (r, r, r, r), mode="replicate")
            exp = F.conv2d(padded, k2.expand(3, 1, -1, -1), groups=3)[0]
            torch.testing.assert_close(out[v, b], exp, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- noise


def py_mix(h):
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & M32
    return h ^ (h >> 16)


def py_noise_words(seed, v, c, y, x):
    k = py_mix((seed & M32) ^ 0x9E3779B9)
    k = py_mix(k ^ ((seed >> 32) & M32))
    for word in (v, c, y):
        k = py_mix(k ^ word)
    return py_mix(k ^ (2 * x)), py_mix(k ^ (2 * x + 1))


def test_noise_hash_is_the_documented_formula():
    seeds = torch.tensor([0, 12345, 2**62 - 1, -7], dtype=torch.int64)
    views = torch.tensor([0, 1, 3, 2])
    a, b = noise_hash(seeds, views, 2, 3, 4)
    assert a.shape == b.shape == (4, 2, 3, 4)
    for n in range(4):
        for c, y, x in [(0, 0, 0), (1, 2, 3), (0, 1, 2), (1, 0, 3)]:
            s = seeds[n].item() & ((1 << 64) - 1)  # two's complement, as a kernel's uint64
            expected = py_noise_words(s, views[n].item(), c, y, x)
            assert (a[n, c, y, x].item(), b[n, c, y, x].item()) == expected


def test_noise_is_reproducible_and_gaussian():
    V, B, H, W = 2, 2, 256, 256
    x = torch.full((B, H, W), 40, dtype=torch.int16)  # window (40, 400) -> 0.5
    win = fixed_window(V, B, [(-160.0, 240.0)] * 2)
    p = plain_params(V, B, H, W, win, noise_std=torch.full((V, B), 0.05))
    out = reference(x, p, (H, W))
    assert torch.equal(out, reference(x, p, (H, W)))
    z = (out.double() - 0.5) / 0.05
    # different views, samples and channels differ; all are N(0, 1)
    assert not torch.equal(z[0, 0], z[1, 0]) and not torch.equal(z[0, 0], z[0, 1])
    assert not torch.equal(z[0, 0, 0], z[0, 0, 1])
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.std().item() - 1) < 0.01
    assert abs(((z.abs() < 1).double().mean() - 0.6827).item()) < 0.005
    # the first pixels, by hand: Box-Muller on the hash
    seed = p.noise_seed[1, 0].item()
    for c, i, j in [(0, 0, 0), (1, 5, 7)]:
        wa, wb = py_noise_words(seed, 1, c, i, j)
        u1, u2 = ((wa >> 8) + 1) * 2.0**-24, (wb >> 8) * 2.0**-24
        zz = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
        assert z[1, 0, c, i, j].item() == pytest.approx(zz, abs=1e-3)
    # another seed: other noise
    q = dataclasses.replace(p, noise_seed=p.noise_seed + 1)
    assert not torch.equal(out, reference(x, q, (H, W)))


def test_noise_of_a_slice_of_the_batch_equals_the_whole_batch():
    # one rank's rows of a global batch's parameters give that rank the same views
    x = torch.randint(-1000, 1000, (6, 24, 24), dtype=torch.int16)
    spec = {"preset": "ct", "noise_p": 1.0}
    views, p = augment_views(x, spec, size=16, intensity=(40, 400), repeat=1, seed=3)
    part = AugmentParams(**{k: None if v is None else v[:, 2:5] for k, v in p.items()})
    mine, _ = augment_views(x[2:5], spec, size=16, intensity=(40, 400), repeat=1, params=part)
    for whole, piece in zip(views, mine, strict=True):
        torch.testing.assert_close(piece, whole[2:5], rtol=0, atol=0)


# ----------------------------------------------------------------------------- params


def tv_crop(rng: random.Random, H: int, W: int, scale, ratio) -> tuple[int, int]:
    """(h, w) of torchvision's RandomResizedCrop.get_params, as its scalar loop."""
    for _ in range(10):
        target = H * W * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            return h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        return round(W / ratio[0]), W
    if in_ratio > ratio[1]:
        return H, round(H * ratio[1])
    return H, W


def binomial_ok(rate: float, p: float, n: int) -> bool:
    return abs(rate - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_parameter_distributions():
    V, B, H, W = 2, 3000, 96, 128
    n = V * B
    spec = AugmentSpec(
        crop_scale=(0.1, 0.9),
        vflip_p=0.3,
        rotate_p=0.4,
        rotate_deg=(-20, 5),
        window_jitter_p=0.6,
        window_center_shift=(-0.2, 0.1),
        window_width_scale=(0.7, 1.4),
        gamma_p=0.25,
        blur_p=0.5,
        noise_p=0.1,
        solarize_p=0.15,
    )
    windows = [(40.0, 80.0), (-600.0, 1500.0), (400.0, 1800.0)]
    p = sample_params(spec, V, B, (H, W), WindowSpec.parse(windows), seed=11)
    y0, x0, ch, cw = p.crop.unbind(-1)
    assert bool((y0 >= 0).all() and (x0 >= 0).all() and (y0 + ch <= H).all())
    assert bool((x0 + cw <= W).all() and (ch >= 1).all() and (cw >= 1).all())
    assert torch.equal(p.crop, p.crop.round())
    # area and ratio within range, up to the rounding of h and w to integers
    slack = (0.5 * (ch + cw) + 0.25) / (H * W)
    area = ch * cw / (H * W)
    assert bool((area >= 0.1 - slack).all() and (area <= 0.9 + slack).all())
    ratio = cw / ch
    assert bool((ratio >= 0.75 * (1 - 1 / ch) - 0.5 / ch).all())
    assert bool((ratio <= 4 / 3 * (1 + 1 / ch) + 0.5 / ch).all())
    # the same distribution as torchvision's scalar loop (first fit biases to small areas)
    tv = [
        tv_crop(rng, H, W, (0.1, 0.9), (3 / 4, 4 / 3))
        for rng in [random.Random(0)]
        for _ in range(n)
    ]
    tv_h, tv_w = (torch.tensor(t, dtype=torch.float64) for t in zip(*tv, strict=True))
    assert area.double().mean().item() == pytest.approx(
        (tv_h * tv_w).mean().item() / (H * W), abs=0.01
    )
    assert (cw / ch).log().mean().item() == pytest.approx(
        (tv_w / tv_h).log().mean().item(), abs=0.02
    )
    # uniform offsets: the crop centres spread over the whole free range
    assert (y0 / (H - ch).clamp(min=1)).mean().item() == pytest.approx(0.5, abs=0.03)
    for field, prob in [
        ("hflip", 0.5),
        ("vflip", 0.3),
        ("grayscale", 0.2),
        ("solarize", 0.15),
    ]:
        assert binomial_ok(getattr(p, field).double().mean().item(), prob, n), field
    for on, prob in [
        (p.angle != 0, 0.4),
        (p.gamma != 1, 0.25),
        (p.blur_sigma > 0, 0.5),
        (p.noise_std > 0, 0.1),
        ((p.jitter != torch.tensor([1.0, 1, 1, 0])).any(-1), 0.8),
    ]:
        assert binomial_ok(on.double().mean().item(), prob, n)
    assert bool((p.angle >= -20).all() and (p.angle <= 5).all())
    assert bool(p.gamma[p.gamma != 1].ge(0.7).all() and p.gamma.le(1.5).all())
    assert bool(p.blur_sigma[p.blur_sigma > 0].ge(0.1).all() and p.blur_sigma.le(2).all())
    on = (p.jitter != torch.tensor([1.0, 1, 1, 0])).any(-1)
    for k, (lo, hi) in enumerate([(0.2, 1.8), (0.2, 1.8), (0.2, 1.8), (-0.2, 0.2)]):
        f = p.jitter[..., k][on]
        assert bool((f >= lo).all() and (f <= hi).all())
        assert f.mean().item() == pytest.approx((lo + hi) / 2, abs=0.03)
    assert torch.equal(p.order.sort(-1).values, torch.arange(4).expand(V, B, 4))
    first = torch.bincount(p.order[..., 0].flatten(), minlength=4).double() / n
    assert all(binomial_ok(r, 0.25, n) for r in first.tolist())
    # window jitter: centre/width within the ranges, independent per window
    for c, (centre, width) in enumerate(windows):
        lo, hi = p.window[:, :, c].double().unbind(-1)
        shift, scale = ((lo + hi) / 2 - centre) / width, (hi - lo) / width
        jittered = (shift.abs() > 1e-6) | ((scale - 1).abs() > 1e-6)
        assert binomial_ok(jittered.double().mean().item(), 0.6, n)
        assert bool((shift >= -0.2 - 1e-5).all() and (shift <= 0.1 + 1e-5).all())
        assert bool((scale >= 0.7 - 1e-5).all() and (scale <= 1.4 + 1e-5).all())
    shifts = [(p.window[:, :, c].sum(-1) / 2 - ctr) / wd for c, (ctr, wd) in enumerate(windows)]
    assert (shifts[0] - shifts[1]).abs().max() > 0.05  # each window draws its own
    # 4 channels (2 windows x 2): repeated channels share the jitter; no saturation, hue
    # or grayscale without 3 channels
    p4 = sample_params(spec, V, 50, (H, W), WindowSpec.parse(windows[:2], repeat=2), seed=1)
    assert torch.equal(p4.window[:, :, 0], p4.window[:, :, 1])
    assert torch.equal(p4.window[:, :, 2], p4.window[:, :, 3])
    assert not torch.equal(p4.window[:, :, 1], p4.window[:, :, 2])
    assert not p4.grayscale.any() and bool((p4.jitter[..., 2:] == torch.tensor([1.0, 0])).all())
    assert bool((p4.jitter[..., :2] != 1).any())


def test_crop_fallback_and_full_crop():
    # A 4 x 200 strip: no crop of ratio <= 4/3 and area >= 0.5 fits in 10 tries, so
    # torchvision's fallback: the whole height, width clamped to the max ratio, centred.
    p = sample_params({"crop_scale": (0.5, 1.0)}, 2, 50, (4, 200), None, seed=0)
    fallback = torch.tensor([0.0, (200 - 5) // 2, 4.0, 5.0])
    assert bool((p.crop == fallback).all(-1).all())
    p = sample_params({"crop_scale": (0.5, 1.0)}, 2, 50, (200, 4), None, seed=0)
    assert bool((p.crop == torch.tensor([(200 - 5) // 2, 0.0, 5.0, 4.0])).all(-1).all())
    p = sample_params("none", 3, 5, (7, 9), WindowSpec.parse("minmax", repeat=3), seed=4)
    assert bool((p.crop == torch.tensor([0.0, 0.0, 7.0, 9.0])).all())
    assert torch.equal(p.window, torch.tensor([0.0, 1.0]).expand(3, 5, 3, 2))


def test_seed_reproducibility(gen):
    x = random_hu(gen, (4, 40, 36))
    kw = dict(views=3, size=24, intensity=["brain", "lung", "bone"], repeat=1)
    a, pa = augment_views(x, "ct", seed=5, **kw)
    b, pb = augment_views(x, "ct", seed=5, **kw)
    c, pc = augment_views(x, "ct", seed=6, **kw)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(
        (u is None and v is None) or torch.equal(u, v)
        for (_, u), (_, v) in zip(pa.items(), pb.items(), strict=True)
    )
    assert not torch.equal(pa.crop, pc.crop) and not torch.equal(a[0], c[0])
    # replaying the params reproduces the views
    d, pd = augment_views(x, "simclr", params=pa, **kw)
    assert pd is pa and all(torch.equal(u, v) for u, v in zip(a, d, strict=True))
    # params do not depend on the data, only on (spec, V, B, H, W, channels, seed)
    _, pe = augment_views(random_hu(gen, (4, 40, 36)), "ct", seed=5, **kw)
    assert torch.equal(pe.crop, pa.crop) and torch.equal(pe.window, pa.window)


def test_params_helpers_and_validation():
    p = sample_params("simclr", 3, 4, (10, 12), None, seed=0)
    assert (len(p), p.views, p.batch, p.channels) == (3, 3, 4, 3)
    q = AugmentParams.from_dict(p.to_dict())
    assert p.window is None and q.window is None
    assert all(torch.equal(getattr(p, k), getattr(q, k)) for k, v in p.items() if v is not None)
    with pytest.raises(ValueError, match=r"AugmentParams.gamma must be a 3x4 torch.float32"):
        dataclasses.replace(p, gamma=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"AugmentParams.hflip .*torch.bool"):
        dataclasses.replace(p, hflip=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"AugmentParams.window must be a 3x4xCx2"):
        dataclasses.replace(p, window=torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match=r"unknown AugmentParams field 'gama'.*'gamma'"):
        AugmentParams.from_dict({**p.to_dict(), "gama": p.gamma})


# ----------------------------------------------------------------------------- the op

CASES = {
    "ct_two_windows_3x123x77": (
        "int16",
        (3, 123, 77),
        dict(intensity=["brain", "bone"], repeat=1),
        2,
    ),
    "ct_minmax_x3_1chan_dim": ("int16", (2, 1, 33, 65), dict(intensity="minmax"), 3),
    "ct_clip_1x1": ("int16", (1, 1, 1), dict(intensity="clip", repeat=1, mean=0.5, std=0.25), 1),
    "ct_window_x3_b1": ("int16", (1, 20, 30), dict(intensity="lung", mean=[0.1, 0.2, 0.3]), 3),
    "rgb_imagenet_norm": (
        "uint8",
        (2, 17, 9, 3),
        dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        3,
    ),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("size", [7, (40, 13)], ids=["7", "40x13"])
@pytest.mark.parametrize("preset", ["simclr", "ct"])
def test_shapes_dtypes_layouts(gen, device, case, size, preset):
    kind, shape, kw, C = CASES[case]
    x = (random_hu(gen, shape) if kind == "int16" else random_rgb(gen, shape)).to(device)
    hw = (size, size) if isinstance(size, int) else size
    ref, params = augment_views(x, preset, views=2, size=size, seed=3, **kw)
    assert len(ref) == 2 and params.views == 2 and params.batch == shape[0]
    assert params.crop.device.type == "cpu"
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for cl in (False, True):
            out, _ = augment_views(
                x, preset, size=size, params=params, dtype=dtype, channels_last=cl, **kw
            )
            fmt = torch.channels_last if cl else torch.contiguous_format
            for o, r in zip(out, ref, strict=True):
                assert o.shape == (shape[0], C, *hw) and o.dtype == dtype
                assert o.device == x.device and o.is_contiguous(memory_format=fmt)
                torch.testing.assert_close(o.double(), r.double(), **TOL[dtype])
    values = torch.stack(ref)
    assert torch.isfinite(values).all()
    if "mean" not in kw:
        assert values.min() >= 0 and values.max() <= 1


def test_none_preset_is_window_and_resize(gen):
    x = random_hu(gen, (3, 21, 34))
    for intensity, repeat, size in [
        ("minmax", 3, (16, 16)),
        (["brain", "lung"], 1, (40, 50)),
        ("clip", 2, (21, 34)),
    ]:
        ws = WindowSpec.parse(intensity, repeat=repeat, mean=0.25, std=0.5)
        lo, hi = ws.bounds()
        C = ws.channels
        windowed = reference_hu_window(
            x, lo, hi, [0.0] * C, [1.0] * C, ws.minmax, torch.float32, False
        )
        expected = (
            F.interpolate(windowed, size=size, mode="bilinear", align_corners=False) - 0.25
        ) / 0.5
        for seed in (0, 1):
            views, _ = augment_views(x, "none", views=2, size=size, intensity=ws, seed=seed)
            for v in views:
                torch.testing.assert_close(v, expected, rtol=0, atol=1e-4)
    rgb = random_rgb(gen, (2, 9, 11, 3))
    views, _ = augment_views(rgb, "none", views=1, size=(5, 4))
    expected = F.interpolate(rgb.permute(0, 3, 1, 2).float() / 255, size=(5, 4), mode="bilinear")
    torch.testing.assert_close(views[0], expected, rtol=0, atol=1e-5)


def test_presets_and_parse():
    assert AugmentSpec.preset("simclr") == AugmentSpec() == AugmentSpec.parse("simclr")
    simclr = PRESETS["simclr"]
    assert simclr.crop_scale == (0.08, 1.0) and simclr.crop_ratio == (3 / 4, 4 / 3)
    assert (simclr.brightness, simclr.contrast, simclr.saturation) == ((0.2, 1.8),) * 3
    assert (simclr.hue, simclr.jitter_p, simclr.grayscale_p) == ((-0.2, 0.2), 0.8, 0.2)
    assert simclr.blur_p == simclr.rotate_p == simclr.noise_p == simclr.window_jitter_p == 0
    ct = PRESETS["ct"]
    assert ct.saturation == (1.0, 1.0) and ct.hue == (0.0, 0.0) and ct.brightness == (0.6, 1.4)
    spec = AugmentSpec.parse(
        {"preset": "ct", "blur_p": 0.25, "brightness": 0.3, "rotate_deg": 15, "gamma": [0.8, 1]}
    )
    assert spec.blur_p == 0.25 and spec.brightness == (0.7, 1.3)
    assert spec.rotate_deg == (-15.0, 15.0) and spec.gamma == (0.8, 1.0)
    assert spec.crop_scale == (0.2, 1.0)  # from the preset
    assert AugmentSpec.parse({"noise_std": 0.02}).noise_std == (0.02, 0.02)
    assert AugmentSpec.parse(spec) is spec
    # "none" draws nothing random
    x = torch.randint(-1000, 1000, (2, 12, 12), dtype=torch.int16)
    a, pa = augment_views(x, "none", seed=0, size=8)
    b, pb = augment_views(x, "none", seed=99, size=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], a[1]) and torch.equal(pa.crop, pb.crop)


def test_gray_fast_path_equals_distinct_channels(gen):
    """A 3-channel CT view of one repeated window goes through the 1-channel path; nudging
    one channel's window by a negligible amount forces the 3-channel path."""
    B, H, W = 3, 24, 20
    x = random_hu(gen, (B, H, W))
    p = sample_params("simclr", 2, B, (H, W), WindowSpec.parse("soft_tissue", repeat=3), seed=2)
    p = dataclasses.replace(p, blur_sigma=torch.full((2, B), 0.8), gamma=torch.full((2, B), 1.3))
    fast = reference(x, p, (16, 16))
    nudged = p.window.clone()
    nudged[..., 2, 1] += 1e-3  # 240 HU -> 240.001
    slow = reference(x, dataclasses.replace(p, window=nudged), (16, 16))
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x=torch.zeros(2, 4, 4)), r"x must be int16 HU .* or uint8 RGB .*float32"),
        (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int16)), r"int16 CT must have shape"),
        (dict(x=torch.zeros(2, 4, 4, dtype=torch.uint8)), r"uint8 RGB must have shape"),
        (dict(x=torch.zeros(2, 0, 4, dtype=torch.int16)), "empty image side"),
        (dict(x=[[1]]), "x must be a torch.Tensor"),
        (dict(views=0), "views must be an integer >= 1"),
        (dict(size=0), "size must be a positive int"),
        (dict(size=(4, 0)), "size must be a positive int"),
        (dict(size=(4,)), "size must be a positive int"),
        (dict(spec="simclr2"), "unknown augmentation preset 'simclr2'; did you mean 'simclr'"),
        (dict(spec={"blur_pp": 0.5}), "unknown augmentation key 'blur_pp'; did you mean 'blur_p'"),
        (dict(spec={"preset": "CT"}), "unknown augmentation preset 'CT'"),
        (dict(spec={"hflip_p": 1.5}), r"AugmentSpec.hflip_p must be a probability in \[0, 1\]"),
        (dict(spec={"noise_p": -0.1}), r"AugmentSpec.noise_p must be a probability"),
        (dict(spec={"crop_scale": (0.5, 0.2)}), r"crop_scale = \(0.5, 0.2\): min must be <= max"),
        (dict(spec={"crop_scale": (0.0, 1.0)}), r"crop_scale .* within \(0.0, 1.0\]"),
        (dict(spec={"crop_scale": (0.5, 1.5)}), r"crop_scale .* within"),
        (dict(spec={"crop_ratio": (0, 1)}), r"crop_ratio .* within"),
        (dict(spec={"hue": 0.7}), r"AugmentSpec.hue = \(-0.7, 0.7\) must lie within"),
        (dict(spec={"gamma": (0, 1)}), r"AugmentSpec.gamma .* within"),
        (dict(spec={"blur_sigma": (1, 40)}), r"AugmentSpec.blur_sigma .* within"),
        (dict(spec={"noise_std": -0.1}), r"AugmentSpec.noise_std .* within"),
        (dict(spec={"brightness": -1}), r"AugmentSpec.brightness = -1.0 must be >= 0"),
        (dict(spec={"rotate_deg": "ten"}), r"rotate_deg must be a number or a \(min, max\)"),
        (dict(spec={"window_width_scale": (0, 2)}), r"window_width_scale .* within"),
        (dict(spec={"crop": "yes"}), "AugmentSpec.crop must be True or False"),
        (dict(spec={"jitter_p": True}), "AugmentSpec.jitter_p must be a number"),
        (dict(spec=42), "spec must be an AugmentSpec, a preset name"),
        (dict(intensity="kidney"), "intensity: .*unknown window 'kidney'"),
        (dict(mean=[0.1, 0.2]), "mean has 2 values but"),
        (dict(std=0.0), r"std\[0\] must be > 0"),
        (dict(dtype=torch.float64), "dtype must be"),
        (dict(seed="a"), "seed must be an int"),
        (dict(backend="gpu"), "backend 'gpu' is not one of"),
    ],
)
def test_bad_input(kwargs, match):
    x = kwargs.pop("x", torch.zeros(2, 4, 4, dtype=torch.int16))
    spec = kwargs.pop("spec", "simclr")
    with pytest.raises(ValueError, match=match):
        augment_views(x, spec, **kwargs)


def test_bad_rgb_normalisation_and_params():
    rgb = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    ct = torch.zeros(2, 4, 4, dtype=torch.int16)
    with pytest.raises(ValueError, match="mean has 2 values but the output has 3 channels"):
        augment_views(rgb, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"std\[1\] must be > 0"):
        augment_views(rgb, std=[1, 0, 1])
    _, p = augment_views(ct, views=2)
    with pytest.raises(ValueError, match="params were drawn for batch 2 but x has batch 3"):
        augment_views(torch.zeros(3, 4, 4, dtype=torch.int16), params=p)
    with pytest.raises(ValueError, match="params has 2 views but views=3"):
        augment_views(ct, views=3, params=p)
    with pytest.raises(ValueError, match=r"params\.window has 3 channels but the output has 2"):
        augment_views(ct, params=p, intensity=["brain", "bone"], repeat=1)
    with pytest.raises(ValueError, match=r"params\.window must be None for RGB"):
        augment_views(rgb, params=p)
    _, prgb = augment_views(rgb)
    with pytest.raises(ValueError, match=r"params\.window is None but x is CT"):
        augment_views(ct, params=prgb)
    with pytest.raises(ValueError, match="params must be an AugmentParams"):
        augment_views(ct, params={"crop": None})


def test_dispatch_and_empty_batch(monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    assert list(IMPLS)[:2] == ["reference", "cpu"]
    assert set(IMPLS) <= {"reference", "cpu", "cuda", "triton"}
    default = "cpu" if HAVE_CPU else "reference"
    assert _dispatch.select("augment", IMPLS, torch.device("cpu"))[0] == default
    x = torch.zeros(2, 6, 6, dtype=torch.int16)
    # CPU tensors never run on the cuda backend: missing (a _cuda without the op) or refused.
    cuda_why = "takes CUDA tensors, not cpu" if "cuda" in IMPLS else "no 'cuda' backend"
    with pytest.raises(_dispatch.BackendUnavailableError, match=cuda_why):
        augment_views(x, backend="cuda")
    if not HAVE_CPU:
        with pytest.raises(_dispatch.BackendUnavailableError, match="backend 'cpu' requested"):
            augment_views(x, backend="cpu")
    for forced in ["reference", *(["cpu"] if HAVE_CPU else [])]:
        monkeypatch.setenv("RADENGINE_BACKEND", forced)
        assert _dispatch.select("augment", IMPLS, torch.device("cpu"))[0] == forced
        views, params = augment_views(x, size=4)
        assert views[0].shape == (2, 3, 4, 4)
        views, params = augment_views(x[:0], size=(3, 5), views=3, dtype=torch.bfloat16)
        assert [tuple(v.shape) for v in views] == [(0, 3, 3, 5)] * 3 and params.batch == 0
        assert views[0].dtype == torch.bfloat16


@needs_cpu
def test_dispatch_calls_the_forced_backend(monkeypatch):
    calls = []
    for name in ("reference", "cpu"):
        impl = IMPLS[name]
        monkeypatch.setitem(IMPLS, name, lambda *a, _n=name, _f=impl: calls.append(_n) or _f(*a))
    x = torch.zeros(2, 6, 6, dtype=torch.int16)
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    augment_views(x, size=4)
    augment_views(x, size=4, backend="reference")
    monkeypatch.setenv("RADENGINE_BACKEND", "reference")
    augment_views(x, size=4)
    augment_views(x, size=4, backend="cpu")  # the argument wins over the environment
    assert calls == ["cpu", "reference", "reference", "cpu"]


@pytest.mark.parametrize("backend", ["", "reference", "cpu"])
def test_opcheck(gen, backend):
    if backend == "cpu" and not HAVE_CPU:
        pytest.skip(CPU_MISSING)
    op = torch.ops.radengine.augment_views.default
    ws = WindowSpec.parse(["brain", "lung"])
    p = sample_params("ct", 2, 3, (9, 12), ws, seed=1)
    x = random_hu(gen, (3, 9, 12))
    torch.library.opcheck(
        op, (x, *(t for _, t in p.items()), [5, 7], [0.0, 0.1], [1.0, 0.5], False, torch.float32, False, backend)
    )  # fmt: skip
    p = sample_params("simclr", 1, 2, (6, 5), None, seed=2)
    x = random_rgb(gen, (2, 6, 5, 3))
    torch.library.opcheck(
        op, (x, *(t for _, t in p.items()), [4, 4], [0.0] * 3, [1.0] * 3, False, torch.bfloat16, True, backend)
    )  # fmt: skip


def test_torch_compile_fullgraph(gen):
    """With params drawn outside (sampling uses a Python-side generator), the op traces."""
    x = random_hu(gen, (2, 16, 16))
    params = sample_params("ct", 2, 2, (16, 16), WindowSpec.parse("minmax", repeat=3), seed=0)

    def two_views(x, params):
        views, _ = augment_views(
            x, "ct", size=8, params=params, dtype=torch.bfloat16, channels_last=True
        )
        return torch.cat(views) * 2 - 1

    compiled = torch.compile(two_views, fullgraph=True)
    torch.testing.assert_close(compiled(x, params), two_views(x, params))


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"] or ["cuda"])
def test_device_matches_cpu(gen, device):
    if device not in DEVICES:
        pytest.skip("no CUDA device")
    for x, kw in [
        (random_hu(gen, (3, 40, 50)), dict(intensity=["brain", "bone"], repeat=1)),
        (random_hu(gen, (3, 40, 50)), dict(intensity="minmax")),
        (random_rgb(gen, (3, 40, 50, 3)), dict(mean=0.5, std=0.25)),
    ]:
        spec = {"preset": "ct", "hue": 0.3, "saturation": 0.5, "solarize_p": 0.5}
        cpu, params = augment_views(x, spec, size=(24, 20), seed=1, **kw)
        dev, _ = augment_views(x.to(device), spec, size=(24, 20), params=params, **kw)
        for a, b in zip(cpu, dev, strict=True):
            assert b.device.type == device
            torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- cpu backend

EVERYTHING = {  # every feature on, often
    "preset": "simclr",
    "vflip_p": 0.5,
    "rotate_p": 0.7,
    "rotate_deg": 60,
    "window_jitter_p": 0.7,
    "jitter_p": 0.9,
    "hue": 0.5,
    "grayscale_p": 0.3,
    "gamma_p": 0.5,
    "solarize_p": 0.5,
    "blur_p": 0.6,
    "blur_sigma": (0.1, 3.0),
    "noise_p": 0.6,
    "noise_std": (0.01, 0.1),
}
CPU_CASES = {  # kind, input shape, augment_views kwargs, views, output size
    "ct_minmax_x3": ("int16", (4, 40, 50), dict(intensity="minmax", repeat=3), 2, (24, 20)),
    "ct_three_windows_3x123x77": (
        "int16",
        (3, 123, 77),
        dict(
            intensity=["brain", "soft_tissue", "bone"],
            repeat=1,
            mean=[0.1, 0.2, 0.3],
            std=[0.5, 0.25, 2],
        ),
        3,
        (130, 90),
    ),
    "ct_two_windows_b1_v1": (
        "int16",
        (1, 1, 33, 65),
        dict(intensity=["lung", "bone"], repeat=1),
        1,
        (7, 7),
    ),
    "ct_five_windows": (
        "int16",
        (2, 31, 29),
        dict(intensity=["brain", "subdural", "liver", "lung", (0, 1)], repeat=1),
        2,
        (16, 40),
    ),
    "ct_one_window": ("int16", (3, 20, 20), dict(intensity="soft_tissue", repeat=1), 2, (9, 11)),
    "ct_1x1": ("int16", (2, 1, 1), dict(intensity="minmax", repeat=3), 3, (5, 4)),
    "rgb_imagenet": (
        "uint8",
        (3, 45, 37, 3),
        dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        2,
        (24, 20),
    ),
    "rgb_1x1_v3": ("uint8", (1, 1, 1, 3), dict(), 3, (6, 3)),
}


def assert_within_one_ulp(out: torch.Tensor, ref32: torch.Tensor, slack: float = 1e-5) -> None:
    """``out`` (fp16/bf16) within one of its ulps (+ the fp32 slack) of ref32 rounded."""
    r = ref32.to(out.dtype)
    up = torch.nextafter(r, torch.full_like(r, math.inf)).float() - r.float()
    down = r.float() - torch.nextafter(r, torch.full_like(r, -math.inf)).float()
    err = (out.float() - r.float()).abs() - torch.maximum(up, down) - slack
    assert err.max().item() <= 0, f"{(err > 0).sum().item()} values beyond one ulp"


def cpu_vs_reference(x, spec, views, size, seed, dtypes=(torch.float32,), **kw):
    ref, p = augment_views(x, spec, views=views, size=size, seed=seed, backend="reference", **kw)
    for dtype in dtypes:
        for cl in (False, True):
            out, _ = augment_views(
                x, spec, views=views, size=size, params=p, backend="cpu", dtype=dtype,
                channels_last=cl, **kw,
            )  # fmt: skip
            fmt = torch.channels_last if cl else torch.contiguous_format
            for o, r in zip(out, ref, strict=True):
                assert o.shape == r.shape and o.dtype == dtype
                assert o.is_contiguous(memory_format=fmt)
                if dtype == torch.float32:
                    torch.testing.assert_close(o, r, rtol=0, atol=1e-5)
                else:
                    assert_within_one_ulp(o, r)
    return p


@needs_cpu
@pytest.mark.parametrize("spec", ["simclr", "ct", "none", "everything"])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_matches_reference(gen, case, spec):
    kind, shape, kw, views, size = CPU_CASES[case]
    x = random_rgb(gen, shape) if kind == "uint8" else random_hu(gen, shape, -1500, 3000)
    spec = EVERYTHING if spec == "everything" else spec
    seed = int(torch.randint(1 << 30, (1,), generator=gen))
    cpu_vs_reference(x, spec, views, size, seed, DTYPES, **kw)


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@needs_cpu
def test_cpu_every_feature_on_every_view(gen):
    """Probabilities 1: every op runs on every row (incl. hue's slow path |d| >= 1 and a
    3-window CT view, where saturation and hue apply)."""
    spec = {
        **EVERYTHING,
        **{k: 1.0 for k in ("rotate_p", "jitter_p", "gamma_p", "solarize_p", "blur_p", "noise_p")},
    }
    x = random_hu(gen, (3, 50, 60))
    kw = dict(intensity=["brain", "soft_tissue", "bone"], repeat=1)
    p = cpu_vs_reference(x, spec, 2, (33, 41), 5, **kw)
    assert bool((p.noise_std > 0).all() and (p.blur_sigma > 0).all())
    jitter = p.jitter.clone()
    jitter[..., 3] = torch.tensor([[0.9, -1.3, 2.7], [0.0, 1.0, -0.5]])
    q = dataclasses.replace(p, jitter=jitter)
    ref, _ = augment_views(x, spec, views=2, size=(33, 41), params=q, backend="reference", **kw)
    out, _ = augment_views(x, spec, views=2, size=(33, 41), params=q, backend="cpu", **kw)
    for o, r in zip(out, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-5)


@needs_cpu
def test_cpu_layouts_of_the_input(gen):
    """Non-contiguous int16 / uint8 inputs (the kernel takes element strides)."""
    base = random_hu(gen, (3, 40, 64))
    for x in (base[:, :, ::2], base.transpose(1, 2), base[:, None]):
        cpu_vs_reference(x, EVERYTHING, 2, (12, 10), 3, intensity="minmax", repeat=3)
    rgb = random_rgb(gen, (2, 3, 30, 20)).permute(0, 2, 3, 1)  # channel stride != 1
    cpu_vs_reference(rgb, EVERYTHING, 2, (12, 10), 4)
    cpu_vs_reference(random_rgb(gen, (2, 30, 40, 3))[:, :, ::2], "simclr", 2, (12, 10), 5)


@needs_cpu
def test_cpu_edge_cases(gen):
    # a constant slice in min-max mode maps to 0; an all-equal window set takes the gray path
    x = torch.full((2, 9, 9), 300, dtype=torch.int16)
    out, _ = augment_views(x, "none", size=5, intensity="minmax", backend="cpu")
    assert torch.equal(out[0], torch.zeros(2, 3, 5, 5))
    # larger views than the input, B = 1, V = 3, a realistic size
    for shape, size in [((1, 8, 6), (40, 50)), ((2, 256, 256), (224, 224))]:
        x = random_hu(gen, shape)
        cpu_vs_reference(x, "ct", 3 if shape[0] == 1 else 2, size, 9, intensity="minmax")
    # the same key gives the same noise: a slice of the batch's parameters
    x = random_hu(gen, (5, 24, 24))
    spec = {"preset": "ct", "noise_p": 1.0}
    views, p = augment_views(x, spec, size=16, intensity=(40, 400), seed=3, backend="cpu")
    part = AugmentParams(**{k: None if v is None else v[:, 1:4] for k, v in p.items()})
    mine, _ = augment_views(x[1:4], spec, size=16, intensity=(40, 400), params=part, backend="cpu")
    for whole, piece in zip(views, mine, strict=True):
        assert torch.equal(piece, whole[1:4])
    assert isinstance(_native.cpu.augment_uses_fma(), bool)


# ----------------------------------------------------------------------------- multi-crop

MULTICROP_SPECS = [
    {**EVERYTHING, "blur_p": 1.0, "solarize_p": 0.0, "crop_scale": (0.4, 1.0)},
    {**EVERYTHING, "blur_p": 0.1, "solarize_p": 0.2, "crop_scale": (0.4, 1.0)},
    *[{**EVERYTHING, "blur_p": 0.5, "crop_scale": (0.05, 0.4)}] * 3,
]
MULTICROP_SIZES = [(24, 20), (24, 20), 12, 12, 12]


def multicrop_vs_reference(x, backend, check, seed=5, dtype=torch.float32, **kw):
    """DINO-style views (2 global with their own specs, 3 local ones at a smaller size) by
    ``backend`` against the reference made from the same params, one call per size (the
    noise key's view index counts within a run of equal sizes)."""
    V = len(MULTICROP_SPECS)
    out, p = augment_views(
        x, MULTICROP_SPECS, views=V, sizes=MULTICROP_SIZES, seed=seed, backend=backend,
        dtype=dtype, **kw,
    )  # fmt: skip
    assert [tuple(o.shape[-2:]) for o in out] == [(24, 20)] * 2 + [(12, 12)] * 3
    for a, b in ((0, 2), (2, 5)):
        ref, _ = augment_views(
            x, "none", views=b - a, size=MULTICROP_SIZES[a], params=p.view_range(a, b),
            backend="reference", **kw,
        )  # fmt: skip
        for v in range(a, b):
            check(out[v], ref[v - a])
    return p


def test_per_view_specs_draw_each_group_from_its_own_seed():
    ws = WindowSpec.parse("minmax", repeat=3)
    V, seed = len(MULTICROP_SPECS), 11
    p = sample_params(MULTICROP_SPECS, V, 6, (30, 26), ws, seed=seed)
    groups = [(0, 1, seed), (1, 2, view_seed(seed, 1)), (2, 5, view_seed(seed, 2))]
    for a, b, s in groups:
        alone = sample_params(MULTICROP_SPECS[a], b - a, 6, (30, 26), ws, seed=s)
        for (name, t), (_, u) in zip(p.view_range(a, b).items(), alone.items(), strict=True):
            assert torch.equal(t, u), name
    # local crops follow their own scale; the groups are not copies of one another
    area = p.crop[..., 2] * p.crop[..., 3] / (30 * 26)
    assert float(area[2:].max()) <= 0.4 + 0.05 and float(area[:2].min()) >= 0.4 - 0.05
    assert not torch.equal(p.noise_seed[0], p.noise_seed[1])
    # a list of equal specs draws exactly what the one spec draws (SimCLR's views)
    one = sample_params("ct", 2, 6, (30, 26), ws, seed=seed)
    two = sample_params(["ct", "ct"], 2, 6, (30, 26), ws, seed=seed)
    assert all(
        torch.equal(a, b)
        for (_, a), (_, b) in zip(one.items(), two.items(), strict=True)
        if a is not None
    )


def test_per_view_specs_and_sizes_validation():
    x = torch.zeros((2, 16, 16), dtype=torch.int16)
    with pytest.raises(ValueError, match="one per view"):
        augment_views(x, ["ct"] * 3, views=2, size=8)
    with pytest.raises(ValueError, match="one size per view"):
        augment_views(x, "ct", views=2, sizes=[8])
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        augment_views(x, "ct", views=2, sizes=[8, 0])
    with pytest.raises(ValueError, match="unknown augmentation key"):
        augment_views(x, ["ct", {"blurp": 1}], views=2, size=8)


def _close32(out, ref):
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["ct", "rgb"])
def test_multicrop_reference_matches_view_by_view(gen, kind):
    x = random_rgb(gen, (3, 30, 26, 3)) if kind == "rgb" else random_hu(gen, (3, 30, 26))
    multicrop_vs_reference(
        x, "reference", lambda o, r: torch.testing.assert_close(o, r, rtol=0, atol=0)
    )


@needs_cpu
@pytest.mark.parametrize("kind", ["ct", "rgb"])
def test_multicrop_cpu_matches_reference(gen, kind):
    x = random_rgb(gen, (3, 30, 26, 3)) if kind == "rgb" else random_hu(gen, (3, 30, 26))
    multicrop_vs_reference(x, "cpu", _close32)
    multicrop_vs_reference(x, "cpu", assert_within_one_ulp, dtype=torch.bfloat16)
