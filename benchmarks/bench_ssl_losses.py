"""Benchmark the SSL losses that stay plain torch against the backbone step they sit in.

    python benchmarks/bench_ssl_losses.py [--device cuda] [--batch N] [--arch resnet50]
        [--size 224] [--repeat 5]

Whether a loss deserves a kernel (DESIGN.md: only where measurement calls for one): each
loss's forward + backward on embeddings of its paper's width (Barlow Twins' 8192 x 8192
cross-correlation, VICReg's 8192-wide covariances, DINO's 65536 prototypes over 2 + 8 crops,
MoCo v3's keys, BYOL's cosine) at ``--batch`` rows per rank, against one forward + backward
of the backbone on two views of the same batch (``--arch`` at ``--size`` px), both in the
trainer's precision (bf16 autocast where native, fp32 otherwise; the losses compute in fp32
whatever the autocast). The ratio is what a fused kernel could at most save of a step. Both
costs grow linearly with the batch, so the CPU default of 32 rows (256 on CUDA) gives the
same ratio at a bearable time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, percentiles, time_ms

from radengine.ssl import losses

# loss name -> (embedding width, number of views, function of the views' embeddings)
LOSSES = {
    "barlow_twins": (8192, 2, lambda z: losses.barlow_twins_loss(z[0], z[1])),
    "vicreg": (8192, 2, lambda z: losses.vicreg_loss(z[0], z[1])),
    "moco_v3": (256, 2, lambda z: losses.moco_v3_loss(z[0], z[1]) + losses.moco_v3_loss(z[1], z[0])),
    "byol": (256, 2, lambda z: losses.byol_loss(z[0], z[1]) + losses.byol_loss(z[1], z[0])),
    "dino": (65536, 10, lambda z: losses.dino_loss(z, z[:2], torch.zeros(1, z[0].shape[1],
                                                     device=z[0].device), 0.1, 0.04)),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="rows per rank (default 32 CPU, 256 CUDA)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    from radengine.engine.setup import cpu_has_native_bf16
    from radengine.models import create_model

    device = torch.device(args.device)
    args.batch = args.batch or (256 if device.type == "cuda" else 32)
    amp = torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else None
    dtype = "bfloat16" if amp else "float32"
    rec = Recorder("ssl_loss", device)
    g = torch.Generator(device="cpu").manual_seed(0)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    net = create_model(args.arch, num_classes=0, in_chans=3).to(device)
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(2 * args.batch, 3, args.size, args.size, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last)

    def backbone_step():
        with autocast():
            y = net.forward_features(x)
        y.float().square().mean().backward()

    t_net = time_ms(backbone_step, device, warmup=1, repeat=args.repeat)
    shape = f"{args.arch} {args.size}px 2x{args.batch}"
    rec.add("backbone", shape, dtype, "fwd+bwd", "ms", *percentiles(t_net))
    net_ms = percentiles(t_net)[1]
    for name, (width, views, fn) in LOSSES.items():
        z = [torch.randn(args.batch, width, generator=g).to(device).requires_grad_(True)
             for _ in range(views)]  # fmt: skip

        def step(fn=fn, z=z):
            with autocast():
                loss = fn(z)
            loss.backward()

        t = time_ms(step, device, warmup=1, repeat=args.repeat)
        p = percentiles(t)
        shape_l = f"{views}x{args.batch} x {width}"
        rec.add(name, shape_l, dtype, "fwd+bwd", "ms", *p)
        share = 100 * p[1] / (p[1] + net_ms)
        rec.add(name, shape_l, dtype, f"share_of_{args.arch}_step", "%", share, share, share)
    rec.print_table(("fwd+bwd", f"share_of_{args.arch}_step"))
    print(f"\nrows appended to {rec.write(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
