"""`radengine selftest`: are this machine's kernels right? The first thing to run on a new
machine (docs/gpu.md).

For one device (``cpu``, ``cuda`` or ``cuda:N``) every op (hu_window, resize, augment_views,
nt_xent, info_nce) runs on every backend that can take that device's tensors, against the
op's reference (``reference_<op>``, in fp64 for the losses) on fresh random inputs of
realistic and awkward shapes and every supported dtype, with the tolerances of the op tests
(:mod:`radengine.ops.tolerances`). Then a few pretraining steps on a tiny built-in store
(tracking off, in a temporary folder): the loss must be finite and go down, and the
checkpoint written must read back with the run's weights. On CUDA, each kernel also runs
on a side stream behind a pending sleep, with its input written on that stream after the
sleep: right results show it ran on the current stream, a still-pending sleep when it
returns shows it did not synchronise the host; at the end ``torch.cuda.synchronize()``
must raise nothing (no sticky error left behind).

One line per (op, backend, dtype): PASS / FAIL / SKIP, the worst error (absolute, and as a
fraction of the tolerance) and, for a failure, the first failing case. Exit 0 when all
pass, 1 on any failure, 2 for bad usage (e.g. ``--device cuda`` without a GPU).

Triton kernels run on CPU tensors only under ``TRITON_INTERPRET=1`` (the interpreter the
tests use); set it before running ``radengine selftest --device cpu`` to include them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from radengine.errors import UserError
from radengine.ops import _dispatch
from radengine.ops import tolerances as tol

OP_NAMES = ("hu_window", "resize", "augment_views", "nt_xent", "info_nce")
CHECK_NAMES = ("pretrain", "cuda_stream")
# Backends each op is written for (the dispatcher lists which can run here and why not).
DESIGNED: dict[str, tuple[str, ...]] = {
    "hu_window": ("cpu", "cuda", "triton"),
    "resize": ("cpu",),
    "augment_views": ("cpu", "cuda", "triton"),
    "nt_xent": ("cpu", "triton"),
    "info_nce": ("cpu", "triton"),
}
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOSS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class SelftestUsageError(UserError, ValueError):
    """A device or option the self-test cannot use (exit 2)."""


@dataclasses.dataclass
class Result:
    """One output line: an (op, backend, dtype) over all its cases, or a named check.

    ``status`` is PASS, FAIL or SKIP; ``worst_error`` the largest absolute error seen;
    ``worst_ratio`` the largest error as a fraction of what its tolerance allowed (> 1 is a
    failure); ``detail`` names the worst (or first failing) case, or why it was skipped."""

    op: str
    backend: str
    dtype: str
    status: str = "PASS"
    cases: int = 0
    worst_error: float = 0.0
    worst_ratio: float = 0.0
    detail: str = ""
    seconds: float = 0.0

    def add(self, case: str, error: float, ratio: float) -> None:
        self.cases += 1
        if not math.isfinite(ratio) or ratio > 1.0:
            if self.status != "FAIL":  # keep the first failing case
                self.detail = (
                    f"{case}: error {_num(error)} is {_ratio_text(ratio)} of its tolerance"
                )
            self.status = "FAIL"
        elif self.status == "PASS" and ratio >= self.worst_ratio:
            self.detail = case
        if not self.worst_ratio >= ratio:  # NaN-safe max
            self.worst_ratio = ratio
        if not self.worst_error >= error:
            self.worst_error = error

    def fail(self, case: str, why: str) -> None:
        self.cases += 1
        if self.status != "FAIL":
            self.detail = f"{case}: {why}"
        self.status = "FAIL"
        self.worst_ratio = self.worst_error = math.inf

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("worst_error", "worst_ratio"):
            d[k] = d[k] if math.isfinite(d[k]) else None  # JSON has no inf
        return d


class _Mismatch(Exception):
    """A case whose output is wrong in kind (shape, dtype, layout, device), not degree."""


def _num(x: float) -> str:
    return f"{x:.2e}" if math.isfinite(x) else "inf"


def _ratio_text(r: float) -> str:
    return f"{r:.2f}x" if math.isfinite(r) else "inf x"


# ------------------------------------------------------------------------ comparisons


def _check_kind(out: Tensor, ref: Tensor, dtype: torch.dtype | None = None, fmt=None) -> None:
    if tuple(out.shape) != tuple(ref.shape):
        raise _Mismatch(f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if out.device != ref.device:
        raise _Mismatch(f"on {out.device}, expected {ref.device}")
    if dtype is not None and out.dtype != dtype:
        raise _Mismatch(f"dtype {out.dtype}, expected {dtype}")
    if fmt is not None and not out.is_contiguous(memory_format=fmt):
        raise _Mismatch(f"not contiguous in {fmt}")


def close_ratio(out: Tensor, ref: Tensor, rtol: float, atol: float) -> tuple[float, float]:
    """(max |out - ref|, max |out - ref| / (atol + rtol |ref|)) as torch.testing.assert_close
    judges; non-finite reference values must be matched exactly (else inf, inf)."""
    a, b = out.detach().double(), ref.detach().to(out.device).double()  # on the device
    if a.shape != b.shape:
        raise _Mismatch(f"shape {tuple(a.shape)}, expected {tuple(b.shape)}")
    finite = torch.isfinite(b)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if bool((~finite & ~same).any()) or bool((finite & ~torch.isfinite(a)).any()):
        return math.inf, math.inf
    if not bool(finite.any()):
        return 0.0, 0.0
    diff = (a - b).abs()[finite]
    allowed = atol + rtol * b.abs()[finite]
    return diff.max().item(), (diff / allowed).max().item()


def ulp_ratio(out: Tensor, ref32: Tensor, slack: float) -> tuple[float, float]:
    """fp16/bf16 ``out`` against the fp32 reference: (max |out - ref32|, max distance from
    ref32 rounded to out's dtype in units of (one of its ulps + slack))."""
    o, r32 = out.detach(), ref32.detach().to(out.device).float()
    if not bool(torch.isfinite(o.float()).all()):
        return math.inf, math.inf
    r = r32.to(o.dtype)
    try:
        up = torch.nextafter(r, torch.full_like(r, math.inf)).float() - r.float()
        down = r.float() - torch.nextafter(r, torch.full_like(r, -math.inf)).float()
    except (RuntimeError, NotImplementedError):  # no nextafter for this dtype on this device
        return ulp_ratio(o.cpu(), r32.cpu(), slack)
    allowed = torch.maximum(up, down) + slack
    diff = (o.float() - r.float()).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    return (o.float() - r32).abs().max().item(), (diff / allowed).max().item()


# ------------------------------------------------------------------------- the runner


@dataclasses.dataclass
class _Run:
    device: torch.device
    quick: bool
    gen: torch.Generator
    results: list[Result] = dataclasses.field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def result(self, op: str, backend: str, dtype: Any) -> Result:
        name = str(dtype).removeprefix("torch.")
        for r in self.results:
            if (r.op, r.backend, r.dtype) == (op, backend, name):
                return r
        r = Result(op, backend, name)
        self.results.append(r)
        return r

    def skip(self, op: str, backend: str, why: str) -> None:
        self.results.append(Result(op, backend, "-", status="SKIP", detail=why))

    def case(
        self, res: Result, case: str, fn: Callable[..., tuple[float, float]], *args: Any
    ) -> None:
        """Run ``fn(*args)``, one case, into ``res``; an exception is that case's failure."""
        t0 = time.perf_counter()
        try:
            err, ratio = fn(*args)
            if self.cuda:
                torch.cuda.synchronize(self.device)  # an async kernel error surfaces here
        except _Mismatch as exc:
            res.fail(case, str(exc))
        except Exception as exc:
            res.fail(case, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
        else:
            res.add(case, err, ratio)
        res.seconds += time.perf_counter() - t0

    def backends(self, op: str, impls: Sequence[str]) -> list[str]:
        """The backends of ``op`` that run on this device; SKIP lines for the others."""
        dev = self.device.type
        out = []
        for b in DESIGNED[op]:
            if b in ("cpu", "cuda") and b != dev:
                continue
            if b not in impls:
                why = (
                    "not in this build of radengine (a native module built before this op, "
                    "or missing: `radengine info` says which; rebuild with `pip install -e .`)"
                )
                self.skip(op, b, why)
            elif (why := _dispatch.unavailable_reason(b, dev)) is not None:
                self.skip(op, b, why)
            else:
                out.append(b)
        return out

    def randint(self, lo: int, hi: int, shape, dtype) -> Tensor:
        return torch.randint(lo, hi, shape, generator=self.gen, dtype=dtype).to(self.device)

    def randn(self, *shape: int, dtype=torch.float64) -> Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(self.device, dtype)


def _interpreted(run: _Run, backend: str) -> bool:
    """Triton on CPU tensors is an interpreter: thousands of times slower; small cases only."""
    return backend == "triton" and run.device.type == "cpu"


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """The augment reference blurs with cuDNN and the loss references use matmuls: keep
    TF32 out of every reference (as the CUDA tests do)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


# -------------------------------------------------------------------------- hu_window

HU_MODES: dict[str, dict[str, Any]] = {
    "three_windows": dict(windows=["brain", "soft_tissue", "bone"]),
    "one_window_x3_normalised": dict(
        windows=(-600, 1500), repeat=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    ),
    "minmax_x3": dict(windows="minmax", repeat=3),
    "clip": dict(windows="clip", mean=0.5, std=0.5),
    "five_windows": dict(windows=["brain", "subdural", "liver", "lung", (0, 1)]),
}
HU_SHAPES = [(1, 1, 1), (3, 123, 77), (2, 1, 33, 65), (4, 8, 16), (1, 7, 1), (5, 1, 9, 8)]
HU_SHAPES_QUICK = [(1, 1, 1), (3, 123, 77), (2, 1, 33, 65)]


def check_hu_window(run: _Run) -> None:
    from radengine.ops.hu_window import IMPLS, WindowSpec, hu_window, reference_hu_window

    def one(x: Tensor, backend: str, dtype, cl: bool, mode: dict) -> tuple[float, float]:
        out = hu_window(x, dtype=dtype, channels_last=cl, backend=backend, **mode)
        rest = {k: v for k, v in mode.items() if k != "windows"}
        spec = WindowSpec.parse(mode["windows"], **rest)
        lo, hi = spec.bounds()
        ref = reference_hu_window(x, lo, hi, spec.mean, spec.std, spec.minmax, dtype, cl)
        fmt = torch.channels_last if cl else torch.contiguous_format
        _check_kind(out, ref, dtype, fmt)
        return close_ratio(out, ref, *tol.HU_WINDOW[dtype])

    modes = ["three_windows", "minmax_x3", "one_window_x3_normalised"] if run.quick else HU_MODES
    for backend in run.backends("hu_window", IMPLS):
        shapes = list(HU_SHAPES_QUICK if run.quick else HU_SHAPES)
        if not _interpreted(run, backend):
            big = (64, 512, 512) if run.cuda else (8, 512, 512)
            shapes.append(big if not run.quick else (4, 256, 256))
        for dtype in OUTPUT_DTYPES:
            res = run.result("hu_window", backend, dtype)
            for shape in shapes:
                for mode in modes:
                    full = mode == "minmax_x3"
                    lo, hi = (-32768, 32768) if full else (-1024, 3072)
                    x = run.randint(lo, hi, shape, torch.int16)
                    for cl in (False, True):
                        case = f"{'x'.join(map(str, shape))} {mode} {'nhwc' if cl else 'nchw'}"
                        run.case(res, case, one, x, backend, dtype, cl, HU_MODES[mode])
            if not run.quick:  # strided input views
                base = run.randint(-1024, 3072, (4, 3, 40, 90), torch.int16)
                for i, x in enumerate((base[:, 1, ::2, 1::3], base[::2, 2:3].transpose(-1, -2))):
                    case = f"strided input #{i + 1}"
                    run.case(res, case, one, x, backend, dtype, True, HU_MODES["clip"])


# ----------------------------------------------------------------------------- resize

RESIZE_CASES = [
    ((3, 512, 512), (256, 256)),
    ((2, 123, 77), (64, 200)),
    ((1, 7, 5), (3, 11)),
    ((4, 1, 1), (5, 3)),
    ((2, 33, 65), (1, 1)),
    ((2, 40, 30), (40, 30)),
    ((2, 97, 143, 3), (64, 64)),
    ((1, 300, 200, 3), (301, 77)),
]
RESIZE_CASES_QUICK = [RESIZE_CASES[i] for i in (1, 2, 3, 6)]


def check_resize(run: _Run) -> None:
    from radengine.ops.resize import DTYPES, IMPLS, reference_resize, resize

    if run.device.type != "cpu":
        run.skip("resize", "-", "a CPU-only op (data loaders, ingest): nothing to check on CUDA")
        return

    def one(x: Tensor, size, backend: str) -> tuple[float, float]:
        out = resize(x, size, backend=backend)
        ref = reference_resize(x, size)
        _check_kind(out, ref, x.dtype, torch.contiguous_format)
        if x.dtype == torch.float32:
            atol = tol.RESIZE_FP32_ATOL_PER_MAX * max(x.abs().max().item(), 1e-30)
            return close_ratio(out, ref, tol.RESIZE_FP32_RTOL, atol)
        # integers: off by at most one, and only where the exact value is a .5 tie
        diff = (out.int() - ref.int()).abs()
        exact = reference_resize(x.float(), size)
        frac = (exact - exact.floor() - 0.5).abs()
        near_half = frac < tol.RESIZE_HALF_SLACK * exact.abs().clamp(min=1)
        worst = diff.max().item() if diff.numel() else 0
        ok = worst <= 1 and bool(torch.all(near_half[diff > 0]))
        return float(worst), (worst / 2 if ok else math.inf)

    for backend in run.backends("resize", IMPLS):
        for dtype in DTYPES:
            res = run.result("resize", backend, dtype)
            for shape, size in RESIZE_CASES_QUICK if run.quick else RESIZE_CASES:
                if dtype == torch.int16:
                    x = run.randint(-1024, 3072, shape, torch.int16)
                elif dtype == torch.uint8:
                    x = run.randint(0, 256, shape, torch.uint8)
                else:
                    x = run.randn(*shape, dtype=torch.float32) * 500
                case = f"{'x'.join(map(str, shape))}->{size[0]}x{size[1]}"
                run.case(res, case, one, x, size, backend)


# ---------------------------------------------------------------------- augment_views

EVERYTHING: dict[str, Any] = {  # every feature on, often (tests/ops/test_augment.py)
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
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
# name: (kind, input shape, augment_views kwargs, views, output size)
AUGMENT_CASES: dict[str, tuple[str, tuple[int, ...], dict[str, Any], int, tuple[int, int]]] = {
    "ct_minmax_x3": ("int16", (4, 40, 50), dict(intensity="minmax", repeat=3), 2, (24, 20)),
    "rgb_imagenet": ("uint8", (3, 45, 37, 3), IMAGENET, 2, (24, 20)),
    "ct_1x1": ("int16", (2, 1, 1), dict(intensity="minmax", repeat=3), 3, (5, 4)),
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
    "rgb_1x1_v3": ("uint8", (1, 1, 1, 3), {}, 3, (6, 3)),
}
AUGMENT_QUICK = ("ct_minmax_x3", "rgb_imagenet", "ct_1x1")


def check_augment(run: _Run) -> None:
    from radengine.ops.augment import IMPLS, augment_views

    cases = dict(AUGMENT_CASES)
    if not run.quick:  # realistic: a training batch of 512 px slices to 224 px views
        big = (32, 512, 512) if run.cuda else (4, 256, 256)
        cases["ct_realistic"] = ("int16", big, dict(intensity="minmax", repeat=3), 2, (224, 224))
        rgb = (32, 256, 256, 3) if run.cuda else (4, 128, 128, 3)
        cases["rgb_realistic"] = ("uint8", rgb, IMAGENET, 2, (112, 112))
    names = AUGMENT_QUICK if run.quick else tuple(cases)
    specs = ("everything",) if run.quick else ("everything", "simclr", "ct")
    for backend in run.backends("augment_views", IMPLS):
        for name in names:
            if _interpreted(run, backend) and name.endswith("realistic"):
                continue
            kind, shape, kw, views, size = cases[name]
            for spec_name in specs:
                spec = EVERYTHING if spec_name == "everything" else spec_name
                if kind == "uint8":
                    x = run.randint(0, 256, shape, torch.uint8)
                else:
                    x = run.randint(-1500, 3000, shape, torch.int16)
                seed = int(torch.randint(1 << 30, (1,), generator=run.gen))
                with _no_tf32():
                    ref, p = augment_views(
                        x, spec, views=views, size=size, seed=seed, backend="reference", **kw
                    )
                for dtype in OUTPUT_DTYPES:
                    res = run.result("augment_views", backend, dtype)
                    for cl in (False, True):
                        case = f"{name} {spec_name} {'nhwc' if cl else 'nchw'} seed {seed}"

                        def one(x, p, ref, backend, dtype, cl, spec, kw):
                            out, _ = augment_views(
                                x, spec, views=len(ref), size=ref[0].shape[-2:], params=p,
                                backend=backend, dtype=dtype, channels_last=cl, **kw,
                            )  # fmt: skip
                            fmt = torch.channels_last if cl else torch.contiguous_format
                            worst = (0.0, 0.0)
                            for o, r in zip(out, ref, strict=True):
                                _check_kind(o, r, dtype, fmt)
                                if dtype == torch.float32:
                                    e = close_ratio(o, r, 0.0, tol.AUGMENT_FP32_ATOL)
                                else:
                                    e = ulp_ratio(o, r, tol.AUGMENT_ULP_SLACK)
                                worst = max(worst, e, key=lambda t: t[1])
                            return worst

                        run.case(res, case, one, x, p, ref, backend, dtype, cl, spec, kw)


# -------------------------------------------------------------------- nt_xent, info_nce


def _loss_and_grads(fn: Callable[..., Tensor], inputs: Sequence[Tensor], **kw):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    loss = fn(*leaves, **kw)
    return loss, torch.autograd.grad(loss, leaves)


def _grad_ratio(got: Tensor, exact: Tensor, rows: int, temperature: float, dtype):
    """The tests' rule: gradients relative to their natural size max(|g|, 1 / (rows T))."""
    rtol, atol = tol.CONTRASTIVE[dtype]
    if dtype == torch.float32:
        atol = max(atol, tol.CONTRASTIVE_FP32_GRAD_ATOL_T / temperature)
    scale = exact.abs().max().clamp_min(1 / (rows * temperature))
    return close_ratio(got.double() / scale, exact / scale, rtol, atol)


def _worst(*pairs: tuple[float, float]) -> tuple[float, float]:
    return max(pairs, key=lambda t: t[1] if not math.isnan(t[1]) else math.inf)


def check_nt_xent(run: _Run) -> None:
    from radengine.ops.contrastive_loss import IMPLS, nt_xent, reference_nt_xent

    def exact(z: Tensor, temperature: float, normalize: bool = True):
        return _loss_and_grads(reference_nt_xent, [z.double()], temperature=temperature,
                               normalize=normalize)  # fmt: skip

    def one(z: Tensor, backend: str, temperature: float, normalize: bool):
        loss, (g,) = _loss_and_grads(
            nt_xent, [z], temperature=temperature, normalize=normalize, backend=backend
        )
        e_loss, (e_g,) = exact(z, temperature, normalize)
        _check_kind(g, z, z.dtype)
        return _worst(
            close_ratio(loss, e_loss, *tol.CONTRASTIVE[z.dtype]),
            _grad_ratio(g, e_g, z.shape[0], temperature, z.dtype),
        )

    def low_precision(z: Tensor, backend: str, temperature: float):
        n2 = z.shape[0]
        e_loss, (e_g,) = exact(z, temperature)

        def plain(z):  # plain torch in the input dtype, as SSL code writes it
            u = F.normalize(z, dim=1)
            mask = torch.eye(n2, dtype=torch.bool, device=z.device)
            logits = (u @ u.T / temperature).masked_fill(mask, float("-inf"))
            return F.cross_entropy(logits, (torch.arange(n2, device=z.device) + n2 // 2) % n2)

        b_loss, (b_g,) = _loss_and_grads(plain, [z])
        loss, (g,) = _loss_and_grads(nt_xent, [z], temperature=temperature, backend=backend)
        _check_kind(g, z, z.dtype)
        return _low_precision_ratio(loss, g, b_loss, b_g, e_loss, e_g)

    shapes = [(1, 8), (3, 1), (127, 128)]
    if not run.quick:
        shapes += [(300, 33), (1024, 256)] + ([(4096, 256)] if run.cuda else [])
    temperatures = (0.07,) if run.quick else (0.01, 0.5)
    for backend in run.backends("nt_xent", IMPLS):
        for dtype in LOSS_DTYPES:
            res = run.result("nt_xent", backend, dtype)
            if dtype in (torch.float16, torch.bfloat16):
                for temperature in temperatures:
                    z = run.randn(254, 64, dtype=dtype)
                    run.case(res, f"254x64 T={temperature}", low_precision, z, backend, temperature)
                continue
            for n, d in shapes:
                if _interpreted(run, backend) and n * d > 127 * 128:
                    continue
                for temperature in temperatures:
                    for normalize in (True,) if run.quick else (True, False):
                        z = run.randn(2 * n, d, dtype=dtype)
                        z = z if normalize else z / max(d, 4) ** 0.5
                        case = f"{2 * n}x{d} T={temperature}" + ("" if normalize else " raw")
                        run.case(res, case, one, z, backend, temperature, normalize)


def _low_precision_ratio(loss, g, b_loss, b_g, e_loss, e_g) -> tuple[float, float]:
    """flash-attention's rule: error vs fp64 at most FACTOR x plain torch's (+ slack)."""
    factor = tol.CONTRASTIVE_LOW_PRECISION_FACTOR
    loss_slack, grad_slack = tol.CONTRASTIVE_LOW_PRECISION_SLACK
    if not (torch.isfinite(loss).item() and bool(torch.isfinite(g).all())):
        return math.inf, math.inf
    err = abs(loss.double().item() - e_loss.item())
    base = abs(b_loss.double().item() - e_loss.item())
    g_err = (g.double() - e_g).abs().max().item()
    g_base = (b_g.double() - e_g).abs().max().item()
    return _worst(
        (err, err / (factor * base + loss_slack)), (g_err, g_err / (factor * g_base + grad_slack))
    )


def check_info_nce(run: _Run) -> None:
    from radengine.ops.contrastive_loss import IMPLS, info_nce, reference_info_nce

    def one(q, k, queue, backend: str, temperature: float):
        loss, grads = _loss_and_grads(
            info_nce, [q, k], queue=queue, temperature=temperature, backend=backend
        )
        q64 = None if queue is None else queue.double()
        e_loss, e_grads = _loss_and_grads(
            reference_info_nce, [q.double(), k.double()], queue=q64, temperature=temperature
        )
        rtol, atol = tol.CONTRASTIVE[q.dtype]
        pairs = [close_ratio(loss, e_loss, rtol, atol)]
        for g, e in zip(grads, e_grads, strict=True):
            _check_kind(g, q, q.dtype)
            pairs.append(close_ratio(g, e, rtol, atol))
        return _worst(*pairs)

    def low_precision(q, k, queue, backend: str, temperature: float):
        n = q.shape[0]
        e_loss, e_g = _loss_and_grads(
            reference_info_nce, [q.double(), k.double()], queue=queue.double(),
            temperature=temperature,
        )  # fmt: skip

        def plain(q, k):
            uq, uk, un = (F.normalize(t, dim=1) for t in (q, k, queue))
            logits = torch.cat([(uq * uk).sum(1, keepdim=True), uq @ un.T], 1) / temperature
            return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device))

        b_loss, b_g = _loss_and_grads(plain, [q, k])
        loss, g = _loss_and_grads(
            info_nce, [q, k], queue=queue, temperature=temperature, backend=backend
        )
        return _worst(*(
            _low_precision_ratio(loss, gi, b_loss, bi, e_loss, ei)
            for gi, bi, ei in zip(g, b_g, e_g, strict=True)
        ))  # fmt: skip

    shapes = [(33, 16, None), (33, 16, 5), (33, 16, 300)]
    if not run.quick:
        shapes += [(1, 8, 0), (256, 128, 4096)]
    temperature = 0.2
    for backend in run.backends("info_nce", IMPLS):
        for dtype in LOSS_DTYPES:
            res = run.result("info_nce", backend, dtype)
            if dtype in (torch.float16, torch.bfloat16):
                q, k, queue = (run.randn(r, 64, dtype=dtype) for r in (127, 127, 70))
                case = f"127x64 queue 70 T={temperature}"
                run.case(res, case, low_precision, q, k, queue, backend, temperature)
                continue
            for n, d, k_size in shapes:
                if _interpreted(run, backend) and (n * d > 33 * 16 or (k_size or 0) > 300):
                    continue
                q, k = run.randn(n, d, dtype=dtype), run.randn(n, d, dtype=dtype)
                queue = None if k_size is None else run.randn(k_size, d, dtype=dtype)
                case = f"{n}x{d} queue {k_size}"
                run.case(res, case, one, q, k, queue, backend, temperature)


# -------------------------------------------------------------------- the pretraining run


def check_pretrain(run: _Run) -> None:
    """A few SimCLR steps on a tiny built-in CT store into a temporary folder: finite losses
    that go down (no augmentation and no warm-up, so the views agree and the loss falls from
    the first step), then the last checkpoint read back, its weights those of encoder.pt."""
    res = run.result("pretrain", "default", "-")
    t0 = time.perf_counter()
    try:
        from radengine.config import load_pretrain_config
        from radengine.data.builtin import write_synthetic_ct_store
        from radengine.engine import checkpoint
        from radengine.engine.trainer import pretrain
    except ImportError as exc:
        res.status, res.detail = "SKIP", f"cannot import the trainer: {exc}"
        return
    steps = 4 if run.quick else 6
    with tempfile.TemporaryDirectory(prefix="radengine-selftest-") as tmp:
        try:
            store = Path(tmp) / "ct"
            write_synthetic_ct_store(store, patients=2, slices=8, size=32)
            cfg = load_pretrain_config(
                overrides=[
                    f"data.store={store}", f"train.out={Path(tmp) / 'run'}",
                    f"train.device={run.device}", "data.workers=0", "augment.size=32",
                    "augment.preset=none", "optim.batch_size=8", "optim.epochs=100",
                    "optim.warmup_epochs=0", "knn.every=0", "tracking.enabled=false",
                    "train.progress=false", "train.checkpoint_every=2",
                    f"train.keep_checkpoints={steps}", f"train.max_steps={steps}",
                ]
            )  # fmt: skip
            quiet = io.StringIO()  # its banner; --json output stays one JSON document
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                result = pretrain(cfg)
            state = checkpoint.load(result.checkpoint)
            windows = [c["loss"] for c in state["state"]["checkpoints"]]
            problems = []
            if result.steps != steps or state["state"]["step"] != steps:
                problems.append(f"ran {result.steps} steps, checkpoint at {state['state']['step']}")
            if not all(math.isfinite(v) for v in [*windows, result.loss]):
                problems.append(f"non-finite loss: {windows}")
            elif len(windows) < 2 or not windows[-1] < windows[0]:
                problems.append(f"loss did not go down: {windows}")
            encoder = torch.load(result.out / "encoder.pt", weights_only=True)
            model = state["model"]
            shared = [k for k in encoder if f"backbone.{k}" in model]
            if not shared:
                problems.append("the checkpoint holds none of encoder.pt's weights")
            for k in shared:
                if not torch.equal(encoder[k].cpu(), model[f"backbone.{k}"].cpu()):
                    problems.append(f"checkpoint weight {k} differs from encoder.pt")
                    break
            res.cases = 1
            res.worst_error = windows[-1] if windows else math.nan
            losses = ", ".join(f"{v:.3f}" for v in windows)
            case = f"{steps} steps on {run.device}, loss per 2 steps {losses}, checkpoint read back"
            if problems:
                res.status, res.detail = "FAIL", "; ".join(problems)
            else:
                res.detail = case
        except Exception as exc:
            res.fail("pretraining run", f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    res.seconds = time.perf_counter() - t0


# ----------------------------------------------------------------- CUDA stream discipline


def _sleep_cycles(device: torch.device, seconds: float) -> int:
    """GPU clock cycles torch.cuda._sleep needs to spin for ``seconds``."""
    cycles = 10_000_000
    with torch.cuda.device(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # warm-up
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        ms = max(start.elapsed_time(end), 1e-3)
    return int(cycles * seconds * 1e3 / ms)


def _on_side_stream(
    device: torch.device, src: Tensor, fn: Callable[[Tensor], Any], sleep_s: float
) -> tuple[Any, bool]:
    """Run ``fn(x)`` on a new stream behind a sleep, ``x`` = ``src`` copied on that stream
    only after the sleep. Returns fn's result (after the stream finished) and whether the
    sleep was still pending when fn returned (False: fn made the host wait)."""
    torch.cuda.synchronize(device)
    cycles = _sleep_cycles(device, sleep_s)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        x = torch.zeros_like(src)
        torch.cuda._sleep(cycles)
        gate = torch.cuda.Event()
        gate.record(side)
        x.copy_(src)  # another stream's kernel would read the zeros (or garbage)
        out = fn(x)
        pending = not gate.query()
    side.synchronize()
    return out, pending


def check_cuda_stream(run: _Run) -> None:
    """Each CUDA-device backend, warm, on a side stream: same result as on the default stream
    and no host synchronisation."""
    from radengine.ops.augment import IMPLS as AUG
    from radengine.ops.augment import augment_views
    from radengine.ops.contrastive_loss import IMPLS as LOSS
    from radengine.ops.contrastive_loss import info_nce, nt_xent
    from radengine.ops.hu_window import IMPLS as HU
    from radengine.ops.hu_window import hu_window

    if not hasattr(torch.cuda, "_sleep"):
        run.skip("cuda_stream", "-", "this torch has no torch.cuda._sleep")
        return
    dev = run.device
    hu_x = run.randint(-1024, 3072, (16, 256, 256), torch.int16)
    aug_x = run.randint(-1024, 3072, (8, 128, 128), torch.int16)
    aug_kw = dict(views=2, size=(64, 64), intensity="minmax", repeat=3)
    _, params = augment_views(aug_x, EVERYTHING, seed=1, backend="reference", **aug_kw)
    z_src = run.randn(512, 128, dtype=torch.float32)
    q_src, k_src = run.randn(256, 64, dtype=torch.float32), run.randn(256, 64, dtype=torch.float32)
    queue = run.randn(1024, 64, dtype=torch.float32)

    def loss_fn(fn, *extra):
        def go(x):
            leaf = x.requires_grad_()
            loss = fn(leaf, *extra)
            return [loss.detach(), *torch.autograd.grad(loss, leaf)]

        return go

    jobs: list[tuple[str, str, Tensor, Callable[[str], Callable[[Tensor], Any]]]] = []
    for b in (b for b in ("cuda", "triton") if b in HU):
        jobs.append(("hu_window", b, hu_x, lambda b: lambda x: hu_window(x, ["brain", "lung"], dtype=torch.bfloat16, backend=b)))  # fmt: skip
    for b in (b for b in ("cuda", "triton") if b in AUG):
        jobs.append(("augment_views", b, aug_x, lambda b: lambda x: augment_views(x, EVERYTHING, params=params, backend=b, dtype=torch.bfloat16, **aug_kw)[0]))  # fmt: skip
    for b in (b for b in ("triton",) if b in LOSS):
        jobs.append(("nt_xent", b, z_src, lambda b: loss_fn(lambda z: nt_xent(z, 0.2, backend=b))))  # fmt: skip
        jobs.append(("info_nce", b, q_src, lambda b: loss_fn(lambda q: info_nce(q, k_src, queue, 0.2, backend=b))))  # fmt: skip
    for op, b, src, make in jobs:
        if _dispatch.unavailable_reason(b, "cuda") is not None:
            continue
        res = run.result("cuda_stream", f"{op}/{b}", "-")

        def one(src: Tensor, fn: Callable[[Tensor], Any]) -> tuple[float, float]:
            expected = fn(src.clone())  # warm: compiled, cached, allocated
            torch.cuda.synchronize(dev)
            got, pending = _on_side_stream(dev, src, fn, sleep_s=0.2)
            pairs = []
            for g, e in zip(_flat(got), _flat(expected), strict=True):
                _check_kind(g, e, e.dtype)
                pairs.append(close_ratio(g, e, 1e-6, 1e-6))
            if not pending:
                raise _Mismatch(
                    "the call made the host wait for the stream (an implicit synchronisation)"
                )
            return _worst(*pairs)

        run.case(res, "side stream, input written after a pending sleep", one, src, make(b))


def _flat(x: Any) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else [t for item in x for t in _flat(item)]


def check_cuda_state(run: _Run) -> None:
    res = run.result("cuda_state", "-", "-")
    try:
        torch.cuda.synchronize(run.device)
    except Exception as exc:  # a sticky error from an earlier kernel
        res.fail("torch.cuda.synchronize() after every check", f"{type(exc).__name__}: {exc}")
    else:
        res.cases, res.detail = 1, "torch.cuda.synchronize() raised nothing after every check"


# ------------------------------------------------------------------------------ driver

CHECKS: dict[str, Callable[[_Run], None]] = {
    "hu_window": check_hu_window,
    "resize": check_resize,
    "augment_views": check_augment,
    "nt_xent": check_nt_xent,
    "info_nce": check_info_nce,
    "pretrain": check_pretrain,
    "cuda_stream": check_cuda_stream,
}


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def parse_device(text: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a usage error (exit 2) naming what is wrong."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SelftestUsageError(f"--device {text!r}: choose cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise SelftestUsageError(f"--device {text!r}: choose cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SelftestUsageError(
            f"--device {text}: no CUDA device visible to torch (torch.cuda.is_available() "
            "is False); run `radengine selftest --device cpu`, or `radengine info` to see why"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise SelftestUsageError(
            f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def parse_only(text: str | None) -> list[str]:
    names = [*OP_NAMES, *CHECK_NAMES]
    if not text:
        return names
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    if bad := [s for s in chosen if s not in names]:
        raise SelftestUsageError(f"--only {','.join(bad)}: choose from {', '.join(names)}")
    return chosen


def run_selftest(
    device: str | torch.device = "cpu",
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    seed: int | None = None,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run the checks (``only``: a subset of OP_NAMES and CHECK_NAMES) on ``device``; each
    result is passed to ``progress`` as soon as its check finishes."""
    dev = parse_device(str(device))
    if seed is None:
        seed = new_seed()
    run = _Run(dev, quick, torch.Generator().manual_seed(seed))
    names = list(only) if only else [*OP_NAMES, *CHECK_NAMES]
    ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx:
        for name in names:
            if name == "cuda_stream" and dev.type != "cuda":
                continue
            before = len(run.results)
            CHECKS[name](run)
            if progress is not None:
                for r in run.results[before:]:
                    progress(r)
        if dev.type == "cuda":
            before = len(run.results)
            check_cuda_state(run)
            if progress is not None:
                progress(run.results[-1])
    return run.results


def header(device: torch.device, quick: bool, seed: int) -> list[str]:
    lines = [f"radengine selftest on {device}" + (f" ({torch.cuda.get_device_name(device)})"
             if device.type == "cuda" else "") + f", torch {torch.__version__}"
             + (", quick" if quick else "") + f", seed {seed}"]  # fmt: skip
    if device.type == "cpu":
        why = _dispatch.unavailable_reason("triton", "cpu")
        if why is None:
            lines.append(
                "triton backends: included, run by the Triton interpreter (TRITON_INTERPRET=1)"
            )
        else:
            lines.append(f"triton backends: not included ({why})")
    return lines


def format_result(r: Result) -> str:
    if r.status == "SKIP" or r.op in ("pretrain", "cuda_state"):
        return f"{r.status:4}  {r.op:13} {r.backend:22} {r.seconds:6.1f} s  {r.detail}".rstrip()
    err = _num(r.worst_error)
    ratio = "" if r.status == "SKIP" else f"({_ratio_text(r.worst_ratio)} tol)"
    cases = "" if r.status == "SKIP" else f"{r.cases:4d} cases"
    return (
        f"{r.status:4}  {r.op:13} {r.backend:22} {r.dtype:9} worst {err:>8} {ratio:13} "
        f"{cases:10} {r.seconds:6.1f} s  {r.detail}"
    ).rstrip()


def summary(results: Sequence[Result]) -> str:
    failed = [r for r in results if r.status == "FAIL"]
    skipped = sum(r.status == "SKIP" for r in results)
    passed = sum(r.status == "PASS" for r in results)
    if failed:
        names = sorted({f"{r.op}/{r.backend}" for r in failed})
        return (
            f"FAILED: {len(failed)} of {len(results)} lines ({', '.join(names)}); {passed} passed"
        )
    return f"all {passed} checks passed" + (f", {skipped} skipped (see above)" if skipped else "")


def main(args: Any) -> int:
    """`radengine selftest` (argparse namespace: device, json, quick, only, seed)."""
    import json
    import sys

    device = parse_device(args.device)
    only = parse_only(args.only)
    seed = args.seed if args.seed is not None else new_seed()
    if not args.json:
        print("\n".join(header(device, args.quick, seed)), flush=True)

    def show(r: Result) -> None:
        if not args.json:
            print(format_result(r), flush=True)

    results = run_selftest(device, quick=args.quick, only=only, seed=seed, progress=show)
    failed = any(r.status == "FAIL" for r in results)
    if args.json:
        rows = [{"device": str(device), **r.as_dict()} for r in results]
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(summary(results))
    return 1 if failed else 0
