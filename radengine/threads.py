"""How radengine's OpenMP threads wait, so a busy machine slows it down, not to a crawl.

torch's CPU kernels, MKL's GEMMs and radengine's native kernels (``radengine._cpu``) all run
on one OpenMP runtime (GNU libgomp in torch's Linux wheels). At the end of every parallel
region a thread that finished its share *spins* on the region's barrier before it sleeps:
libgomp's default is 300,000 ``pause`` iterations (3.6 ms measured on a 2-core Xeon VM, up
to ~15 ms where ``pause`` takes 140 cycles); Intel/LLVM's runtime spins KMP_BLOCKTIME =
200 ms. On an idle machine that is free. With more runnable threads than cores (another
process busy, DataLoader workers, two jobs on one node) it is not: the spinning thread holds
a core while the thread it waits for sits in the run queue, and, having used its CPU time
spinning, the scheduler ranks it with the busy processes rather than waking it at once. Every
one of the thousands of small parallel regions of the linear-probe grid then pays a time
slice: on the 2-core VM with two busy processes it went from 0.2 s to 18-32 s with 2 threads
(0.8 s with 1 thread). benchmarks/bench_threads.py measures it.

The fix is the passive wait policy, :data:`WAIT_ENV` (``OMP_WAIT_POLICY=PASSIVE``, which
libgomp, Intel's and LLVM's runtimes all read): a waiting thread sleeps on a futex at once
and gives its core away; the kernel wakes it as soon as there is work, ahead of the busy
processes, since it has been sleeping. Under load it removed the collapse on every hot path
benchmarked (grid, augment_views, feature extraction, loader: 1.6-30x faster than the
default, and steadier), where a bounded spin (GOMP_SPINCOUNT=30,000) still lost 7-11x on
the grid. Its cost is a futex wake per parallel region, tens of microseconds on a VM: ~10%
on an idle machine for those paths, but 2x for the linear grid on 512-wide features, whose
steps are many sub-millisecond regions (0.19 s instead of 0.09 s with 2 threads). Such
hot paths size their thread team to the work instead (:func:`intra_op_threads`,
radengine.eval.linear.grid_threads): 0.13 s on 1 thread, 0.3 s rather than 2-12 s loaded.

The runtime reads the variable once, when it is loaded, and offers no call to change it
later, so :func:`configure_openmp` runs when ``radengine`` is imported (``import radengine``
does not import torch; the ``radengine`` command imports it first). A program that imports
torch before radengine keeps the runtime's default: :func:`status` says so, and setting
``OMP_WAIT_POLICY=PASSIVE`` in the environment (or importing radengine first) fixes it.
A wait policy the user chose (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is never
overridden, and ``RADENGINE_OPENMP_TUNING=0`` leaves the runtime's default in place, and
torch's thread count in :func:`intra_op_threads` (benchmarks/bench_threads.py uses it for
"before"). Child processes (DataLoader workers, ingest workers) inherit the environment.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WAIT_ENV", "configure_openmp", "intra_op_threads", "openmp_runtimes", "status"]

# Standard OpenMP: libgomp then spins 0 iterations, Intel/LLVM use a block time of 0.
WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

# Any of these set by the user is their choice of wait policy; radengine then sets nothing.
_USER_POLICY = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

# libgomp.so.1, libgomp-a34b3233.so.1 (auditwheel-renamed copies), libiomp5.so, libomp.so
_RUNTIME = re.compile(r"^lib(gomp|iomp5|omp)([-.][^/]*)?\.so(\.[0-9.]+)?$")

_state: dict[str, object] = {"applied": False, "reason": "configure_openmp() not called"}


def _tuning_enabled(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """False under ``RADENGINE_OPENMP_TUNING=0``: the runtime's wait policy and torch's
    thread count are then left exactly as they are (the benchmark's "before")."""
    flag = env.get("RADENGINE_OPENMP_TUNING", "1").strip().lower()
    return flag not in {"0", "false", "no", "off"}


def openmp_runtimes(maps: str | Path = "/proc/self/maps") -> list[str]:
    """The OpenMP runtime libraries mapped into this process (real paths, sorted); empty
    where ``/proc`` is not available. More than one means two thread pools that do not know
    about each other: each sized to every core, so the cores are oversubscribed."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return []
    found = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            path = parts[5].strip()
            if _RUNTIME.match(os.path.basename(path)):
                found.add(os.path.realpath(path))
    return sorted(found)


def configure_openmp(env: dict[str, str] | None = None) -> dict[str, object]:
    """Set the passive wait policy (:data:`WAIT_ENV`) in ``env`` (default ``os.environ``)
    unless the user chose one or ``RADENGINE_OPENMP_TUNING=0``; returns whether it applies
    and why not. For ``os.environ`` it applies only if no OpenMP runtime is loaded yet, and
    the outcome is what :func:`status` reports afterwards."""
    target = os.environ if env is None else env
    loaded = openmp_runtimes() if env is None else []
    if not _tuning_enabled(target):
        applied, reason = False, "RADENGINE_OPENMP_TUNING=0"
    elif chosen := [k for k in _USER_POLICY if k in target]:
        applied, reason = False, f"set by the user: {', '.join(chosen)}"
    else:
        # Set even when a runtime is loaded already: too late for this process, but spawned
        # or exec'd children (spawn-context DataLoader workers, subprocesses) load their
        # runtime afresh and get the passive policy.
        target.update(WAIT_ENV)
        applied, reason = not loaded, ""
        if loaded:
            reason = (
                f"an OpenMP runtime was loaded before radengine ({loaded[0]}); import "
                "radengine before torch or set OMP_WAIT_POLICY=PASSIVE in the environment"
            )
    if env is None:
        _state.update(applied=applied, reason=reason)
    return {"wait_policy_applied": applied, "reason": reason}


def status() -> dict[str, object]:
    """Whether the passive wait policy is in effect in this process, why not, the wait-policy
    variables and the OpenMP runtimes mapped now."""
    return {
        "wait_policy_applied": _state["applied"],
        "reason": _state["reason"],
        "env": {k: os.environ[k] for k in (*_USER_POLICY, "OMP_NUM_THREADS") if k in os.environ},
        "runtimes": openmp_runtimes() if sys.platform.startswith("linux") else [],
    }


@contextmanager
def intra_op_threads(n: int) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads (never more than now; ``n <= 0`` or
    ``RADENGINE_OPENMP_TUNING=0``: unchanged), restored afterwards; yields the count in
    effect. For hot paths made of regions too small to feed the whole team
    (radengine.eval.linear.grid_threads)."""
    import torch

    before = torch.get_num_threads()
    if n <= 0 or n >= before or not _tuning_enabled():
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
