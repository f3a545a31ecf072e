"""Benchmark CT ingest against the naive loop it replaces, at the same worker count.

    python benchmarks/bench_ingest.py [--patients 16] [--slices 64] [--size 512] [--workers 2]

Writes a synthetic DICOM archive (uncompressed 512x512 CT, the "plain" variant), then times
each side as a user runs it, a fresh process from start to end:
- naive: per file pydicom.dcmread + ds.pixel_array + rescale to HU + antialiased resize to
  256 (torch interpolate) + one .npy per slice (how study A's code stored data), in a process
  pool of --workers;
- radengine: `radengine ingest ct --workers N` (header scan, geometric sort, HU, C++ resize,
  checksummed shards).
Reports slices/s and slices/s per worker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def naive_one(args: tuple[str, str, int]) -> None:
    """One slice, the obvious way."""
    import numpy as np
    import pydicom
    import torch

    path, out_file, size = args
    torch.set_num_threads(1)
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    small = torch.nn.functional.interpolate(
        torch.from_numpy(hu)[None, None], size=(size, size), mode="bilinear", antialias=True
    )
    np.save(out_file, small[0, 0].round().to(torch.int16).numpy())


def naive(src: Path, out_dir: Path, size: int, workers: int) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    files = sorted(src.rglob("*.dcm"))
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(out_dir / f"{i:07d}.npy"), size) for i, f in enumerate(files)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(naive_one, jobs, chunksize=8))


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--slices", type=int, default=64, help="per series (one per patient)")
    parser.add_argument("--size", type=int, default=512, help="DICOM slice size")
    parser.add_argument("--out-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    parser.add_argument("--naive-run", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_run:  # the naive side, in its own process
        naive(Path(args.naive_run[0]), Path(args.naive_run[1]), args.out_size, args.workers)
        return 0

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import Recorder

    from radengine.data.dicom_synth import write_synthetic_dicom
    from radengine.data.store import Store

    rec = Recorder("ingest_ct", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_synthetic_dicom(
            tmp / "dicom", args.patients, args.slices, args.size, seed=0, variants=("plain",)
        )
        n = len(files)
        shape = f"{n}x{args.size}->{args.out_size}"
        common = ["--out-size", str(args.out_size), "--workers", str(args.workers)]
        results = {
            "naive-loop": timed(
                [sys.executable, __file__, "--naive-run", str(tmp / "dicom"), str(tmp / "npy"), *common]
            ),
            "radengine": timed(
                [sys.executable, "-m", "radengine.cli", "ingest", "ct", str(tmp / "dicom"),
                 "--out", str(tmp / "store"), "--size", str(args.out_size),
                 "--workers", str(args.workers), "--secret", str(tmp / "secret")]
            ),
        }  # fmt: skip
        assert len(Store(tmp / "store")) == n
        assert len(list((tmp / "npy").rglob("*.npy"))) == n
        for name, seconds in results.items():
            rate = n / seconds
            rec.add(name, shape, "int16", "throughput", "slices/s", rate, rate, rate)
            rec.add(name, shape, "int16", "per_worker", "slices/s", *(3 * [rate / args.workers]))
            print(f"{name:11} {seconds:7.2f} s  {rate:7.0f} slices/s  ({args.workers} workers)")
        speedup = results["naive-loop"] / results["radengine"]
        rec.add("radengine", shape, "int16", "speedup_vs_naive", "x", *(3 * [speedup]))
        print(f"speedup {speedup:.2f}x")
    path = rec.write(args.out)
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
