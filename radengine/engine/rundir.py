"""The run folder: its name, the folder a new run writes or a resume continues (with the
config keys a resume may change), the check that it can be written, and its config.yaml
(rewritten only when it changes)."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from radengine import config as config_mod
from radengine.config import PretrainConfig
from radengine.engine import checkpoint
from radengine.engine.errors import PretrainError
from radengine.errors import describe_os_error

__all__ = [
    "RESUME_FREE_KEYS",
    "RESUME_REMEDY_KEYS",
    "check_writable",
    "config_text",
    "resolve_out",
    "write_if_changed",
]

# Config keys that do not change the computation: a resume may differ in these.
RESUME_FREE_KEYS = (
    "train.out",
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_steps",
    "train.device",
    "data.workers",
    "data.prefetch",
    "data.pin_memory",
    "knn",
    "tracking",
    "dist",
)
# Config keys a resume may change because they are the remedies for a diverging run (the
# non-finite messages suggest them). They change the computation from the resumed step on,
# so each change is recorded: the checkpoint and summary.json (``resume_changes``), comments
# atop config.yaml, and the MLflow tag ``resume_changes`` (params are write-once).
RESUME_REMEDY_KEYS = (
    "optim.lr",
    "optim.lr_base",
    "optim.lr_scaling",
    "optim.grad_clip",
    "train.nonfinite",
    "train.max_skips",
)


def _run_name(cfg: PretrainConfig) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    domains = "+".join(
        dict.fromkeys(s.domain for s in cfg.stages)
        if cfg.stages
        else [cfg.data.domain] + [m.domain for m in cfg.data.mix]
    )
    return f"{cfg.method}-{cfg.model.arch}-{domains}-{datetime.now():%Y%m%d-%H%M%S}"


def resolve_out(
    cfg: PretrainConfig, resume: str | None
) -> tuple[Path, dict[str, Any] | None, dict[str, list[Any]]]:
    """The run folder and, when resuming, the checkpoint state to continue from and the
    remedy keys (RESUME_REMEDY_KEYS) the resume changes, as ``{key: [old, new]}``."""
    if resume:
        path = Path(resume)
        if path.is_dir():
            folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
            found = checkpoint.latest(folder)
            if found is None:
                raise PretrainError(f"--resume {resume}: no checkpoint in {folder}")
            ckpt_path, state = found
        else:
            try:
                state = checkpoint.load(path)
            except checkpoint.CheckpointError as exc:
                raise PretrainError(f"--resume: {exc}") from None
            ckpt_path = path
        out = ckpt_path.parent.parent
        saved = config_mod.config_from_dict(state["config"])
        a, b = (
            config_mod._flat(config_mod.to_dict(saved)),
            config_mod._flat(config_mod.to_dict(cfg)),
        )
        remedies = config_mod.diff(saved, cfg, ignore=RESUME_FREE_KEYS)
        changed = [k for k in remedies if k not in RESUME_REMEDY_KEYS]
        if changed:
            detail = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
            raise PretrainError(
                f"--resume {resume}: the checkpoint {ckpt_path} is from another config "
                f"({detail}). Resume with the run's own config ({out / 'config.yaml'}) or "
                "start a new run"
            )
        return out, state, {k: [a.get(k), b.get(k)] for k in remedies}
    out = Path(cfg.train.out) if cfg.train.out else Path("runs") / _run_name(cfg)
    if checkpoint.find(out / "checkpoints"):
        raise PretrainError(
            f"{out} already holds checkpoints of a run; continue it with --resume {out} or "
            "choose another train.out"
        )
    return out, None, {}


def check_writable(out: Path) -> None:
    """Fail fast, naming ``out``, when the run folder cannot be created or written (read-only
    or full file system, no permission, a file in the way). Folders made for the check are
    removed again, so a run that fails later to start leaves nothing behind."""
    created: list[Path] = []
    probe = out / f".radengine-write-test-{os.getpid()}"
    try:
        missing = []
        p = out
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            created.append(d)
        with open(probe, "wb") as f:  # a little data, synced: a full disk fails here
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        if exc.filename is not None and Path(exc.filename) in (probe, out):
            exc = OSError(exc.errno, exc.strerror)  # the message names the folder already
        raise PretrainError(
            f"cannot write the run folder {out}: {describe_os_error(exc)}. The run folder "
            "is set by --out (train.out)"
        ) from None
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


def write_if_changed(path: Path, data: bytes) -> None:
    """Write ``path`` atomically unless it already holds ``data``: a resume of an unchanged
    run must not need disk space (a nearly full disk) to rewrite its config."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    checkpoint.atomic_write(path, data)


def config_text(cfg: PretrainConfig, resume_changes: list[dict[str, Any]]) -> str:
    """config.yaml: the config the run continues with, the remedy changes of its
    resumes as comments on top (the history, while the file stays loadable)."""
    head = [
        f"# resumed at step {c['step']}: "
        + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in c["changes"].items())
        for c in resume_changes
    ]
    return "".join(line + "\n" for line in head) + config_mod.dump_yaml(cfg)
