"""Everything MLflow, in one place. mlflow itself is imported lazily, only by the functions
that log, so kernels and training import without it (and a disabled :class:`Tracker` never
imports it).

One job is one MLflow run, logged from rank 0 through a :class:`Tracker`; the other ranks
construct ``Tracker(enabled=False)``, whose methods do nothing. The tracker talks to the
store with an ``MlflowClient`` bound to its own URI and never opens a fluent (global) active
run, so nothing dangles after an error and two trackers in one process do not interfere.

MLflow-specific choices (checked against MLflow 3.17):

- Params are write-once in MLflow: ``start(run_id=..., params=...)`` on a resumed run accepts
  params already logged with the same value and raises ``ValueError`` naming every key whose
  value changed (instead of MLflow's ``INVALID_PARAMETER_VALUE`` error).
- Metrics are buffered in memory and sent with ``log_batch`` (at most 1000 per request) at
  most every ``flush_every`` seconds, and on ``flush()``/``finish()``. Non-finite values are
  sent as they are: SQL stores keep NaN as NaN (a diverged loss stays visible) and clamp
  +-inf to +-1.797e308 (the largest float64).
- Metric, param and tag keys are sanitised to MLflow's portable name characters
  (alphanumerics, ``_ - . / space``); anything else becomes ``_``.
- Datasets are logged as MLflow dataset inputs that carry a source (the store path, resolved
  by MLflow's dataset-source registry) and a digest, never the data. MLflow caps a dataset
  digest at 36 characters; the full digest goes into the input tag ``digest`` and the param
  ``data.digest``.
- Models are logged with ``mlflow.pytorch.log_model`` as MLflow 3 *logged models* of the
  run's experiment, linked to the run as outputs. The returned URI is ``models:/<model_id>``
  (``runs:/<run_id>/<name>`` no longer resolves to a model in MLflow 3). With an input
  example the model is saved as a ``torch.export`` program ("pt2", MLflow 3's default, which
  loads without unpickling); without one, or if export fails, it is pickled, and loading it
  then needs ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` (see :func:`load_model`). The
  model carries (shows on its page) the run's metrics logged at the ``step`` passed to
  ``log_model`` (MLflow links those at logging time; its default, step 0, would show the
  values from before training), and is saved with contiguous weights.
- System metrics (CPU, memory, disk, network, GPU) are sampled by MLflow's own monitor
  thread when psutil is importable; otherwise they are silently skipped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from radengine.errors import UserError

if TYPE_CHECKING:
    import numpy
    import torch

_log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
# What radengine's experiments hold (training and evaluation runs), for MLflow and its API.
# The 3.17 UI does not choose its view from this tag (its "Model training" switch, kept in the
# browser, does): `radengine ui` prints the URL of the training view (radengine.ui).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
INSTALL_HINT = 'pip install "radengine[tracking]"  (or: pip install "mlflow>=3")'

# Tags every run carries, so the MLflow UI can filter, group and compare runs (DESIGN.md).
TAG_KEYS = (
    "study",
    "stage",
    "domain",
    "method",
    "arch",
    "init",
    "task",
    "protocol",
    "data_fraction",
    "label_fraction",
    "seed",
)

# MLflow's limits (mlflow.utils.validation in 3.x), copied so that flatten() and key
# sanitising need no mlflow import.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_DATASET_DIGEST_SIZE = 36
MAX_INPUT_TAG_KEY_SIZE = 255
MAX_INPUT_TAG_VALUE_SIZE = 500

_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_BAD_KEY_CHARS = re.compile(r"[^\w.\-/ ]")


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI radengine logs to: ``uri`` if given, else MLFLOW_TRACKING_URI, else
    MLflow 3's default SQLite store, ``mlflow.db`` in the working directory."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def mlflow_available() -> bool:
    """Whether mlflow is installed (checked without importing it)."""
    return importlib.util.find_spec("mlflow") is not None


class TrackingError(UserError, ValueError, RuntimeError):
    """A tracking store or run that cannot be used (mlflow missing, a run that cannot be
    resumed, a deleted experiment); the message says what to do."""


def require_mlflow() -> ModuleType:
    """Import and return mlflow.

    Raises:
        TrackingError: mlflow is not installed; the message gives the install command.
    """
    # Runs often live on hospital networks: no usage telemetry unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError as e:
        raise TrackingError(
            f"MLflow tracking needs mlflow, which is not installed: {INSTALL_HINT}; "
            "or run without tracking (--tracking none)."
        ) from e
    # Creating a new SQLite store logs its schema migration at INFO ("Creating initial
    # MLflow database tables...", alembic's steps) to stderr: noise in every first run.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


# --------------------------------------------------------------------------- names, values


def sanitize_key(key: str) -> str:
    """``key`` as a valid, portable MLflow metric/param/tag name: characters other than
    alphanumerics, ``_ - . / space`` become ``_``; empty, ``.`` and ``..`` path segments
    (which MLflow rejects) are dropped or replaced; at most 250 characters."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [p for p in key.split("/") if p]
    key = "/".join("_" if p in (".", "..") else p for p in parts)
    return key[:MAX_KEY_LENGTH] or "_"


def _plain(value: Any) -> Any:
    """``value`` as JSON/YAML-safe builtins: mappings and dataclasses as dicts, sequences as
    lists, paths and unknown objects as strings, enums by value, numpy/torch scalars as
    Python numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    return str(value)


def _text(value: Any) -> str:
    """A param/tag value as text: sequences as JSON (see :func:`_plain`), enums by value,
    everything else ``str()``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple, set, frozenset)):
        try:
            return json.dumps(_plain(value))
        except (TypeError, ValueError):
            return repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _param_value(value: Any) -> str:
    return _text(value)[:MAX_PARAM_VAL_LENGTH]


def flatten(config: Mapping, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """A nested config as flat MLflow params.

    Args:
        config: nested mappings (dataclass instances are treated as mappings).
        prefix: prepended to every key (joined with ``sep``).
        sep: separator of the nesting levels in the flat keys.

    Returns:
        ``{"a.b.c": "value"}``: keys joined with ``sep``; scalar values as ``str()``, lists
        and tuples as JSON (elements of other types as their ``str()``), empty mappings as
        ``"{}"``; every value cut to MLflow's param value limit (6000 characters).
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, name, sep))
            else:
                out[name] = "{}"
        else:
            out[name] = _param_value(value)
    return out


def _tag_dict(tags: Mapping[str, object] | None) -> dict[str, str]:
    """Tags as MLflow strings: keys sanitised, None values dropped, values cut to 8000."""
    return {
        sanitize_key(k): _text(v)[:MAX_TAG_VAL_LENGTH]
        for k, v in (tags or {}).items()
        if v is not None
    }


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _ensure_sqlite_dir(uri: str) -> None:
    """Create the folder of a ``sqlite:///path`` store (SQLite creates the file, not its
    folder)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's process-wide tracking URI for the duration, for the MLflow APIs
    that take no URI (model logging, registration and loading), then restore the previous
    state, including the MLFLOW_TRACKING_URI variable that mlflow.set_tracking_uri sets."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = getattr(tracking_utils, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """One MLflow run for one job, logged from rank 0 only; every method is a no-op when
    disabled.

    Usage::

        with Tracker(uri, "radengine", enabled=rank == 0) as tr:
            tr.start(run_name=..., tags=..., params=config)
            tr.log_metrics({"train/loss": 0.7}, step=10)  # buffered, cheap
        # leaving the block flushes and ends the run: FINISHED, or FAILED on an exception
        # (KILLED on KeyboardInterrupt); without ``with``, call ``tr.finish()``.

    Args:
        uri: tracking URI (see :func:`tracking_uri`; None: MLFLOW_TRACKING_URI or
            ``./mlflow.db``).
        experiment: experiment name, created on first use.
        enabled: False on non-zero ranks and with ``--tracking none``; such a tracker never
            imports mlflow.
        flush_every: seconds between metric sends while training.
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "radengine",
        *,
        enabled: bool = True,
        flush_every: float = 5.0,
    ) -> None:
        self.enabled = bool(enabled)
        self.uri = tracking_uri(uri) if self.enabled else uri
        self.experiment = experiment
        self.flush_every = float(flush_every)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None  # where the run's artifacts go (set by start)
        self._client: Any = None
        self._active = False
        self._buffer: list[tuple[str, float, int, int]] = []
        self._keys: dict[str, str] = {}
        self._last_flush = time.monotonic()
        self._monitor: Any = None

    # ---- lifecycle

    def start(
        self,
        *,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        params: Mapping | None = None,
        run_id: str | None = None,
        system_metrics: bool = True,
        description: str | None = None,
    ) -> str | None:
        """Start a new run, or resume ``run_id`` (a resumed training job continues its run).

        Args:
            run_name: display name of the run (MLflow picks one if None).
            tags: run tags (see TAG_KEYS); values are ``str()``-ed, None values dropped.
            params: the (nested) resolved config, logged as :func:`flatten` params.
            run_id: resume this run instead of creating one.
            system_metrics: sample CPU/GPU/memory metrics in the background (only when
                psutil is installed; skipped silently otherwise).
            description: run description (the MLflow UI's note).

        Returns:
            The run id, or None when disabled.

        Raises:
            ValueError: on resume, a param already logged with a different value (MLflow
                params are write-once), or ``run_id`` does not exist.
            RuntimeError: the tracker already has an active run.
        """
        if not self.enabled:
            return None
        if self._active:
            raise RuntimeError(f"Tracker already has an active run ({self.run_id}); finish() it")
        require_mlflow()
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        _ensure_sqlite_dir(self.uri)
        client = MlflowClient(tracking_uri=self.uri)
        flat = {sanitize_key(k): v for k, v in flatten(params or {}).items()}
        run_tags = _tag_dict(tags)
        if description is not None:
            run_tags["mlflow.note.content"] = description[:MAX_TAG_VAL_LENGTH]

        started = False
        try:
            if run_id is not None:
                try:
                    run = client.get_run(run_id)
                except MlflowException as e:
                    raise TrackingError(
                        f"cannot resume MLflow run {run_id!r} on {self.uri}: {e}"
                    ) from e
                if run.info.lifecycle_stage == "deleted":
                    raise TrackingError(f"cannot resume MLflow run {run_id!r}: it is deleted")
                logged = run.data.params
                changed = [k for k, v in flat.items() if k in logged and logged[k] != v]
                if changed:
                    detail = "; ".join(f"{k!r}: {logged[k]!r} -> {flat[k]!r}" for k in changed)
                    raise TrackingError(
                        f"cannot resume MLflow run {run_id}: param value(s) changed ({detail}). "
                        "MLflow params are write-once; resume with the same config or start "
                        "a new run."
                    )
                flat = {k: v for k, v in flat.items() if k not in logged}
                client.update_run(run_id, status="RUNNING", name=run_name)
                started = True
                self.run_id, self.experiment_id = run_id, run.info.experiment_id
            else:
                self.experiment_id = self._experiment_id(client)
                from mlflow.tracking.context.registry import resolve_tags

                # Default tags as the fluent API sets them: mlflow.user, source, git commit.
                all_tags = resolve_tags(run_tags)
                run = client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
                run_tags = {}
                started = True
                self.run_id = run.info.run_id
            self.artifact_uri = run.info.artifact_uri

            self._client = client
            run_tags_list = [RunTag(k, v) for k, v in run_tags.items()]
            for batch in _chunks(run_tags_list, MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(self.run_id, tags=batch)
            params_list = [Param(k, v) for k, v in flat.items()]
            for batch in _chunks(params_list, MAX_PARAMS_TAGS_PER_BATCH):
                try:
                    client.log_batch(self.run_id, params=batch)
                except MlflowException as e:
                    if "Changing param values is not allowed" in str(e):
                        keys = ", ".join(p.key for p in batch)
                        raise TrackingError(
                            f"MLflow run {self.run_id}: a param among [{keys}] was already "
                            f"logged with another value (params are write-once): {e}"
                        ) from e
                    raise
        except BaseException:
            if started:
                with contextlib.suppress(Exception):
                    client.set_terminated(run.info.run_id, "FAILED")
            self.run_id = None
            self.artifact_uri = None
            self._client = None
            raise

        self._active = True
        self._buffer.clear()
        self._last_flush = time.monotonic()
        if system_metrics:
            self._start_system_metrics(resume=run_id is not None)
        return self.run_id

    def _experiment_id(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(self.experiment, tags=dict(EXPERIMENT_TAGS))
            except MlflowException:  # created meanwhile by a concurrent job
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} is deleted on {self.uri}; restore it "
                "(mlflow experiments restore) or choose another experiment name"
            )
        for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    def _start_system_metrics(self, resume: bool) -> None:
        if importlib.util.find_spec("psutil") is None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=resume, tracking_uri=self.uri
            )
            monitor.start()
            self._monitor = monitor
        except Exception as e:  # never fail a job for system metrics
            _log.warning("MLflow system metrics disabled: %s", e)
            self._monitor = None

    def finish(self, status: str = "FINISHED") -> None:
        """Flush metrics and end the run with ``status`` (FINISHED, FAILED or KILLED).
        Idempotent: does nothing without an active run."""
        if not self.enabled or not self._active:
            return
        status = status.upper()
        if status not in _RUN_STATUSES:
            raise ValueError(f"run status must be one of {_RUN_STATUSES}, not {status!r}")
        try:
            self.flush()
        finally:
            self._active = False
            if self._monitor is not None:
                with contextlib.suppress(Exception):
                    self._monitor.finish()
                self._monitor = None
            self._client.set_terminated(self.run_id, status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
            return
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            self.finish(status)
        except Exception as e:  # keep the original exception
            _log.warning("could not end MLflow run %s as %s: %s", self.run_id, status, e)

    def _require_run(self) -> None:
        if not self._active:
            raise RuntimeError("no active MLflow run: call Tracker.start() first")

    # ---- metrics

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer ``metrics`` at ``step``; they are sent at most every ``flush_every``
        seconds. Cheap: a dict lookup and a list append per metric. Values are converted with
        ``float()`` now (a CUDA tensor would synchronise: pass Python floats). NaN/inf are
        logged as they are."""
        if not self.enabled:
            return
        if not self._active:
            self._require_run()
        ts = int(time.time() * 1000)
        keys = self._keys
        append = self._buffer.append
        step = int(step)
        for k, v in metrics.items():
            key = keys.get(k)
            if key is None:
                key = keys[k] = sanitize_key(k)
            append((key, float(v), ts, step))
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics now (batches of at most 1000)."""
        if not self.enabled or not self._active:
            return
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        from mlflow.entities import Metric

        while self._buffer:
            batch = self._buffer[:MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=[Metric(*m) for m in batch])
            del self._buffer[: len(batch)]  # only what was sent: a retry resends the rest

    # ---- tags, inputs, artifacts

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Set run tags (values ``str()``-ed, None values dropped); existing keys are
        overwritten."""
        if not self.enabled:
            return
        self._require_run()
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _tag_dict(tags).items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=batch)

    def log_dataset(
        self,
        *,
        name: str,
        path: str,
        digest: str,
        num_samples: int,
        fraction: float,
        domain: str,
        context: str = "train",
        extra: Mapping | None = None,
    ) -> None:
        """Log a dataset the run used, identified by its store path and content digest
        (the data itself is not logged).

        It becomes an MLflow dataset input (visible in the run's "Datasets" panel) with
        ``context`` (train/val/test...) and input tags digest, domain, num_samples, fraction
        and ``extra``; the dataset profile holds num_samples and fraction. The params
        data.path, data.digest, data.num_samples and data.fraction are logged when the run
        does not have them yet (the first dataset logged, normally the training set).
        """
        if not self.enabled:
            return
        self._require_run()
        import warnings

        from mlflow.entities import Dataset, DatasetInput, InputTag, Param
        from mlflow.exceptions import MlflowException

        path = os.fspath(path)
        try:
            from mlflow.data.dataset_source_registry import resolve_dataset_source

            with warnings.catch_warnings():  # "can be interpreted in multiple ways"
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(path)
            source_type, source_json = source._get_source_type(), source.to_json()
        except MlflowException:  # a scheme MLflow has no source for
            source_type, source_json = "uri", json.dumps({"uri": path})
        profile = {"num_samples": int(num_samples), "fraction": float(fraction)}
        entity = Dataset(
            name=str(name),
            digest=str(digest)[:MAX_DATASET_DIGEST_SIZE],
            source_type=source_type,
            source=source_json,
            profile=json.dumps(profile),
        )
        input_tags = {
            "mlflow.data.context": context,
            "digest": digest,
            "domain": domain,
            "num_samples": num_samples,
            "fraction": fraction,
            **dict(extra or {}),
        }
        tags = [
            InputTag(str(k)[:MAX_INPUT_TAG_KEY_SIZE], _param_value(v)[:MAX_INPUT_TAG_VALUE_SIZE])
            for k, v in input_tags.items()
            if v is not None
        ]
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=tags)])

        params = {
            "data.path": path,
            "data.digest": str(digest),
            "data.num_samples": str(int(num_samples)),
            "data.fraction": str(fraction),
        }
        logged = self._client.get_run(self.run_id).data.params
        new = [Param(k, _param_value(v)) for k, v in params.items() if k not in logged]
        if new:
            self._client.log_batch(self.run_id, params=new)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under ``artifact_path`` of the run."""
        if not self.enabled:
            return
        self._require_run()
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def prune_artifacts(self, folder: str, keep: Collection[str]) -> list[str]:
        """Delete the files directly in the run's artifact ``folder`` whose names are not in
        ``keep`` (the checkpoints the run folder no longer keeps), so the run holds what the
        run folder holds. Returns the artifact paths deleted. Never raises for a store that
        cannot delete: it logs a warning and leaves the files."""
        if not self.enabled:
            return []
        self._require_run()
        stale = [
            f.path
            for f in self._client.list_artifacts(self.run_id, folder)
            if not f.is_dir and f.path.rsplit("/", 1)[-1] not in keep
        ]
        if not stale:
            return []
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(self.artifact_uri, tracking_uri=self.uri)
            for path in stale:
                repo.delete_artifacts(path)
        except Exception as e:  # an old checkpoint left in the store never fails a job
            _log.warning("could not delete MLflow artifacts %s: %s", ", ".join(stale), e)
            return []
        return stale

    def log_dict(self, obj: Mapping, filename: str) -> None:
        """Save ``obj`` (e.g. the resolved config) as the artifact ``filename``: YAML for
        ``.yaml``/``.yml``, else JSON. Dataclasses, paths, tuples and enums are written as
        plain values."""
        if not self.enabled:
            return
        plain = _plain(obj)
        if filename.lower().endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
        else:
            text = json.dumps(plain, indent=2) + "\n"
        self.log_text(text, filename)

    def log_text(self, text: str, filename: str) -> None:
        """Save ``text`` as the artifact ``filename`` (may contain folders: ``a/b.txt``)."""
        if not self.enabled:
            return
        self._require_run()
        self._client.log_text(self.run_id, text, filename)

    def log_figure(
        self, figure: Any, filename: str, *, save_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Save a matplotlib ``figure`` as the artifact ``filename`` (may contain folders:
        ``a/b.png``; its extension picks the format), with ``save_kwargs`` for ``savefig``."""
        if not self.enabled:
            return
        self._require_run()
        self._client.log_figure(self.run_id, figure, filename, save_kwargs=dict(save_kwargs or {}))

    # ---- models

    def log_model(
        self,
        module: torch.nn.Module,
        *,
        name: str = "encoder",
        registered_name: str | None = None,
        input_example: numpy.ndarray | None = None,
        serialization_format: str | None = None,
        step: int = 0,
    ) -> str | None:
        """Log ``module`` as an MLflow model of this run (a deep copy, on CPU, in eval mode,
        in the default contiguous memory format: the caller's module is untouched; DDP and
        torch.compile wrappers are unwrapped).

        MLflow 3 links to the new logged model the run's metrics logged at ``step`` (they are
        the metrics its model page shows); buffered metrics are sent first, so log the values
        that describe the model (final loss, final kNN accuracy) at ``step`` before calling
        this.

        Args:
            module: the network, e.g. the pretrained encoder.
            name: the model's name in the run (shown in the UI's "Logged models").
            registered_name: also register it as a new version of this registered model.
            input_example: a small batch (N > 1, so the batch dimension stays dynamic); gives
                the signature (batch and spatial dims dynamic, channels fixed) and enables the
                "pt2" format.
            serialization_format: "pt2" (torch.export; needs ``input_example``) or "pickle";
                None: pt2 when an example is given, falling back to pickle if export fails.
            step: the step whose metrics the model carries (normally the run's last step).

        Returns:
            The model URI ``models:/<model_id>`` for :func:`load_model` or
            ``mlflow.pytorch.load_model``, or None when disabled.
        """
        if not self.enabled:
            return None
        self._require_run()
        import mlflow
        import numpy as np
        import torch

        if serialization_format not in (None, "pt2", "pickle"):
            raise ValueError(
                f"serialization_format must be pt2 or pickle, not {serialization_format!r}"
            )
        net = _unwrap(module)
        # Contiguous weights: a channels_last training copy has conv weights that do not
        # span their storage, which the pt2 archive writer flags once per weight ("No
        # complete tensor found in the group!") and which loaders would inherit.
        net = copy.deepcopy(net).cpu().eval().to(memory_format=torch.contiguous_format)
        signature = None
        if input_example is not None:
            if isinstance(input_example, torch.Tensor):
                input_example = input_example.detach().cpu().numpy()
            input_example = np.ascontiguousarray(input_example)
            if input_example.ndim >= 1 and input_example.shape[0] == 1:
                # torch.export specialises size-1 dims: a batch of 1 would fix the batch size.
                input_example = np.concatenate([input_example, input_example])
            with torch.no_grad():
                out = net(torch.from_numpy(input_example))
            signature = _signature(input_example, out)
        fmt = serialization_format or ("pt2" if input_example is not None else "pickle")
        if fmt == "pt2" and input_example is None:
            raise ValueError("serialization_format='pt2' needs an input_example")

        self.flush()  # the metrics at ``step`` must be in the store to be linked
        run_params = self._client.get_run(self.run_id).data.params
        step = int(step)
        with _global_uri(self.uri):
            try:
                info = self._log_model(net, name, fmt, signature, input_example, run_params, step)
            except Exception as e:
                if fmt != "pt2" or serialization_format == "pt2":
                    raise
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                _log.warning(
                    "torch.export of %r failed (%s); logging it pickled instead", name, reason
                )
                info = self._log_model(net, name, "pickle", signature, None, run_params, step)
            uri = info.model_uri
            if registered_name:
                mlflow.register_model(uri, registered_name)
        return uri

    def _log_model(self, net, name, fmt, signature, input_example, run_params, step) -> Any:
        import mlflow.pytorch
        import torch

        # The logged model is created here, in the run's experiment: MLflow's log_model
        # would file it under the fluent "active" experiment (Default) when no fluent run
        # is active.
        model = self._client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id, params=run_params
        )
        reqs = [f"torch=={torch.__version__.split('+')[0]}"]  # no slow requirement inference
        if fmt == "pickle":
            import cloudpickle

            reqs.append(f"cloudpickle=={cloudpickle.__version__}")
        try:
            return mlflow.pytorch.log_model(
                net,
                name=name,
                signature=signature,
                input_example=input_example,
                serialization_format=fmt,
                pip_requirements=reqs,
                run_id=self.run_id,
                model_id=model.model_id,
                step=step,
            )
        except Exception:
            with contextlib.suppress(Exception):
                self._client.delete_logged_model(model.model_id)
            raise


def _unwrap(module: Any) -> Any:
    """The plain module inside DDP/DataParallel and torch.compile wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):  # torch.compile's OptimizedModule
            module = module._orig_mod
        elif type(module).__name__ in ("DistributedDataParallel", "DataParallel"):
            module = module.module
        else:
            return module


def _signature(example: Any, output: Any) -> Any:
    """An MLflow tensor signature: batch and spatial dims dynamic (-1), channels fixed."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(array: Any) -> Any:
        shape = tuple(-1 if i != 1 else d for i, d in enumerate(array.shape))
        return Schema([TensorSpec(array.dtype, shape)])

    outputs = None
    if isinstance(output, torch.Tensor):
        outputs = spec(output.detach().cpu().numpy())
    return ModelSignature(inputs=spec(example), outputs=outputs)


def load_model(model_uri: str, *, uri: str | None = None, allow_pickle: bool = False) -> Any:
    """Load a model logged by :meth:`Tracker.log_model` (``models:/<id>``,
    ``models:/<registered name>/<version>`` or any MLflow model URI).

    Args:
        model_uri: the MLflow model URI.
        uri: the tracking URI holding it (see :func:`tracking_uri`).
        allow_pickle: allow loading pickled models (MLflow 3 refuses to unpickle by
            default; only enable for models you trust, e.g. your own runs).

    Returns:
        A torch module: the original class for pickled models, a ``GraphModule`` of the
        exported program for "pt2" models (same parameters and outputs).
    """
    require_mlflow()
    import mlflow.pytorch

    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    previous = os.environ.get(key)
    with _global_uri(tracking_uri(uri)):
        try:
            if allow_pickle:
                os.environ[key] = "true"
            return mlflow.pytorch.load_model(model_uri)
        finally:
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous


# --------------------------------------------------------------------------- UI


def ui_command(
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
) -> list[str]:
    """The argv of ``mlflow ui`` on the tracking store (``radengine ui``).

    Args:
        uri: Tracking URI (default :func:`tracking_uri`).
        host: Host to bind.
        port: Port to listen on.
        workers: Server worker processes (default: MLflow's, 4).

    Returns:
        The command line.
    """
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(uri),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


# The server's environment unless the user set these: no usage telemetry (runs often live on
# hospital networks), and no MLflow job execution (GenAI jobs: 7 more processes and a slower
# start, for nothing a viewer of runs needs).
_UI_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def run_ui(
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    workers: int | None = 1,
    verbose: bool = False,
) -> int:
    """Serve the MLflow UI on the tracking store in the foreground until it is stopped.

    The port is checked first; the URL to open is printed once the server answers; Ctrl-C,
    SIGTERM or SIGHUP stop the server (all its processes) before this returns. See
    :mod:`radengine.ui`.

    Args:
        uri: Tracking URI (default :func:`tracking_uri`).
        host: Host to bind (127.0.0.1: this machine only).
        port: Port to listen on.
        workers: Server worker processes (1 is plenty for one person; None: MLflow's 4).
        verbose: Show all of the server's output (start-up logs and warnings included).

    Returns:
        0 when the server stops by itself, 128 + the signal number when stopped by one
        (130 for Ctrl-C, 143 for SIGTERM).

    Raises:
        radengine.ui.UiError: mlflow is not installed, the port is in use (the message
            suggests a free one) or the server failed to start.
    """
    from radengine import ui

    if not mlflow_available():
        raise ui.UiError(f"the MLflow UI needs mlflow, which is not installed: {INSTALL_HINT}")
    return ui.serve(
        ui_command(uri, host, port, workers),
        host,
        port,
        verbose=verbose,
        env_defaults=_UI_ENV,
    )


__all__ = [
    "DEFAULT_DB",
    "TAG_KEYS",
    "Tracker",
    "flatten",
    "load_model",
    "mlflow_available",
    "require_mlflow",
    "run_ui",
    "sanitize_key",
    "tracking_uri",
    "ui_command",
]
