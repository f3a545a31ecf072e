"""The Slurm launcher: ``study run --launcher slurm`` submits the jobs with sbatch.

Every pretraining is one batch job; the evaluations of one pretraining are one job array
waiting for it (``--dependency=afterok:<its job>``; those of inits without a pretraining
one array with no dependency); a last job (``afterany`` on all of them) makes the report
and ends the study's MLflow run. Each job runs ``python -m radengine.study.slurm job
<out>/<job id>``, which holds the job folder's lock, resolves the evaluation's ``--init``
(its pretraining's FINISHED run), passes ``--resume`` when the folder has a checkpoint,
runs the same command as the local launcher (:func:`radengine.study.run.job_argv`) and
writes its exit status into ``study-job.json``. Jobs are submitted with ``--requeue`` and
``--signal=B:TERM@<slurm.signal_seconds>``: a pretraining told to stop checkpoints and
exits 3, and the job puts itself back in the queue (``scontrol requeue``), to resume.

The submitted Slurm job ids are stored in the job folders' records; ``study status``
reads their state from ``squeue`` (queued, running, blocked: a dependency that can never
be satisfied) and, once Slurm has forgotten a job, from the record the job wrote. A rerun
of ``study run --launcher slurm`` submits only the jobs neither done in MLflow nor queued
or running in Slurm.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radengine.errors import UserError
from radengine.study.jobs import Job
from radengine.study.run import (
    EXIT_PREEMPTED,
    JOB_LOG,
    StudyTracking,
    _read_record,
    _study_run,
    _try_lock,
    _write_config,
    _write_record,
    job_argv,
    refresh_status,
    run_context,
)
from radengine.study.spec import Study

__all__ = ["SubmitSummary", "job_main", "refresh_slurm", "report_main", "submit_study"]

SLURM_DIR = "slurm"  # <out>/slurm: batch scripts, Slurm's output, the report job's record
LAUNCH_FILE = "study-job.launch.json"  # what the batch job runs (written at submission)
STUDY_FILE = "study.json"  # how the report job loads the study
REPORT_FILE = "report-job.json"
RUNNING_STATES = {
    "RUNNING",
    "COMPLETING",
    "CONFIGURING",
    "SIGNALING",
    "STAGE_OUT",
    "SUSPENDED",
    "STOPPED",
    "RESIZING",
}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
BLOCKED_REASONS = {"DependencyNeverSatisfied"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _tool(name: str) -> str:
    """A Slurm client's path (sbatch, squeue, scontrol, scancel)."""
    path = shutil.which(name)
    if path is None:
        raise UserError(
            f"`{name}` is not on PATH: --launcher slurm needs the Slurm client commands "
            "(run on a login node of the cluster, or use --launcher local)"
        )
    return path


def _call(argv: list[str]) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(
            f"{' '.join(shlex.quote(a) for a in argv)} failed (exit {res.returncode}): "
            f"{res.stderr.strip() or res.stdout.strip()}"
        )
    return res.stdout


def job_name(study: Study) -> str:
    """The Slurm job name of every job of the study (``squeue -n`` finds them)."""
    return f"radengine-{study.name}"


def slurm_states(name: str) -> dict[str, tuple[str, str]] | None:
    """Slurm's jobs called ``name`` (array tasks one by one): id -> (state, reason); None
    where ``squeue`` is not on PATH.

    Finished jobs are listed until Slurm forgets them (``MinJobAge``).
    """
    if shutil.which("squeue") is None:
        return None
    out = _call([_tool("squeue"), "-h", "-r", "-t", "all", "-n", name, "-o", "%i|%T|%r"])
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


# ----------------------------------------------------------------------------- status


def _slurm_status(
    record: dict[str, Any], states: dict[str, tuple[str, str]] | None
) -> tuple[str, str]:
    """A submitted job's status and detail from Slurm's state, else the job's record."""
    sid = record["slurm"]["job"]
    if states is None and record.get("status") in ("submitted", "running"):
        status = "queued" if record["status"] == "submitted" else "running"
        return status, f"slurm {sid}: its record (squeue is not on PATH here)"
    states = states or {}
    state, reason = states.get(sid, ("", ""))
    if state in RUNNING_STATES:
        return "running", f"slurm {sid} {state.lower()}"
    if state in QUEUED_STATES:
        if reason in BLOCKED_REASONS:
            dep = record["slurm"].get("dependency") or "its dependency"
            return "blocked", f"slurm {sid}: {dep} failed ({reason}); rerun `study run`"
        return "queued", f"slurm {sid} {state.lower()} ({reason})"
    status = record.get("status")
    if status == "failed":
        return "failed", f"exit {record.get('returncode')}; log {record.get('log', JOB_LOG)}"
    if status == "interrupted":
        return "to do", "interrupted; continues on the next run"
    if status == "done":
        return "done", ""
    what = state.lower() if state else "gone from squeue"
    return "failed", f"slurm {sid} {what} without a final record (cancelled or killed?)"


def refresh_slurm(study: Study, out: Path) -> bool:
    """Overlay Slurm's view on the jobs :func:`refresh_status` did not find done: queued,
    running, blocked, or (Slurm has forgotten them) what their records say.

    Returns:
        Whether any job of the study was ever submitted to Slurm.
    """
    submitted = []
    for job in study.jobs:
        record = _read_record(out / job.id)
        if job.status != "done" and record.get("key") == job.key and "slurm" in record:
            submitted.append((job, record))
    if not submitted:
        return any("slurm" in _read_record(out / j.id) for j in study.jobs)
    states = slurm_states(job_name(study))
    for job, record in submitted:
        status, detail = _slurm_status(record, states)
        if status == "done" and job.run_id is None and job.status != "done":
            status, detail = "failed", "the job ended but no FINISHED MLflow run has its key"
        job.status, job.detail = status, detail
    return True


# ----------------------------------------------------------------------------- submitting


@dataclass
class SubmitSummary:
    """What ``study run --launcher slurm`` did."""

    submitted: dict[str, str] = field(default_factory=dict)  # job id -> Slurm job id
    skipped: dict[str, str] = field(default_factory=dict)  # job id -> why (done, queued ...)
    cancelled: list[str] = field(default_factory=list)  # blocked Slurm jobs resubmitted
    report_job: str | None = None
    study_run_id: str | None = None


def _script(
    study: Study, out: Path, name: str, job_ids: list[str], *, array: bool, kind: str,
    gpus: int | None = None,
) -> Path:  # fmt: skip
    """Write the batch script of one job or one array of ``kind`` jobs (its sbatch options
    in ``#SBATCH`` lines; ``gpus`` replaces ``gpus_per_job`` unless that is 0, a CPU-only
    job); return its path."""
    sl = study.spec.slurm.for_kind(kind)
    if gpus is not None and sl.gpus_per_job > 0:  # gpus_per_job 0: a CPU cluster
        sl.gpus_per_job = gpus
    folder = out / SLURM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    opts = [
        f"--job-name={job_name(study)}",
        f"--chdir={Path.cwd()}",
        f"--output={folder / (name + ('-%A_%a' if array else '-%j') + '.out')}",
        "--open-mode=append",
    ]
    if sl.requeue:
        opts.append("--requeue")
        if sl.signal_seconds:
            opts.append(f"--signal=B:TERM@{sl.signal_seconds}")
    else:
        opts.append("--no-requeue")
    for key, value in (
        ("partition", sl.partition),
        ("account", sl.account),
        ("time", sl.time),
        ("cpus-per-task", sl.cpus_per_task),
        ("mem", sl.mem),
    ):
        if value is not None:
            opts.append(f"--{key}={value}")
    if sl.gpus_per_job:
        opts.append(f"--gpus={sl.gpus_per_job}")
    opts += sl.extra
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in opts)]
    lines += [
        f"# radengine study {study.name} ({study.path}): {len(job_ids)} job(s)"
        + ("; array task i runs JOBS[i]" if array else ""),
        *sl.setup,
        "JOBS=(",
        *(f"  {shlex.quote(j)}" for j in job_ids),
        ")",
        f"exec {shlex.quote(sys.executable)} -m radengine.study.slurm job "
        f'{shlex.quote(str(out))}/"${{JOBS[${{SLURM_ARRAY_TASK_ID:-0}}]}}"',
        "",
    ]
    path = folder / f"{name}.sbatch"
    path.write_text("\n".join(lines))
    return path


def _sbatch(script: Path, extra: list[str]) -> str:
    out = _call([_tool("sbatch"), "--parsable", *extra, str(script)])
    return out.strip().split(";")[0]


def _prepare(
    job: Job, study: Study, out: Path, tracking: StudyTracking, study_run_id: str | None
) -> None:
    """Write the job's config and its launch file (what the batch job runs)."""
    config = _write_config(job, study, out, tracking)
    init_from = None
    if job.depends_on is not None and tracking.enabled:
        dep = study.job(job.depends_on)
        if not dep.run_id:  # not finished yet: the batch job looks its run up
            init_from = {"key": dep.key, "id": dep.id}
    launch = {
        "id": job.id,
        "key": job.key,
        "kind": job.kind,
        "protocol": job.protocol,
        "config": str(config),
        "study": study.name,
        "experiment": study.experiment,
        "tracking_uri": tracking.uri if tracking.enabled else None,
        "run_context": run_context(job, study_run_id),
        "init_from": init_from,
        "requeue": study.spec.slurm.for_kind(job.kind).requeue,
        "gpus": job.gpus,
    }
    (config.parent / LAUNCH_FILE).write_text(json.dumps(launch, indent=2) + "\n")


def _mark_submitted(job: Job, out: Path, sid: str, script: Path, dependency: str | None) -> None:
    record = {
        "id": job.id,
        "key": job.key,
        "kind": job.kind,
        "status": "submitted",
        "log": str((out / job.id / JOB_LOG).absolute()),
        "slurm": {"job": sid, "submitted": _now(), "script": str(script), "dependency": dependency},
    }
    _write_record(out / job.id, record)
    job.status, job.detail = "queued", f"slurm {sid}"


def submit_study(
    study: Study,
    out: Path,
    tracking: StudyTracking,
    *,
    overrides: list[str],
    say: Any = print,
) -> SubmitSummary:
    """Submit every job that is neither done nor queued/running in Slurm, then the report
    job (``afterany`` on all of them).

    Args:
        study: the expanded study (loaded with ``strict=True``).
        out: the study's folder.
        tracking: where the runs go.
        overrides: the spec overrides given (the report job loads the study with them).
        say: where progress lines go.

    Returns:
        What was submitted and skipped.
    """
    _tool("sbatch")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    refresh_status(study, out, tracking)
    refresh_slurm(study, out)
    summary = SubmitSummary()
    parent = _study_run(study, tracking, out)  # ended by the report job
    summary.study_run_id = parent.run_id
    if parent.run_id:
        from radengine.config import to_dict

        parent.log_dict(to_dict(study.spec), "study.yaml")
    (out / SLURM_DIR).mkdir(exist_ok=True)
    (out / SLURM_DIR / STUDY_FILE).write_text(
        json.dumps(
            {
                "spec": str(study.path),
                "overrides": list(overrides),
                "tracking": tracking.uri if tracking.enabled else "none",
                "cwd": str(Path.cwd()),
            },
            indent=2,
        )
        + "\n"
    )
    active: dict[str, str] = {}  # job id -> its Slurm job (queued or running)
    blocked = []
    for job in study.jobs:
        if job.status in ("queued", "running"):
            record = _read_record(out / job.id)
            if "slurm" in record:
                active[job.id] = record["slurm"]["job"]
            summary.skipped[job.id] = job.status
        elif job.status == "done":
            summary.skipped[job.id] = "done"
        elif job.status == "blocked":
            blocked.append(_read_record(out / job.id)["slurm"]["job"])
    if blocked:  # their dependency failed: cancel, and submit them again below
        _call([_tool("scancel"), *blocked])
        summary.cancelled = blocked
    todo = [j for j in study.jobs if j.id not in summary.skipped]
    for job in [j for j in todo if j.kind == "pretrain"]:
        _prepare(job, study, out, tracking, parent.run_id)
        script = _script(study, out, job.id, [job.id], array=False, kind="pretrain", gpus=job.gpus)
        sid = _sbatch(script, [])
        _mark_submitted(job, out, sid, script, None)
        summary.submitted[job.id] = active[job.id] = sid
        say(f"submit {job.id}: slurm {sid}")
    groups: dict[str | None, list[Job]] = {}
    for job in [j for j in todo if j.kind == "eval"]:
        groups.setdefault(job.depends_on, []).append(job)
    for dep_id, jobs in groups.items():
        for job in jobs:
            _prepare(job, study, out, tracking, parent.run_id)
        name = f"eval-{dep_id or 'no-pretraining'}-{len(jobs)}"
        script = _script(study, out, name, [j.id for j in jobs], array=True, kind="eval")
        dependency = f"afterok:{active[dep_id]}" if dep_id in active else None
        extra = [f"--array=0-{len(jobs) - 1}"] + (
            [f"--dependency={dependency}"] if dependency else []
        )
        sid = _sbatch(script, extra)
        for i, job in enumerate(jobs):
            _mark_submitted(job, out, f"{sid}_{i}", script, dependency)
            summary.submitted[job.id] = active[job.id] = f"{sid}_{i}"
        say(
            f"submit {len(jobs)} evaluation(s) as array {sid}"
            + (f" after {dependency}" if dependency else "")
        )
    summary.report_job = _submit_report(study, out, tracking, summary, active, say)
    return summary


def _submit_report(
    study: Study,
    out: Path,
    tracking: StudyTracking,
    summary: SubmitSummary,
    active: dict[str, str],
    say: Any,
) -> str | None:
    """The report job: after every job of the study ends (afterany), unless nothing was
    submitted and a report exists or is already queued."""
    path = out / SLURM_DIR / REPORT_FILE
    record = _read_record_file(path)
    old = record.get("slurm_job")
    old_active = False
    if old and record.get("status") == "submitted":
        state, _ = (slurm_states(job_name(study)) or {}).get(old, ("", ""))
        old_active = state in QUEUED_STATES | RUNNING_STATES
    if not summary.submitted:
        if old_active or (out / "report" / "report.txt").is_file():
            return None
        if not any(j.kind == "eval" and j.status == "done" for j in study.jobs):
            return None
    if old_active:
        _call([_tool("scancel"), old])
    script = out / SLURM_DIR / "report.sbatch"
    opts = [
        f"--job-name={job_name(study)}",
        f"--chdir={Path.cwd()}",
        f"--output={out / SLURM_DIR / 'report-%j.out'}",
        "--open-mode=append",
        "--cpus-per-task=1",
    ]
    sl = study.spec.slurm
    opts += [f"--{k}={v}" for k, v in (("partition", sl.partition), ("account", sl.account)) if v]
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                *(f"#SBATCH {o}" for o in opts),
                f"# radengine study {study.name}: the report, after every job",
                *sl.setup,
                f"exec {shlex.quote(sys.executable)} -m radengine.study.slurm report "
                f"{shlex.quote(str(out))}",
                "",
            ]
        )
    )
    deps = sorted(set(active.values()))
    extra = [f"--dependency=afterany:{':'.join(deps)}"] if deps else []
    sid = _sbatch(script, extra)
    _write_report_record(path, {"status": "submitted", "slurm_job": sid, "submitted": _now()})
    say(f"submit the report: slurm {sid}" + (" after every job" if deps else ""))
    return sid


def _read_record_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_report_record(path: Path, record: dict[str, Any]) -> None:
    from radengine.data.store import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- in the job


def _own_slurm_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _finished_runs(uri: str, experiment: str, study: str, key: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.study = '{study}' and tags.study_job_key = '{key}'",
        order_by=["attributes.start_time DESC"],
    )


def _requeue(sid: str) -> bool:
    """Put this job back in the queue, unless Slurm is already ending it (a cancel or a
    preemption that requeues it anyway)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False
    res = subprocess.run([scontrol, "show", "job", "-o", sid], capture_output=True, text=True)
    if "JobState=RUNNING" not in res.stdout:
        return False
    res = subprocess.run([scontrol, "requeue", sid], capture_output=True, text=True)
    return res.returncode == 0


def job_main(folder: Path) -> int:
    """Run one job of the study in a Slurm batch job (``python -m radengine.study.slurm
    job FOLDER``): the command of :func:`radengine.study.run.job_argv`, its exit status
    written into ``study-job.json``.

    Args:
        folder: the job's folder (``<out>/<job id>``) with its launch file.

    Returns:
        The exit code (the job's; 0 when it was requeued to resume).
    """
    import yaml

    launch = json.loads((folder / LAUNCH_FILE).read_text())
    lock = _try_lock(folder)
    if lock is None:
        print(f"error: another process runs {folder} (its lock is held)", file=sys.stderr)
        return 1
    sid = _own_slurm_id()
    record = _read_record(folder)
    record.update(
        {
            "id": launch["id"],
            "key": launch["key"],
            "kind": launch["kind"],
            "status": "running",
            "started": _now(),
            "started_epoch": time.time(),
            "log": str(folder / JOB_LOG),
        }
    )
    record.pop("ended", None)
    record.setdefault("slurm", {}).update(
        {"job": sid or record.get("slurm", {}).get("job"), "node": os.uname().nodename}
    )
    record["slurm"]["restarts"] = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    _write_record(folder, record)
    uri = launch["tracking_uri"]
    log = open(folder / JOB_LOG, "ab")  # noqa: SIM115 (closed below)
    stopping: list[int] = []
    proc: subprocess.Popen | None = None

    def on_term(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    error = None
    try:
        if uri:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            for run in _finished_runs(uri, launch["experiment"], launch["study"], launch["key"]):
                if run.info.status == "RUNNING":  # a killed attempt's
                    client.set_terminated(run.info.run_id, "KILLED")
        config = Path(launch["config"])
        dep = launch.get("init_from")
        if dep and uri:
            found = [
                r
                for r in _finished_runs(uri, launch["experiment"], launch["study"], dep["key"])
                if r.info.status == "FINISHED"
            ]
            if not found:
                error = f"the pretraining {dep['id']} has no FINISHED MLflow run"
            else:
                cfg = yaml.safe_load(config.read_text())
                cfg["init"]["source"] = found[0].info.run_id
                config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if error is None and not stopping:
            argv = job_argv(
                launch["kind"], launch["protocol"], config, folder, gpus=launch.get("gpus", 1)
            )
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            env = dict(os.environ, MLFLOW_RUN_CONTEXT=launch["run_context"])
            if os.environ.get("SLURM_CPUS_PER_TASK"):
                env.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(lock,)
            )
            rc = proc.wait()
        else:
            rc = 1 if error else EXIT_PREEMPTED
    finally:
        log.close()
    interrupted = rc == EXIT_PREEMPTED or (rc < 0 and bool(stopping))
    status = "done" if rc == 0 else ("interrupted" if interrupted else "failed")
    if error:
        record["error"] = error
        with open(folder / JOB_LOG, "a") as f:
            f.write(f"error: {error}\n")
    if status == "done" and uri:
        finished = [
            r
            for r in _finished_runs(uri, launch["experiment"], launch["study"], launch["key"])
            if r.info.status == "FINISHED"
        ]
        if finished:
            record["run_id"] = finished[0].info.run_id
        else:
            status, record["error"] = "failed", "exited 0 but no FINISHED MLflow run has its key"
    ended = time.time()
    record.update(
        {
            "status": status,
            "returncode": rc,
            "ended": _now(),
            "ended_epoch": ended,
            "seconds": round(ended - record["started_epoch"], 1),
        }
    )
    requeued = interrupted and launch.get("requeue") and sid is not None and _requeue(sid)
    record["slurm"]["requeued"] = bool(requeued)
    _write_record(folder, record)
    os.close(lock)
    if requeued:
        return 0
    return 0 if status == "done" else (rc if rc > 0 else 1)


def report_main(out: Path) -> int:
    """The report job (``python -m radengine.study.slurm report OUT``): the transfer table
    of the study's evaluations, logged with the study's run, which it ends (FINISHED when
    every job is done, else FAILED).

    Args:
        out: the study's folder.

    Returns:
        0 when every job is done and the report was made, else 1.
    """
    from radengine.study.run import RunSummary, _report
    from radengine.study.spec import load_study

    info = json.loads((out / SLURM_DIR / STUDY_FILE).read_text())
    os.chdir(info["cwd"])
    study = load_study(info["spec"], info["overrides"], strict=False)
    tracking = StudyTracking.from_arg(info["tracking"])
    refresh_status(study, out, tracking)
    parent = _study_run(study, tracking, out)
    summary = RunSummary(ran=len(study.jobs))
    summary.done = sum(j.status == "done" for j in study.jobs)
    summary.failed = len(study.jobs) - summary.done
    summary.study_run_id = parent.run_id
    try:
        if parent.run_id:
            parent.log_dict({"jobs": [j.row() for j in study.jobs]}, "jobs.json")
        _report(study, out, tracking, parent, summary, print)
    except BaseException:
        parent.finish("FAILED")
        raise
    ok = not summary.failed and summary.report_error is None
    parent.finish("FINISHED" if ok else "FAILED")
    path = out / SLURM_DIR / REPORT_FILE
    record = _read_record_file(path)
    record.update(
        {
            "status": "done" if ok else "failed",
            "ended": _now(),
            "jobs_done": summary.done,
            "jobs": len(study.jobs),
            "report": str(summary.report_out) if summary.report_out else None,
            "error": summary.report_error,
        }
    )
    _write_report_record(path, record)
    print(f"study {study.name}: {summary.done}/{len(study.jobs)} jobs done")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m radengine.study.slurm job FOLDER | report OUT`` (what batch jobs run)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("job", "report"):
        print("usage: python -m radengine.study.slurm job FOLDER | report OUT", file=sys.stderr)
        return 2
    if args[0] == "job":
        return job_main(Path(args[1]))
    return report_main(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
