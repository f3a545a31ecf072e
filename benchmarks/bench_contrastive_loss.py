"""Benchmark contrastive_loss (NT-Xent, forward + backward): radengine's default backend for
the device against what a user would otherwise write: the loss as SSL libraries write it
in eager torch (normalise, z @ z.T / T, the diagonal masked with a large negative, cross
entropy at the positive index; the (N, N) logits live in memory) and torch.compile of that
same function.

    python benchmarks/bench_contrastive_loss.py [--sizes 1024,8192,32768,65536]
        [--dims 128,256] [--impls ours,torch-eager,torch-compile] [--repeat 5]
        [--max-seconds 300]

N (--sizes) is the number of rows of z: the two views of N / 2 images, row i's positive
is row i + N / 2. Inputs are fp32 (--dtype), T = 0.5 (--temperature). One timed call is
``loss = f(z); loss.backward()``.

Every (impl, N, D) runs in a fresh subprocess, which times it (after one warm-up call,
which also compiles torch.compile's graphs) and then measures its peak memory:
* CUDA: torch.cuda.max_memory_allocated during one call, minus what was allocated before;
* CPU: the peak resident set size during one call minus the resident size before it. The
  subprocess first makes glibc malloc serve every allocation >= 64 KiB with its own mmap
  (mallopt M_MMAP_THRESHOLD) and returns its free memory to the system (malloc_trim), so
  that freed blocks are not silently reused, then resets the kernel's high-water mark
  (/proc/self/clear_refs, "5") and reads VmRSS / VmHWM. This sees every CPU allocation
  torch (or the C++ kernels) make, including those outside torch's allocator.
Configurations predicted to exceed the available memory or --max-seconds (from the time
of the same impl and D at a smaller N) are skipped with the reason printed.

Reports median time (p20, p80), effective GFLOP/s (6 N^2 D, the dense forward + backward
matmuls), peak memory and the speedup / memory fraction against torch eager; appends rows
to benchmarks/results/<device>.csv.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder, percentiles, sync, time_ms

IMPLS = ("ours", "torch-eager", "torch-compile")
# Live (N, N) fp32 buffers at the eager peak, before a run has measured it (the logits, the
# masked logits, log_softmax, and their gradients); used only to skip runs that cannot fit.
EAGER_NN_BUFFERS = 6


def eager_nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent as SimCLR codebases write it."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, -1e9)
    labels = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(logits, labels)


# ---------------------------------------------------------------------------- worker


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_peak_bytes(step) -> int:
    """Peak RSS increase over one call (see the module docstring)."""
    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    gc.collect()
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _proc_status_kib("VmRSS")
    step()
    return max(0, _proc_status_kib("VmHWM") - before) * 1024


def _cuda_peak_bytes(step, device: torch.device) -> int:
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def worker(cfg: dict) -> dict:
    from radengine.ops import nt_xent

    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(cfg["n"], cfg["d"], generator=gen).to(device, dtype).requires_grad_()
    temperature = cfg["temperature"]
    if cfg["impl"] == "ours":

        def fn(z):
            return nt_xent(z, temperature, gather=False)

    elif cfg["impl"] == "torch-eager":

        def fn(z):
            return eager_nt_xent(z, temperature)

    else:
        compiled = torch.compile(eager_nt_xent)

        def fn(z):
            return compiled(z, temperature)

    def step():
        z.grad = None
        fn(z).backward()

    t0 = time.perf_counter()
    step()
    sync(device)
    first_s = time.perf_counter() - t0
    times = time_ms(step, device, warmup=0, repeat=cfg["repeat"])
    peak = _cuda_peak_bytes(step, device) if device.type == "cuda" else _cpu_peak_bytes(step)
    return dict(times=times, first_s=first_s, peak_bytes=peak)


# ---------------------------------------------------------------------------- driver


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def _run_worker(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return dict(error=f"exit code {out.returncode}: {' | '.join(tail)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,8192,32768,65536", help="rows of z (N)")
    parser.add_argument("--dims", default="128,256", help="embedding widths (D)")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per configuration")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="skip a configuration predicted to take longer (warm-up + timed calls + memory "
        "call, from the same impl and D at a smaller N); the subprocess is killed at 3x",
    )
    parser.add_argument("--csv", type=Path, help="CSV path (default results/<device>.csv)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from radengine.ops import _dispatch, contrastive_loss

    device = torch.device(args.device)
    ours = _dispatch.default_backend(contrastive_loss.IMPLS, device.type)
    impls = [i for i in args.impls.split(",") if i]
    if unknown := set(impls) - set(IMPLS):
        parser.error(f"unknown impls {sorted(unknown)}; choose from {', '.join(IMPLS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    rec = Recorder("contrastive_loss", device)
    print(
        f"NT-Xent forward + backward on {rec.name}, {args.dtype}, T = {args.temperature}, "
        f"{torch.get_num_threads()} threads; ours = radengine backend {ours!r}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    measured: dict[tuple[str, int, int], dict] = {}
    for d in dims:
        for n in sorted(sizes):
            for impl in impls:
                name = ours if impl == "ours" else impl
                label = f"{name:13} N={n:6} D={d:4}"
                calls = args.repeat + 2
                if impl != "ours":
                    nn_bytes = n * n * 4
                    known = [(m, r) for (i, m, dd), r in measured.items() if i == impl and dd == d]
                    # (N, N) fp32 buffers at the peak: as measured at the largest smaller N
                    buffers = known and max(known)[1]["peak_bytes"] / (max(known)[0] ** 2 * 4)
                    buffers = buffers or EAGER_NN_BUFFERS
                    need = nn_bytes * buffers
                    if need > 0.8 * _available_bytes(device):
                        print(
                            f"{label}  skipped: needs ~{need / 2**30:.1f} GiB "
                            f"(~{buffers:.1f} (N, N) fp32 buffers), "
                            f"{_available_bytes(device) / 2**30:.1f} GiB available",
                            flush=True,
                        )
                        continue
                smaller = [(m, r) for (i, m, dd), r in measured.items() if i == impl and dd == d]
                if smaller:
                    m, r = max(smaller)
                    per_call = min(r["times"]) / 1e3 * (n / m) ** 2
                    predicted = per_call * calls
                    if predicted > args.max_seconds:
                        print(
                            f"{label}  skipped: predicted {predicted:.0f} s "
                            f"({per_call:.1f} s per call from N={m}) > --max-seconds "
                            f"{args.max_seconds:.0f}",
                            flush=True,
                        )
                        continue
                cfg = dict(
                    impl=impl,
                    n=n,
                    d=d,
                    repeat=args.repeat,
                    temperature=args.temperature,
                    dtype=args.dtype,
                    device=args.device,
                )
                result = _run_worker(cfg, timeout=max(3 * args.max_seconds, 600))
                if "error" in result:
                    print(f"{label}  failed: {result['error']}", flush=True)
                    continue
                measured[(impl, n, d)] = result
                p20, p50, p80 = percentiles(result["times"])
                shape = f"{n}x{d}"
                peak_mib = result["peak_bytes"] / 2**20
                gflops = [6 * n * n * d / (t * 1e-3) / 1e9 for t in (p80, p50, p20)]
                rec.add(name, shape, args.dtype, "time", "ms", p20, p50, p80)
                rec.add(name, shape, args.dtype, "throughput", "GFLOP/s", *gflops)
                rec.add(name, shape, args.dtype, "peak_memory", "MiB", *(peak_mib,) * 3)
                print(
                    f"{label}  {p50:10.1f} ms  [{p20:.1f}, {p80:.1f}]  "
                    f"{gflops[1]:7.1f} GFLOP/s  peak {peak_mib:9.1f} MiB  "
                    f"(first call {result['first_s']:.1f} s)",
                    flush=True,
                )
            eager = measured.get(("torch-eager", n, d))
            if eager is not None:
                t_eager = percentiles(eager["times"])[1]
                for impl in impls:
                    r = measured.get((impl, n, d))
                    if r is None:
                        continue
                    name = ours if impl == "ours" else impl
                    speedup = t_eager / percentiles(r["times"])[1]
                    frac = r["peak_bytes"] / max(eager["peak_bytes"], 1)
                    shape = f"{n}x{d}"
                    rec.add(name, shape, args.dtype, "speedup_vs_eager", "x", *(speedup,) * 3)
                    rec.add(name, shape, args.dtype, "memory_vs_eager", "fraction", *(frac,) * 3)

    if not rec.rows:
        print("nothing measured")
        return 1
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    path = rec.write(args.csv)
    rec.print_table(("time", "peak_memory", "speedup_vs_eager", "memory_vs_eager"))
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
