"""OpenMP configuration (radengine/threads.py): the passive wait policy is set before the
runtime loads and the runtime reads it, only one OpenMP runtime is mapped with torch and
radengine._cpu in one process, and loader workers compute on one thread. No timings here:
benchmarks/bench_threads.py measures what these settings are for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from radengine import threads
from radengine.data import loader as loader_mod
from radengine.data.builtin import write_synthetic_ct_store
from radengine.data.loader import StoreLoader


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the runtime reads its policy once, on load) with
    no wait-policy variables inherited from this process, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in (*threads._USER_POLICY,)}
    clean.pop("RADENGINE_OPENMP_TUNING", None)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True
    )


def test_openmp_runtimes_reads_the_mapped_runtimes(tmp_path):
    lib = tmp_path / "libgomp.so.1.0.0"
    lib.write_bytes(b"")
    (tmp_path / "libgomp.so.1").symlink_to(lib.name)
    maps = tmp_path / "maps"
    lines = [
        f"7f00-7f01 r-xp 00000000 08:01 1 {tmp_path}/libgomp.so.1",
        f"7f01-7f02 r--p 00001000 08:01 1 {lib}",  # the same file by its real name
        "7f02-7f03 r-xp 00000000 08:01 2 /opt/torch/lib/libgomp-a34b3233.so.1",
        "7f03-7f04 r-xp 00000000 08:01 3 /opt/conda/lib/libiomp5.so",
        "7f04-7f05 r-xp 00000000 08:01 4 /usr/lib/libgompfoo_not_a_runtime.txt",
        "7f05-7f06 r-xp 00000000 08:01 5 /usr/lib/libc.so.6",
        "7f06-7f07 rw-p 00000000 00:00 0 [heap]",
        "7f07-7f08 rw-p 00000000 00:00 0",
    ]
    maps.write_text("\n".join(lines) + "\n")
    assert threads.openmp_runtimes(maps) == sorted(
        [str(lib.resolve()), "/opt/torch/lib/libgomp-a34b3233.so.1", "/opt/conda/lib/libiomp5.so"]
    )
    assert threads.openmp_runtimes(tmp_path / "missing") == []


def test_configure_openmp_sets_passive_unless_the_user_chose():
    env: dict[str, str] = {}
    threads.configure_openmp(env)
    assert env == threads.WAIT_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        env = {key: "7"}
        out = threads.configure_openmp(env)
        assert env == {key: "7"}  # the user's choice stands
        assert not out["wait_policy_applied"] and key in str(out["reason"])
    env = {"RADENGINE_OPENMP_TUNING": "0"}
    threads.configure_openmp(env)
    assert env == {"RADENGINE_OPENMP_TUNING": "0"}


def test_import_radengine_sets_the_policy_without_loading_torch_or_openmp():
    # the policy can only work if importing radengine loads no OpenMP runtime itself
    code = (
        "import sys, json, radengine\n"
        "from radengine import threads\n"
        "print(json.dumps([sorted(m for m in ('torch', 'numpy') if m in sys.modules), "
        "threads.status()]))"
    )
    modules, status = json.loads(_python(code).stdout.strip().splitlines()[-1])
    assert modules == []
    assert status["wait_policy_applied"] and status["runtimes"] == []


_REPORT = """
import json, os
import radengine
import torch
import radengine._cpu as cpu
from radengine import threads
torch.ones(1 << 16).sum()  # a parallel region: the runtime is initialised
print(json.dumps({**threads.status(), "cpu_threads": cpu.openmp_threads(),
                   "torch_threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_importing_radengine_first_makes_the_runtime_wait_passively():
    # OMP_DISPLAY_ENV makes libgomp print the policy it read when it initialised: the proof
    # that the variable was set in time, not only present in os.environ.
    run = _python(_REPORT, OMP_DISPLAY_ENV="true")
    status = json.loads(run.stdout.strip().splitlines()[-1])
    assert status["wait_policy_applied"], status["reason"]
    assert status["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    if "libgomp" in " ".join(status["runtimes"]):
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in run.stderr
    # one thread pool for torch, MKL and radengine's kernels, sized alike
    assert len(status["runtimes"]) == 1, status["runtimes"]
    assert status["cpu_threads"] == status["torch_threads"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("order", ["torch, radengine._cpu", "radengine._cpu, torch"])
def test_one_openmp_runtime_whatever_the_import_order(order):
    """Two runtimes would be two thread pools, each sized to every core, each spinning."""
    imports = "\n".join(f"import {m}" for m in order.split(", "))
    code = f"""
import json
{imports}
from radengine import threads
print(json.dumps(threads.status()))
"""
    status = json.loads(_python(code).stdout.strip().splitlines()[-1])
    assert len(status["runtimes"]) == 1, status["runtimes"]
    if order.startswith("torch"):
        # torch loaded the runtime before radengine could set the policy: said, not hidden
        assert not status["wait_policy_applied"]
        assert "loaded before radengine" in status["reason"]


def test_user_wait_policy_and_opt_out_reach_the_runtime():
    run = _python(_REPORT, OMP_WAIT_POLICY="ACTIVE", OMP_DISPLAY_ENV="true")
    status = json.loads(run.stdout.strip().splitlines()[-1])
    assert not status["wait_policy_applied"] and "OMP_WAIT_POLICY" in status["reason"]
    assert status["env"]["OMP_WAIT_POLICY"] == "ACTIVE"
    run = _python(_REPORT, RADENGINE_OPENMP_TUNING="0")
    status = json.loads(run.stdout.strip().splitlines()[-1])
    assert "OMP_WAIT_POLICY" not in status["env"]


def test_loader_workers_compute_on_one_thread(tmp_path, monkeypatch):
    from radengine import _native

    store = write_synthetic_ct_store(tmp_path / "ct", patients=2, slices=4, size=32, seed=0)
    plain = loader_mod._Batches.__getitem__

    def report(self, i):  # runs in the worker (forked: the patch is inherited)
        out = plain(self, i)
        cpu = _native.cpu.openmp_threads() if _native.cpu is not None else 1
        out["threads"] = torch.tensor([torch.get_num_threads(), cpu, os.getpid()])
        return out

    monkeypatch.setattr(loader_mod._Batches, "__getitem__", report)
    loader = StoreLoader(store, batch_size=2, workers=2, seed=0)
    seen = np.stack([b["threads"].numpy() for b in loader.epoch(0)])
    assert (seen[:, 2] != os.getpid()).all()  # gathered in worker processes
    assert (seen[:, :2] == 1).all(), seen


def test_intra_op_threads_lowers_and_restores(monkeypatch):
    monkeypatch.delenv("RADENGINE_OPENMP_TUNING", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.intra_op_threads(1) as n:
            assert n == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        for asked in (0, 2, 5):  # 0: unchanged; never more threads than the caller had
            with threads.intra_op_threads(asked) as n:
                assert n == torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.intra_op_threads(1):
            raise RuntimeError("restored on the way out")
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("RADENGINE_OPENMP_TUNING", "0")  # the opt-out leaves torch alone
        with threads.intra_op_threads(1) as n:
            assert n == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_linear_grid_sizes_its_thread_team_to_the_work(monkeypatch):
    monkeypatch.delenv("RADENGINE_OPENMP_TUNING", raising=False)
    from radengine.eval.linear import MIN_MACS_PER_THREAD, grid_threads, train_linear_grid

    assert grid_threads(256, 512, 120, available=2) == 1  # 15.7M multiply-adds: one thread
    assert grid_threads(256, 2048, 120, available=2) == 2  # 63M: two
    assert grid_threads(256, 2048, 120, available=64) == 256 * 2048 * 120 // MIN_MACS_PER_THREAD
    assert grid_threads(3, 4, 5, available=8) == 1
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=gen), torch.randint(3, (64,), generator=gen)
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_linear_grid(
            x, y, kind="multiclass", num_outputs=3, lrs=[0.1], weight_decays=[0.0], epochs=2,
            batch_size=16, eval_every=1, on_epoch=lambda e, r: seen.append(torch.get_num_threads()),
        )  # fmt: skip
        assert seen == [1, 1]  # a tiny grid runs without a thread team...
        assert torch.get_num_threads() == 2  # ...and gives the caller's count back
    finally:
        torch.set_num_threads(before)
