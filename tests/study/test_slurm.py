"""`radengine study run --launcher slurm` against a real single-node Slurm (munged,
slurmctld and slurmd started by the fixture): a tiny study (1 pretraining, 2 evaluations
as one job array waiting for it, then the report job) runs to the end with exactly one
FINISHED MLflow run per job, the evaluations start after the pretraining ended, `study
status` says done, and a rerun submits nothing. Skipped where Slurm cannot start (its
binaries missing, not root)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from radengine.cli import main
from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import checkpoint
from radengine.study.slurm import _slurm_status
from tests.study.slurm_cluster import slurm_cluster, unavailable

SPEC = """
name: tiny_slurm
stores: {{ct: {store}}}
pretrain:
  overrides:
    augment.size: 32
    optim.batch_size: 16
    optim.epochs: 1
    data.workers: 0
    train.max_steps: 3
    train.checkpoint_every: 1
    knn.every: 0
    tracking.log_model: false
    tracking.system_metrics: false
inits: {{simclr: {{data: ct}}}}
input: {{size: 32}}
evals:
  - protocols: linear
    tasks: body_region
    seeds: [42, 1]
    data: ct
    overrides: {{linear: {{epochs: 2}}}}
baseline: simclr
slurm: {{gpus_per_job: 0, cpus_per_task: 1, time: "10:00"}}
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(why)
    # a short folder: the munge socket's path must fit in sun_path
    with (
        tempfile.TemporaryDirectory(prefix="slurm-", dir="/tmp") as root,
        slurm_cluster(Path(root)) as conf,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("SLURM_CONF", str(conf))
        yield conf


def _capture(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return buf.getvalue()


def _squeue_ids() -> set[str]:
    res = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True
    )
    return set(res.stdout.split())


def test_slurm_study_runs_to_the_end_and_rerun_submits_nothing(slurm, env):
    mlflow = pytest.importorskip("mlflow")
    store = env / "ct"
    write_synthetic_ct_store(store, patients=10, slices=4, size=32)
    spec = env / "tiny.yaml"
    spec.write_text(SPEC.format(store=store))
    uri = f"sqlite:///{env / 'mlflow.db'}"
    out = env / "study"
    common = [str(spec), "--out", str(out), "--tracking", uri]
    text = _capture(["study", "run", *common, "--launcher", "slurm"])
    assert "3 job(s) submitted to Slurm" in text, text
    report_record = out / "slurm" / "report-job.json"
    end = time.monotonic() + 180
    while json.loads(report_record.read_text()).get("status") == "submitted":
        assert time.monotonic() < end, "the study did not finish in 180 s: " + _capture(
            ["study", "status", *common]
        )
        time.sleep(1)
    report = json.loads(report_record.read_text())
    assert report["status"] == "done", report
    rows = json.loads(_capture(["study", "status", *common, "--json"]))
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows), rows
    # one FINISHED run per job, nested under the study's run, which the report job ended
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_slurm")
    runs = client.search_runs([exp.experiment_id])
    job_runs = [r for r in runs if "study_job_key" in r.data.tags]
    assert sorted(r.data.tags["study_job_key"] for r in job_runs) == sorted(r["key"] for r in rows)
    assert all(r.info.status == "FINISHED" for r in job_runs)
    (study_run,) = [r for r in runs if r.data.tags.get("stage") == "study"]
    assert study_run.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == study_run.info.run_id for r in job_runs)
    artifacts = [a.path for a in client.list_artifacts(study_run.info.run_id, "report")]
    assert "report/report.txt" in artifacts
    # the evaluations: one array after the pretraining (afterok), started after it ended
    records = {r["id"]: json.loads((out / r["id"] / "study-job.json").read_text()) for r in rows}
    pre = next(rec for rec in records.values() if rec["kind"] == "pretrain")
    evals = [rec for rec in records.values() if rec["kind"] == "eval"]
    assert sorted(rec["slurm"]["job"].split("_")[1] for rec in evals) == ["0", "1"]
    assert len({rec["slurm"]["job"].split("_")[0] for rec in evals}) == 1
    for rec in evals:
        assert rec["slurm"]["dependency"] == f"afterok:{pre['slurm']['job']}"
        assert rec["started_epoch"] >= pre["ended_epoch"]
        assert rec["status"] == "done" and rec["returncode"] == 0
    pre_run = client.get_run(pre["run_id"])
    assert {r.data.tags["init"] for r in job_runs if r.data.tags["stage"] == "eval"} == {
        pre_run.info.run_id
    }
    # a rerun submits nothing
    before = _squeue_ids()
    text = _capture(["study", "run", *common, "--launcher", "slurm"])
    assert "0 job(s) submitted to Slurm, 3 skipped" in text, text
    assert "report      slurm job" not in text
    assert _squeue_ids() == before
    assert len(client.search_runs([exp.experiment_id], "tags.study_job_key != ''")) == 3


def test_a_signalled_pretraining_checkpoints_requeues_and_resumes(slurm, env):
    """The preemption path: SIGTERM to a running pretraining's batch job (what
    ``--signal=B:TERM@N`` sends before the time limit, or a preemption) makes it checkpoint,
    put itself back in the queue (``scontrol requeue``) and, run again, resume from the
    checkpoint; the study then finishes with one FINISHED run per job."""
    mlflow = pytest.importorskip("mlflow")
    store = env / "ct"
    if not store.exists():
        write_synthetic_ct_store(store, patients=10, slices=4, size=32)
    spec = env / "requeue.yaml"
    text = SPEC.format(store=store).replace("name: tiny_slurm", "name: requeue_slurm")
    text = text.replace("train.max_steps: 3", "train.max_steps: 400")
    text = text.replace("train.checkpoint_every: 1", "train.checkpoint_every: 5")
    spec.write_text(text.replace("seeds: [42, 1]", "seeds: [42]"))
    uri = f"sqlite:///{env / 'mlflow-requeue.db'}"
    out = env / "requeue"
    common = [str(spec), "--out", str(out), "--tracking", uri]
    _capture(["study", "run", *common, "--launcher", "slurm"])
    (pre_dir,) = out.glob("pretrain-*")
    sid = json.loads((pre_dir / "study-job.json").read_text())["slurm"]["job"]
    end = time.monotonic() + 120
    while not checkpoint.find(pre_dir / "checkpoints"):
        assert time.monotonic() < end, "no checkpoint within 120 s"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", "--batch", sid], check=True)
    report_record = out / "slurm" / "report-job.json"
    end = time.monotonic() + 300
    while json.loads(report_record.read_text()).get("status") == "submitted":
        assert time.monotonic() < end, "the study did not finish in 300 s: " + _capture(
            ["study", "status", *common]
        )
        time.sleep(1)
    record = json.loads((pre_dir / "study-job.json").read_text())
    assert record["status"] == "done" and record["slurm"]["restarts"] >= 1, record
    log = (pre_dir / "study-job.log").read_text()
    assert "--resume" in log and "resuming at step" in log, log[-2000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("requeue_slurm")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "study_job_key" in r.data.tags]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


def test_status_from_slurm_state_and_records():
    rec = {"slurm": {"job": "7_1", "dependency": "afterok:6"}, "status": "submitted"}
    assert _slurm_status(rec, {"7_1": ("PENDING", "Dependency")})[0] == "queued"
    status, detail = _slurm_status(rec, {"7_1": ("PENDING", "DependencyNeverSatisfied")})
    assert status == "blocked" and "afterok:6" in detail
    assert _slurm_status(rec, {"7_1": ("RUNNING", "None")})[0] == "running"
    assert _slurm_status(rec, {})[0] == "failed"  # gone without a final record
    assert _slurm_status(dict(rec, status="interrupted"), {})[0] == "to do"
    assert _slurm_status(dict(rec, status="failed", returncode=1), {})[0] == "failed"
    assert _slurm_status(rec, None)[0] == "queued"  # no squeue here: the record's word


def test_slurm_spec_block_is_checked():
    from radengine.config import ConfigError
    from radengine.study.spec import load_study

    study = load_study("mini", ["slurm.partition=gpu", 'slurm.time="12:00:00"'], expand=False)
    assert study.spec.slurm.partition == "gpu" and study.spec.slurm.time == "12:00:00"
    assert study.digest == load_study("mini", expand=False).digest  # resources: same study
    with pytest.raises(ConfigError, match=r"did you mean 'slurm\.partition'"):
        load_study("mini", ["slurm.partitio=gpu"], expand=False)
    with pytest.raises(ConfigError, match=r"slurm\.time' must be a string"):
        load_study("mini", ["slurm.time=12:00:00"], expand=False)  # YAML: 43200
    with pytest.raises(ConfigError, match=r"slurm\.extra"):
        load_study("mini", ["slurm.extra=[qos]"], expand=False)


def test_resources_per_kind_of_job(tmp_path, monkeypatch):
    """Pretrainings and evaluations ask for their own resources: the common slurm keys,
    the kind's block on top, and a pretraining's GPUs from pretrain.gpus."""
    from radengine.config import ConfigError
    from radengine.study.slurm import _script
    from radengine.study.spec import load_study

    monkeypatch.chdir(tmp_path)
    over = [
        "slurm.partition=gpu", 'slurm.time="02:00:00"', "slurm.gpus_per_job=1",
        'slurm.pretrain={time: "48:00:00", mem: 200G}', "slurm.eval.cpus_per_task=4",
        "pretrain.gpus=4", "inits.simclr_natural.gpus=8",
    ]  # fmt: skip
    study = load_study("mini", over)
    assert study.digest == load_study("mini").digest  # resources are not the study
    jobs = {j.init: j for j in study.jobs if j.kind == "pretrain"}
    assert jobs["simclr_ct"].gpus == 4 and jobs["simclr_natural"].gpus == 8

    def opts(kind, gpus=None):
        path = _script(study, tmp_path, kind, ["j"], array=False, kind=kind, gpus=gpus)
        return [x.removeprefix("#SBATCH ") for x in path.read_text().splitlines() if "#SBATCH" in x]

    pre, ev = opts("pretrain", gpus=jobs["simclr_ct"].gpus), opts("eval")
    assert {"--partition=gpu", "--time=48:00:00", "--mem=200G", "--gpus=4"} <= set(pre)
    assert not any(o.startswith("--cpus-per-task") for o in pre)
    assert {"--partition=gpu", "--time=02:00:00", "--cpus-per-task=4", "--gpus=1"} <= set(ev)
    assert not any(o.startswith("--mem") for o in ev)
    cpu = load_study("mini", ["slurm.gpus_per_job=0"])  # a CPU cluster: no --gpus at all
    path = _script(cpu, tmp_path, "cpu", ["j"], array=False, kind="pretrain", gpus=4)
    assert "--gpus" not in path.read_text()
    with pytest.raises(
        ConfigError, match=r"slurm\.pretrain\.tme.*did you mean 'slurm\.pretrain\.time'"
    ):
        load_study("mini", ['slurm.pretrain.tme="1:00:00"'], expand=False)
    with pytest.raises(ConfigError, match=r"slurm\.eval\.gpus_per_job' must be at least 0"):
        load_study("mini", ["slurm.eval.gpus_per_job=-1"], expand=False)
    with pytest.raises(ConfigError, match=r"pretrain\.gpus' must be at least 1"):
        load_study("mini", ["pretrain.gpus=0"], expand=False)


def test_run_without_sbatch_says_so(env, monkeypatch):
    from radengine.errors import UserError
    from radengine.study.slurm import _tool

    monkeypatch.setenv("PATH", str(env))
    with pytest.raises(UserError, match="sbatch"):
        _tool("sbatch")
    assert os.environ["PATH"] == str(env)
