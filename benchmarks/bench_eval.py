"""Benchmark the evaluation hot paths: frozen-feature extraction, and the linear-head grid on
cached features against training the same heads one after another.

    python benchmarks/bench_eval.py [--device cpu|cuda] [--archs resnet50,resnet18]
        [--batch 64] [--size 224] [--n 100000] [--dim 2048] [--classes 10]
        [--lrs 4] [--wds 3] [--epochs 10]

* Feature extraction (``radengine eval knn|linear``'s inner loop): int16 CT slices
  (``--batch`` x 256 x 256) -> ``augment_views`` "none" at ``--size`` px (min-max x 3) ->
  ``forward_features`` of a frozen ResNet in eval mode, as radengine runs it (bf16 autocast
  where the device computes bf16 natively, channels_last, views made in bf16) and as a
  plain eval loop would (fp32, NCHW). Reported as images per second (median over batches).
  Store reads are not included (``bench_store.py`` measures them).
* Linear grid: ``--n`` cached features of width ``--dim``, ``--classes`` classes, a grid of
  ``--lrs`` learning rates x ``--wds`` weight decays, ``--epochs`` epochs of batch 256:
  radengine's batched grid (one GEMM per step for every head) against the heads trained one
  after another the usual way (``nn.Linear`` + ``torch.optim.SGD`` + autograd), same
  batches. Reported as time (ms) and the speedup.

Rows go to benchmarks/results/<device>.csv (ops ``eval_features`` and ``eval_linear_grid``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, percentiles, sync

from radengine.eval.common import amp_dtype, autocast
from radengine.eval.features import ViewSpec
from radengine.eval.linear import cosine_factor, epoch_permutation, train_linear_grid
from radengine.models import create_model


def bench_features(rec: Recorder, arch: str, args, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-1024, 3072, (args.batch, 256, 256), generator=gen, dtype=torch.int16)
    x = x.to(device)
    view = ViewSpec(size=args.size)
    encoder = create_model(arch, num_classes=0, in_chans=3).to(device).eval()
    amp = amp_dtype("auto", device)
    shape = f"{arch} b{args.batch} {args.size}px"
    variants = [("radengine", amp, True), ("plain-fp32-nchw", None, False)]
    for name, dtype, cl in variants:
        model = encoder.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        view_dtype = dtype if dtype is not None else torch.float32

        @torch.no_grad()
        def step(model=model, view_dtype=view_dtype, dtype=dtype, cl=cl):
            v = view.make(x, dtype=view_dtype, channels_last=cl)
            with autocast(device, dtype):
                return model.forward_features(v).float()

        for _ in range(args.warmup):
            step()
        sync(device)
        rates = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            step()
            sync(device)
            rates.append(args.batch / (time.perf_counter() - t0))
        label = str(dtype).replace("torch.", "") if dtype is not None else "float32"
        p20, p50, p80 = percentiles(rates)
        rec.add(name, shape, label, "throughput", "img/s", p20, p50, p80)
        print(f"  {shape:24s} {name:16s} {label:9s} {p50:8.1f} img/s", flush=True)


def _sequential(x, y, lrs, wds, epochs, batch, seed):
    """Each head alone, the usual way: nn.Linear + SGD(momentum) + autograd + cosine."""
    n, d = x.shape
    c = int(y.max()) + 1
    total = epochs * math.ceil(n / batch)
    loss_fn = nn.CrossEntropyLoss()
    for lr in lrs:
        for wd in wds:
            head = nn.Linear(d, c).to(x.device)
            opt = torch.optim.SGD(
                [
                    {"params": [head.weight], "weight_decay": wd},
                    {"params": [head.bias], "weight_decay": 0.0},
                ],
                lr=lr,
                momentum=0.9,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, total))
            for epoch in range(epochs):
                perm = epoch_permutation(n, seed, epoch).to(x.device)
                for lo in range(0, n, batch):
                    idx = perm[lo : lo + batch]
                    opt.zero_grad(set_to_none=True)
                    loss_fn(head(x[idx]), y[idx]).backward()
                    opt.step()
                    sched.step()


def bench_grid(rec: Recorder, args, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=gen).to(device)
    y = torch.randint(args.classes, (args.n,), generator=gen).to(device)
    lrs = [0.01 * 3**i for i in range(args.lrs)]
    wds = [0.0] + [10.0 ** (-5 + 2 * i) for i in range(args.wds - 1)]
    shape = f"{args.n}x{args.dim} C{args.classes} grid{args.lrs}x{args.wds} e{args.epochs}"

    def grid() -> None:
        train_linear_grid(
            x, y, kind="multiclass", num_outputs=args.classes, lrs=lrs, weight_decays=wds,
            epochs=args.epochs, batch_size=256, seed=0, normalize=False, eval_every=10**9,
        )  # fmt: skip

    runs = {
        "radengine-grid": grid,
        "sequential-nn.Linear": lambda: _sequential(x, y, lrs, wds, args.epochs, 256, 0),
    }
    times: dict[str, list[float]] = {}
    for name, fn in runs.items():
        times[name] = []
        for _ in range(args.grid_repeat):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        p20, p50, p80 = percentiles(times[name])
        rec.add(name, shape, "float32", "time", "ms", p20, p50, p80)
        print(f"  {shape}  {name:22s} {p50 / 1e3:8.2f} s", flush=True)
    speed = statistics.median(times["sequential-nn.Linear"]) / statistics.median(
        times["radengine-grid"]
    )
    rec.add("radengine-grid", shape, "float32", "speedup_vs_sequential", "x", speed, speed, speed)
    print(f"  speedup of the batched grid: {speed:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--archs", default="resnet50,resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="timed feature batches")
    parser.add_argument("--n", type=int, default=100_000, help="cached feature rows")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--lrs", type=int, default=4, help="learning rates in the grid")
    parser.add_argument("--wds", type=int, default=3, help="weight decays in the grid")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--grid-repeat", type=int, default=1)
    parser.add_argument("--cases", default="features,grid")
    parser.add_argument("--csv", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cases = args.cases.split(",")
    rec_f = Recorder("eval_features", device)
    rec_g = Recorder("eval_linear_grid", device)
    print(f"device {rec_f.name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if "features" in cases:
        print("feature extraction (augment_views 'none' + frozen forward_features):")
        for arch in args.archs.split(","):
            bench_features(rec_f, arch, args, device)
    if "grid" in cases:
        print("linear grid on cached features:")
        bench_grid(rec_g, args, device)
    for rec in (rec_f, rec_g):
        if rec.rows:
            path = rec.write(args.csv)
            rec.print_table(("throughput", "time", "speedup_vs_sequential"))
            print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
