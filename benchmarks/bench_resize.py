"""Benchmark resize: radengine's C++ antialiased bilinear against what a user would use
instead: torch.nn.functional.interpolate(antialias=True) in float32 (our reference runs
the same in float64), and Pillow per slice when installed.

    python benchmarks/bench_resize.py [--batch 300] [--size 512] [--out-size 256]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, percentiles, time_ms

from radengine.ops import OPS, _dispatch, resize


def torch_interpolate(x: torch.Tensor, size: int) -> torch.Tensor:
    y = torch.nn.functional.interpolate(
        x.unsqueeze(1).float(), size=(size, size), mode="bilinear", antialias=True
    )
    return y.round().clamp(-32768, 32767).to(torch.int16).squeeze(1)


def pillow_peer(x: torch.Tensor, size: int):
    try:
        from PIL import Image
    except ImportError:
        return None
    arrays = [a.astype(np.float32) for a in x.numpy()]

    def run():
        out = [
            np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))
            for a in arrays
        ]
        return np.rint(np.stack(out)).astype(np.int16)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    rec = Recorder("resize", device)
    x = torch.randint(-1024, 3072, (args.batch, args.size, args.size), dtype=torch.int16)
    shape = f"{args.batch}x{args.size}x{args.size}->{args.out_size}"
    candidates = {
        b: functools.partial(resize, x, args.out_size, backend=b)
        for b in OPS["resize"]
        if _dispatch.unavailable_reason(b, "cpu") is None
    }
    candidates["torch-interpolate"] = functools.partial(torch_interpolate, x, args.out_size)
    if (pil := pillow_peer(x, args.out_size)) is not None:
        candidates["pillow"] = pil
    for name, fn in candidates.items():
        times = time_ms(fn, device, warmup=1, repeat=args.repeat)
        p20, p50, p80 = percentiles(times)
        rec.add(name, shape, "int16", "time", "ms", p20, p50, p80)
        rec.add(
            name,
            shape,
            "int16",
            "throughput",
            "slices/s",
            *(args.batch / (t / 1e3) for t in (p80, p50, p20)),
        )
        print(f"{name:10} {p50:9.1f} ms  {args.batch / (p50 / 1e3):8.0f} slices/s", flush=True)
    path = rec.write(args.out)
    rec.print_table(("time", "throughput"))
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
