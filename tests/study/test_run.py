"""`radengine study run` end to end on a tiny study: SIGKILL of the whole launcher's process
group mid-pretraining and again after it, then a rerun that finishes the grid with exactly
one FINISHED MLflow run per job; and the same without tracking, two jobs at a time."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radengine.cli import main
from radengine.data.builtin import write_synthetic_ct_store

SPEC = """
name: tiny
stores: {{ct: {store}}}
pretrain:
  overrides:
    augment.size: 32
    optim.batch_size: 16
    optim.epochs: 1
    data.workers: 0
    train.max_steps: {steps}
    train.checkpoint_every: 1
    knn.every: 0
    tracking.log_model: false
    tracking.system_metrics: false
inits: {{scratch: scratch, simclr: {{data: ct}}}}
input: {{size: 32}}
evals:
  - protocols: linear
    tasks: body_region
    seeds: [42]
    data: ct
    overrides: {{linear: {{epochs: 2}}}}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study-stores") / "ct"
    write_synthetic_ct_store(path, patients=10, slices=4, size=32)
    return path


def _wait(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the study ended early (exit {proc.returncode})"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_kill_the_group_and_rerun(store, env):
    mlflow = pytest.importorskip("mlflow")
    spec = env / "tiny.yaml"
    spec.write_text(SPEC.format(store=store, steps=12))
    uri = f"sqlite:///{env / 'mlflow.db'}"
    out = env / "study"
    argv = [sys.executable, "-m", "radengine.cli", "study", "run", str(spec), "--out", str(out)]
    argv += ["--tracking", uri]

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def pretrain_dir() -> Path | None:
        found = list(out.glob("pretrain-simclr-*"))
        return found[0] if found else None

    # 1: kill the whole group while the pretraining runs, once it has a checkpoint
    proc = start()
    _wait(
        lambda: (d := pretrain_dir()) is not None and any((d / "checkpoints").glob("step-*.pt")),
        proc,
    )
    first_done = (pretrain_dir() / "study-job.json").exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # 2: kill it again after its first job (the pretraining, resumed) finished
    proc = start()
    _wait(lambda: (pretrain_dir() / "study-job.json").exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log = (pretrain_dir() / "study-job.log").read_text()
    if not first_done:  # the kill came mid-run: the rerun continued from the checkpoint
        assert "--resume" in log
    # 3: finish the grid
    assert main([*argv[3:]]) == 0
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    job_runs = [r for r in runs if "study_job_key" in r.data.tags]
    finished: dict[str, int] = {}
    for r in job_runs:
        if r.info.status == "FINISHED":
            key = r.data.tags["study_job_key"]
            finished[key] = finished.get(key, 0) + 1
        else:
            assert r.info.status == "KILLED", r.info.status  # stale attempts, marked
    rows = json.loads(
        _capture(["study", "status", str(spec), "--out", str(out), "--tracking", uri, "--json"])
    )
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert finished == {r["key"]: 1 for r in rows}
    (study_run,) = [r for r in runs if r.data.tags.get("stage") == "study"]
    assert study_run.info.status == "FINISHED"
    for r in job_runs:
        assert r.data.tags["study"] == "tiny"
        assert r.data.tags["mlflow.parentRunId"] == study_run.info.run_id
    evals = [r for r in job_runs if r.data.tags["stage"] == "eval" and r.info.status == "FINISHED"]
    pre = next(
        r for r in job_runs if r.data.tags["stage"] == "pretrain" and r.info.status == "FINISHED"
    )
    assert {r.data.tags["init"] for r in evals} == {"scratch", pre.info.run_id}
    artifacts = [a.path for a in client.list_artifacts(study_run.info.run_id, "report")]
    assert "report/report.txt" in artifacts
    assert {r.data.tags["study_init"] for r in evals} == {"scratch", "simclr"}
    with open(out / "report" / "report.csv") as f:  # rows named as the spec names the inits
        assert {c["row"] for c in csv.DictReader(f)} == {"scratch", "simclr"}
    # nothing left to do: a rerun runs nothing
    assert main([*argv[3:]]) == 0
    assert len(client.search_runs([exp.experiment_id], "tags.study_job_key != ''")) == len(job_runs)


def _capture(args: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return buf.getvalue()


def test_without_tracking_two_at_a_time(store, env, capsys):
    """Also a study whose init names a method: DINO (multi-crop, its teacher's backbone is
    what transfers) pretrains with its recipe and its row is named by the init."""
    spec = env / "tiny.yaml"
    dino = (
        "{data: ct, method: dino, overrides: {model.proj_dim: 64, model.proj_hidden: 32, "
        "ssl.bottleneck_dim: 8, ssl.local_crops_number: 2, ssl.local_crops_size: 20}}"
    )
    spec.write_text(
        SPEC.format(store=store, steps=2).replace("simclr: {data: ct}", f"dino: {dino}")
    )
    args = ["study", "run", str(spec), "--tracking", "none", "--jobs", "2"]
    assert main(args) == 0
    out = env / "runs" / "study" / "tiny"
    records = [json.loads(p.read_text()) for p in out.glob("*/study-job.json")]
    assert len(records) == 3 and all(r["status"] == "done" for r in records)
    assert (out / "report" / "report.txt").is_file()
    assert len(list(out.glob("*/results.json"))) == 2
    with open(out / "report" / "report.csv") as f:  # not the pretraining's folder path
        assert {c["row"] for c in csv.DictReader(f)} == {"scratch", "dino"}
    (pre,) = out.glob("pretrain-dino-*")
    assert "method: dino" in (pre / "config.yaml").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert "3 done, 0 to run" in capsys.readouterr().out


def test_pretraining_on_several_processes_runs_under_torchrun(store, env):
    """pretrain.gpus: 2 runs the pretraining with torchrun, one process per GPU (two gloo
    processes on this CPU machine); the evaluations then use it as any other."""
    spec = env / "tiny.yaml"
    spec.write_text(SPEC.format(store=store, steps=2))
    out = env / "wide"
    args = ["study", "run", str(spec), "--out", str(out), "--tracking", "none"]
    assert main([*args, "pretrain.gpus=2"]) == 0
    (pre,) = out.glob("pretrain-simclr-*")
    log = (pre / "study-job.log").read_text()
    assert "-m torch.distributed.run --standalone --nproc-per-node=2 -m radengine.cli" in log
    assert "2 ranks" in log
    assert (pre / "encoder.pt").is_file()
    assert len(list(out.glob("*/results.json"))) == 2
