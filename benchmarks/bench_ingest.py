"""Benchmark CT ingest against the naive loop it replaces, at the same worker count.

    python benchmarks/bench_ingest.py [--patients 4] [--slices 64] [--size 512] [--workers 2]

Writes a synthetic DICOM archive (uncompressed 512x512 CT, the "plain" variant), then times:
- naive: per file pydicom.dcmread + rescale to HU + antialiased resize to 256 (torch
  interpolate) + one .npy per slice (how study A's code stored data), in a process pool;
- radengine: `ingest_ct` (header scan, geometric sort, HU, C++ resize, sharded store).
Reports slices/s, and slices/s per worker process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder

from radengine.data.dicom_synth import write_synthetic_dicom
from radengine.data.ingest import ingest_ct


def naive_one(args: tuple[str, str, int]) -> None:
    import pydicom

    path, out_dir, size = args
    torch.set_num_threads(1)
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    small = torch.nn.functional.interpolate(
        torch.from_numpy(hu)[None, None], size=(size, size), mode="bilinear", antialias=True
    )
    name = Path(path).stem
    np.save(Path(out_dir) / f"{name}.npy", small[0, 0].round().to(torch.int16).numpy())


def naive(files: list[Path], out_dir: Path, size: int, workers: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(out_dir / f.parent.name), size) for f in files]
    for f in files:
        (out_dir / f.parent.name).mkdir(exist_ok=True)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(naive_one, jobs, chunksize=8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--slices", type=int, default=64, help="per series (6 series a patient)")
    parser.add_argument("--size", type=int, default=512, help="DICOM slice size")
    parser.add_argument("--out-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)

    rec = Recorder("ingest_ct", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_synthetic_dicom(
            tmp / "dicom", args.patients, args.slices, args.size, seed=0, variants=("plain",)
        )
        n = len(files)
        shape = f"{n}x{args.size}->{args.out_size}"
        results = {}
        t0 = time.perf_counter()
        naive(files, tmp / "npy", args.out_size, args.workers)
        results["naive-loop"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = ingest_ct(
            [tmp / "dicom"], tmp / "store", size=args.out_size, workers=args.workers,
            secret=tmp / "secret", progress=False,
        )  # fmt: skip
        results["radengine"] = time.perf_counter() - t0
        assert summary.slices == n, (summary.slices, n)
        for name, seconds in results.items():
            rate = n / seconds
            rec.add(name, shape, "int16", "throughput", "slices/s", rate, rate, rate)
            rec.add(name, shape, "int16", "per_worker", "slices/s", *(3 * [rate / args.workers]))
            print(f"{name:11} {seconds:7.2f} s  {rate:7.0f} slices/s  ({args.workers} workers)")
        print(f"speedup {results['naive-loop'] / results['radengine']:.2f}x")
    path = rec.write(args.out)
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
