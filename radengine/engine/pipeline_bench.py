"""End-to-end pretraining throughput: radengine's pipeline against a study-style baseline.

``radengine bench pipeline [method=NAME ...]`` (and ``benchmarks/bench_pipeline.py``, part of
``nox -s bench``) trains an SSL method (SimCLR by default; ``key=value`` pretraining config
overrides pick another and its options) for ``warmup + steps`` steps twice, with the same
model, method, optimiser, loss, precision, batch, views, data and worker count, and reports
steady-state images/s and the data-wait fraction of each:

- ``radengine``: :func:`radengine.engine.trainer.pretrain` itself: store -> StoreLoader
  (workers gather whole int16 batches from the memory-mapped shards) -> batched
  augmentation on the training device (``radengine.ops.augment_views``) -> model.
- ``study-baseline``: how study A's code, solo-learn and lightly work (torchvision
  transforms in DataLoader workers), in plain torch since torchvision is not a dependency: a
  ``Dataset`` returning one slice per ``__getitem__`` (read from the same memory-mapped
  store), per-sample CPU transforms (min-max to [0, 1] on the whole slice, 1 channel
  repeated to 3, then each of the method's views with its own size and augmentation:
  RandomResizedCrop(size, scale) with an antialiased bilinear resize, horizontal flip,
  ColorJitter in random order, RandomGrayscale, GaussianBlur, RandomSolarize, torchvision's
  formulas; SimCLR's: scale (0.08, 1), ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale
  p 0.2), a standard ``DataLoader`` (shuffle, drop_last, persistent workers, pinned memory
  on CUDA, default collate), then the trainer's method module with its per-step hooks,
  optimiser, schedule, loss and precision (channels_last, bf16 autocast on CUDA).

Measurement, the same for both (the baseline's loop mirrors the trainer's step): a step's
clock starts before the next batch is requested; data wait is the time blocked in
``next()``; the step ends after the optimiser step. Both read the loss as a Python float
right after the forward pass (the one host synchronisation per step the trainer makes), so
on a GPU each step's time includes the previous step's backward: sums over steps are exact
wall time, single steps are shifted by one. The first ``warmup`` steps (worker start-up,
allocator, cuDNN autotuning) are dropped; ``img/s`` percentiles are over the measured
steps' ``batch / step_seconds`` and the data-wait fraction is ``sum(wait) / sum(step)``.

Worker count: one number for both pipelines, default ``min(8, usable cores)``. The
baseline needs the workers (its augmentation runs in them); radengine's only gather raw
batches, so more never hurts it.

Reading the figures on a CPU: the baseline's workers share the cores with the model, so
their cost shows up as slower steps rather than as data wait, and no pipeline can beat the
model step; ``--breakdown`` times each part alone (wall and CPU time) to show the split.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from radengine.data.store import Store
from radengine.errors import UserError

__all__ = [
    "BACKENDS",
    "BenchSettings",
    "PipelineResult",
    "StudyDataset",
    "StudyTransform",
    "bench_baseline",
    "bench_ours",
    "breakdown",
    "build_parser",
    "metric_rows",
    "resolve",
    "run",
]

OURS, BASELINE = "radengine", "study-baseline"
BACKENDS = (OURS, BASELINE)
OP = "pipeline"
# The shared benchmark CSV schema (DESIGN.md; benchmarks/_common.py).
FIELDS = [
    "op", "backend", "shape", "dtype", "metric", "unit",
    "p20", "p50", "p80", "device", "torch", "commit", "date",
]  # fmt: skip
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale on tensors


# ----------------------------------------------------------------------------- settings


@dataclass
class BenchSettings:
    """One benchmark configuration, shared by both pipelines."""

    device: torch.device
    arch: str
    size: int
    batch: int
    steps: int
    warmup: int
    workers: int
    data: str | None = None  # store path; None: the built-in synthetic store of ``domain``
    domain: str = "ct"
    seed: int = 0
    precision: str = "auto"  # train.precision: auto (the trainer's rule) | fp32 | bf16 | fp16
    baseline: str = "study"  # study: the study code's model execution; same: ours
    overrides: tuple[str, ...] = ()  # pretraining config overrides (method=byol ...)

    @property
    def method(self) -> str:
        """The SSL method the overrides name (the last ``method=``), default simclr."""
        found = [o.partition("=")[2].strip() for o in self.overrides if o.startswith("method=")]
        return found[-1] if found else "simclr"

    @property
    def shape(self) -> str:
        shape = f"{self.arch} b{self.batch} {self.size}px w{self.workers}"
        return shape if self.method == "simclr" else f"{self.method} {shape}"

    @property
    def dtype(self) -> str:
        """The autocast dtype of the model step (the trainer's rule), for the CSV."""
        from radengine.engine.setup import cpu_has_native_bf16

        p = self.precision
        if p == "auto":
            p = "bf16" if self.device.type == "cuda" or cpu_has_native_bf16() else "fp32"
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[p]

    @property
    def baseline_dtype(self) -> str:
        if self.baseline == "same":
            return self.dtype
        return "float16" if self.device.type == "cuda" else "float32"


def default_workers() -> int:
    """``min(8, usable cores)``: both pipelines get this many DataLoader workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``radengine bench pipeline`` (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog="radengine bench pipeline",
        description="End-to-end pretraining throughput (img/s) and data-wait fraction of an "
        "SSL method (SimCLR, or method=NAME): radengine's pipeline against a study-style "
        "baseline (DataLoader + per-sample CPU transforms) at the same model, method, batch, "
        "views and worker count.",
    )
    p.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--arch", metavar="ARCH", help="backbone (default resnet18 on CPU, resnet50 on CUDA)"
    )
    p.add_argument(
        "--size", type=int, metavar="N", help="view size in pixels (default 96 CPU / 224 CUDA)"
    )
    p.add_argument(
        "--batch", type=int, metavar="N", help="global batch (default 64 CPU / 256 CUDA)"
    )
    p.add_argument(
        "--steps", type=int, metavar="N", help="measured steps (default 8 CPU / 30 CUDA)"
    )
    p.add_argument(
        "--warmup", type=int, metavar="N", help="steps dropped first (default 2 CPU / 5 CUDA)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"DataLoader workers, the same for both (default min(8, cores) = "
        f"{default_workers()} here)",
    )
    p.add_argument(
        "--data", metavar="STORE", help="store to read (default: the built-in synthetic CT store)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="train.precision of ours, and of the baseline with --baseline same (default "
        "auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32)",
    )
    p.add_argument(
        "--baseline",
        choices=["study", "same"],
        default="study",
        help="study (default): the baseline runs the model as the study's code does "
        "(NCHW; AMP = fp16 autocast on CUDA, fp32 on CPU); same: exactly as ours "
        "(precision, channels_last), isolating the data path",
    )
    p.add_argument("--only", choices=["ours", "baseline"], help="run one pipeline only")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts in isolation: store gather, radengine's batched "
                   "augmentation, the baseline's per-sample transforms, the model step")  # fmt: skip
    p.add_argument("--csv", type=Path, metavar="PATH", help="append rows (shared schema) here")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="pretraining config overrides for both pipelines, e.g. method=byol or "
        "method=dino ssl.local_crops_number=6 (radengine list methods)",
    )
    return p


def resolve(args: argparse.Namespace) -> BenchSettings:
    """Fill the device-dependent defaults of parsed options."""
    from radengine.engine.distributed import resolve_device

    device = resolve_device(args.device)
    gpu = device.type == "cuda"

    def pick(value: int | str | None, cpu: int | str, cuda: int | str):
        return value if value is not None else (cuda if gpu else cpu)

    s = BenchSettings(
        device=device,
        arch=pick(args.arch, "resnet18", "resnet50"),
        size=pick(args.size, 96, 224),
        batch=pick(args.batch, 64, 256),
        steps=pick(args.steps, 8, 30),
        warmup=pick(args.warmup, 2, 5),
        workers=args.workers if args.workers is not None else default_workers(),
        data=args.data,
        seed=args.seed,
        precision=args.precision,
        baseline=args.baseline,
        overrides=tuple(getattr(args, "overrides", None) or ()),
    )
    if s.data is not None:
        s.domain = "natural" if Store(s.data).kind == "images" else "ct"
    for name in ("size", "batch", "steps"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if s.warmup < 0 or s.workers < 0:
        raise ValueError("--warmup and --workers must be >= 0")
    return s


# ----------------------------------------------------------------------------- results


@dataclass
class PipelineResult:
    """The measured steps of one pipeline."""

    backend: str
    batch: int
    step_times: list[tuple[float, float]]  # (data wait, whole step) seconds, warm-up dropped
    loss: float = float("nan")

    @property
    def img_per_s(self) -> list[float]:
        return [self.batch / t for _, t in self.step_times]

    @property
    def data_wait_fraction(self) -> float:
        total = sum(t for _, t in self.step_times)
        return sum(w for w, _ in self.step_times) / total if total > 0 else float("nan")


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(p20, p50, p80), as benchmarks/_common.py computes them."""
    values = list(values)
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return q[1], statistics.median(values), q[7]


def metric_rows(
    results: dict[str, PipelineResult], settings: BenchSettings
) -> list[tuple[str, str, str, str, str, float, float, float]]:
    """(backend, shape, dtype, metric, unit, p20, p50, p80) rows for the CSV."""
    rows = []
    for name, r in results.items():
        label, dtype = _label(name, settings), _dtype(name, settings)
        rows.append((label, settings.shape, dtype, "img_per_s", "img/s",
                     *percentiles(r.img_per_s)))  # fmt: skip
        f = r.data_wait_fraction
        rows.append((label, settings.shape, dtype, "data_wait_fraction", "fraction",
                     f, f, f))  # fmt: skip
    if OURS in results and BASELINE in results:
        x = speedup(results)
        rows.append((OURS, settings.shape, settings.dtype,
                     f"speedup_vs_{_label(BASELINE, settings).replace('-', '_')}", "x",
                     x, x, x))  # fmt: skip
    return rows


def _label(name: str, s: BenchSettings) -> str:
    """The CSV backend: the baseline run as ours (--baseline same) is named apart."""
    return f"{name}-same-model" if name == BASELINE and s.baseline == "same" else name


def _dtype(name: str, s: BenchSettings) -> str:
    return s.baseline_dtype if name == BASELINE else s.dtype


def speedup(results: dict[str, PipelineResult]) -> float:
    """Ours over the baseline, p50 img/s."""
    return statistics.median(results[OURS].img_per_s) / statistics.median(
        results[BASELINE].img_per_s
    )


# ----------------------------------------------------------------------------- radengine


def _overrides(s: BenchSettings, total_steps: int, spe: int, out: str | None) -> list[str]:
    o = [
        f"seed={s.seed}",
        f"data.domain={s.domain}",
        f"data.workers={s.workers}",
        f"model.arch={s.arch}",
        f"augment.size={s.size}",
        f"optim.batch_size={s.batch}",
        f"optim.epochs={max(1, math.ceil(total_steps / spe))}",
        "knn.every=0",
        "tracking.enabled=false",
        "train.progress=false",
        f"train.checkpoint_every={10**9}",
        f"train.max_steps={total_steps}",
        f"train.device={s.device}",
        f"train.precision={s.precision}",
    ]
    if s.data is not None:
        o.append(f"data.store={s.data}")
    if out is not None:
        o.append(f"train.out={out}")
    return [*s.overrides, *o]


def _train_indices(s: BenchSettings, cfg) -> tuple[Store, np.ndarray]:
    from radengine.engine.stages import open_store

    store = open_store(s.domain, s.data, progress=True)
    idx = store.select(cfg.data.split, fraction=cfg.data.fraction, seed=cfg.data.split_seed)
    if len(idx) < s.batch:
        raise ValueError(
            f"the {cfg.data.split} split of {store.path} holds {len(idx)} samples, fewer than "
            f"one batch of {s.batch}; lower --batch or use a larger --data store"
        )
    return store, idx


def config(s: BenchSettings, out: str | None = None):
    """The pretraining config both pipelines use (trainer defaults plus the settings)."""
    from radengine.config import load_pretrain_config

    total = s.warmup + s.steps
    cfg = load_pretrain_config(overrides=_overrides(s, total, 1, out))
    _, idx = _train_indices(s, cfg)
    spe = len(idx) // s.batch
    return load_pretrain_config(overrides=_overrides(s, total, spe, out))


def bench_ours(s: BenchSettings) -> PipelineResult:
    """radengine's own pretraining loop, ``warmup + steps`` steps, tracking off."""
    from radengine.engine.trainer import pretrain

    with tempfile.TemporaryDirectory(prefix="radengine-bench-") as tmp:
        cfg = config(s, out=str(Path(tmp) / "run"))
        result = pretrain(cfg, echo=lambda _msg: None)
    times = result.extra["step_times"]
    if len(times) < s.warmup + s.steps:
        raise RuntimeError(f"the trainer stopped after {len(times)} steps ({result.stopped})")
    return PipelineResult(OURS, s.batch, list(times[s.warmup :]), result.loss)


# ----------------------------------------------------------------------------- baseline


def _rgb_to_grayscale(img: Tensor) -> Tensor:
    """(3, h, w) -> (1, h, w), torchvision's tensor formula."""
    r, g, b = img.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(img1: Tensor, img2: Tensor | float, ratio: float) -> Tensor:
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0.0, 1.0)


def adjust_brightness(img: Tensor, factor: float) -> Tensor:
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: Tensor, factor: float) -> Tensor:
    mean = _rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: Tensor, factor: float) -> Tensor:
    return _blend(img, _rgb_to_grayscale(img), factor)


def _rgb2hsv(img: Tensor) -> Tensor:
    r, g, b = img.unbind(dim=-3)
    maxc = torch.max(img, dim=-3).values
    minc = torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv2rgb(img: Tensor) -> Tensor:
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32) % 6
    p = torch.clamp(v * (1.0 - s), 0.0, 1.0)
    q = torch.clamp(v * (1.0 - s * f), 0.0, 1.0)
    t = torch.clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    mask = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(dtype=img.dtype), a4)


def adjust_hue(img: Tensor, factor: float) -> Tensor:
    hsv = _rgb2hsv(img)
    h, s, v = hsv.unbind(dim=-3)
    h = (h + factor) % 1.0
    return _hsv2rgb(torch.stack((h, s, v), dim=-3))


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi))


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's ``RandomResizedCrop.get_params`` draws them."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,)))
            j = int(torch.randint(0, width - w + 1, size=(1,)))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass
class StudyTransform:
    """Study A's per-sample SimCLR transform, as torchvision runs it on one image tensor.

    ``__call__(img)`` takes one (3, H, W) float image in [0, 1] and returns ``views``
    tensors (3, size, size) in [0, 1]; each view: RandomResizedCrop(size, scale, ratio)
    (bilinear, antialiased, on the one crop), RandomHorizontalFlip(hflip_p),
    RandomApply([ColorJitter(brightness, contrast, saturation, hue)], jitter_p) with a
    random order of the four ops, RandomGrayscale(gray_p).
    """

    size: int
    views: int = 2
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def view(self, img: Tensor) -> Tensor:
        i, j, h, w = random_resized_crop_params(
            img.shape[-2], img.shape[-1], self.scale, self.ratio
        )
        crop = img[..., i : i + h, j : j + w]
        out = F.interpolate(
            crop.unsqueeze(0),
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).squeeze(0)
        if float(torch.rand(1)) < self.hflip_p:
            out = out.flip(-1)
        if float(torch.rand(1)) < self.jitter_p:
            out = self.color_jitter(out)
        if float(torch.rand(1)) < self.gray_p:
            out = _rgb_to_grayscale(out).expand(out.shape)
        if self.blur_p > 0 and float(torch.rand(1)) < self.blur_p:
            out = gaussian_blur(out, _uniform(*self.blur_sigma))
        if self.solarize_p > 0 and float(torch.rand(1)) < self.solarize_p:
            out = torch.where(out >= self.solarize_threshold, 1.0 - out, out)
        return out

    def color_jitter(self, img: Tensor) -> Tensor:
        b, c, s, h = self.jitter
        order = torch.randperm(4).tolist()
        bf = _uniform(max(0.0, 1 - b), 1 + b)
        cf = _uniform(max(0.0, 1 - c), 1 + c)
        sf = _uniform(max(0.0, 1 - s), 1 + s)
        hf = _uniform(-h, h)
        for op in order:
            if op == 0:
                img = adjust_brightness(img, bf)
            elif op == 1:
                img = adjust_contrast(img, cf)
            elif op == 2:
                img = adjust_saturation(img, sf)
            else:
                img = adjust_hue(img, hf)
        return img

    def __call__(self, img: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.view(img) for _ in range(self.views))


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """torchvision's GaussianBlur on one (C, H, W) image: a separable kernel of radius
    ceil(3 sigma), reflected borders (replicated where the image is smaller)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.arange(-r, r + 1, dtype=img.dtype)
    w = torch.exp(-(k**2) / (2 * sigma**2))
    w = w / w.sum()
    x = img.unsqueeze(0)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), w.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)  # fmt: skip
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), w.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                 groups=c)  # fmt: skip
    return x.squeeze(0)


class UnsupportedViewError(UserError, ValueError):
    """A view uses an augmentation the per-sample baseline does not implement."""


def _view_transform(spec: Any, size: int) -> StudyTransform:
    """One view of the method's plan as the per-sample torchvision-style transform."""
    unsupported = [
        name for name in ("vflip_p", "rotate_p", "window_jitter_p", "gamma_p", "noise_p")
        if getattr(spec, name) > 0
    ]  # fmt: skip
    if unsupported or not spec.crop:
        what = ", ".join(unsupported) if unsupported else "crop=false"
        raise UnsupportedViewError(
            f"the baseline implements the papers' torchvision augmentations (crop, flip, "
            f"colour jitter, grayscale, blur, solarize), not {what}: use augment.preset=simclr"
        )
    b, c, s, h = spec.brightness, spec.contrast, spec.saturation, spec.hue
    return StudyTransform(
        size=size, views=1, scale=tuple(spec.crop_scale), ratio=tuple(spec.crop_ratio),
        hflip_p=spec.hflip_p, jitter=(b[1] - 1, c[1] - 1, s[1] - 1, h[1]),
        jitter_p=spec.jitter_p, gray_p=spec.grayscale_p, blur_p=spec.blur_p,
        blur_sigma=tuple(spec.blur_sigma), solarize_p=spec.solarize_p,
        solarize_threshold=spec.solarize_threshold,
    )  # fmt: skip


@dataclass
class MethodTransform:
    """A method's views (``views.ViewPlan``: a spec and a size per view), per sample."""

    views: list[StudyTransform]

    @classmethod
    def of(cls, plan: Any) -> MethodTransform:
        return cls([_view_transform(s, n) for s, n in zip(plan.specs, plan.sizes, strict=True)])

    def __call__(self, img: Tensor) -> tuple[Tensor, ...]:
        return tuple(v.view(img) for v in self.views)


def study_input(raw: np.ndarray) -> Tensor:
    """One stored slice as the study's image tensor: int16 HU -> float32, min-max to [0, 1]
    over the whole slice (0 for a constant slice), 1 channel repeated to 3; uint8 RGB
    (H, W, 3) -> (3, H, W) / 255."""
    if raw.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(raw)).permute(2, 0, 1).float().div(255.0)
    x = torch.from_numpy(raw.astype(np.float32))
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.unsqueeze(0).repeat(3, 1, 1)


class StudyDataset(torch.utils.data.Dataset):
    """One slice per item from the memory-mapped store, through ``transform``."""

    def __init__(
        self,
        store_path: str,
        indices: np.ndarray,
        transform: Callable[[Tensor], tuple[Tensor, ...]],
    ) -> None:
        self.store_path = store_path
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self._store: Store | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if self._store is None:  # opened once per worker process
            self._store = Store(self.store_path)
        return self.transform(study_input(self._store.get(int(self.indices[i]))))


def _baseline_loader(s: BenchSettings, store, idx: np.ndarray, transform=None):
    dataset = StudyDataset(str(store.path), idx, transform or StudyTransform(s.size))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=s.batch,
        shuffle=True,
        num_workers=s.workers,
        pin_memory=s.device.type == "cuda",
        drop_last=True,
        persistent_workers=s.workers > 0,
    )


def _training_pieces(cfg, device: torch.device, steps_per_epoch: int, study: bool = False):
    """The trainer's model, optimiser, schedule, scaler, autocast dtype and memory format;
    with ``study=True`` the model runs as the study's code runs it: NCHW, and AMP
    (``torch.cuda.amp``: fp16 autocast + grad scaling) on CUDA, plain fp32 on CPU."""
    from radengine.engine.optim import WarmupCosine
    from radengine.engine.setup import amp_dtype, build_model, build_optimizer, resolved_lr

    channels_last = (
        cfg.model.channels_last
        if cfg.model.channels_last is not None
        else not cfg.model.arch.startswith("vit")
    ) and not study
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, in_chans=3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, resolved_lr(cfg))
    total = cfg.optim.epochs * steps_per_epoch
    warmup = min(total, round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = WarmupCosine(optimizer, total, warmup, cfg.optim.final_lr_fraction)
    study_amp = torch.float16 if device.type == "cuda" else None
    amp = study_amp if study else amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    return model, optimizer, scheduler, scaler, amp, channels_last


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def _epochs(loader) -> Iterator[list[Tensor]]:
    while True:  # epoch after epoch, as a training loop runs them
        yield from loader


def _plan(cfg, model) -> Any:
    from radengine.engine.views import ViewPlan

    return ViewPlan.of(cfg, model)


def bench_baseline(s: BenchSettings) -> PipelineResult:
    """The study-style pipeline, ``warmup + steps`` steps (see the module docstring)."""
    cfg = config(s)
    store, idx = _train_indices(s, cfg)
    spe = len(idx) // s.batch
    model, optimizer, scheduler, scaler, amp, channels_last = _training_pieces(
        cfg, s.device, spe, study=s.baseline == "study"
    )
    loader = _baseline_loader(s, store, idx, MethodTransform.of(_plan(cfg, model)))
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    total = cfg.optim.epochs * spe

    it = _epochs(loader)
    times: list[tuple[float, float]] = []
    loss_value = float("nan")
    for step in range(s.warmup + s.steps):
        t0 = time.perf_counter()
        batch = next(it)
        wait = time.perf_counter() - t0
        views = [v.to(s.device, non_blocking=True).contiguous(memory_format=fmt) for v in batch]
        model.set_step(step, total, spe)  # the trainer's per-step hooks, as it calls them
        with _autocast(s.device, amp):
            loss = model(views)
        loss_value = float(loss.detach().float())  # the trainer's one sync per step
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        model.before_update()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        model.after_update()
        times.append((wait, time.perf_counter() - t0))
    del it, loader  # shuts the persistent workers down
    return PipelineResult(BASELINE, s.batch, times[s.warmup :], loss_value)


# ----------------------------------------------------------------------------- breakdown


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn`` after one warm-up call. CPU time is this
    process's, all threads: robust to other load on a shared machine, unlike wall time."""
    fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def breakdown(s: BenchSettings, repeat: int = 3) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per batch of each part, timed alone in this process (medians of
    ``repeat``; the model step with this process's threads, the rest as noted).

    - ``gather``: radengine's loader work per batch (``store.images`` of a batch of rows);
    - ``augment``: radengine's batched views on the device (the trainer's call);
    - ``model_step``: forward + loss + backward + optimiser step on ready views (both);
    - ``baseline_transforms``: the baseline's per-sample reads and transforms of a batch
      plus default collate, on one thread (as one DataLoader worker runs them); with W
      workers that have cores to themselves a batch takes 1/W of it.
    """
    from radengine.ops.augment import augment_views

    cfg = config(s)
    store, idx = _train_indices(s, cfg)
    rng = np.random.default_rng(s.seed)
    rows = np.sort(rng.choice(idx, s.batch, replace=False))
    cpu = torch.device("cpu")
    out: dict[str, tuple[float, float]] = {}
    out["gather"] = _median_s(lambda: store.images(rows), cpu, repeat)
    a = cfg.augment
    x = torch.from_numpy(store.images(rows)).to(s.device)
    model, optimizer, _, scaler, amp, channels_last = _training_pieces(cfg, s.device, 1)
    view_dtype = amp if amp is not None else torch.float32
    seeds = iter(range(10**6))
    plan = _plan(cfg, model)
    specs, sizes = list(plan.specs), list(plan.sizes)

    def augment():
        return augment_views(x, specs, views=len(specs), sizes=sizes, intensity=a.intensity,
                             repeat=a.repeat, mean=a.mean, std=a.std, seed=next(seeds),
                             dtype=view_dtype, channels_last=channels_last)[0]  # fmt: skip

    out["augment"] = _median_s(augment, s.device, repeat)
    views = augment()

    def step():
        model.set_step(0, 1, 1)
        with _autocast(s.device, amp):
            loss = model(views)
        float(loss.detach().float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        model.before_update()
        scaler.step(optimizer)
        scaler.update()
        model.after_update()

    out["model_step"] = _median_s(step, s.device, repeat)
    dataset = StudyDataset(str(store.path), idx, MethodTransform.of(plan))
    collate = torch.utils.data.default_collate
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out["baseline_transforms"] = _median_s(
            lambda: collate([dataset[int(i)] for i in rng.integers(0, len(idx), s.batch)]),
            cpu,
            repeat,
        )
    finally:
        torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------- reporting


def device_label(device: torch.device) -> str:
    """The device column / CSV file name, as benchmarks/_common.device_name makes it."""
    import re

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from radengine.info import _cpu_name

        name = f"cpu {_cpu_name()} {torch.get_num_threads()}c"
        name = re.sub(r"\((r|tm)\)|processor|cpu @.*", "", name, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if slug.startswith(("cpu", "nvidia")) or device.type == "cpu" else f"nvidia-{slug}"


def append_csv(path: Path, rows: list[tuple], device: torch.device) -> Path:
    """Append ``rows`` (from :func:`metric_rows`) to ``path`` in the shared schema."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    common = dict(
        op=OP,
        device=device_label(device),
        torch=torch.__version__,
        commit=commit or "unknown",
        date=dt.date.today().isoformat(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for backend, shape, dtype, metric, unit, p20, p50, p80 in rows:
            writer.writerow(dict(common, backend=backend, shape=shape, dtype=dtype, metric=metric,
                                 unit=unit, p20=f"{p20:.6g}", p50=f"{p50:.6g}",
                                 p80=f"{p80:.6g}"))  # fmt: skip
    return path


def summary(results: dict[str, PipelineResult], s: BenchSettings) -> str:
    """A small table: img/s (p50, p20..p80), data wait, then the speedup."""
    lines = [
        f"pipeline: {s.method} {s.arch}, batch {s.batch}, {s.size} px views, {s.workers} workers, "
        f"{s.device}; {s.steps} measured steps after {s.warmup} warm-up; baseline model "
        f"execution: {'as the study' if s.baseline == 'study' else 'as ours'}",
        f"{'pipeline':26} {'dtype':>9} {'img/s p50':>10} {'p20..p80':>17} {'data wait':>10} "
        f"{'loss':>8}",
    ]
    for name, r in results.items():
        p20, p50, p80 = percentiles(r.img_per_s)
        lines.append(
            f"{_label(name, s):26} {_dtype(name, s):>9} {p50:10.1f} "
            f"{f'{p20:.1f}..{p80:.1f}':>17} {100 * r.data_wait_fraction:9.1f}% {r.loss:8.4f}"
        )
    if OURS in results and BASELINE in results:
        lines.append(f"speedup (radengine / study-baseline, p50 img/s): {speedup(results):.2f}x")
    return "\n".join(lines)


def format_breakdown(parts: dict[str, tuple[float, float]], s: BenchSettings) -> str:
    lines = [
        f"parts per batch of {s.batch}, each timed alone ({torch.get_num_threads()} threads for "
        "the model step and radengine's augmentation, 1 for the baseline's transforms):",
        f"  {'part':22} {'wall ms':>9} {'CPU ms':>9}",
    ]
    lines += [f"  {k:22} {1e3 * w:9.1f} {1e3 * c:9.1f}" for k, (w, c) in parts.items()]
    return "\n".join(lines)


def measure(s: BenchSettings, only: str | None = None) -> dict[str, PipelineResult]:
    """Run the selected pipelines (both by default), radengine first."""
    results: dict[str, PipelineResult] = {}
    if only in (None, "ours"):
        results[OURS] = bench_ours(s)
    if only in (None, "baseline"):
        results[BASELINE] = bench_baseline(s)
    return results


def run(argv: list[str] | None = None) -> int:
    """``radengine bench pipeline [options]`` (also ``python -m radengine.engine.pipeline_bench``).

    Errors go through ``radengine.cli.run_command``, the CLI's one error path: an option out
    of range, a missing or foreign store (StoreError), a failed run (PretrainError) or an
    unwritable --csv end as one ``error:`` line and exit 2, without a traceback.

    Args:
        argv: The options (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 2 for an error.
    """
    from radengine.cli import run_command

    return run_command(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    """Check the options, measure, print (and append the CSV)."""
    from radengine.errors import UserError

    for name, minimum in (("size", 1), ("batch", 1), ("steps", 1), ("warmup", 0), ("workers", 0)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name} must be >= {minimum}, got {value}")
    s = resolve(args)
    results = measure(s, args.only)
    print(summary(results, s))
    if args.breakdown:
        print(format_breakdown(breakdown(s), s))
    if args.csv is not None:
        path = append_csv(args.csv, metric_rows(results, s), s.device)
        print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
