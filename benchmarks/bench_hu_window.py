"""Benchmark hu_window: every available radengine backend against what a user would write
instead (torch eager the obvious way, torch.compile of it, MONAI ScaleIntensityRange when
installed).

    python benchmarks/bench_hu_window.py [--device cuda] [--batch 256] [--size 512]

Reports median time, achieved GB/s (int16 bytes read + output bytes written) and the
fraction of the device's measured copy bandwidth; appends rows to
benchmarks/results/<device>.csv.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, copy_bandwidth_gbs, percentiles, time_ms

from radengine.ops import NAMED_WINDOWS, OPS, _dispatch, hu_window

WINDOWS = ["brain", "soft_tissue", "bone"]


def torch_eager(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The obvious torch: float HU, one clamp-and-scale per window, stack, cast."""
    x = x.float()
    channels = []
    for name in WINDOWS:
        center, width = NAMED_WINDOWS[name]
        lo, hi = center - width / 2, center + width / 2
        channels.append((x.clamp(lo, hi) - lo) / (hi - lo))
    return torch.stack(channels, dim=1).to(dtype)


def monai_peer():
    try:
        from monai.transforms import ScaleIntensityRange
    except ImportError:
        return None
    transforms = []
    for name in WINDOWS:
        center, width = NAMED_WINDOWS[name]
        transforms.append(
            ScaleIntensityRange(center - width / 2, center + width / 2, 0.0, 1.0, clip=True)
        )

    def run(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        xf = x.float()
        return torch.stack([t(xf) for t in transforms], dim=1).to(dtype)

    return run


def make_candidates(x: torch.Tensor, dtype: torch.dtype, device: torch.device, compile_peer: bool):
    """name -> zero-argument callable: radengine's backends, then the peers."""
    out = {}
    for backend in OPS["hu_window"]:
        # Triton on CPU tensors is an interpreter for tests, not a backend to time.
        if _dispatch.unavailable_reason(backend, device.type) is None and not (
            backend == "triton" and device.type == "cpu"
        ):
            out[backend] = functools.partial(hu_window, x, WINDOWS, dtype=dtype, backend=backend)
    out["torch-eager"] = functools.partial(torch_eager, x, dtype)
    if compile_peer:
        out["torch-compile"] = functools.partial(torch.compile(torch_eager), x, dtype)
    if (monai := monai_peer()) is not None:
        out["monai"] = functools.partial(monai, x, dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    rec = Recorder("hu_window", device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(
        -1024, 3072, (args.batch, args.size, args.size), generator=gen, dtype=torch.int16
    )
    x = x.to(device)
    shape = f"{args.batch}x{args.size}x{args.size}->{len(WINDOWS)}ch"
    copy_bw = copy_bandwidth_gbs(device)
    rec.add("copy", "1GiB", "uint8", "bandwidth", "GB/s", copy_bw, copy_bw, copy_bw)

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        nbytes = x.numel() * 2 + x.numel() * len(WINDOWS) * dtype.itemsize
        candidates = make_candidates(x, dtype, device, compile_peer=not args.no_compile)
        ref = torch_eager(x, dtype).float()
        eager_ms = None
        for name, fn in candidates.items():
            torch.testing.assert_close(fn().float(), ref, rtol=1e-2, atol=1e-2)
            times = time_ms(fn, device, warmup=2, repeat=args.repeat)
            p20, p50, p80 = percentiles(times)
            gbs = [nbytes / (t * 1e-3) / 1e9 for t in (p80, p50, p20)]
            rec.add(name, shape, dtype_name, "time", "ms", p20, p50, p80)
            rec.add(name, shape, dtype_name, "throughput", "GB/s", *gbs)
            rec.add(name, shape, dtype_name, "roofline", "fraction", *(g / copy_bw for g in gbs))
            if name == "torch-eager":
                eager_ms = times
            print(
                f"{dtype_name:9} {name:14} {p50:9.2f} ms  {gbs[1]:7.1f} GB/s  {gbs[1] / copy_bw:5.1%} of copy",
                flush=True,
            )
        if eager_ms is not None:
            eager = statistics.median(eager_ms)
            for r in [r for r in rec.rows if r["metric"] == "time" and r["dtype"] == dtype_name]:
                speedup = eager / float(r["p50"])
                rec.add(
                    r["backend"],
                    shape,
                    dtype_name,
                    "speedup_vs_eager",
                    "x",
                    speedup,
                    speedup,
                    speedup,
                )

    path = rec.write(args.out)
    rec.print_table(("time", "throughput", "roofline", "speedup_vs_eager"))
    print(f"\ncopy bandwidth {copy_bw:.1f} GB/s (read + write); rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
