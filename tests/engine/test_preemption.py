"""Preemption always ends in a checkpoint: SIGTERM to a `radengine pretrain` job's whole
process group (loader workers included), or to one rank of two, stops every rank after the
same step, rank 0 checkpoints, the command exits 3 (preempted, resumable) without presenting
a partial encoder, and ``--resume`` finishes the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radengine.cli import EXIT_PREEMPTED
from radengine.config import load_pretrain_config
from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import checkpoint
from radengine.engine.trainer import pretrain

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# A tiny run that cannot finish before it is signalled: checkpoints every 2 steps show that
# it is in its training loop; the preemption checkpoint comes on top of those.
TINY = [
    "augment.size=32",
    "optim.batch_size=8",
    "optim.epochs=1",
    "knn.every=0",
    "tracking.enabled=false",
    "train.progress=false",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=100",
    "train.max_steps=200",
]


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "ct"
    write_synthetic_ct_store(path, patients=8, slices=6, size=32)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _wait_for(path: Path, procs: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"exited {p.returncode} before {path.name}:\n{out}\n{err}")
        if time.time() > deadline:
            pytest.fail(f"no {path} after {seconds} s")
        time.sleep(0.01)


def _preempted_checkpoint(out: Path) -> int:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preempted"] is True and summary["resume"] == f"--resume {out}"
    step = summary["steps"]
    assert 2 <= step < 200
    assert checkpoint.find(out / "checkpoints")[-1] == checkpoint.path_for(
        out / "checkpoints", step
    )
    assert not (out / "encoder.pt").exists()  # a partial encoder is not presented as final
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    return step


def test_sigterm_to_the_process_group_with_loader_workers_checkpoints_and_exits_3(
    ct_store, tmp_path
):
    out = tmp_path / "run"
    args = [*TINY, "data.workers=2", f"data.store={ct_store}", f"train.out={out}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "radengine.cli", "pretrain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, as a Slurm/Kubernetes job's
    )
    try:
        _wait_for(out / "checkpoints" / "step-00000002.pt", [proc])
        os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader workers
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert "killed by signal" not in stderr and "Traceback" not in stderr
    step = _preempted_checkpoint(out)
    assert f"preempted at step {step} (signal SIGTERM received)" in stdout
    assert f"--resume {out}" in stdout

    cfg = load_pretrain_config(
        overrides=[*TINY, "data.workers=0", f"data.store={ct_store}", f"train.out={out}"]
    )
    cfg.train.max_steps = step + 2
    r = pretrain(cfg, resume=str(out))
    assert r.steps == step + 2 and not r.preempted
    assert (out / "encoder.pt").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(args: list[str]) -> list[subprocess.Popen]:
    port = str(_free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-m", "radengine.cli", "pretrain", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            start_new_session=True,  # each rank its own group: only one is signalled
        )
        for rank in (0, 1)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    try:
        done = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            done.append((p.returncode, out, err))
        return done
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def test_sigterm_to_one_rank_stops_both_after_the_same_step(ct_store, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "data.workers=0", f"data.store={ct_store}", f"train.out={out}"]
    procs = _ranks(args)
    try:
        _wait_for(out / "checkpoints" / "step-00000002.pt", procs)
        procs[1].send_signal(signal.SIGTERM)  # one node preempted
    finally:
        (rc0, out0, err0), (rc1, _, err1) = _finish(procs)
    # a rank that stopped at another step would leave the other in an all-reduce with a
    # closed peer ("Connection closed by peer"): both exiting 3 means they agreed
    assert (rc0, rc1) == (EXIT_PREEMPTED, EXIT_PREEMPTED), (err0, err1)
    step = _preempted_checkpoint(out)
    assert f"preempted at step {step} (another rank received a stop signal)" in out0

    resumed = _ranks(
        [*args[:-1], f"train.max_steps={step + 2}", f"train.out={out}", "--resume", str(out)]
    )
    (rc0, out0, err0), (rc1, _, err1) = _finish(resumed)
    assert (rc0, rc1) == (0, 0), (err0, err1)
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 2
    assert (out / "encoder.pt").exists()


def test_a_rank_killed_mid_run_fails_the_other_with_the_key_and_the_resume(ct_store, tmp_path):
    """SIGKILL of one rank (a node lost): the survivor's next collective fails; it must end
    as one error naming the step, dist.timeout_min and the resume command (exit 2), and the
    run must resume from its last checkpoint."""
    out = tmp_path / "run"
    args = [*TINY, "data.workers=0", f"data.store={ct_store}", f"train.out={out}"]
    procs = _ranks(args)
    try:
        _wait_for(out / "checkpoints" / "step-00000002.pt", procs)
        os.killpg(procs[1].pid, signal.SIGKILL)
    finally:
        (rc0, _, err0), _ = _finish(procs)
    assert rc0 == 2, err0
    assert "Traceback" not in err0
    assert "a collective failed at step" in err0 and "dist.timeout_min" in err0
    assert f"--resume {out}" in err0
    assert not (out / "encoder.pt").exists()
