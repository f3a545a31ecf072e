"""The ``radengine study run|status|list`` commands (registered by radengine.cli).
Building the parsers imports neither torch nor mlflow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers"]


def _load(args: argparse.Namespace, *, strict: bool):
    from radengine.study.run import StudyTracking, default_out, refresh_status
    from radengine.study.spec import load_study

    study = load_study(args.spec, args.overrides, strict=strict)
    out = Path(args.out) if args.out else default_out(study)
    tracking = StudyTracking.from_arg(args.tracking)
    return study, out, tracking, refresh_status


def _cmd_run(args: argparse.Namespace) -> int:
    from radengine.study.run import run_study, status_table

    if args.json and not args.dry_run:
        from radengine.errors import UserError

        raise UserError("--json goes with --dry-run (or use `radengine study status --json`)")
    study, out, tracking, refresh_status = _load(args, strict=not args.dry_run)
    if args.launcher == "slurm" and args.jobs != 1:
        from radengine.errors import UserError

        raise UserError("--jobs is the local launcher's; with --launcher slurm, Slurm decides")
    if args.dry_run:
        refresh_status(study, out, tracking)
        _slurm_overlay(study, out)
        if args.json:
            print(json.dumps([j.row() for j in study.jobs], indent=2))
        else:
            print(status_table(study))
        return 0
    if args.launcher == "slurm":
        return _submit(args, study, out, tracking)
    summary = run_study(study, out, tracking, jobs=args.jobs)
    todo = sum(j.status != "done" for j in study.jobs)
    lines = [
        "",
        f"study {study.name}: {summary.done}/{len(study.jobs)} jobs done, {summary.ran} run "
        f"now, {summary.failed} failed, {summary.blocked} blocked"
        + (", interrupted" if summary.interrupted else ""),
        f"  folder      {out}",
    ]
    if summary.study_run_id:
        lines.append(f"  MLflow      study run {summary.study_run_id} ({tracking.uri})")
    if summary.report_out:
        lines.append(f"  report      {summary.report_out}")
    if todo:
        lines.append(
            f"  {todo} job(s) not done: see `radengine study status {args.spec}`; run the "
            "same command again to continue"
        )
    print("\n".join(lines))
    return summary.exit_code


def _slurm_overlay(study, out: Path) -> None:
    """Slurm's view of the jobs a ``--launcher slurm`` run submitted (none: nothing)."""
    from radengine.study.slurm import refresh_slurm

    refresh_slurm(study, out)


def _submit(args: argparse.Namespace, study, out: Path, tracking) -> int:
    from radengine.study.slurm import submit_study

    summary = submit_study(study, out, tracking, overrides=list(args.overrides))
    lines = [
        "",
        f"study {study.name}: {len(summary.submitted)} job(s) submitted to Slurm, "
        f"{len(summary.skipped)} skipped (done, queued or running)"
        + (f", {len(summary.cancelled)} blocked job(s) cancelled" if summary.cancelled else ""),
        f"  folder      {out}",
    ]
    if summary.report_job:
        lines.append(f"  report      slurm job {summary.report_job} (after every job)")
    if summary.study_run_id:
        lines.append(f"  MLflow      study run {summary.study_run_id} ({tracking.uri})")
    lines.append(f"  follow it   radengine study status {args.spec} (same --out, --tracking)")
    print("\n".join(lines))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from radengine.study.run import status_table

    study, out, tracking, refresh_status = _load(args, strict=False)
    refresh_status(study, out, tracking)
    _slurm_overlay(study, out)
    if args.json:
        print(json.dumps([j.row() for j in study.jobs], indent=2))
    else:
        print(status_table(study))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from radengine.config import read_yaml
    from radengine.study.spec import shipped_studies

    found = shipped_studies()
    if not found:
        print("no shipped studies found (experiments/studies/ is not next to the package)")
        return 0
    width = max(len(n) for n in found)
    for name, path in found.items():
        description = str(read_yaml(path).get("description", "")).strip()
        print(f"{name:<{width}}  {description}")
    return 0


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "spec", metavar="SPEC", help="a study YAML, or a shipped study's name (study list)"
    )
    q.add_argument(
        "--out",
        metavar="DIR",
        help="the study's folder, one sub-folder per job (default runs/study/<name>)",
    )
    q.add_argument(
        "--tracking",
        metavar="URI|none",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else ./mlflow.db), or none: "
        "the job folders say what is done",
    )
    q.add_argument(
        "overrides", nargs="*", metavar="key=value", help="spec overrides (stores.ct=/data/ct)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``study run|status|list`` to radengine's subcommands."""
    from radengine.cli import _int_at_least

    p = sub.add_parser(
        "study",
        help="run a whole study (inits x evaluations) from one YAML; reruns skip what is done",
        description="A study YAML names the initialisations and the evaluations; it expands "
        "into pretraining and evaluation jobs with content keys. `study run` runs the jobs "
        "that have no finished MLflow run yet (a killed study continues where it stopped), "
        "then logs the transfer table with the study's run. See docs/studies.md.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "run",
        help="run the jobs not done yet, then the report",
        description="Run the study's jobs that are not done (pretrainings before the "
        "evaluations that use them), each as a subprocess, then the report. Rerun the same "
        "command to continue after a kill or a failure.",
    )
    _common(q)
    q.add_argument(
        "--dry-run", action="store_true", help="print the expanded jobs and their status only"
    )
    q.add_argument("--json", action="store_true", help="with --dry-run: the jobs as JSON")
    q.add_argument(
        "--jobs",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="jobs at a time (default 1), one GPU each where there are several",
    )
    q.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: subprocesses here (default); slurm: submit the jobs with sbatch "
        "(arrays, dependencies, requeue; the spec's slurm: block) and return",
    )
    q.set_defaults(func=_cmd_run)
    q = actions.add_parser(
        "status",
        help="done / running / failed / to do (queued / blocked in Slurm), per job",
        description="Per job: done (a finished run has its key), running, failed (the last "
        "attempt) or to do; jobs submitted with --launcher slurm: queued, running or "
        "blocked (a failed dependency) from squeue, else what the job recorded.",
    )
    _common(q)
    q.add_argument("--json", action="store_true", help="the jobs as JSON")
    q.set_defaults(func=_cmd_status)
    q = actions.add_parser("list", help="the shipped studies, one line each")
    q.set_defaults(func=_cmd_list)
