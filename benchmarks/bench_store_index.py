"""Benchmark a store's index at RadNet-12M scale: open, select, loader workers; time and RAM.

    python benchmarks/bench_store_index.py [--rows 12034617] [--store PATH] [--workers 2]

Study A pretrained on 12,034,617 CT slices from 90,663 scans. This builds a store of
``--rows`` slices through the public StoreWriter API (once: ``--store PATH`` keeps it for
reruns), as ingest would write it: 1,024 slices per shard, 16-hex-character patient, study
and series keys, about 133 slices per series (90,663 series at full size), three series per
patient, five manufacturer strings, and 2x2 images, so that only the index is large. Then,
each in a fresh process (the page cache warm, as on a node that has read the store once):

- ``Store(path)``: wall time, files opened, resident memory (RSS) after it;
- ``select`` for each split and for fractions down to 0.1%;
- a StoreLoader with 2 workers reading 3 batches of 256 in each of 2 epochs: the time to the
  first batch (the workers' start), whether epoch 2 ran in the same worker processes, and
  the peak memory of the process tree, as RSS summed over the processes (which counts the
  page-cache pages each one maps, shared or not) and as PSS (each shared page divided among
  the processes mapping it: the RAM the tree really costs), sampled every 10 ms.

Rows go to ``benchmarks/results/<device>.csv`` (op ``store_index``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RADNET_ROWS = 12_034_617
RADNET_SERIES = 90_663
SHARD = 1024
MANUFACTURERS = np.array(
    ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA", "Canon Medical Systems"]
)


def _keys(kind: str, ids: np.ndarray) -> np.ndarray:
    """16 hex characters per id, as ingest's keyed pseudonyms look."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    table = np.array([hashlib.sha256(f"{kind}:{i}".encode()).hexdigest()[:16] for i in uniq])
    return table[inverse]


def _shard(args: tuple[str, int, int, int]) -> int:
    from radengine.data.store import ArraySpec, commit_shard

    path, shard, rows, series_total = args
    lo, hi = shard * SHARD, min(rows, (shard + 1) * SHARD)
    n = hi - lo
    row = np.arange(lo, hi, dtype=np.int64)
    series = row * series_total // rows
    rng = np.random.default_rng(shard)
    columns = {
        "label": (series % 6).astype(np.int64),
        "patient": _keys("patient", series // 3),
        "study": _keys("study", series),
        "series": _keys("series", series),
        "region": (series % 6).astype(np.int8),
        "lesion": rng.integers(-1, 2, n).astype(np.int8),
        "slice_position": (row - series * rows // series_total).astype(np.float64) * 1.25,
        "pixel_spacing": np.full((n, 2), 0.7, dtype=np.float32),
        "thickness": np.full(n, 1.25, dtype=np.float32),
        "kvp": np.full(n, 120.0, dtype=np.float32),
        "manufacturer": MANUFACTURERS[series % len(MANUFACTURERS)],
    }
    images = rng.integers(-1024, 2000, size=(n, 2, 2)).astype(np.int16)
    commit_shard(path, "ct", {"image": ArraySpec("int16", (2, 2))}, shard, {"image": images},
                 columns)  # fmt: skip
    return n


def build(path: Path, rows: int, workers: int) -> float:
    from radengine.data.store import ArraySpec, StoreWriter

    t0 = time.perf_counter()
    series_total = max(1, round(RADNET_SERIES * rows / RADNET_ROWS))
    writer = StoreWriter(path, "ct", {"image": ArraySpec("int16", (2, 2))},
                         {"classes": [f"region{i}" for i in range(6)], "synthetic": True})  # fmt: skip
    todo = [s for s in range(-(-rows // SHARD)) if s not in writer.completed()]
    jobs = [(str(path), s, rows, series_total) for s in todo]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, _ in enumerate(pool.map(_shard, jobs, chunksize=64)):
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1}/{len(jobs)} shards", flush=True)
    t1 = time.perf_counter()
    writer.finish()
    print(
        f"  shards {t1 - t0:.0f} s, finish (the consolidated index) {time.perf_counter() - t1:.1f} s"
    )
    return time.perf_counter() - t0


# ------------------------------------------------------------------ measured in a child


def _status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of a process in bytes, from smaps_rollup; zeros when it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def child(mode: str, path: str) -> dict:
    import builtins

    opened: set[str] = set()
    real = builtins.open

    def spy(file, *args, **kwargs):
        opened.add(str(file))
        return real(file, *args, **kwargs)

    from radengine.data.store import Store

    builtins.open = spy
    t0 = time.perf_counter()
    store = Store(path)
    seconds = time.perf_counter() - t0
    builtins.open = real
    out = {"open_s": seconds, "files": len(opened), "open_rss": _status()["VmRSS"],
           "rows": len(store)}  # fmt: skip
    if mode == "select":
        for split, fraction in [("train", 1.0), ("train", 0.1), ("train", 0.01),
                                ("train", 0.001), ("val", 1.0), ("test", 1.0)]:  # fmt: skip
            t0 = time.perf_counter()
            rows = store.select(split, fraction=fraction, seed=0)
            out[f"select {split} {fraction:g}"] = [time.perf_counter() - t0, len(rows)]
        out["select_peak_rss"] = _status()["VmHWM"]
    elif mode == "loader":
        import multiprocessing

        from radengine.data.loader import StoreLoader

        me = os.getpid()
        peak = {"rss": 0, "pss": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                pids = [me, *_children(me)]
                sizes = [_rollup(p) for p in pids]
                peak["rss"] = max(peak["rss"], sum(r for r, _ in sizes))
                peak["pss"] = max(peak["pss"], sum(p for _, p in sizes))
                time.sleep(0.01)

        train = store.select("train", seed=0)
        # timing first, without the memory sampler (reading smaps costs the kernel time)
        loader = StoreLoader(store, train, batch_size=256, workers=2, seed=0)
        starts, firsts, plans, pids = [], [], [], []
        for epoch in range(2):
            t0 = time.perf_counter()
            loader.plan(epoch)
            plans.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            it = iter(loader.epoch(epoch))  # plans the epoch again, starts the workers once
            t1 = time.perf_counter()
            next(it)
            starts.append(t1 - t0)
            firsts.append(time.perf_counter() - t1)
            for _ in range(2):
                next(it)
            pids.append(sorted(p.pid for p in multiprocessing.active_children()))
            del it
        loader.close()
        # then the memory of the process tree doing the same
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        loader = StoreLoader(store, train, batch_size=256, workers=2, seed=0)
        for epoch in range(2):
            it = iter(loader.epoch(epoch))
            for _ in range(3):
                next(it)
            del it
        loader.close()
        stop.set()
        sampler.join()
        out |= {"epoch_s": starts, "first_batch_s": firsts, "plan_s": plans,
                "same_workers": pids[0] == pids[1] and len(pids[0]) == 2,
                "tree_rss": peak["rss"], "tree_pss": peak["pss"]}  # fmt: skip
    return out


def _run_child(mode: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--store", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=RADNET_ROWS)
    parser.add_argument("--store", type=Path, help="build the store here once and keep it")
    parser.add_argument("--workers", type=int, default=2, help="processes building the store")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes timing open")
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, str(args.store))))
        return 0

    import torch
    from _common import Recorder

    with tempfile.TemporaryDirectory(prefix="radengine-bench-index-") as tmp:
        path = args.store or Path(tmp) / "store"
        if not (path / "store.json").exists() or not json.loads(
            (path / "store.json").read_text()
        ).get("finished"):
            print(f"building a {args.rows:,}-slice store in {path} ...", flush=True)
            build(path, args.rows, args.workers)
        opens = [_run_child("open", path) for _ in range(args.repeat)]
        sel = _run_child("select", path)
        load = _run_child("loader", path)

    rows = opens[0]["rows"]
    rec = Recorder("store_index", torch.device("cpu"))
    shape, mb = f"{rows} rows", 1 / 2**20

    def add(metric: str, unit: str, values: list[float]) -> None:
        v = sorted(values)
        rec.add("radengine", shape, "-", metric, unit, v[0], v[len(v) // 2], v[-1])

    add("open", "s", [o["open_s"] for o in opens])
    add("open files", "files", [o["files"] for o in opens])
    add("rss after open", "MiB", [o["open_rss"] * mb for o in opens])
    for key, (seconds, _) in ((k, v) for k, v in sel.items() if k.startswith("select ")):
        add(key, "s", [seconds])
    add("rss peak after selects", "MiB", [sel["select_peak_rss"] * mb])
    add("epoch plan (shuffle of the train rows)", "s", load["plan_s"])
    add("loader.epoch(0): plan + 2 workers started", "s", [load["epoch_s"][0]])
    add("loader.epoch(1): plan, same workers", "s", [load["epoch_s"][1]])
    add("first batch after epoch(0)", "s", [load["first_batch_s"][0]])
    add("first batch after epoch(1)", "s", [load["first_batch_s"][1]])
    add("loader tree peak rss (2 workers)", "MiB", [load["tree_rss"] * mb])
    add("loader tree peak pss (2 workers)", "MiB", [load["tree_pss"] * mb])
    add("loader workers persist across epochs", "bool", [float(load["same_workers"])])
    rec.print_table(tuple(r["metric"] for r in rec.rows))
    print(f"\nrows appended to {rec.write(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
