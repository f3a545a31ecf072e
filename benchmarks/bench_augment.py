"""Benchmark augment_views: radengine's backends against what a user would write instead.

    python benchmarks/bench_augment.py [--device cpu|cuda] [--batch 256] [--size 512]
        [--rgb-size 256] [--compile] [--peers eager,batched,kornia,monai]

Two cases, each V=2 views of --out x --out pixels per image, bf16 by default:
* CT: int16 (batch, size, size) slices, the "ct" preset, study A's min-max x 3 channels;
* RGB: uint8 (batch, rgb-size, rgb-size, 3) images, the "simclr" preset, ImageNet
  normalisation.
Candidates: every radengine backend that runs on the device; ``torch-eager`` (per sample,
the obvious way: crop, window, resize, flip/rotate, jitter, ... one image at a time, with
the same parameters); ``torch-batched`` (the reference backend: the same math batched in
torch); ``torch-compile`` of it (--compile); ``kornia`` (kornia.augmentation's
AugmentationSequential with the same recipe on the windowed float batch) and ``monai``
(MONAI's array transforms per sample: intensity scaling, random crop + resize, flip,
rotate, contrast/gamma, smoothing, noise) when they are installed (pip install kornia
monai; they draw their own random parameters, so only the work is comparable).
The radengine and torch candidates share one set of drawn parameters.
Reports median time, GB/s (input bytes read once + output bytes written), the fraction of
the roofline (the bytes a fused kernel must move: each view's crop of the input, read
once, plus one pass over each slice for its min-max range, plus the outputs, over the
device's measured copy bandwidth) and the speedup over torch eager per sample; appends
rows to benchmarks/results/<device>.csv.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, copy_bandwidth_gbs, percentiles, time_ms

from radengine.ops import OPS, _dispatch, augment_views, reference_augment_views, sample_params
from radengine.ops.hu_window import WindowSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- the peer


def _gray(t: torch.Tensor) -> torch.Tensor:
    if t.shape[0] == 1:
        return t
    return 0.299 * t[0:1] + 0.587 * t[1:2] + 0.114 * t[2:3]


def _hue(t: torch.Tensor, d: float) -> torch.Tensor:
    """torchvision's adjust_hue: RGB -> HSV, shift, HSV -> RGB."""
    r, g, b = t
    maxc, _ = t.max(0)
    minc, _ = t.min(0)
    cr = maxc - minc
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = ((hr + hg + hb) / 6.0 + 1.0) % 1.0
    h = (h + d) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    v = maxc
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    tt = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    mask = i.unsqueeze(0) == torch.arange(6, device=t.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, tt, v))
    a2 = torch.stack((tt, v, v, q, p, p))
    a3 = torch.stack((p, p, tt, v, v, q))
    a4 = torch.stack((a1, a2, a3))
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(t.dtype), a4)


def eager_one(img: torch.Tensor, p, v: int, b: int, size, minmax: bool, mean, std, dtype):
    """One view of one image with plain torch ops, written the obvious way."""
    h, w = size
    y0, x0, ch, cw = (int(t) for t in p.crop[v, b].tolist())
    if img.dtype == torch.uint8:  # (H, W, 3)
        t = img[y0 : y0 + ch, x0 : x0 + cw].permute(2, 0, 1).float() / 255.0
    else:
        hu = img.float()
        lo, hi = p.window[v, b, 0].tolist()
        if minmax:
            mn, mx = hu.min(), hu.max()
            lo, hi = mn + lo * (mx - mn), mn + hi * (mx - mn)
        crop = hu[y0 : y0 + ch, x0 : x0 + cw]
        t = ((crop - lo) / (hi - lo)).clamp(0, 1)[None]
    t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    if p.hflip[v, b]:
        t = t.flip(-1)
    if p.vflip[v, b]:
        t = t.flip(-2)
    angle = float(p.angle[v, b])
    if angle != 0.0:
        th = math.radians(angle)
        theta = torch.tensor(
            [[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0]],
            device=t.device,
        )
        grid = F.affine_grid(theta[None], [1, t.shape[0], h, w], align_corners=False)
        t = F.grid_sample(t[None], grid, align_corners=False)[0]
    bri, con, sat, hue = p.jitter[v, b].tolist()
    for op in p.order[v, b].tolist():
        if op == 0 and bri != 1:
            t = (t * bri).clamp(0, 1)
        elif op == 1 and con != 1:
            t = (con * t + (1 - con) * _gray(t).mean()).clamp(0, 1)
        elif op == 2 and sat != 1 and t.shape[0] == 3:
            t = (sat * t + (1 - sat) * _gray(t)).clamp(0, 1)
        elif op == 3 and hue != 0 and t.shape[0] == 3:
            t = _hue(t, hue)
    if p.grayscale[v, b] and t.shape[0] == 3:
        t = _gray(t).expand(3, h, w)
    if p.gamma[v, b] != 1:
        t = t.pow(float(p.gamma[v, b])).clamp(0, 1)
    if p.solarize[v, b]:
        t = torch.where(t >= float(p.solarize_threshold[v, b]), 1 - t, t)
    sigma = float(p.blur_sigma[v, b])
    if sigma > 0:
        r = math.ceil(3 * sigma)
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1.0, device=t.device) / sigma) ** 2)
        k = (k / k.sum()).repeat(t.shape[0], 1)
        c = t.shape[0]
        t = F.conv2d(F.pad(t[None], (r, r, 0, 0), mode="replicate"), k.view(c, 1, 1, -1), groups=c)
        t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(c, 1, -1, 1), groups=c)[0]
    if p.noise_std[v, b] > 0:
        t = (t + float(p.noise_std[v, b]) * torch.randn_like(t)).clamp(0, 1)
    t = t.expand(len(mean), h, w)
    t = (t - t.new_tensor(mean).view(-1, 1, 1)) / t.new_tensor(std).view(-1, 1, 1)
    return t.to(dtype)


def torch_eager(x, p, size, minmax, mean, std, dtype):
    """Per sample and view, as a Dataset.__getitem__ + collate would do it."""
    views = []
    for v in range(p.views):
        views.append(
            torch.stack(
                [
                    eager_one(x[b], p, v, b, size, minmax, mean, std, dtype)
                    for b in range(x.shape[0])
                ]
            )
        )
    return views


# ----------------------------------------------------------------------------- main


def _windowed_float(x: torch.Tensor, minmax: bool) -> torch.Tensor:
    """The whole batch as float in [0, 1], channels first: what a kornia/MONAI user feeds
    (min-max per slice for CT, /255 for RGB)."""
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).float() / 255.0
    hu = x.float()
    lo = hu.amin((1, 2), keepdim=True)
    hi = hu.amax((1, 2), keepdim=True)
    return ((hu - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)[:, None]


def kornia_peer(x, size, minmax, mean, std, dtype, views: int):
    """kornia.augmentation with the recipe of the preset (None when kornia is missing)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    if x.dtype == torch.uint8:  # study A
        ops = [
            K.RandomResizedCrop(size, scale=(0.08, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
    else:  # the "ct" preset (no window jitter in kornia)
        ops = [
            K.RandomResizedCrop(size, scale=(0.2, 1.0)),
            K.RandomHorizontalFlip(),
            K.RandomRotation(10.0, p=0.5),
            K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
            K.RandomGamma((0.7, 1.5), p=0.5),
            K.RandomGaussianBlur((13, 13), (0.1, 2.0), p=0.5),
            K.RandomGaussianNoise(std=0.03, p=0.2),
        ]
    aug = K.AugmentationSequential(*ops)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)

    def run():
        y = _windowed_float(x, minmax)
        out = []
        for _ in range(views):
            v = aug(y).clamp(0, 1)
            v = v.expand(-1, len(mean), -1, -1)
            out.append(((v - m) / s).to(dtype))
        return out

    return run


def monai_peer(x, size, minmax, mean, std, dtype, views: int):
    """MONAI array transforms, per sample as a Dataset would run them (CT only)."""
    if x.dtype == torch.uint8:
        return None
    try:
        import monai.transforms as M
    except ImportError:
        return None
    crop_min = round(math.sqrt(0.2) * x.shape[-1])
    chain = M.Compose(
        [
            M.ScaleIntensity(minv=0.0, maxv=1.0),  # min-max per slice
            M.RandSpatialCrop((crop_min, crop_min), random_size=True),
            M.Resize(size, mode="bilinear", anti_aliasing=False),
            M.RandFlip(prob=0.5, spatial_axis=1),
            M.RandRotate(range_x=math.radians(10.0), prob=0.5, padding_mode="zeros"),
            M.RandScaleIntensity(factors=0.4, prob=0.8),
            M.RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
            M.RandGaussianSmooth(sigma_x=(0.1, 2.0), sigma_y=(0.1, 2.0), prob=0.5),
            M.RandGaussianNoise(prob=0.2, std=0.03),
            M.ToTensor(track_meta=False),
        ]
    )
    chain.set_random_state(seed=0)
    m = torch.tensor(mean, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, device=x.device).view(-1, 1, 1)

    def run():
        out = []
        for _ in range(views):
            batch = [chain(x[b][None].float()) for b in range(x.shape[0])]
            v = torch.stack([t.clamp(0, 1).expand(len(mean), -1, -1) for t in batch])
            out.append(((v - m) / s).to(dtype))
        return out

    return run


def make_candidates(x, p, kw, ref_args, dtype, args):
    out = {}
    dev = x.device.type
    for backend in OPS["augment"]:
        if backend != "reference" and _dispatch.unavailable_reason(backend, dev) is None:
            out[backend] = functools.partial(
                augment_views, x, params=p, dtype=dtype, backend=backend, **kw
            )
    size, mean, std, minmax = ref_args
    peers = args.peers.split(",")
    if "eager" in peers:
        out["torch-eager"] = functools.partial(torch_eager, x, p, size, minmax, mean, std, dtype)
    if "batched" in peers:
        out["torch-batched"] = functools.partial(
            augment_views, x, params=p, dtype=dtype, backend="reference", **kw
        )
    if args.compile:
        compiled = torch.compile(reference_augment_views)
        out["torch-compile"] = functools.partial(
            compiled, x, p.to(x.device), size, mean, std, minmax, dtype, False
        )
    for name, make in (("kornia", kornia_peer), ("monai", monai_peer)):
        if name in peers and (fn := make(x, size, minmax, mean, std, dtype, p.views)):
            out[name] = fn
    return out


def roofline_bytes(x, p, out_bytes: int, minmax: bool) -> int:
    """Bytes a fused kernel must move: each view's crop read once (the rotated box's area
    equals the crop's), a min-max pass over every slice, and the outputs written."""
    elem = x.element_size() * (3 if x.dtype == torch.uint8 else 1)
    crops = p.crop.double()
    read = int((crops[..., 2] * crops[..., 3]).sum().item()) * elem
    if minmax and x.dtype != torch.uint8:
        read += x.numel() * x.element_size()
    return read + out_bytes


def run_case(rec, name, x, spec, kw, ref_args, dtype, args, copy_gbs: float) -> None:
    V = 2
    C = len(ref_args[1])
    B = x.shape[0]
    H, W = (x.shape[1], x.shape[2])
    intensity = None if x.dtype == torch.uint8 else WindowSpec.parse("minmax", repeat=3)
    p = sample_params(spec, V, B, (H, W), intensity, seed=0)
    h, w = ref_args[0]
    shape = f"{B}x{H}x{W}{'x3' if x.dtype == torch.uint8 else ''}->{V}x{C}x{h}x{w}:{spec}"
    out_bytes = V * B * C * h * w * dtype.itemsize
    nbytes = x.numel() * x.element_size() + out_bytes
    roof = roofline_bytes(x, p, out_bytes, ref_args[3])
    dtype_name = str(dtype).removeprefix("torch.")
    candidates = make_candidates(x, p, kw, ref_args, dtype, args)
    times = {}
    for cand, fn in candidates.items():
        if cand == "torch-compile":
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # report, do not fail the benchmark
                print(f"{name}: torch.compile failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"{name}: torch.compile first call {time.perf_counter() - t0:.1f} s", flush=True)
        slow = cand in ("torch-eager", "monai")
        repeat = args.eager_repeat if slow else args.repeat
        ms = time_ms(fn, x.device, warmup=1, repeat=repeat)
        p20, p50, p80 = percentiles(ms)
        gbs = [nbytes / (t * 1e-3) / 1e9 for t in (p80, p50, p20)]
        frac = [roof / (t * 1e-3) / 1e9 / copy_gbs for t in (p80, p50, p20)]
        rec.add(cand, shape, dtype_name, "time", "ms", p20, p50, p80)
        rec.add(cand, shape, dtype_name, "throughput", "GB/s", *gbs)
        rec.add(cand, shape, dtype_name, "roofline_fraction", "x", *frac)
        times[cand] = statistics.median(ms)
        print(
            f"{name:4} {dtype_name:9} {cand:14} {p50:10.1f} ms  {gbs[1]:6.2f} GB/s  "
            f"{100 * frac[1]:5.1f}% of roofline",
            flush=True,
        )
    for base, metric in (("torch-eager", "speedup_vs_eager"), ("kornia", "speedup_vs_kornia")):
        if base in times:
            for cand, t in times.items():
                s = times[base] / t
                rec.add(cand, shape, dtype_name, metric, "x", s, s, s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=512, help="CT slice side")
    parser.add_argument("--rgb-size", type=int, default=256, help="RGB image side")
    parser.add_argument("--out", type=int, default=224, help="view side")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--eager-repeat", type=int, default=2)
    parser.add_argument("--cases", default="ct,rgb")
    parser.add_argument(
        "--peers",
        default="eager,batched,kornia,monai",
        help="comma list of eager, batched, kornia, monai (the last two when installed)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile of the batched reference (off by default: on the 2-core "
        "CI machine its first call took 164 s at batch 8, with graph breaks and recompiles, "
        "and it ran no faster than eager reference)",
    )
    parser.add_argument("--csv", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    rec = Recorder("augment", device)
    copy_gbs = copy_bandwidth_gbs(device, 1 << 28)
    print(f"copy bandwidth (read + write) on {rec.name}: {copy_gbs:.1f} GB/s", flush=True)
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    size = (args.out, args.out)
    if "ct" in args.cases.split(","):
        x = torch.randint(
            -1024, 3072, (args.batch, args.size, args.size), generator=gen, dtype=torch.int16
        ).to(device)
        kw = dict(size=size, intensity="minmax", repeat=3)
        ct_args = (size, [0.0] * 3, [1.0] * 3, True)
        run_case(rec, "ct", x, "ct", kw, ct_args, dtype, args, copy_gbs)
    if "rgb" in args.cases.split(","):
        s = args.rgb_size
        x = torch.randint(0, 256, (args.batch, s, s, 3), generator=gen, dtype=torch.uint8)
        x = x.to(device)
        kw = dict(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        ref_args = (size, list(IMAGENET_MEAN), list(IMAGENET_STD), False)
        run_case(rec, "rgb", x, "simclr", kw, ref_args, dtype, args, copy_gbs)

    path = rec.write(args.csv)
    rec.print_table(
        ("time", "throughput", "roofline_fraction", "speedup_vs_eager", "speedup_vs_kornia")
    )
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
