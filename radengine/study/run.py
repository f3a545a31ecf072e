"""The local launcher: what is done, and running the rest.

Every job runs as a ``python -m radengine.cli pretrain|eval ...`` subprocess in the
launcher's process group (a kill of the group ends them all) with its own folder
``<out>/<job id>/``: the resolved config (``study-job.yaml``), the output of the command
(``study-job.log``), a record of the last attempt (``study-job.json``) and a lock held by
the launcher and the job while it runs (``.study-job.lock``: ``study status`` reads a held
lock as running).

A job is done when the tracking store has a FINISHED run tagged with its content key
(``study_job_key``) and the study (``study``); with ``--tracking none``, when its
``study-job.json`` says so for the same key. A pretraining whose folder holds a checkpoint
resumes from it (the same MLflow run continues), so a study killed at any moment and run
again finishes its grid with no job lost and none run twice to the end. The job's runs get
their tags through MLflow's ``MLFLOW_RUN_CONTEXT`` (tags of every run a process creates):
``study_job_key``, ``study_job_id``, ``study_run_id`` and ``mlflow.parentRunId`` (the
study's run, in the same experiment: the MLflow UI nests the jobs under it).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radengine.config import ConfigError
from radengine.errors import UserError
from radengine.study.jobs import Job
from radengine.study.spec import Study

__all__ = ["RunSummary", "StudyTracking", "refresh_status", "run_study", "status_table"]

JOB_FILE = "study-job.json"
JOB_CONFIG = "study-job.yaml"
JOB_LOG = "study-job.log"
JOB_LOCK = ".study-job.lock"
EXIT_PREEMPTED = 3  # radengine.cli's: checkpointed, resumable

STATUSES = ("done", "running", "failed", "to do")
SLURM_STATUSES = ("queued", "blocked")  # --launcher slurm: waiting in Slurm, or never will


def default_out(study: Study) -> Path:
    """``runs/study/<name>`` in the working directory."""
    return Path("runs") / "study" / study.name


# ----------------------------------------------------------------------------- tracking


@dataclass
class StudyTracking:
    """Where the study's runs are: an MLflow tracking URI, or none (folders only)."""

    uri: str | None
    enabled: bool = True

    @classmethod
    def from_arg(cls, value: str | None) -> StudyTracking:
        """``--tracking URI|none`` (None: MLFLOW_TRACKING_URI, else ./mlflow.db)."""
        if value == "none":
            return cls(None, False)
        from radengine import tracking

        return cls(tracking.tracking_uri(value), True)

    def _exists(self) -> bool:
        """False for a SQLite store whose file is not there yet (opening it would create
        it: a status or a dry run must not)."""
        assert self.uri is not None
        if self.uri.startswith("sqlite:///"):
            return Path(self.uri[len("sqlite:///") :]).is_file()
        return True

    def runs(self, study: Study) -> dict[str, list[Any]]:
        """The study's runs in its experiment, by ``study_job_key`` (newest first)."""
        if not self.enabled or not self._exists():
            return {}
        from radengine import tracking

        tracking.require_mlflow()
        from mlflow import MlflowClient
        from mlflow.entities import ViewType

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(study.experiment)
        if exp is None:
            return {}
        found: dict[str, list[Any]] = {}
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.study = '{study.name}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            for run in page:
                key = run.data.tags.get("study_job_key")
                if key:
                    found.setdefault(key, []).append(run)
            token = page.token
            if not token:
                return found

    def kill_stale(self, runs: list[Any]) -> None:
        """Mark RUNNING runs of a job no process runs any more (a killed attempt) KILLED."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        for run in runs:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")


# ----------------------------------------------------------------------------- job folders


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    from radengine.data.store import atomic_write_bytes

    atomic_write_bytes(folder / JOB_FILE, (json.dumps(record, indent=2) + "\n").encode())


def _try_lock(folder: Path) -> int | None:
    """The job's lock as an open descriptor, or None when another process holds it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / JOB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _held(folder: Path) -> bool:
    if not (folder / JOB_LOCK).exists():
        return False
    fd = _try_lock(folder)
    if fd is None:
        return True
    os.close(fd)
    return False


def _checkpoints(folder: Path) -> list[Path]:
    from radengine.engine.checkpoint import find

    return find(folder / "checkpoints")


def refresh_status(study: Study, out: Path, tracking: StudyTracking) -> dict[str, list[Any]]:
    """Set every job's ``status`` (done / running / failed / to do), ``run_id`` and
    ``detail`` from the tracking store and the job folders (Slurm's view of submitted jobs
    is :func:`radengine.study.slurm.refresh_slurm`'s).

    Returns:
        The study's runs by job key (as :meth:`StudyTracking.runs`).
    """
    runs = tracking.runs(study)
    for job in study.jobs:
        folder = out / job.id
        record = _read_record(folder)
        job.run_id, job.detail, job.seconds = None, "", None
        finished = [r for r in runs.get(job.key, []) if r.info.status == "FINISHED"]
        if tracking.enabled and finished:
            job.status, job.run_id = "done", finished[0].info.run_id
            if len(finished) > 1:
                job.detail = f"{len(finished)} finished runs"
        elif (
            not tracking.enabled
            and record.get("status") == "done"
            and (record.get("key") == job.key)
        ):
            job.status = "done"
        elif _held(folder):
            job.status = "running"
        elif record.get("key") == job.key and record.get("status") == "failed":
            job.status = "failed"
            job.detail = f"exit {record.get('returncode')}; log {folder / JOB_LOG}"
        else:
            job.status = "to do"
        if job.status == "done" and record.get("key") == job.key:
            seconds = record.get("seconds")
            job.seconds = float(seconds) if isinstance(seconds, (int, float)) else None
        if job.status in ("to do", "failed") and job.kind == "pretrain":
            ckpts = _checkpoints(folder)
            if ckpts:
                note = f"resumes from {ckpts[-1].name}"
                job.detail = f"{job.detail}; {note}" if job.detail else note
    return runs


def status_table(study: Study, *, show_jobs: bool = True) -> str:
    """The expanded grid as text: counts per kind and status, then one line per job."""
    lines = [
        f"study {study.name}: {len(study.jobs)} jobs (experiment {study.experiment}, spec "
        f"{study.path}, digest {study.digest[:12]})"
    ]
    shown = STATUSES + tuple(s for s in SLURM_STATUSES if any(j.status == s for j in study.jobs))
    for kind in ("pretrain", "eval"):
        jobs = [j for j in study.jobs if j.kind == kind]
        counts = ", ".join(f"{s} {sum(j.status == s for j in jobs)}" for s in shown)
        lines.append(f"  {kind:<9}{len(jobs):5d}   {counts}")
    estimate = estimate_remaining(study)
    if estimate:
        lines.append(f"  {estimate}")
    if not show_jobs:
        return "\n".join(lines)
    width = max((len(j.id) for j in study.jobs), default=2)
    lines.append("")
    lines.append(f"  {'job':<{width}}  {'status':<8} {'init':<20} {'data':<14} detail")
    for j in study.jobs:
        lines.append(
            f"  {j.id:<{width}}  {j.status:<8} {j.init:<20} {j.data_label:<14} "
            + (f"run {j.run_id} " if j.run_id else "")
            + j.detail
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def estimate_remaining(study: Study) -> str | None:
    """The time the jobs not done yet would take one at a time, estimated from the done
    jobs like them (same kind, protocol and label fraction, else same kind and protocol);
    None when no job is done yet or nothing is left. Jobs with nothing like them done are
    counted, not guessed."""
    done = [j for j in study.jobs if j.status == "done" and j.seconds is not None]
    left = [j for j in study.jobs if j.status in ("to do", "failed")]
    if not done or not left:
        return None
    fine: dict[tuple, list[float]] = {}
    coarse: dict[tuple, list[float]] = {}
    for j in done:
        fine.setdefault((j.kind, j.protocol, j.label_fraction), []).append(j.seconds or 0.0)
        coarse.setdefault((j.kind, j.protocol), []).append(j.seconds or 0.0)
    total, unknown = 0.0, 0
    for j in left:
        times = fine.get((j.kind, j.protocol, j.label_fraction)) or coarse.get((j.kind, j.protocol))
        if times:
            total += sum(times) / len(times)
        else:
            unknown += 1
    text = (
        f"estimate: ~{_duration(total)} for {len(left) - unknown} of the {len(left)} jobs "
        "left, one at a time (the mean time of the done jobs like each)"
    )
    if unknown:
        text += f"; {unknown} {'has' if unknown == 1 else 'have'} no done job like it to go by"
    return text


# ----------------------------------------------------------------------------- running


@dataclass
class RunSummary:
    """What ``study run`` did."""

    ran: int = 0
    done: int = 0
    failed: int = 0
    blocked: int = 0
    interrupted: bool = False
    study_run_id: str | None = None
    report_out: Path | None = None
    report_error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.blocked else 0


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    lock: int
    gpus: list[str]  # its CUDA_VISIBLE_DEVICES (empty on a CPU machine)
    log: Any
    started: float


def _gpus() -> list[str]:
    """The GPUs to spread jobs over: CUDA_VISIBLE_DEVICES, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA: CPU jobs
        return []


def _study_run(study: Study, tracking: StudyTracking, out: Path) -> Any:
    """The study's MLflow run (tags ``study``, ``stage=study``, ``study_spec_digest``):
    the one a previous launch of the same spec made, continued, else a new one."""
    from radengine import tracking as tr

    tracker = tr.Tracker(tracking.uri, study.experiment, enabled=tracking.enabled)
    if not tracking.enabled:
        return tracker
    previous = None
    if tracking._exists():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking.uri)
        exp = client.get_experiment_by_name(study.experiment)
        if exp is not None:
            found = client.search_runs(
                [exp.experiment_id],
                filter_string=(
                    f"tags.study = '{study.name}' and tags.stage = 'study' and "
                    f"tags.study_spec_digest = '{study.digest}'"
                ),
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            previous = found[0].info.run_id if found else None
    tracker.start(
        run_name=f"study-{study.name}",
        tags={
            "study": study.name,
            "stage": "study",
            "study_spec_digest": study.digest,
            "study_spec": str(study.path),
            "out": str(out),
        },
        run_id=previous,
        system_metrics=False,
    )
    return tracker


def _init_source(job: Job, study: Study, out: Path, tracking: StudyTracking) -> str:
    """What the eval job's ``--init`` is: its pretraining's run id (tracked) or folder."""
    if job.depends_on is None:
        assert job.init_source is not None
        return job.init_source
    dep = study.job(job.depends_on)
    if tracking.enabled and dep.run_id:
        return dep.run_id
    return str((out / dep.id).absolute())


def _write_config(job: Job, study: Study, out: Path, tracking: StudyTracking) -> Path:
    """Write the job's resolved config (its folder, tracking and, for an evaluation, its
    ``--init``) to ``<out>/<job id>/study-job.yaml``; return the file."""
    import yaml

    folder = (out / job.id).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(job.config)
    track = cfg["tracking"]
    track["enabled"], track["uri"], track["experiment"] = (
        tracking.enabled,
        tracking.uri,
        study.experiment,
    )
    # The spec's name for the init: the report's row label, with or without MLflow.
    track["tags"] = {**(track.get("tags") or {}), "study_init": job.init}
    if job.kind == "pretrain":
        cfg["train"]["out"], cfg["train"]["progress"] = str(folder), False
    else:
        cfg["out"], cfg["progress"] = str(folder), False
        cfg["init"]["source"] = _init_source(job, study, out, tracking)
    path = folder / JOB_CONFIG
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_argv(
    kind: str, protocol: str | None, config: Path, folder: Path, *, gpus: int = 1
) -> list[str]:
    """The job's command line: ``python -m radengine.cli pretrain|eval ...``; a
    pretraining whose folder holds a checkpoint continues it with ``--resume``; one on
    ``gpus`` > 1 runs under torchrun (``python -m torch.distributed.run --standalone``), one
    process per GPU (gloo processes on a machine without GPUs).

    Args:
        kind: "pretrain" or "eval".
        protocol: the evaluation's protocol (None for a pretraining).
        config: the job's resolved config file.
        folder: the job's folder.
        gpus: a pretraining's processes.

    Returns:
        The argv list.
    """
    argv = [sys.executable, "-m", "radengine.cli"]
    if kind == "pretrain" and gpus > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={gpus}", "-m", "radengine.cli"]  # fmt: skip
    if kind == "pretrain":
        argv += ["pretrain", "--config", str(config)]
        if _checkpoints(folder):
            argv += ["--resume", str(folder)]
    else:
        assert protocol is not None
        argv += ["eval", protocol, "--config", str(config)]
    return argv


def _command(job: Job, study: Study, out: Path, tracking: StudyTracking) -> list[str]:
    path = _write_config(job, study, out, tracking)
    return job_argv(job.kind, job.protocol, path, path.parent, gpus=job.gpus)


def run_context(job: Job, study_run_id: str | None) -> str:
    """The job's ``MLFLOW_RUN_CONTEXT`` (JSON): the tags of every run its process makes."""
    tags = {"study_job_key": job.key, "study_job_id": job.id}
    if study_run_id:
        tags.update({"study_run_id": study_run_id, "mlflow.parentRunId": study_run_id})
    return json.dumps(tags)


def _env(
    job: Job, study_run_id: str | None, gpu: str | None, threads: int | None
) -> dict[str, str]:
    """The job's environment: its MLflow tags (``MLFLOW_RUN_CONTEXT``), its GPU and, for
    several CPU jobs at once, its share of the cores."""
    env = dict(os.environ)
    env["MLFLOW_RUN_CONTEXT"] = run_context(job, study_run_id)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


@contextlib.contextmanager
def _signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``on_signal`` instead of ending the launcher (main thread
    only); the previous handlers come back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: on_signal(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_study(
    study: Study,
    out: Path,
    tracking: StudyTracking,
    *,
    jobs: int = 1,
    say: Callable[[str], None] = print,
    poll: float = 0.2,
) -> RunSummary:
    """Run every job that is not done, ``jobs`` at a time, pretrainings before the
    evaluations that use them; then the report.

    Args:
        study: the expanded study (loaded with ``strict=True``: its data exists).
        out: the study's folder (one sub-folder per job).
        tracking: where the runs go.
        jobs: how many jobs run at once (one GPU each, round robin, where there are GPUs).
        say: where progress lines go.
        poll: seconds between checks on the running jobs.

    Returns:
        The summary (its ``exit_code``: 0 all done, 1 a job failed, 130 interrupted).
    """
    gpus = _gpus()
    wide = [j for j in study.jobs if j.kind == "pretrain" and gpus and j.gpus > len(gpus)]
    if wide:
        raise ConfigError(
            f"config key 'pretrain.gpus' (or the init's 'gpus'): {wide[0].id} asks for "
            f"{wide[0].gpus} GPUs and this machine has {len(gpus)} (CUDA_VISIBLE_DEVICES="
            f"{','.join(gpus)}); lower it, or submit the study with --launcher slurm"
        )
    out.mkdir(parents=True, exist_ok=True)
    runs = refresh_status(study, out, tracking)
    summary = RunSummary()
    parent = _study_run(study, tracking, out)
    summary.study_run_id = parent.run_id
    try:
        if parent.run_id:
            from radengine.config import to_dict

            parent.log_dict(to_dict(study.spec), "study.yaml")  # overrides included
        _schedule(study, out, tracking, runs, jobs, parent.run_id, summary, say, poll)
        if parent.run_id:
            parent.log_dict({"jobs": [j.row() for j in study.jobs]}, "jobs.json")
        if not summary.interrupted:
            _report(study, out, tracking, parent, summary, say)
    except BaseException:
        parent.finish("KILLED")
        raise
    status = "KILLED" if summary.interrupted else ("FAILED" if summary.exit_code else "FINISHED")
    parent.finish(status)
    return summary


def _schedule(
    study: Study,
    out: Path,
    tracking: StudyTracking,
    runs: dict[str, list[Any]],
    n: int,
    study_run_id: str | None,
    summary: RunSummary,
    say: Callable[[str], None],
    poll: float,
) -> None:
    total = len(study.jobs)
    done = {j.id for j in study.jobs if j.status == "done"}
    summary.done = len(done)
    pending = [j for j in study.jobs if j.status != "done"]
    say(
        f"study {study.name}: {total} jobs, {len(done)} done, {len(pending)} to run "
        f"({n} at a time) in {out}" + (f"; MLflow study run {study_run_id}" if study_run_id else "")
    )
    gpus = _gpus()
    threads = None if gpus or n == 1 else max(1, (os.cpu_count() or 1) // n)
    running: dict[str, _Running] = {}
    unavailable: set[str] = set()  # failed, blocked or run elsewhere: dependents cannot start
    stopping = []

    def on_signal(signum: int) -> None:
        if not stopping:
            say(f"signal {signum}: stopping the running jobs (pretrainings checkpoint)")
        stopping.append(signum)
        for r in running.values():
            with contextlib.suppress(OSError):
                r.proc.send_signal(signal.SIGTERM)

    try:
        with _signals(on_signal):
            while pending or running:
                started = False
                for job in list(pending):
                    if stopping or len(running) >= n:
                        break
                    if job.depends_on in unavailable:
                        pending.remove(job)
                        job.status, job.detail = (
                            "to do",
                            f"blocked: {job.depends_on} did not finish",
                        )
                        unavailable.add(job.id)
                        summary.blocked += 1
                        continue
                    if job.depends_on is not None and job.depends_on not in done:
                        continue
                    pending.remove(job)
                    folder = out / job.id
                    lock = _try_lock(folder)
                    if lock is None:
                        job.status, job.detail = "running", "by another launcher"
                        unavailable.add(job.id)
                        summary.blocked += 1
                        say(f"skip  {job.id}: another process runs it (lock {folder / JOB_LOCK})")
                        continue
                    if tracking.enabled:
                        tracking.kill_stale(runs.get(job.key, []))
                    load = {g: sum(g in r.gpus for r in running.values()) for g in gpus}
                    # the least busy GPUs (a torchrun pretraining takes job.gpus of them)
                    mine = sorted(gpus, key=lambda g: load[g])[: job.gpus] if gpus else []
                    gpu = ",".join(mine) if mine else None
                    argv = _command(job, study, out, tracking)
                    log = open(folder / JOB_LOG, "ab")  # noqa: SIM115 (closed in _finish)
                    try:
                        log.write(f"\n$ {' '.join(argv)}\n".encode())
                        log.flush()
                        proc = subprocess.Popen(
                            argv,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=_env(job, study_run_id, gpu, threads),
                            pass_fds=(lock,),  # the lock is held while the job lives
                        )
                    except BaseException:
                        log.close()
                        os.close(lock)
                        raise
                    running[job.id] = _Running(job, proc, lock, mine, log, time.monotonic())
                    job.status = "running"
                    summary.ran += 1
                    started = True
                    say(
                        f"start {job.id}"
                        + (f" on GPU {gpu}" if gpu is not None else "")
                        + (f" ({job.gpus} processes)" if job.gpus > 1 and not gpus else "")
                        + (f" ({job.detail})" if job.detail else "")
                    )
                if not running:
                    if stopping:
                        break
                    if started:
                        continue
                    for job in pending:  # nothing runs and nothing can start
                        job.status, job.detail = "to do", f"blocked: {job.depends_on} not done"
                        summary.blocked += 1
                    break
                time.sleep(poll)
                for job_id, r in list(running.items()):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    del running[job_id]
                    interrupted = rc == EXIT_PREEMPTED or rc < 0 or bool(stopping)
                    ok = _finish(r, rc, interrupted, study, out, tracking, runs, say)
                    if ok:
                        done.add(job_id)
                        summary.done += 1
                    elif interrupted:
                        unavailable.add(job_id)
                    else:
                        unavailable.add(job_id)
                        summary.failed += 1
                    say(f"[{summary.done}/{total} done]")
    except BaseException:  # a bug in the launcher: do not leave the jobs running
        for r in running.values():
            with contextlib.suppress(OSError):
                r.proc.send_signal(signal.SIGTERM)
        for r in running.values():
            r.proc.wait()
        raise
    summary.interrupted = bool(stopping)


def _finish(
    r: _Running,
    rc: int,
    interrupted: bool,
    study: Study,
    out: Path,
    tracking: StudyTracking,
    runs: dict[str, list[Any]],
    say: Callable[[str], None],
) -> bool:
    job, folder = r.job, out / r.job.id
    seconds = time.monotonic() - r.started
    r.log.close()
    record: dict[str, Any] = {
        "id": job.id,
        "key": job.key,
        "kind": job.kind,
        "returncode": rc,
        "seconds": round(seconds, 1),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ok = rc == 0
    if ok and tracking.enabled:
        fresh = tracking.runs(study)
        runs.clear()
        runs.update(fresh)
        finished = [x for x in fresh.get(job.key, []) if x.info.status == "FINISHED"]
        if finished:
            job.run_id = record["run_id"] = finished[0].info.run_id
        else:
            ok = False
            record["error"] = "exited 0 but no FINISHED MLflow run has the job's key"
    if ok:
        job.status, record["status"] = "done", "done"
        say(f"done  {job.id} in {seconds:.1f} s" + (f" (run {job.run_id})" if job.run_id else ""))
    elif interrupted:
        job.status, record["status"] = "to do", "interrupted"
        job.detail = "interrupted; continues on the next run"
        say(f"stop  {job.id}: interrupted (exit {rc}); the next `study run` continues it")
    else:
        job.status, record["status"] = "failed", "failed"
        job.detail = f"exit {rc}; log {folder / JOB_LOG}"
        say(f"FAIL  {job.id}: exit {rc}; {_tail(folder / JOB_LOG)}; log {folder / JOB_LOG}")
    _write_record(folder, record)
    os.close(r.lock)
    return ok


def _tail(path: Path) -> str:
    """The last non-empty line of a job's log (its ``error: ...`` line)."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _baseline(study: Study) -> str | None:
    """The report's ``baseline``: the spec's ``baseline`` (rows are named by the spec's init
    names, the ``study_init`` tag), else the scratch init when there is one."""
    if study.spec.baseline is not None:
        return study.spec.baseline
    return next((n for n, i in study.inits.items() if i == "scratch"), None)


def _report(
    study: Study,
    out: Path,
    tracking: StudyTracking,
    parent: Any,
    summary: RunSummary,
    say: Callable[[str], None],
) -> None:
    """The transfer table of the study's evaluations, logged with the study's run."""
    if not any(j.kind == "eval" and j.status == "done" for j in study.jobs):
        return
    if not summary.ran and (out / "report" / "report.txt").is_file():
        say(f"report: nothing ran; the last one is in {out / 'report'}")
        summary.report_out = out / "report"
        return
    from radengine.eval.report import make_report

    try:
        res = make_report(
            uri=tracking.uri,
            tracking_enabled=tracking.enabled,
            study=study.name,
            experiments=[study.experiment] if tracking.enabled else None,
            baseline=_baseline(study),
            metrics=study.spec.metrics or None,
            out=out / "report",
            results_dir=out,
            report_experiment=study.experiment,
            row_order=[v for names in study.init_names.values() for v in names],
        )
    except UserError as exc:
        summary.report_error = str(exc)
        say(f"report: not made: {exc}")
        return
    summary.report_out = Path(res.out)
    say(res.text.rstrip("\n"))
    say(f"report: {res.out}")
    if parent.run_id:
        for path in res.files.values():
            parent.log_artifact(path, "report")
