"""Benchmark the CPU hot paths on a busy machine: the spread of their times with and without
radengine's OpenMP wait policy (radengine/threads.py), with and without competing load.

    python benchmarks/bench_threads.py [--paths grid,grid_wide,augment,features,loader]
        [--variants radengine,runtime-default,spin-30000,1-thread] [--loads idle,busy]
        [--busy N] [--repeat 7] [--timeout 600]

Why: OpenMP threads spin at the end of each parallel region before they sleep (libgomp:
300,000 pause iterations by default). With another process busy on the same cores, the
spinning thread holds a core while the thread it waits for cannot run, and paths made of many
small parallel regions (the linear-probe grid) went from 0.2 s to 20-30 s on a 2-core VM.
A median alone hides this, so every case reports p20/p50/p80 and max/min.

Each (variant, load) runs the hot paths in a fresh child process, because the runtime reads
its wait policy only when it is loaded:

* ``radengine``: the policy radengine sets on import (``OMP_WAIT_POLICY=PASSIVE``: a waiting
  thread sleeps at once), and the linear grid's thread team sized to its steps.
* ``runtime-default``: ``RADENGINE_OPENMP_TUNING=0``: the runtime's own default and every
  torch thread in the grid ("before").
* ``spin-30000``: a bounded spin (``GOMP_SPINCOUNT=30000``, ``KMP_BLOCKTIME=1``), the
  alternative radengine measured and did not choose.
* ``1-thread``: ``OMP_NUM_THREADS=1`` (no thread team at all).

``busy`` load: ``--busy`` (default: one per usable core) pure-Python busy loops pinned to the
benchmark's cores, started before the child and stopped after it.

Hot paths (sizes small enough that the slow "before" case still ends):

* ``grid``: ``train_linear_grid`` (4 x 3 heads, 2000 x 512 features, 10 classes, batch 256):
  steps small enough that radengine runs them on one thread (``grid_threads``).
* ``grid_wide``: the same on 2048-wide features, 2 epochs: a team of 2+ threads per step.
* ``augment``: the native ``augment_views`` kernel ("none" preset), 8 batches of 16 CT slices.
* ``features``: ``extract_features`` of a resnet18 over a synthetic CT store (the thread
  reading ahead plus the frozen forward pass).
* ``loader``: one ``StoreLoader`` epoch with 2 worker processes, views made per batch.

Rows go to benchmarks/results/<device>.csv: op ``threads_<path>``, backend = variant, shape =
``<load> <sizes>``; metric ``time`` (ms, p20/p50/p80) and ``max_over_min`` (x).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

VARIANTS = {
    "radengine": {},
    "runtime-default": {"RADENGINE_OPENMP_TUNING": "0"},
    "spin-30000": {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"},
    "1-thread": {"OMP_NUM_THREADS": "1"},
}
# Cleared in every child so each variant sees only its own setting.
POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
POLICY_VARS += ("RADENGINE_OPENMP_TUNING",)


# ---------------------------------------------------------------------------------- child


def _child(path: str, repeat: int, store_path: str) -> dict:
    # radengine before torch: importing it sets the wait policy the runtime reads on load.
    __import__("radengine")
    import torch

    from radengine.threads import status

    if path in ("grid", "grid_wide"):
        from radengine.eval.linear import train_linear_grid

        d, epochs = (512, 4) if path == "grid" else (2048, 2)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2000, d, generator=gen)
        y = torch.randint(10, (2000,), generator=gen)
        vx, vy = torch.randn(200, d, generator=gen), torch.randint(10, (200,), generator=gen)

        def run() -> None:
            train_linear_grid(
                x, y, kind="multiclass", num_outputs=10, lrs=[0.01, 0.03, 0.1, 0.3],
                weight_decays=[0.0, 1e-5, 1e-3], epochs=epochs, batch_size=256, val_x=vx,
                val_y=vy, eval_every=2,
            )  # fmt: skip

        shape = f"2000x{d} C10 grid4x3 e{epochs} b256"
    elif path == "augment":
        from radengine.ops.augment import augment_views

        gen = torch.Generator().manual_seed(0)
        xs = [
            torch.randint(-1024, 3072, (16, 256, 256), generator=gen, dtype=torch.int16)
            for _ in range(8)
        ]

        def run() -> None:
            for x in xs:
                augment_views(x, "none", views=1, size=128, intensity="minmax", seed=0)

        shape = "8 x b16 256px -> 128px"
    elif path == "features":
        from radengine.data.store import Store
        from radengine.eval.features import ViewSpec, extract_features
        from radengine.models import create_model

        store = Store(store_path)
        rows = torch.arange(min(len(store), 32)).numpy()
        encoder = create_model("resnet18", num_classes=0, in_chans=3).eval()

        def run() -> None:
            extract_features(
                encoder, store, rows, ViewSpec(size=64), device=torch.device("cpu"),
                batch_size=16,
            )  # fmt: skip

        shape = f"resnet18 {len(rows)} img 64px b16"
    elif path == "loader":
        from radengine.data.loader import StoreLoader
        from radengine.ops.augment import augment_views

        loader = StoreLoader(store_path, batch_size=8, workers=2, seed=0)

        def run() -> None:
            for batch in loader.epoch(0):
                augment_views(batch["image"], "none", views=2, size=64, seed=0)

        shape = f"{len(loader)} b8 w2 2 views 64px"
    else:
        raise SystemExit(f"unknown path {path!r}")
    run()  # warm-up: first-call allocations, model weights paged in, workers' imports
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"times_ms": times, "shape": shape, "threads": torch.get_num_threads(), **status()}


# --------------------------------------------------------------------------------- parent

BUSY_LOOP = "while True:\n    pass\n"


def start_busy(n: int, cores: set[int]) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(p.pid, cores)  # the very cores the measured threads use
        procs.append(p)
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_child(path: str, variant: str, args, store_path: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env.update(VARIANTS[variant])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", path]
    cmd += ["--repeat", str(args.repeat), "--store", store_path]
    try:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=True
        )
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{path} / {variant} failed:\n{exc.stderr}") from None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="grid,grid_wide,augment,features,loader")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--loads", default="idle,busy")
    parser.add_argument("--busy", type=int, default=0, help="busy processes (0: one per core)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child")
    parser.add_argument("--csv", type=Path, help="CSV path (default results/<device>.csv)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(args.child, args.repeat, args.store)))
        return 0

    import torch

    # A kill of the benchmark must not leave the busy loops running: SIGTERM unwinds like
    # an exception, through the finally that stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(HERE))
    from _common import Recorder, percentiles

    from radengine.data.builtin import write_synthetic_ct_store

    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    n_busy = args.busy or max(1, len(cores) or os.cpu_count() or 1)
    paths = args.paths.split(",")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    print(f"{len(cores)} usable cores, torch threads {torch.get_num_threads()}, busy load = "
          f"{n_busy} pure-Python loops on the same cores; {args.repeat} runs per case")  # fmt: skip
    recs: dict[str, Recorder] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store_path = str(Path(tmp) / "ct")
        if {"features", "loader"} & set(paths):
            write_synthetic_ct_store(store_path, patients=2, slices=24, size=128, seed=0)
        for path in paths:
            rec = recs.setdefault(path, Recorder(f"threads_{path}", torch.device("cpu")))
            for load in args.loads.split(","):
                for variant in variants:
                    busy = start_busy(n_busy, cores) if load == "busy" else []
                    try:
                        res = run_child(path, variant, args, store_path)
                    finally:
                        stop_busy(busy)
                    if res.get("timeout"):
                        print(f"  {path:8s} {load:4s} {variant:16s} timed out after "
                              f"{args.timeout:.0f} s", flush=True)  # fmt: skip
                        continue
                    t = res["times_ms"]
                    p20, p50, p80 = percentiles(t)
                    spread = max(t) / min(t)
                    shape = f"{load} {res['shape']}"
                    rec.add(variant, shape, "float32", "time", "ms", p20, p50, p80)
                    rec.add(variant, shape, "float32", "max_over_min", "x", spread, spread, spread)
                    print(
                        f"  {path:8s} {load:4s} {variant:16s} p20 {p20:9.1f}  p50 {p50:9.1f}  "
                        f"p80 {p80:9.1f} ms  min {min(t):9.1f}  max {max(t):9.1f}  "
                        f"max/min {spread:6.2f}  (threads {res['threads']}, passive "
                        f"wait {'on' if res['wait_policy_applied'] else 'off'})",
                        flush=True,
                    )
    for rec in recs.values():
        if rec.rows:
            out = rec.write(args.csv)
            rec.print_table(("time", "max_over_min"))
    if recs:
        print(f"\nrows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
