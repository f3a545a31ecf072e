"""``radengine report``: the transfer table, from the evaluation runs in MLflow.

Rows are initialisations, columns are task x protocol x label fraction (x metric when
several are asked for), cells are mean +- std over seeds with the relative delta and
Welch's t-test p-value against a baseline row (default: scratch when there is one). The
statistics are radengine.eval.stats.

Where the runs come from:

- MLflow (the default): every FINISHED run tagged ``stage=eval`` in the tracking store (all
  experiments, or those named with ``experiments``). ``study`` keeps the runs whose
  ``study`` tag (set by ``radengine eval`` from the config's ``study``, e.g. ``study_a``)
  equals it, or that live in an experiment of that name.
- ``--tracking none``: the ``results.json`` + ``config.yaml`` folders that ``radengine eval``
  writes (``runs/eval/*``); there are no pretraining tags there, so rows are named by the
  ``--init`` value.

Row labels come from the tags: ``scratch``; ``<method> <pretrain_domain> [<fraction>%]`` for
a pretraining run (``simclr ct 10%``); ``<file or model> [<layout>]`` for imported weights;
else the init itself. Two pretraining runs that would get the same label are told apart by
their run id (first 8 characters). When one (row, column, seed) has several runs, the
newest counts.

Values are shown in percent when every value of the table lies in [0, 1]; the CSV keeps
the raw values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from radengine.errors import UserError
from radengine.eval.stats import Comparison, Summary, compare, summarize

__all__ = [
    "Column",
    "EvalRecord",
    "ReportError",
    "TransferTable",
    "build_table",
    "collect_mlflow",
    "collect_results",
    "make_report",
    "row_label",
]

NO_RUNS_HINT = (
    "make some with `radengine eval linear --init scratch --seeds 42,1,2,3` (and the same "
    "with --init <pretraining run id>), or check --tracking/--experiment/--study"
)


class ReportError(UserError, RuntimeError):
    """Bad input to the report (no runs, unknown baseline, ...), with what to do."""


@dataclass
class EvalRecord:
    """One evaluation run (one seed): its tags and final metrics."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0
    experiment: str = ""


@dataclass(frozen=True)
class Column:
    task: str
    protocol: str
    label_fraction: float
    metric: str

    def label(self, with_metric: bool) -> str:
        text = f"{self.task} {self.protocol}"
        if self.label_fraction != 1.0:
            text += f" {self.label_fraction * 100:g}%"
        return text + (f" {self.metric.removeprefix('test/')}" if with_metric else "")


@dataclass
class Cell:
    values: list[float]
    seeds: list[int]
    run_ids: list[str]
    summary: Summary
    comparison: Comparison | None = None


@dataclass
class TransferTable:
    """The table: ``cells[(row, column)]`` (absent where a row has no runs for a column)."""

    rows: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]
    baseline: str | None
    scale: float = 1.0
    num_runs: int = 0
    notes: list[str] = field(default_factory=list)

    def column_labels(self) -> list[str]:
        multi = len({c.metric for c in self.columns}) > 1
        return [c.label(multi) for c in self.columns]

    def format_cell(self, row: str, col: Column, *, unicode: bool = True) -> str:
        cell = self.cells.get((row, col))
        if cell is None:
            return "-"
        pm = "±" if unicode else "+-"
        s, k = cell.summary, self.scale
        text = f"{s.mean * k:.2f}"
        if not math.isnan(s.std):
            text += f" {pm} {s.std * k:.2f}"
        text += f" (n={s.n})"
        c = cell.comparison
        if row == self.baseline:
            text += " base"
        elif c is not None:
            rel = f"{c.relative_delta * 100:+.1f}%" if math.isfinite(c.relative_delta) else "n/a"
            p = _p(c.test.p_value)
            text += f" {rel} p={p}"
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
                )
            )
        token = page.token
        if not token:
            break
    return out


def collect_results(root: str | Path, *, study: str | None = None) -> list[EvalRecord]:
    """Evaluation results written without MLflow: every ``<root>/**/results.json`` with its
    ``config.yaml`` (the folders ``radengine eval --tracking none`` writes)."""
    import yaml

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
                )
            )
    return out


# ------------------------------------------------------------------------------ the table


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text not in (None, "", "None") else default
    except ValueError:
        return default


def row_label(tags: dict[str, str]) -> str:
    """A readable name for the initialisation an eval run used (see the module docstring)."""
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
    domain = tags.get("pretrain_domain")
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


def build_table(
    records: Iterable[EvalRecord],
    *,
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
) -> TransferTable:
    """Group runs into the transfer table and compare every row with the baseline.

    Args:
        records: evaluation runs.
        baseline: a row label, or an ``init`` tag value / pretraining run id of a row;
            None: ``scratch`` when present, else no comparison.
        metrics: metric names (``accuracy`` or ``test/accuracy``); None: each run's
            ``primary_metric``.

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
        for metric in _metrics_of(rec, metrics):
            value = rec.metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            col = Column(
                rec.tags.get("task", "?"),
                rec.tags.get("protocol", "?"),
                _float(rec.tags.get("label_fraction"), 1.0),
                metric,
            )
            key = (label, col, seed)
            if key in latest:
                replaced += 1
                if latest[key][0] >= rec.start_time:
                    continue
            latest[key] = (rec.start_time, value, rec.run_id)
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
    rows = sorted({label for label, _ in grouped})
    columns = sorted(
        {col for _, col in grouped},
        key=lambda c: (c.task, c.protocol, -c.label_fraction, c.metric),
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
    if base is not None:
        for (label, col), cell in cells.items():
            ref = cells.get((base, col))
            if ref is not None and label != base:
                cell.comparison = compare(cell.values, ref.values)
    all_values = [v for c in cells.values() for v in c.values]
    scale = 100.0 if all(0.0 <= v <= 1.0 for v in all_values) else 1.0
    notes = []
    if replaced:
        notes.append(f"{replaced} run(s) repeated a (row, column, seed); the newest counted")
    if base is None:
        notes.append("no baseline (no scratch row): deltas and p-values left out")
    return TransferTable(rows, columns, cells, base, scale, len(records), notes)


# ------------------------------------------------------------------------------- writing


def _header(table: TransferTable) -> str:
    unit = "%" if table.scale == 100.0 else "metric value"
    base = f"baseline {table.baseline}" if table.baseline else "no baseline"
    return (
        f"mean ± std over seeds ({unit}); vs {base}: relative delta and Welch's t-test p; "
        f"{table.num_runs} eval runs"
    )


def to_text(table: TransferTable, title: str = "transfer table") -> str:
    """A plain-text table (fixed-width columns)."""
    heads = ["init", *table.column_labels()]
    body = [[r, *(table.format_cell(r, c) for c in table.columns)] for r in table.rows]
    widths = [max(len(x) for x in col) for col in zip(heads, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [title, _header(table), "", line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    out += [f"note: {n}" for n in table.notes]
    return "\n".join(out) + "\n"


def to_markdown(table: TransferTable, title: str = "transfer table") -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    heads = ["init", *table.column_labels()]
    out = [f"# {title}", "", _header(table), ""]
    out.append("| " + " | ".join(cell(h) for h in heads) + " |")
    out.append("|" + "---|" * len(heads))
    for r in table.rows:
        cells = [r, *(table.format_cell(r, c) for c in table.columns)]
        out.append("| " + " | ".join(cell(x) for x in cells) + " |")
    out += ["", *[f"- {n}" for n in table.notes]]
    return "\n".join(out).rstrip() + "\n"


CSV_FIELDS = (
    "row", "task", "protocol", "label_fraction", "metric", "n", "mean", "std", "baseline",
    "delta", "relative_delta", "t", "df", "p_value", "seeds", "values", "run_ids",
)  # fmt: skip


def to_csv(table: TransferTable) -> str:
    """Long format: one line per (row, column) cell, raw (unscaled) values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in table.rows:
        for c in table.columns:
            cell = table.cells.get((r, c))
            if cell is None:
                continue
            cmp = cell.comparison
            w.writerow(
                [
                    r, c.task, c.protocol, repr(c.label_fraction), c.metric, cell.summary.n,
                    repr(cell.summary.mean), repr(cell.summary.std), table.baseline or "",
                    repr(cmp.delta) if cmp else "", repr(cmp.relative_delta) if cmp else "",
                    repr(cmp.test.t) if cmp else "", repr(cmp.test.df) if cmp else "",
                    repr(cmp.test.p_value) if cmp else "",
                    " ".join(map(str, cell.seeds)), " ".join(map(repr, cell.values)),
                    " ".join(cell.run_ids),
                ]
            )  # fmt: skip
    return buf.getvalue()


def to_svg(table: TransferTable, title: str = "transfer table") -> str:
    """Bar chart: per column, one bar per row (mean +- std)."""
    from radengine.analysis.plots import bar_chart_svg

    k = table.scale
    means, stds = [], []
    for r in table.rows:
        cells = [table.cells.get((r, c)) for c in table.columns]
        means.append([c.summary.mean * k if c else math.nan for c in cells])
        stds.append([c.summary.std * k if c else math.nan for c in cells])
    unit = " (%)" if k == 100.0 else ""
    metric = {c.metric for c in table.columns}
    ylabel = (metric.pop().removeprefix("test/") if len(metric) == 1 else "test metric") + unit
    return bar_chart_svg(table.column_labels(), table.rows, means, stds, title=title, ylabel=ylabel)


def to_html(table: TransferTable, title: str = "transfer table", svg: str | None = None) -> str:
    """A standalone HTML page: the table (significant cells, p < 0.05, in bold) and the
    figure inline."""
    heads = "".join(f"<th>{escape(h)}</th>" for h in ["init", *table.column_labels()])
    rows = []
    for r in table.rows:
        tds = [f"<th>{escape(r)}</th>"]
        for c in table.columns:
            cell = table.cells.get((r, c))
            text = escape(table.format_cell(r, c))
            sig = cell is not None and cell.comparison is not None and cell.comparison.significant()
            tds.append(f"<td>{'<b>' + text + '</b>' if sig else text}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    figure = svg or ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>{escape(_header(table))}; bold: p &lt; 0.05</p>"
        f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{'<ul>' + notes + '</ul>' if notes else ''}{figure}</body></html>\n"
    )


@dataclass
class ReportResult:
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
) -> ReportResult:
    """Collect the runs, build the table, write ``report.{txt,md,csv,html,svg}`` to ``out``
    and (with tracking) log them as artifacts of a run tagged ``stage=report``.

    Raises:
        ReportError: no runs, an unknown experiment or baseline.
    """
    from radengine import tracking

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
    table = build_table(records, baseline=baseline, metrics=metrics)
    title = f"transfer table: {study}" if study else "transfer table"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else Path("runs") / "report" / f"{study or 'all'}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    text = to_text(table, title)
    svg = to_svg(table, title)
    contents = {
        "txt": text,
        "md": to_markdown(table, title),
        "csv": to_csv(table),
        "svg": svg,
        "html": to_html(table, title, svg),
    }
    files = {}
    for ext, body in contents.items():
        files[ext] = folder / f"report.{ext}"
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
            },
            params={
                "study": study,
                "experiments": ",".join(experiments) if experiments else "all",
                "baseline": table.baseline,
                "metrics": ",".join(metrics) if metrics else "primary",
                "eval_runs": table.num_runs,
            },
            system_metrics=False,
        )
        try:
            for path in files.values():
                tracker.log_artifact(path, "report")
            tracker.log_metrics(
                {"report/rows": len(table.rows), "report/columns": len(table.columns)}, step=0
            )
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
    return ReportResult(table, folder, files, text, run_id)
