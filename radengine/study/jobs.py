"""Jobs and their content keys.

A job's key is the SHA-256 of what decides its result: the resolved config less what
only changes where and how it runs (output folder, tracking, progress bars, device, loader
workers, the feature cache, the study's name; for an evaluation, the other protocols'
sections), the identity of its initialisation
(``scratch``; ``pretrain:<the pretraining job's key>``; ``file:<SHA-256 of the weights
file>``; ``mlflow:<model URI or run id>``) and of its data (``store:<Store.digest()>``, or
the built-in synthetic store's generator parameters). A job whose key has a FINISHED
MLflow run tagged ``study_job_key=<key>`` is done; a changed config, init or store gives
a new key, so the job runs again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEY_VERSION", "Identities", "Job", "content_key"]

KEY_VERSION = 1  # bump when what goes into a key changes

# Config keys that do not change a job's result (dotted; a prefix drops its subtree).
VOLATILE = {
    "pretrain": (
        "study",
        "tracking",
        "dist",
        "train.out",
        "train.progress",
        "train.device",
        "data.workers",
        "data.prefetch",
        "data.pin_memory",
    ),
    "eval": ("study", "tracking", "out", "progress", "device", "cache", "data.workers"),
}
PROTOCOL_SECTIONS = ("knn", "linear", "finetune", "segment")  # an eval config's own sections


@dataclass
class Job:
    """One pretraining or one evaluation (one seed) of a study."""

    id: str
    kind: str  # pretrain | eval
    init: str  # the init's (expanded) name in the spec
    init_kind: str  # scratch | pretrain | weights | model
    key: str
    config: dict[str, Any]  # the resolved config (eval: init.source None until launch)
    protocol: str | None = None
    task: str | None = None
    label_fraction: float | None = None
    seed: int | None = None
    data: str = ""  # the data identity
    data_label: str = ""  # the store name(s) in the spec
    depends_on: str | None = None  # the pretraining job an eval needs
    init_source: str | None = None  # eval: what --init gets (pretrain inits: set at launch)
    status: str = "to do"
    run_id: str | None = None
    detail: str = ""  # a note for the status table (e.g. "resumes from step 8")
    seconds: float | None = None  # a done job's wall time (its last attempt), from its record
    gpus: int = 1  # a pretraining's processes, one per GPU (torchrun when > 1)

    def row(self) -> dict[str, Any]:
        """The job as a JSON-ready dict (``study run --dry-run --json``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "init": self.init,
            "init_kind": self.init_kind,
            "task": self.task,
            "protocol": self.protocol,
            "label_fraction": self.label_fraction,
            "seed": self.seed,
            "data": self.data_label,
            "status": self.status,
            "key": self.key,
            "depends_on": self.depends_on,
            "run_id": self.run_id,
            "detail": self.detail,
            "seconds": self.seconds,
            "gpus": self.gpus if self.kind == "pretrain" else None,
        }


def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if not rest:
        del tree[head]
    elif isinstance(tree[head], dict):
        _drop(tree[head], rest)


def _keyed(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(dict(config))
    for key in VOLATILE[kind]:
        _drop(tree, key)
    if kind == "eval":  # the other protocols' settings do not touch this one
        for section in PROTOCOL_SECTIONS:
            if section != tree.get("protocol"):
                tree.pop(section, None)
    return tree


def content_key(kind: str, config: Mapping[str, Any], init: str, data: Mapping[str, str]) -> str:
    """The job's content key (64 hex digits).

    Args:
        kind: "pretrain" or "eval".
        config: the resolved config (volatile keys are left out here; store paths are
            stripped: ``data`` identifies the stores).
        init: the init's identity.
        data: the identity of every store the job reads, by role.

    Returns:
        The SHA-256 hex digest.
    """
    tree = _keyed(kind, config)
    _strip_stores(tree)
    payload = {"version": KEY_VERSION, "kind": kind, "config": tree, "init": init, "data": data}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _strip_stores(tree: Any) -> None:
    """Store paths out of a config tree (the data identities stand for them)."""
    if isinstance(tree, dict):
        for k in list(tree):
            if k == "store" and (tree[k] is None or isinstance(tree[k], str)):
                tree[k] = None
            else:
                _strip_stores(tree[k])
    elif isinstance(tree, list):
        for item in tree:
            _strip_stores(item)


class Identities:
    """Identities of stores and weights files, each computed once.

    Args:
        strict: a missing or unreadable store or file is an error (running); otherwise it
            gets a ``missing:`` / ``unreadable:`` identity (a dry run without the data).
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._cache: dict[tuple[str, str], str] = {}
        self.missing: list[str] = []

    def store(self, path: str | None, domain: str) -> str:
        """``store:<digest>`` of a store, or the built-in store's identity for ``None``."""
        cache_key = ("store", f"{domain}:{path}")
        if cache_key not in self._cache:
            self._cache[cache_key] = self._store(path, domain)
        return self._cache[cache_key]

    def _store(self, path: str | None, domain: str) -> str:
        from radengine.errors import UserError

        if path is None:
            from radengine.data import builtin

            params = builtin.CT_DEFAULTS if domain == "ct" else builtin.NATURAL_DEFAULTS
            version = getattr(builtin, "GENERATOR_VERSION", 1)  # the generators' output
            text = ",".join(f"{k}={v}" for k, v in params.items())
            return f"builtin:{domain}:v{version}:{text}"
        p = Path(path).expanduser().absolute()
        if not p.exists():
            return self._missing(p, f"store {p} does not exist")
        try:
            from radengine.data.store import Store

            return "store:" + Store(p).digest()
        except UserError as exc:
            if self.strict:
                raise
            self.missing.append(str(exc))
            return f"unreadable:{p}"

    def weights(self, path: str) -> str:
        """``file:<SHA-256>`` of a weights file."""
        cache_key = ("file", path)
        if cache_key not in self._cache:
            p = Path(path)
            if not p.is_file():
                self._cache[cache_key] = self._missing(p, f"weights file {p} does not exist")
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                self._cache[cache_key] = "file:" + h.hexdigest()
        return self._cache[cache_key]

    def _missing(self, path: Path, message: str) -> str:
        if self.strict:
            from radengine.errors import UserError

            raise UserError(
                f"{message}; give the study's data (stores.NAME=PATH, weights_dir=DIR) or "
                "look at the grid without it: radengine study run SPEC --dry-run"
            )
        self.missing.append(message)
        return f"missing:{path}"
