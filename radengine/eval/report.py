"""``radengine report``: the transfer table, from the evaluation runs in MLflow.

Rows are initialisations; columns hold only *comparable* runs (same
:class:`ComparabilityKey`: task, protocol and its result-changing hyperparameters, label
fraction, evaluation data and input mapping) and one metric; cells are mean +- std over
seeds with, against a baseline row (default: scratch when there is one) in the same
column, the difference of means, its 95% confidence interval, Welch's t-test p-value and
that p-value adjusted with Holm's method for the number of comparisons in the table. The
statistics are radengine.eval.stats (scipy).

Runs of one task x protocol x label fraction that differ in anything else of the key are
never put in one column: they get one column each, labelled with what differs
(``body_region linear @224px`` next to ``body_region linear @96px``), and a warning naming
the difference is printed and written with the table. Runs that do not record a part of
the key (made before radengine logged it) have it ``unknown``: such columns are kept apart
from runs that record it, labelled ``unknown`` and warned about.

Where the runs come from:

- MLflow (the default): every FINISHED run tagged ``stage=eval`` in the tracking store (all
  experiments, or those named with ``experiments``). ``study`` keeps the runs whose
  ``study`` tag (set by ``radengine eval`` from the config's ``study``, e.g. ``study_a``)
  equals it, or that live in an experiment of that name. The key comes from the run's tags
  and params (radengine.eval.run logs the resolved config and ``data.digest``).
- ``--tracking none``: the ``results.json`` + ``config.yaml`` folders that ``radengine eval``
  writes (``runs/eval/*``); ``results.json`` holds the run's tags (the pretraining's
  included) and ``data_digest``, ``config.yaml`` the rest of the key.

Row labels come from the tags: the study's init name (``study_init``, set by ``radengine
study``: the name the spec gives it); else ``scratch``; ``<method> <pretrain data>`` for a
pretraining run (``simclr ct``, ``simclr ct 10%``, ``simclr natural -> ct``, ``simclr ct +
natural``); ``<file or model> [<layout>]`` for imported weights; else the init itself. Two
pretraining runs that would get the same label are told apart by their run id (first 8
characters). When one (row, column, seed) has several runs, the newest counts.

Values are shown in percent when every value of the table lies in [0, 1] (deltas then in
percentage points); the CSV keeps the raw values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from xml.sax.saxutils import escape

from radengine.errors import UserError
from radengine.eval.stats import Comparison, Summary, compare, holm, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Column",
    "ComparabilityKey",
    "EvalRecord",
    "ReportError",
    "TransferTable",
    "build_table",
    "collect_mlflow",
    "collect_results",
    "make_figure",
    "make_report",
    "row_label",
]

NO_RUNS_HINT = (
    "make some with `radengine eval linear --init scratch --seeds 42,1,2,3` (and the same "
    "with --init <pretraining run id>), or check --tracking/--experiment/--study"
)
UNKNOWN = "unknown"
PROTOCOLS = ("knn", "linear", "finetune", "segment")
CONFIDENCE = 0.95
ALPHA = 0.05
# Protocol settings that do not change the result (linear: how often the validation metric
# is logged; the head is selected on the last epoch's).
NOT_RESULT_CHANGING = frozenset({"linear.eval_every"})


class ReportError(UserError, RuntimeError):
    """Bad input to the report (no runs, unknown baseline, ...), with what to do."""


@dataclass
class EvalRecord:
    """One evaluation run (one seed): its tags, params and final metrics.

    Attributes:
        run_id: the MLflow run id (or ``<folder>:<seed>`` for results folders).
        tags: the run's tags (radengine.eval.run's ``stage, protocol, task, init, ...``).
        metrics: final metrics (``test/<metric>``).
        start_time: milliseconds since the epoch; the newest run of a cell counts.
        experiment: the MLflow experiment name, or the results folder.
        params: the run's params (the flattened resolved eval config, ``data.digest``).
    """

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0
    experiment: str = ""
    params: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- comparability


def _known(params: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` with a value in ``params`` (``"None"`` counts as none), else
    :data:`UNKNOWN`."""
    for name in names:
        value = params.get(name)
        if value not in (None, "", "None"):
            return str(value)
    return UNKNOWN


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text not in (None, "", "None") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class ComparabilityKey:
    """Everything besides the initialisation that changes an eval run's numbers: two runs
    land in one column only when their keys (and metric) are equal.

    Every field is a string (``"unknown"`` where the run does not record it) except the
    label fraction and the protocol config.

    Attributes:
        task: tag ``task`` (e.g. ``body_region``).
        protocol: tag ``protocol`` (knn | linear | finetune | segment).
        protocol_config: the protocol's result-changing hyperparameters as sorted ``(name,
            value)`` pairs: every param under ``<protocol>.`` (``linear.lrs``,
            ``linear.weight_decays``, ``linear.epochs``, ..., ``knn.k``, ``finetune.*``
            with its optimizer, recipe and augmentation), less
            :data:`NOT_RESULT_CHANGING`; None when the run logs none (unknown).
        label_fraction: tag ``label_fraction``.
        data_digest: param ``data.digest``, the content digest of the evaluation store
            (radengine.tracking.Tracker.log_dataset; also the run's MLflow dataset input);
            ``results.json``'s ``data_digest`` without MLflow.
        split_seed: param ``data.split_seed`` (which patients are train/val/test).
        input_size: param ``input.size`` (the resolved config), else ``resolved.size``,
            as ``"<n>px"``.
        intensity: param ``input.intensity`` (else ``resolved.intensity``): the CT window
            mapping; ``"n/a"`` for RGB stores (tag ``domain=natural``), which ignore it.
        normalization: params ``input.repeat``, ``input.mean``, ``input.std``.
    """

    task: str
    protocol: str
    protocol_config: tuple[tuple[str, str], ...] | None
    label_fraction: float
    data_digest: str
    split_seed: str
    input_size: str
    intensity: str
    normalization: str

    @classmethod
    def from_run(cls, tags: Mapping[str, str], params: Mapping[str, str]) -> ComparabilityKey:
        """The key of one eval run from its tags and params (see the attributes).

        Args:
            tags: the run's tags.
            params: the run's params (flattened config keys such as ``input.size``).

        Returns:
            The key; parts the run does not record are ``"unknown"`` (None for the
            protocol config).
        """
        protocol = str(tags.get("protocol") or "?")
        prefix = f"{protocol}."
        config = tuple(
            sorted(
                (k.removeprefix(prefix), str(v))
                for k, v in params.items()
                if k.startswith(prefix) and k not in NOT_RESULT_CHANGING
            )
        )
        size = _known(params, "input.size", "resolved.size")
        if tags.get("domain") == "natural":
            intensity = "n/a"
        else:
            intensity = _known(params, "input.intensity", "resolved.intensity")
        repeat = _known(params, "input.repeat", "resolved.repeat")
        if repeat == UNKNOWN:
            norm = UNKNOWN
        else:
            mean, std = params.get("input.mean", "None"), params.get("input.std", "None")
            norm = f"x{repeat}" + ("" if mean == std == "None" else f" mean {mean} std {std}")
        return cls(
            task=str(tags.get("task") or "?"),
            protocol=protocol,
            protocol_config=config or None,
            label_fraction=_float(tags.get("label_fraction"), 1.0),
            data_digest=_known(params, "data.digest"),
            split_seed=_known(params, "data.split_seed"),
            input_size=f"{size}px" if size != UNKNOWN else UNKNOWN,
            intensity=intensity,
            normalization=norm,
        )

    PARTS: ClassVar[tuple[str, ...]] = (
        "input size",
        "intensity",
        "normalisation",
        "eval data digest",
        "split seed",
        "protocol config",
    )

    @property
    def group(self) -> tuple[str, str, float]:
        """What the column's name says: task, protocol, label fraction."""
        return self.task, self.protocol, self.label_fraction

    def parts(self) -> dict[str, str]:
        """The key beyond :attr:`group`, by readable name (protocol hyperparameters as
        ``<protocol>.<name>``; ``protocol config`` when unknown)."""
        out = {
            "input size": self.input_size,
            "intensity": self.intensity,
            "normalisation": self.normalization,
            "eval data digest": self.data_digest,
            "split seed": self.split_seed,
        }
        if self.protocol_config is None:
            out["protocol config"] = UNKNOWN
        else:
            out.update({f"{self.protocol}.{k}": v for k, v in self.protocol_config})
        return out

    def unknown(self) -> list[str]:
        """Names of the parts the run does not record."""
        return [name for name, value in self.parts().items() if value == UNKNOWN]

    def describe(self) -> str:
        """One line with the whole key (the column legend)."""
        config = (
            ", ".join(f"{k}={v}" for k, v in self.protocol_config)
            if self.protocol_config is not None
            else UNKNOWN
        )
        digest = self.data_digest[:12] if self.data_digest != UNKNOWN else UNKNOWN
        return (
            f"input {self.input_size}, intensity {self.intensity}, normalisation "
            f"{self.normalization}; eval data {digest} split {self.split_seed}; "
            f"{self.protocol} config: {config}"
        )


def _qualifier(name: str, value: str) -> str:
    """How one differing part of the key shows in a column label."""
    if name == "input size":
        return f"@{value}" if value != UNKNOWN else "@size unknown"
    if name == "eval data digest":
        return f"data {value[:8]}" if value != UNKNOWN else "data unknown"
    if name == "split seed":
        return f"split {value}"
    if name == "normalisation":
        return f"norm {value}"
    return f"{name.split('.', 1)[-1]}={value}"


@dataclass(frozen=True)
class Column:
    """One column: the runs of one comparability key, one metric.

    Attributes:
        key: what the runs share.
        metric: the metric shown (``test/accuracy``).
    """

    key: ComparabilityKey
    metric: str

    @property
    def task(self) -> str:
        """The task (``body_region``)."""
        return self.key.task

    @property
    def protocol(self) -> str:
        """The protocol (``linear``)."""
        return self.key.protocol

    @property
    def label_fraction(self) -> float:
        """The share of training labels used."""
        return self.key.label_fraction

    def base_label(self, with_metric: bool) -> str:
        """``body_region linear 10%`` (+ the metric): the name without the qualifier."""
        text = f"{self.task} {self.protocol}"
        if self.label_fraction != 1.0:
            text += f" {self.label_fraction * 100:g}%"
        return text + (f" {self.metric.removeprefix('test/')}" if with_metric else "")


@dataclass
class Cell:
    """The runs of one (row, column): their values over seeds and the comparison.

    Attributes:
        values: the metric, one value per seed (sorted by seed).
        seeds: the seeds.
        run_ids: the runs.
        summary: n, mean, std.
        comparison: against the baseline row's cell of the column (None: this is the
            baseline, or the column has no baseline cell).
        p_holm: the comparison's p-value adjusted with Holm's method over every test of
            the table (NaN where there is no test).
    """

    values: list[float]
    seeds: list[int]
    run_ids: list[str]
    summary: Summary
    comparison: Comparison | None = None
    p_holm: float = math.nan


@dataclass
class TransferTable:
    """The table: ``cells[(row, column)]`` (absent where a row has no runs for a column).

    Attributes:
        rows: row labels, the baseline first.
        columns: the columns (each a comparability key and a metric).
        cells: the cells.
        baseline: the baseline row, or None.
        scale: 100 when the values are fractions shown in percent, else 1.
        num_runs: eval runs read.
        notes: remarks on how the table was made.
        warnings: what the reader must know to read it right (split columns, runs with
            unknown settings).
        qualifiers: per column, what tells it apart from the columns of the same task x
            protocol x label fraction ("" when nothing needs saying).
        num_tests: the comparisons Holm's adjustment counts.
    """

    rows: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]
    baseline: str | None
    scale: float = 1.0
    num_runs: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    qualifiers: dict[Column, str] = field(default_factory=dict)
    num_tests: int = 0

    def column_label(self, col: Column) -> str:
        """The column's name: ``body_region linear 10% @96px`` (qualified when split)."""
        multi = len({c.metric for c in self.columns}) > 1
        qualifier = self.qualifiers.get(col, "")
        return col.base_label(multi) + (f" {qualifier}" if qualifier else "")

    def column_labels(self) -> list[str]:
        """:meth:`column_label` of every column."""
        return [self.column_label(c) for c in self.columns]

    def format_cell(self, row: str, col: Column, *, unicode: bool = True) -> str:
        """A cell as text: ``94.38 ± 0.48 (n=4) Δ +4.25 [+3.10, +5.40] p=0.001 p_holm=0.004``.

        Args:
            row: the row.
            col: the column.
            unicode: ``±``/``Δ`` (else ``+-``/``d``).

        Returns:
            The text; ``-`` where the row has no runs in the column.
        """
        cell = self.cells.get((row, col))
        if cell is None:
            return "-"
        pm, delta = ("±", "Δ") if unicode else ("+-", "d")
        s, k = cell.summary, self.scale
        text = f"{s.mean * k:.2f}"
        if not math.isnan(s.std):
            text += f" {pm} {s.std * k:.2f}"
        text += f" (n={s.n})"
        c = cell.comparison
        if row == self.baseline:
            text += " baseline"
        elif c is not None:
            text += f" {delta} {c.delta * k:+.2f}"
            if math.isnan(c.test.p_value):
                text += f" no test: n={min(c.summary.n, c.baseline.n)}"
            else:
                text += f" [{c.ci_low * k:+.2f}, {c.ci_high * k:+.2f}]"
                text += f" p={_p(c.test.p_value)} p_holm={_p(cell.p_holm)}"
        return text


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# ------------------------------------------------------------------------- collecting runs


def _sqlite_missing(uri: str) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///") :]
    return path not in ("", ":memory:") and not Path(path).exists()


def collect_mlflow(
    uri: str, *, study: str | None = None, experiments: Sequence[str] | None = None
) -> list[EvalRecord]:
    """FINISHED ``stage=eval`` runs in the tracking store, filtered by study/experiments.

    Args:
        uri: the tracking URI.
        study: keep runs whose ``study`` tag, or experiment name, is this.
        experiments: only these experiments (by name); None: all.

    Returns:
        One record per run, with its tags, params and metrics.

    Raises:
        ReportError: no store at ``uri``, or a named experiment that does not exist.
    """
    if _sqlite_missing(uri):
        raise ReportError(f"no tracking store at {uri}: no eval runs to report; {NO_RUNS_HINT}")
    from radengine import tracking

    tracking.require_mlflow()
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    all_exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    names = {e.experiment_id: e.name for e in all_exps}
    if experiments:
        by_name = {e.name: e.experiment_id for e in all_exps}
        missing = [n for n in experiments if n not in by_name]
        if missing:
            raise ReportError(
                f"no experiment named {', '.join(missing)} in {uri}; there are: "
                + (", ".join(sorted(by_name)) or "none")
            )
        ids = [by_name[n] for n in experiments]
    else:
        ids = list(names)
    out: list[EvalRecord] = []
    token = None
    while ids:
        page = client.search_runs(
            ids,
            filter_string="tags.stage = 'eval' and attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        for r in page:
            exp = names.get(r.info.experiment_id, "")
            if study and r.data.tags.get("study") != study and exp != study:
                continue
            out.append(
                EvalRecord(
                    run_id=r.info.run_id,
                    tags=dict(r.data.tags),
                    metrics={k: float(v) for k, v in r.data.metrics.items()},
                    start_time=int(r.info.start_time or 0),
                    experiment=exp,
                    params=dict(r.data.params),
                )
            )
        token = page.token
        if not token:
            break
    return out


def collect_results(root: str | Path, *, study: str | None = None) -> list[EvalRecord]:
    """Evaluation results written without MLflow: every ``<root>/**/results.json`` with its
    ``config.yaml`` (the folders ``radengine eval --tracking none`` writes).

    Args:
        root: the folder to search.
        study: keep the folders whose config's ``study`` is this.

    Returns:
        One record per seed; its params are the flattened ``config.yaml`` (the resolved
        config) plus ``data.digest`` from ``results.json``.
    """
    import yaml

    from radengine.tracking import flatten

    root = Path(root)
    out: list[EvalRecord] = []
    for path in sorted(root.rglob("results.json")):
        try:
            res = json.loads(path.read_text())
            cfg_path = path.parent / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
        except (OSError, ValueError, yaml.YAMLError):
            continue
        cfg = cfg if isinstance(cfg, dict) else {}
        if study and cfg.get("study") != study:
            continue
        data = cfg.get("data") or {}
        tags = {
            "stage": "eval",
            "study": str(cfg.get("study", "")),
            "protocol": str(res.get("protocol", "")),
            "task": str(res.get("task", "")),
            "init": str(res.get("init", "")),
            "label_fraction": str(data.get("label_fraction", 1.0)),
            "primary_metric": str(res.get("primary_metric", "")),
            "arch": str((cfg.get("model") or {}).get("arch") or ""),
        }
        if res.get("pretrain_run_id"):
            tags["pretrain_run_id"] = str(res["pretrain_run_id"])
        if tags["init"] == "scratch":
            tags["init_kind"] = "scratch"
        saved = res.get("tags")
        if isinstance(saved, dict):  # the run's own tags (the pretraining's included)
            tags.update({str(k): str(v) for k, v in saved.items() if v is not None})
        params = flatten({k: v for k, v in cfg.items() if k in ("data", "input", *PROTOCOLS)})
        if res.get("data_digest"):
            params["data.digest"] = str(res["data_digest"])
        mtime = int(path.stat().st_mtime * 1000)
        for s in res.get("seeds") or []:
            metrics = {f"test/{k}": float(v) for k, v in (s.get("test") or {}).items()}
            out.append(
                EvalRecord(
                    run_id=str(s.get("run_id") or f"{path.parent.name}:{s.get('seed')}"),
                    tags={**tags, "seed": str(s.get("seed"))},
                    metrics=metrics,
                    start_time=mtime,
                    experiment=str(path.parent),
                    params=params,
                )
            )
    return out


# ------------------------------------------------------------------------------ the table


def row_label(tags: dict[str, str]) -> str:
    """A readable name for the initialisation an eval run used (see the module docstring)."""
    if tags.get("study_init"):
        return tags["study_init"]
    init = tags.get("init", "")
    method = tags.get("method", "")
    if tags.get("init_kind") == "scratch" or init == "scratch":
        return "scratch"
    if method.startswith("import:"):
        name = init.removeprefix("models:/").rstrip("/")
        name = os.path.basename(name) or name
        for ext in (".tar", ".pth", ".pt", ".ckpt", ".bin"):
            name = name.removesuffix(ext)
        return f"{name} [{method.removeprefix('import:')}]"
    data = tags.get("pretrain_data")
    if method and method != "none" and data:
        return f"{method} {data}"
    domain = tags.get("pretrain_domain")  # runs logged before pretrain_data existed
    if method and method != "none" and domain:
        label = f"{method} {domain}"
        fraction = _float(tags.get("data_fraction"), 1.0)
        if fraction != 1.0:
            label += f" {fraction * 100:g}%"
        return label
    return init or "unknown"


def _metrics_of(rec: EvalRecord, metrics: Sequence[str] | None) -> list[str]:
    if metrics:
        return [m if m.startswith("test/") else f"test/{m}" for m in metrics]
    primary = rec.tags.get("primary_metric")
    return [primary] if primary else []


def _join(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


SHORT_PART = {
    "input size": "size",
    "normalisation": "norm",
    "eval data digest": "data",
    "split seed": "split",
    "protocol config": "config",
}


def _part_value(key: ComparabilityKey, name: str) -> str:
    """One part of ``key`` by :meth:`ComparabilityKey.parts` name; a protocol setting the
    run's config lacks is ``unset`` (``unknown`` when the run logs no config at all)."""
    parts = key.parts()
    if name in parts:
        return parts[name]
    return UNKNOWN if key.protocol_config is None else "unset"


def _split_columns(
    columns: list[Column], rows_of: dict[Column, list[str]]
) -> tuple[dict[Column, str], list[str]]:
    """Qualifiers of the columns that share a task x protocol x label fraction x metric but
    not the whole key, and a warning per such group naming what differs.

    A column's qualifier shows its values of the parts whose known values differ within the
    group (``@96px``, ``data 1a2b3c4d``, ``epochs=10``), then the parts its runs do not
    record where other columns of the group do (``(size, data unknown)``; ``(settings
    unknown)`` when none is recorded)."""
    groups: dict[tuple[tuple[str, str, float], str], list[Column]] = {}
    for col in columns:
        groups.setdefault((col.key.group, col.metric), []).append(col)
    multi = len({c.metric for c in columns}) > 1
    qualifiers: dict[Column, str] = {}
    warnings: list[str] = []
    for cols in groups.values():
        if len(cols) < 2:
            continue
        names = list(dict.fromkeys(n for c in cols for n in c.key.parts()))
        values = {c: {n: _part_value(c.key, n) for n in names} for c in cols}
        differ = [n for n in names if len({v[n] for v in values.values()} - {UNKNOWN}) > 1]
        known_somewhere = {n for n in names if any(v[n] != UNKNOWN for v in values.values())}
        missing_any = False
        for c in cols:
            v = values[c]
            text = [_qualifier(n, v[n]) for n in differ if v[n] != UNKNOWN]
            missing = [n for n in c.key.unknown() if n in known_somewhere]
            if missing:
                missing_any = True
                everything = len(c.key.unknown()) == len(ComparabilityKey.PARTS)
                text.append(
                    "(settings unknown)"
                    if everything
                    else f"({', '.join(SHORT_PART.get(n, n) for n in missing)} unknown)"
                )
            qualifiers[c] = " ".join(text)
        what = differ + (["settings some runs do not record"] if missing_any else [])
        sides = "; ".join(
            f"{qualifiers[c]}: {_join(rows_of[c])}" for c in sorted(cols, key=qualifiers.get)
        )
        warnings.append(
            f"{cols[0].base_label(multi)}: the runs differ in {', '.join(what)} ({sides}); "
            f"shown as {len(cols)} separate columns, each compared with the baseline only "
            "within itself"
        )
    return qualifiers, warnings


def build_table(
    records: Iterable[EvalRecord],
    *,
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
    row_order: Sequence[str] | None = None,
) -> TransferTable:
    """Group runs into the transfer table and compare every row with the baseline.

    A column holds the runs of one :class:`ComparabilityKey` and metric; runs that differ
    in the key go to separate columns (qualified labels and a warning), runs missing parts
    of it are warned about.

    Args:
        records: evaluation runs.
        baseline: a row label, or an ``init`` tag value / pretraining run id of a row;
            None: ``scratch`` when present, else no comparison.
        metrics: metric names (``accuracy`` or ``test/accuracy``); None: each run's
            ``primary_metric``.
        row_order: row labels in the order to show them (a study's init names, as its
            spec lists them); the baseline comes first, rows not named here last, sorted.

    Returns:
        The table, with Holm-adjusted p-values over all its comparisons.

    Raises:
        ReportError: no runs, none with the metric, or an unknown baseline (rows listed).
    """
    records = list(records)
    if not records:
        raise ReportError(f"no eval runs found; {NO_RUNS_HINT}")
    # Disambiguate rows whose label is shared by different pretraining runs.
    runs_of_label: dict[str, set[str]] = {}
    for rec in records:
        runs_of_label.setdefault(row_label(rec.tags), set()).add(
            rec.tags.get("pretrain_run_id", "")
        )
    archs = {rec.tags.get("arch", "") for rec in records} - {""}
    latest: dict[tuple[str, Column, int], tuple[int, float, str]] = {}
    aliases: dict[str, set[str]] = {}
    unknown_runs: dict[str, set[str]] = {}  # part of the key -> rows with runs missing it
    replaced = 0
    for rec in records:
        label = row_label(rec.tags)
        pre = rec.tags.get("pretrain_run_id", "")
        if len(runs_of_label[label]) > 1 and pre:
            label += f" ({pre[:8]})"
        if len(archs) > 1 and rec.tags.get("arch"):
            label += f" {rec.tags['arch']}"
        aliases.setdefault(label, set()).update(v for v in (rec.tags.get("init"), pre) if v)
        try:
            seed = int(rec.tags.get("seed", "0"))
        except ValueError:
            seed = 0
        key = ComparabilityKey.from_run(rec.tags, rec.params)
        used = False
        for metric in _metrics_of(rec, metrics):
            value = rec.metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            used = True
            slot = (label, Column(key, metric), seed)
            if slot in latest:
                replaced += 1
                if latest[slot][0] >= rec.start_time:
                    continue
            latest[slot] = (rec.start_time, value, rec.run_id)
        if used:
            for part in key.unknown():
                unknown_runs.setdefault(part, set()).add(label)
    if not latest:
        wanted = (
            ", ".join(m if m.startswith("test/") else f"test/{m}" for m in metrics)
            if metrics
            else "their primary metric"
        )
        raise ReportError(f"{len(records)} eval run(s) found but none has {wanted}")
    grouped: dict[tuple[str, Column], list[tuple[int, float, str]]] = {}
    for (label, col, seed), (_, value, run_id) in latest.items():
        grouped.setdefault((label, col), []).append((seed, value, run_id))
    order = {name: i for i, name in enumerate(row_order or ())}
    rows = sorted({label for label, _ in grouped}, key=lambda r: (order.get(r, len(order)), r))
    rows_of: dict[Column, list[str]] = {}
    for label, col in sorted(grouped, key=lambda slot: slot[0]):
        rows_of.setdefault(col, []).append(label)
    qualifiers, warnings = _split_columns(list(rows_of), rows_of)
    columns = sorted(
        rows_of,
        key=lambda c: (c.task, c.protocol, -c.label_fraction, c.metric, qualifiers.get(c, "")),
    )
    if baseline is None:
        base = "scratch" if "scratch" in rows else None
    else:
        base = next((r for r in rows if r.lower() == baseline.lower()), None)
        if base is None:
            base = next((r for r in rows if baseline in aliases.get(r, ())), None)
        if base is None:
            raise ReportError(
                f"unknown baseline {baseline!r}; the rows are: {', '.join(rows)} (pass a row "
                "name, or the --init value / pretraining run id of one)"
            )
    if base is not None:
        rows = [base, *[r for r in rows if r != base]]
    cells: dict[tuple[str, Column], Cell] = {}
    for (label, col), items in grouped.items():
        items.sort()
        values = [v for _, v, _ in items]
        cells[(label, col)] = Cell(
            values=values,
            seeds=[s for s, _, _ in items],
            run_ids=[r for _, _, r in items],
            summary=summarize(values),
        )
    tested: list[Cell] = []
    if base is not None:
        for (label, col), cell in cells.items():
            ref = cells.get((base, col))
            if ref is not None and label != base:
                cell.comparison = compare(cell.values, ref.values, CONFIDENCE)
                if not math.isnan(cell.comparison.test.p_value):
                    tested.append(cell)
    adjusted = holm([c.comparison.test.p_value for c in tested if c.comparison is not None])
    for cell, p_holm in zip(tested, adjusted, strict=True):
        cell.p_holm = p_holm
    all_values = [v for c in cells.values() for v in c.values]
    scale = 100.0 if all(0.0 <= v <= 1.0 for v in all_values) else 1.0
    notes = []
    if replaced:
        notes.append(f"{replaced} run(s) repeated a (row, column, seed); the newest counted")
    if base is None:
        notes.append("no baseline (no scratch row): deltas and p-values left out")
    else:
        table_for_labels = TransferTable(rows, columns, cells, base, qualifiers=qualifiers)
        lonely = [table_for_labels.column_label(c) for c in columns if (base, c) not in cells]
        if lonely:
            notes.append(
                f"no {base} runs in column(s) {_join(lonely)}: no deltas or p-values there"
            )
        few = sum(
            1
            for c in cells.values()
            if c.comparison is not None and math.isnan(c.comparison.test.p_value)
        )
        if few:
            notes.append(f"{few} cell(s) compared with fewer than 2 seeds on a side: no test (n<2)")
    parts_of_rows: dict[tuple[str, ...], list[str]] = {}
    for part, labels in unknown_runs.items():
        parts_of_rows.setdefault(tuple(sorted(labels)), []).append(part)
    for labels, parts in sorted(parts_of_rows.items()):
        warnings.append(
            f"runs of {_join(labels)} do not record their {', '.join(parts)} (made before "
            "radengine logged them?): comparability cannot be checked; their columns say "
            "'unknown' where they meet runs that record them, and are never merged with those"
        )
    return TransferTable(
        rows, columns, cells, base, scale, len(records), notes, warnings, qualifiers, len(tested)
    )


# ------------------------------------------------------------------------------- writing


def _header(table: TransferTable) -> list[str]:
    unit = "%" if table.scale == 100.0 else "metric value"
    dunit = "percentage points" if table.scale == 100.0 else "metric units"
    lines = [f"mean ± sample std over seeds ({unit}), n = seeds; {table.num_runs} eval runs"]
    if table.baseline:
        lines.append(
            f"vs baseline {table.baseline} in the same column: Δ = mean - baseline mean "
            f"({dunit}) [{CONFIDENCE:.0%} CI, Welch-Satterthwaite df], p = two-sided Welch's "
            f"t-test, p_holm = p adjusted (Holm) for the {table.num_tests} comparisons in "
            "the table"
        )
    else:
        lines.append("no baseline")
    lines.append(
        "a column holds only comparable runs: same task, protocol and its settings, label "
        "fraction, eval data (store digest, split) and input mapping"
    )
    return lines


def _legend(table: TransferTable) -> list[str]:
    """One line per column: its label and its whole comparability key."""
    return [f"{table.column_label(c)}: {c.key.describe()}" for c in table.columns]


def to_text(table: TransferTable, title: str = "transfer table") -> str:
    """A plain-text table (fixed-width columns), then the warnings, notes and legend."""
    heads = ["init", *table.column_labels()]
    body = [[r, *(table.format_cell(r, c) for c in table.columns)] for r in table.rows]
    widths = [max(len(x) for x in col) for col in zip(heads, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [title, *_header(table), "", line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    out += [f"warning: {w}" for w in table.warnings]
    out += [f"note: {n}" for n in table.notes]
    out += ["", "columns:", *(f"  {x}" for x in _legend(table))]
    return "\n".join(out) + "\n"


def to_markdown(table: TransferTable, title: str = "transfer table") -> str:
    """The table as Markdown, then the warnings, notes and column legend."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    heads = ["init", *table.column_labels()]
    out = [f"# {title}", "", *(f"{h}  " for h in _header(table)), ""]
    out.append("| " + " | ".join(cell(h) for h in heads) + " |")
    out.append("|" + "---|" * len(heads))
    for r in table.rows:
        cells = [r, *(table.format_cell(r, c) for c in table.columns)]
        out.append("| " + " | ".join(cell(x) for x in cells) + " |")
    out += ["", *[f"- **warning**: {w}" for w in table.warnings]]
    out += [f"- {n}" for n in table.notes]
    out += ["", "Columns:", "", *(f"- {x}" for x in _legend(table))]
    return "\n".join(out).rstrip() + "\n"


CSV_FIELDS = (
    "row", "column", "n", "mean", "std", "delta", "delta_ci_low", "delta_ci_high", "p",
    "p_holm", "baseline", "relative_delta", "t", "df", "task", "protocol", "label_fraction",
    "metric", "input_size", "intensity", "normalization", "data_digest", "split_seed",
    "protocol_config", "unknown", "note", "seeds", "values", "run_ids",
)  # fmt: skip


def _num(x: float | None) -> str:
    """A CSV number: repr of the float, empty for None and NaN."""
    return "" if x is None or math.isnan(x) else repr(float(x))


def to_csv(table: TransferTable) -> str:
    """Long format: one line per (row, column) cell, raw (unscaled) values.

    ``delta``, its interval, ``p`` and ``p_holm`` are empty in the baseline row's own
    cells and where the column has no baseline; ``p`` and the interval are empty where a
    side has fewer than 2 seeds (``note`` says ``n<2``).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in table.columns:
        label = table.column_label(c)
        k = c.key
        config = json.dumps(dict(k.protocol_config)) if k.protocol_config is not None else UNKNOWN
        for r in table.rows:
            cell = table.cells.get((r, c))
            if cell is None:
                continue
            cmp = cell.comparison
            if r == table.baseline:
                note = "baseline"
            elif cmp is None:
                note = "no baseline in this column" if table.baseline else ""
            elif math.isnan(cmp.test.p_value):
                note = "n<2: no test"
            else:
                note = ""
            w.writerow(
                [
                    r, label, cell.summary.n, _num(cell.summary.mean), _num(cell.summary.std),
                    _num(cmp.delta) if cmp else "", _num(cmp.ci_low) if cmp else "",
                    _num(cmp.ci_high) if cmp else "", _num(cmp.test.p_value) if cmp else "",
                    _num(cell.p_holm), table.baseline or "",
                    _num(cmp.relative_delta) if cmp else "", _num(cmp.test.t) if cmp else "",
                    _num(cmp.test.df) if cmp else "", k.task, k.protocol,
                    repr(k.label_fraction), c.metric, k.input_size, k.intensity,
                    k.normalization, k.data_digest, k.split_seed, config,
                    " ".join(p.replace(" ", "_") for p in k.unknown()), note,
                    " ".join(map(str, cell.seeds)), " ".join(map(repr, cell.values)),
                    " ".join(cell.run_ids),
                ]
            )  # fmt: skip
    return buf.getvalue()


ERROR_BARS = "± 1 sample std over seeds"


def make_figure(table: TransferTable, title: str = "transfer table") -> Figure:
    """The table as a figure: one panel per column, one point per row at its mean with
    error bars of ± 1 sample standard deviation over seeds, the seeds' values as dots; the
    baseline is drawn as a square and named in the legend.

    Args:
        table: the transfer table.
        title: the figure's title.

    Returns:
        A matplotlib Figure (no pyplot state; save it with ``savefig``).
    """
    from matplotlib.figure import Figure

    ncols = min(3, len(table.columns))
    nrows = math.ceil(len(table.columns) / ncols)
    width = max(3.2, 0.55 * len(table.rows) + 1.6)
    # at least 6.5 in wide: the two-line title must fit over a one-column table
    fig = Figure(figsize=(max(width * ncols, 6.5), 3.6 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(table.rows))]
    k = table.scale
    unit = " (%)" if k == 100.0 else ""
    for ax, col in zip(axes, table.columns, strict=False):
        for i, row in enumerate(table.rows):
            cell = table.cells.get((row, col))
            if cell is None:
                continue
            s = cell.summary
            err = 0.0 if math.isnan(s.std) else s.std * k
            marker = "s" if row == table.baseline else "o"
            ax.errorbar(
                [i], [s.mean * k], yerr=[err], fmt=marker, color=colours[i], capsize=4,
                markersize=7, label=row,
            )  # fmt: skip
            ax.plot(
                [i + 0.18] * len(cell.values), [v * k for v in cell.values], ".",
                color=colours[i], alpha=0.5, markersize=4,
            )  # fmt: skip
        ax.set_title("\n".join(textwrap.wrap(table.column_label(col), 34)), fontsize=9)
        ax.set_xticks(range(len(table.rows)))
        ax.set_xticklabels(table.rows, rotation=35, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(table.rows) - 0.4)
        ax.set_ylabel(col.metric.removeprefix("test/") + unit, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(table.columns) :]:
        ax.set_visible(False)
    base = f"; square: baseline {table.baseline}" if table.baseline else ""
    fig.suptitle(f"{title}\nmean, error bars {ERROR_BARS}; dots: seeds{base}", fontsize=10)
    return fig


def _inline_svg(svg: str) -> str:
    """An SVG file's ``<svg>`` element, for inlining in HTML (no XML prolog, no DOCTYPE)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else ""


def to_html(table: TransferTable, title: str = "transfer table", svg: str | None = None) -> str:
    """A standalone HTML page: the table (cells with Holm-adjusted p < 0.05 in bold), the
    warnings, notes and column legend, and the figure (``svg``) inline."""
    heads = "".join(f"<th>{escape(h)}</th>" for h in ["init", *table.column_labels()])
    rows = []
    for r in table.rows:
        tds = [f"<th>{escape(r)}</th>"]
        for c in table.columns:
            cell = table.cells.get((r, c))
            text = escape(table.format_cell(r, c))
            sig = cell is not None and cell.p_holm < ALPHA
            tds.append(f"<td>{'<b>' + text + '</b>' if sig else text}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    warn = "".join(f"<li><b>warning</b>: {escape(w)}</li>" for w in table.warnings)
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    legend = "".join(f"<li>{escape(x)}</li>" for x in _legend(table))
    header = "<br>".join(escape(h) for h in _header(table))
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>{header}<br>bold: p_holm &lt; {ALPHA}</p>"
        f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{'<ul>' + warn + notes + '</ul>' if warn or notes else ''}"
        f"<p>Columns:</p><ul>{legend}</ul>{_inline_svg(svg or '')}</body></html>\n"
    )


@dataclass
class ReportResult:
    """What :func:`make_report` made.

    Attributes:
        table: the table.
        out: the folder of the files.
        files: ``{extension: path}`` of ``report.{txt,md,csv,html,png,svg}``.
        text: the plain-text table (with its warnings).
        run_id: the MLflow report run, or None without tracking.
    """

    table: TransferTable
    out: Path
    files: dict[str, Path]
    text: str
    run_id: str | None = None


def make_report(
    *,
    uri: str | None = None,
    tracking_enabled: bool = True,
    study: str | None = None,
    experiments: Sequence[str] | None = None,
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    results_dir: str | Path = "runs/eval",
    report_experiment: str = "radengine-report",
    row_order: Sequence[str] | None = None,
) -> ReportResult:
    """Collect the runs, build the table, write ``report.{txt,md,csv,html}`` and the figure
    ``report.{png,svg}`` to ``out`` and (with tracking) log them as artifacts of a run tagged
    ``stage=report``.

    Args:
        uri: the tracking URI (None: radengine.tracking's default).
        tracking_enabled: False: read ``results_dir`` and log nothing.
        study: keep this study's runs.
        experiments: only these MLflow experiments.
        baseline: the baseline row (see :func:`build_table`).
        metrics: the metrics (default each run's primary metric).
        out: the output folder (default ``runs/report/<study|all>-<time>``).
        results_dir: where ``radengine eval --tracking none`` wrote its folders.
        report_experiment: the MLflow experiment of the report run.
        row_order: the rows' order (see :func:`build_table`).

    Returns:
        The :class:`ReportResult`.

    Raises:
        ReportError: no runs, an unknown experiment or baseline.
    """
    from radengine import tracking
    from radengine.analysis.plots import save_figure

    if tracking_enabled:
        if not tracking.mlflow_available():
            raise ReportError(
                f"MLflow is not installed ({tracking.INSTALL_HINT}); or use --tracking none "
                "to report the results folders under runs/eval"
            )
        uri = tracking.tracking_uri(uri)
        records = collect_mlflow(uri, study=study, experiments=experiments)
        where = f"in {uri}" + (f" (experiments {', '.join(experiments)})" if experiments else "")
    else:
        records = collect_results(results_dir, study=study)
        where = f"under {results_dir} (--tracking none reads results.json folders)"
    if not records:
        scope = f" for study {study!r}" if study else ""
        raise ReportError(f"no finished eval runs{scope} {where}; {NO_RUNS_HINT}")
    table = build_table(records, baseline=baseline, metrics=metrics, row_order=row_order)
    title = f"transfer table: {study}" if study else "transfer table"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else Path("runs") / "report" / f"{study or 'all'}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {ext: folder / f"report.{ext}" for ext in ("txt", "md", "csv", "html", "png", "svg")}
    save_figure(make_figure(table, title), folder / "report")
    text = to_text(table, title)
    contents = {
        "txt": text,
        "md": to_markdown(table, title),
        "csv": to_csv(table),
        "html": to_html(table, title, files["svg"].read_text(encoding="utf-8")),
    }
    for ext, body in contents.items():
        files[ext].write_text(body, encoding="utf-8")
    run_id = None
    if tracking_enabled:
        tracker = tracking.Tracker(uri, report_experiment)
        run_id = tracker.start(
            run_name=f"report-{study or 'all'}",
            tags={
                "stage": "report",
                "study": study,
                "baseline": table.baseline,
                "metric": ",".join(sorted({c.metric for c in table.columns})),
                "comparability_warnings": len(table.warnings),
            },
            params={
                "study": study,
                "experiments": ",".join(experiments) if experiments else "all",
                "baseline": table.baseline,
                "metrics": ",".join(metrics) if metrics else "primary",
                "eval_runs": table.num_runs,
                "error_bars": ERROR_BARS,
                "p_adjust": "holm",
            },
            system_metrics=False,
        )
        try:
            for path in files.values():
                tracker.log_artifact(path, "report")
            tracker.log_metrics(
                {
                    "report/rows": len(table.rows),
                    "report/columns": len(table.columns),
                    "report/tests": table.num_tests,
                    "report/warnings": len(table.warnings),
                },
                step=0,
            )
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
    return ReportResult(table, folder, files, text, run_id)
