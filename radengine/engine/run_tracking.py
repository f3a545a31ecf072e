"""A pretraining run's MLflow record (rank 0): the tracker, and the tags, params and datasets
the run starts with; a resume continues its MLflow run, keeping the first run's params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radengine import config as config_mod
from radengine.config import PretrainConfig
from radengine.engine.errors import PretrainError
from radengine.engine.rundir import RESUME_FREE_KEYS, RESUME_REMEDY_KEYS
from radengine.engine.stages import Stage

__all__ = ["open_tracker", "start_run"]


def open_tracker(cfg: PretrainConfig, main: bool):
    """The run's tracker: enabled on the main rank with ``tracking.enabled``."""
    from radengine import tracking

    enabled = cfg.tracking.enabled and main
    if enabled and not tracking.mlflow_available():
        raise PretrainError(
            "MLflow is not installed: pip install 'radengine[tracking]', or run with "
            "--tracking none"
        )
    return tracking.Tracker(cfg.tracking.uri, cfg.tracking.experiment, enabled=enabled)


def start_run(
    tracker: Any,
    cfg: PretrainConfig,
    stages: list[Stage],
    out: Path,
    resolved: dict[str, Any],
    *,
    run_id: str | None,
    step: int,
    resume_changes: list[dict[str, Any]],
) -> str | None:
    """Start the run's MLflow run (or continue ``run_id``, a resume at ``step``) with its
    tags and params (the config, and ``resolved``: the values the trainer derived); a new
    run also logs config.yaml and its datasets. Returns the run id (None untracked)."""
    fractions = ",".join(str(s.fraction) for st in stages for s in st.sources)
    tags = {
        **cfg.tracking.tags,
        "study": cfg.study,
        "stage": "pretrain",
        "domain": "+".join(dict.fromkeys(s.domain for st in stages for s in st.sources)),
        "method": cfg.method,
        "arch": cfg.model.arch,
        "init": "scratch",
        "data_fraction": fractions,
        "seed": cfg.seed,
        "out": str(out),
    }
    params = config_mod.to_dict(cfg)
    params["resolved"] = resolved
    if run_id is not None:
        # MLflow params are write-once: a resume may change only the keys that do not
        # alter the computation (RESUME_FREE_KEYS) and the remedies (RESUME_REMEDY_KEYS,
        # and so the resolved lr); keep the first run's values for them. Remedy changes
        # go to a tag, which may change.
        params = _drop_keys(params, (*RESUME_FREE_KEYS, *RESUME_REMEDY_KEYS, "resolved.lr"))
        tags["resumed_at_step"] = step
        if resume_changes:
            tags["resume_changes"] = json.dumps(resume_changes)
    new_id = tracker.start(
        run_name=out.name,
        tags=tags,
        params=params,
        run_id=run_id,
        system_metrics=cfg.tracking.system_metrics,
    )
    if new_id is not None and run_id is None:
        tracker.log_dict(config_mod.to_dict(cfg), "config.yaml")
        for st in stages:
            for s in st.sources:
                tracker.log_dataset(
                    name=f"{s.domain}:{s.store.path.name}",
                    path=str(s.store.path),
                    digest=s.store.digest(),
                    num_samples=len(s.indices),
                    fraction=s.fraction,
                    domain=s.domain,
                )
    return new_id


def _drop_keys(tree: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``tree`` without the dotted ``keys`` (whole subtrees for prefixes)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if k in keys:
            continue
        inner = tuple(x[len(k) + 1 :] for x in keys if x.startswith(k + "."))
        out[k] = _drop_keys(v, inner) if isinstance(v, dict) and inner else v
    return out
