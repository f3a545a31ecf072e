"""Benchmark store reads: sequential streaming and random access, slices/s and GB/s.

    python benchmarks/bench_store.py [--store PATH] [--chunk 256]

Without --store it builds a synthetic CT store (256 px) in a temporary directory. The files
were just written, so reads come from the OS page cache: this measures the store's own
overhead (index lookups, gathers, copies), not the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, percentiles

from radengine.data.builtin import write_synthetic_ct_store
from radengine.data.store import Store


def read_all(store: Store, order: np.ndarray, chunk: int) -> float:
    t0 = time.perf_counter()
    for _, batch in store.iter_chunks(order, chunk=chunk):
        batch.sum(dtype=np.int64)  # touch every byte, as a consumer would
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.store is None:
            path = Path(tmp) / "store"
            write_synthetic_ct_store(path, patients=args.patients, slices=48, size=256, seed=0)
        else:
            path = args.store
        store = Store(path)
        n, slice_bytes = len(store), store.arrays["image"].slice_bytes
        rec = Recorder("store_read", torch.device("cpu"))
        shape = f"{n}x{'x'.join(map(str, store.arrays['image'].shape))}"
        rng = np.random.default_rng(0)
        for mode in ("sequential", "random"):
            times = []
            for _ in range(args.repeat):
                order = np.arange(n) if mode == "sequential" else rng.permutation(n)
                times.append(read_all(store, order, args.chunk))
            p20, p50, p80 = percentiles(times)
            rates = [n / t for t in (p80, p50, p20)]
            rec.add(mode, shape, store.arrays["image"].dtype, "throughput", "slices/s", *rates)
            rec.add(mode, shape, store.arrays["image"].dtype, "bandwidth", "GB/s",
                    *(r * slice_bytes / 1e9 for r in rates))  # fmt: skip
            print(f"{mode:10} {rates[1]:10.0f} slices/s  {rates[1] * slice_bytes / 1e9:6.2f} GB/s")
        path_csv = rec.write(args.out)
        rec.print_table(("throughput", "bandwidth"))
        print(f"\nrows appended to {path_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
