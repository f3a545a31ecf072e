"""Shared benchmark harness: timing, device names, copy bandwidth and the one CSV schema
(DESIGN.md): op, backend, shape, dtype, metric, unit, p20, p50, p80, device, torch, commit,
date. Rows append to benchmarks/results/<device>.csv."""

from __future__ import annotations

import csv
import datetime as dt
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "op", "backend", "shape", "dtype", "metric", "unit",
    "p20", "p50", "p80", "device", "torch", "commit", "date",
]  # fmt: skip


def device_name(device: torch.device) -> str:
    """A file-name-safe device name, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-intel-xeon-2c'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from radengine.info import _cpu_name

        name = f"cpu {_cpu_name()} {torch.get_num_threads()}c"
    name = (
        re.sub(r"\((r|tm)\)|processor|cpu @.*", "", name, flags=re.I)
        if device.type == "cpu"
        else name
    )
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if slug.startswith(("cpu", "nvidia")) or device.type == "cpu" else f"nvidia-{slug}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return q[1], statistics.median(times), q[7]


def time_ms(
    fn: Callable[[], object], device: torch.device, warmup: int = 2, repeat: int = 10
) -> list[float]:
    """Per-call wall times in ms (CUDA events on a GPU), after warm-up calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured copy bandwidth, counting bytes read plus bytes written (the roofline)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = time_ms(lambda: dst.copy_(src), device, warmup=2, repeat=10)
    return 2 * nbytes / (statistics.median(times) * 1e-3) / 1e9


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass
class Recorder:
    """Collects rows, prints them as a table and appends them to the device's CSV."""

    op: str
    device: torch.device
    rows: list[dict] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.rows = []
        self.name = device_name(self.device)
        self.commit = git_commit()
        self.date = dt.date.today().isoformat()

    def add(
        self,
        backend: str,
        shape: str,
        dtype: str,
        metric: str,
        unit: str,
        p20: float,
        p50: float,
        p80: float,
    ) -> None:
        self.rows.append(
            dict(
                op=self.op, backend=backend, shape=shape, dtype=dtype, metric=metric, unit=unit,
                p20=f"{p20:.6g}", p50=f"{p50:.6g}", p80=f"{p80:.6g}", device=self.name,
                torch=torch.__version__, commit=self.commit, date=self.date,
            )
        )  # fmt: skip

    def write(self, path: Path | None = None) -> Path:
        path = path or RESULTS / f"{self.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(self.rows)
        return path

    def print_table(self, metrics: tuple[str, ...]) -> None:
        rows = [r for r in self.rows if r["metric"] in metrics]
        cols = ["backend", "shape", "dtype", "metric", "unit", "p50", "p20", "p80"]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols} if rows else {}
        print(f"\n{self.op} on {self.name} (torch {torch.__version__}, commit {self.commit})")
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in cols))
