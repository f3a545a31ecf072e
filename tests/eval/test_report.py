"""`radengine report`: the transfer table from eval runs made directly with mlflow (the tags
and params radengine.eval.run logs), checked against statistics computed here with scipy;
columns that only hold comparable runs (split by input size, eval data, protocol settings;
unknown settings flagged); the files it writes (report.csv schema, a valid PNG/SVG figure),
the report run it logs, and its errors."""

from __future__ import annotations

import csv
import functools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_ind

from radengine.cli import main
from radengine.eval.report import (
    CSV_FIELDS,
    ComparabilityKey,
    EvalRecord,
    ReportError,
    build_table,
    row_label,
    to_csv,
    to_text,
)

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # A new experiment's artifact root is ./mlruns of the working directory.
    monkeypatch.chdir(tmp_path)


PRE_CT = "a" * 32
PRE_NAT = "b" * 32
PRE_CT10 = "c" * 32
DIGEST = "d" * 64
OTHER_DIGEST = "e" * 64

# (row) -> pretraining tags; values over seeds 42, 1, 2, 3
INITS = {
    "scratch": {"init": "scratch", "init_kind": "scratch", "method": "none"},
    "simclr ct": {
        "init": PRE_CT,
        "init_kind": "run",
        "method": "simclr",
        "pretrain_domain": "ct",
        "data_fraction": "1.0",
        "pretrain_run_id": PRE_CT,
    },
    "simclr natural": {
        "init": PRE_NAT,
        "init_kind": "run",
        "method": "simclr",
        "pretrain_domain": "natural",
        "data_fraction": "1.0",
        "pretrain_run_id": PRE_NAT,
    },
    "simclr ct 10%": {
        "init": PRE_CT10,
        "init_kind": "run",
        "method": "simclr",
        "pretrain_domain": "ct",
        "data_fraction": "0.1",
        "pretrain_run_id": PRE_CT10,
    },
}
SEEDS = (42, 1, 2, 3)
VALUES = {
    ("scratch", "linear", 1.0): [0.90, 0.91, 0.89, 0.905],
    ("simclr ct", "linear", 1.0): [0.94, 0.95, 0.945, 0.94],
    ("simclr natural", "linear", 1.0): [0.93, 0.92, 0.935, 0.93],
    ("simclr ct 10%", "linear", 1.0): [0.92, 0.925, 0.915, 0.93],
    ("scratch", "linear", 0.1): [0.70, 0.74, 0.72, 0.69],
    ("simclr ct", "linear", 0.1): [0.85, 0.86, 0.80, 0.83],
    ("scratch", "finetune", 1.0): [0.95, 0.96, 0.955, 0.95],
    ("simclr natural", "finetune", 1.0): [0.965, 0.96, 0.97, 0.962],
}
# The new user's table: scratch evaluated at 224 px, the pretrained encoders at 96 px.
MIXED_SIZES = {
    ("scratch", 224): [0.91, 0.915, 0.905, 0.912],
    ("simclr ct", 96): [0.885, 0.89, 0.88, 0.886],
    ("simclr natural", 96): [0.87, 0.875, 0.872, 0.869],
}
# One store digest for most runs; a second store where scratch has a single seed.
MIXED_DATA = {
    ("scratch", DIGEST): [0.80, 0.82, 0.81, 0.79],
    ("simclr ct", DIGEST): [0.85, 0.86, 0.84, 0.855],
    ("scratch", OTHER_DIGEST): [0.6],
    ("simclr ct", OTHER_DIGEST): [0.7, 0.72, 0.71, 0.69],
}
REQUIRED_CSV = ["row", "column", "n", "mean", "std", "delta", "delta_ci_low", "delta_ci_high",
                "p", "p_holm"]  # fmt: skip


def _tags(
    row: str, protocol: str, lf: float, seed: int, study: str = "study_a", domain: str = "ct"
) -> dict:
    return {
        "study": study,
        "stage": "eval",
        "protocol": protocol,
        "task": "body_region",
        "arch": "resnet18",
        "domain": domain,
        "label_fraction": str(lf),
        "seed": str(seed),
        "primary_metric": "test/accuracy",
        **INITS[row],
    }


@functools.cache
def _params_cached(size: int, digest: str | None, overrides: tuple[str, ...]) -> dict:
    from radengine import config as base_config
    from radengine.eval.config import load_eval_config
    from radengine.tracking import flatten

    # What radengine.eval.run logs: the resolved config flattened, resolved.*, and the
    # store's digest (Tracker.log_dataset's data.digest).
    resolved = [f"input.size={size}", "input.intensity=minmax", "input.repeat=3", *overrides]
    cfg = load_eval_config(overrides=resolved)
    extra = {"size": size, "intensity": "minmax", "repeat": 3, "device": "cpu"}
    params = flatten({**base_config.to_dict(cfg), "resolved": extra})
    if digest is not None:
        params["data.digest"] = digest
    return params


def _params(size: int = 96, digest: str | None = DIGEST, *overrides: str) -> dict:
    return dict(_params_cached(size, digest, overrides))


def _run(client, exp, tags, metrics, status="FINISHED", start=None, params=None):
    from mlflow.entities import Param

    run = client.create_run(exp, tags=tags, start_time=start)
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # MLflow resolves the store's default artifact root (./mlruns) in the working directory
    # it first opens the store in: make that this folder, not the repository.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        client.search_experiments()
    exp = client.create_experiment("study_a", artifact_location=(folder / "art").as_uri())
    other = client.create_experiment("other", artifact_location=(folder / "art2").as_uri())
    mixed = client.create_experiment("mixed", artifact_location=(folder / "art3").as_uri())
    t = 1_700_000_000_000
    for (row, protocol, lf), values in VALUES.items():
        for seed, v in zip(SEEDS, values, strict=True):
            t += 1000
            _run(client, exp, _tags(row, protocol, lf, seed), {"test/accuracy": v,
                 "test/auc_mean": v / 2}, start=t, params=_params())  # fmt: skip
    # An older duplicate of scratch linear seed 42 (the newer one counts), a failed run, a
    # pretraining run, and a run of another study: all left out.
    _run(client, exp, _tags("scratch", "linear", 1.0, 42), {"test/accuracy": 0.1}, start=1,
         params=_params())  # fmt: skip
    _run(client, exp, _tags("scratch", "linear", 1.0, 7), {"test/accuracy": 0.2}, "FAILED")
    _run(client, exp, {"stage": "pretrain", "study": "study_a"}, {"test/accuracy": 0.3})
    _run(client, other, _tags("scratch", "linear", 1.0, 9, "study_b"), {"test/accuracy": 0.4})
    for (row, size), values in MIXED_SIZES.items():
        for seed, v in zip(SEEDS, values, strict=True):
            tags = _tags(row, "linear", 1.0, seed, "sizes")
            _run(client, mixed, tags, {"test/accuracy": v}, params=_params(size))
    for (row, digest), values in MIXED_DATA.items():
        for seed, v in zip(SEEDS, values, strict=False):
            tags = _tags(row, "knn", 1.0, seed, "stores")
            _run(client, mixed, tags, {"test/accuracy": v}, params=_params(96, digest))
    return uri, folder


def _read_csv(path: Path) -> dict[tuple[str, str, float], dict]:
    with open(path) as f:
        return {(r["row"], r["protocol"], float(r["label_fraction"])): r for r in csv.DictReader(f)}


def _holm_by_hand(ps: list[float]) -> list[float]:
    """Holm's step-down, written out: adjusted p_i = max over p_j <= p_i of (m - rank_j) p_j."""
    m = len(ps)
    ranked = sorted(ps)
    return [min(1.0, max((m - j) * ranked[j] for j in range(m) if ranked[j] <= p)) for p in ps]


def _check_figure(png: Path, svg: Path) -> None:
    from matplotlib.image import imread

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_report_reproduces_statistics_computed_with_scipy(store, tmp_path, capsys):
    uri, _ = store
    out = tmp_path / "rep"
    assert main(["report", "--tracking", uri, "--study", "study_a", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "scratch" in text and "simclr ct 10%" in text and "body_region linear 10%" in text
    # every run logs the same settings: no split, no warning; the legend names them
    assert "warning" not in text and "@96px" not in text
    assert "input 96px, intensity minmax" in text and f"eval data {DIGEST[:12]}" in text
    for ext in ("txt", "md", "csv", "html", "png", "svg"):
        assert (out / f"report.{ext}").stat().st_size > 0
    with open(out / "report.csv") as f:
        header = next(csv.reader(f))
    assert header[: len(REQUIRED_CSV)] == REQUIRED_CSV and tuple(header) == CSV_FIELDS
    rows = _read_csv(out / "report.csv")
    assert len(rows) == len(VALUES)
    tested = []
    for key, values in VALUES.items():
        r = rows[key]
        x = np.array(values)
        assert int(r["n"]) == 4
        assert float(r["mean"]) == pytest.approx(x.mean(), abs=1e-12)
        assert float(r["std"]) == pytest.approx(x.std(ddof=1), abs=1e-12)
        row, protocol, lf = key
        assert r["baseline"] == "scratch"
        base = np.array(VALUES[("scratch", protocol, lf)])
        if row == "scratch":  # the baseline's own cells: no delta, no p
            assert r["p"] == r["p_holm"] == r["delta"] == r["delta_ci_low"] == ""
            assert r["note"] == "baseline"
            continue
        want = ttest_ind(x, base, equal_var=False)
        ci = want.confidence_interval(0.95)
        assert float(r["delta"]) == pytest.approx(x.mean() - base.mean(), abs=1e-12)
        assert float(r["relative_delta"]) == pytest.approx(
            (x.mean() - base.mean()) / base.mean(), rel=1e-9
        )
        assert float(r["t"]) == pytest.approx(want.statistic, rel=1e-9)
        assert float(r["df"]) == pytest.approx(want.df, rel=1e-9)
        assert float(r["p"]) == pytest.approx(want.pvalue, rel=1e-9)
        assert float(r["delta_ci_low"]) == pytest.approx(ci.low, rel=1e-9)
        assert float(r["delta_ci_high"]) == pytest.approx(ci.high, rel=1e-9)
        tested.append(r)
    # Holm over the table's 5 comparisons
    for r, adj in zip(tested, _holm_by_hand([float(r["p"]) for r in tested]), strict=True):
        assert float(r["p_holm"]) == pytest.approx(adj, rel=1e-12)
        assert float(r["p_holm"]) >= float(r["p"])
    assert "p_holm=" in text and "[+" in text  # the CI printed with the delta
    _check_figure(out / "report.png", out / "report.svg")
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == 1 + len(INITS)  # header + one line per row
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<svg" in html and "p_holm" in html

    # the report run: stage=report, the files (figure included) as artifacts
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("radengine-report")
    runs = client.search_runs(
        [exp.experiment_id], "tags.stage = 'report' and tags.study = 'study_a'"
    )
    assert len(runs) == 1 and runs[0].data.tags["baseline"] == "scratch"
    assert runs[0].data.tags["comparability_warnings"] == "0"
    assert runs[0].data.metrics["report/tests"] == 5
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert arts == {f"report/report.{e}" for e in ("txt", "md", "csv", "html", "png", "svg")}
    logged = Path(client.download_artifacts(runs[0].info.run_id, "report", str(tmp_path / "dl")))
    _check_figure(logged / "report.png", logged / "report.svg")


def test_mixed_input_sizes_are_split_with_a_warning(store, tmp_path, capsys):
    uri, _ = store
    out = tmp_path / "rep"
    assert main(["report", "--tracking", uri, "--study", "sizes", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    head = next(line for line in text.splitlines() if line.startswith("init "))
    assert "body_region linear @224px" in head and "body_region linear @96px" in head
    (warning,) = [line for line in text.splitlines() if line.startswith("warning:")]
    assert "differ in input size" in warning and "@224px: scratch" in warning
    assert "@96px: simclr ct, simclr natural" in warning
    with open(out / "report.csv") as f:
        cells = {r["row"]: r for r in csv.DictReader(f)}
    assert cells["scratch"]["column"] == "body_region linear @224px"
    assert cells["scratch"]["input_size"] == "224px"
    for row in ("simclr ct", "simclr natural"):  # never compared with the 224 px scratch
        assert cells[row]["column"] == "body_region linear @96px"
        assert cells[row]["delta"] == cells[row]["p"] == cells[row]["p_holm"] == ""
        assert cells[row]["note"] == "no baseline in this column"
    assert "no scratch runs in column(s) body_region linear @96px" in text
    assert "warning" in (out / "report.md").read_text()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("radengine-report")
    (run,) = client.search_runs([exp.experiment_id], "tags.study = 'sizes'")
    assert run.data.tags["comparability_warnings"] == "1"


def test_mixed_eval_data_is_split_and_n1_cells_get_no_test(store, tmp_path, capsys):
    uri, _ = store
    out = tmp_path / "rep"
    assert main(["report", "--tracking", uri, "--study", "stores", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    same, other = f"body_region knn data {DIGEST[:8]}", f"body_region knn data {OTHER_DIGEST[:8]}"
    assert same in text and other in text
    assert any("differ in eval data digest" in line for line in text.splitlines())
    with open(out / "report.csv") as f:
        cells = {(r["row"], r["column"]): r for r in csv.DictReader(f)}
    r = cells[("simclr ct", same)]
    x, base = MIXED_DATA[("simclr ct", DIGEST)], MIXED_DATA[("scratch", DIGEST)]
    want = ttest_ind(x, base, equal_var=False)
    assert float(r["p"]) == pytest.approx(want.pvalue, rel=1e-9)
    assert float(r["p_holm"]) == pytest.approx(want.pvalue, rel=1e-12)  # the only test
    assert float(r["delta_ci_low"]) == pytest.approx(want.confidence_interval().low, rel=1e-9)
    assert r["data_digest"] == DIGEST
    # the other store: scratch has one seed, so no std, no test and no interval
    assert cells[("scratch", other)]["n"] == "1" and cells[("scratch", other)]["std"] == ""
    r = cells[("simclr ct", other)]
    assert float(r["delta"]) == pytest.approx(
        np.mean(MIXED_DATA[("simclr ct", OTHER_DIGEST)]) - 0.6
    )
    assert r["p"] == r["p_holm"] == r["delta_ci_low"] == r["delta_ci_high"] == ""
    assert r["note"] == "n<2: no test"
    assert "60.00 (n=1) baseline" in text and "no test: n=1" in text


def _record(row: str, seed: int, value: float, params: dict, protocol: str = "linear"):
    tags = _tags(row, protocol, 1.0, seed)
    return EvalRecord(f"{row}-{seed}-{len(params)}", tags, {"test/accuracy": value}, params=params)


def test_unknown_settings_are_flagged_and_never_merged():
    # scratch logged its settings; simclr ct's runs are older and logged none
    recs = [_record("scratch", s, 0.9 + s / 100, _params()) for s in range(3)]
    recs += [_record("simclr ct", s, 0.95 + s / 100, {}) for s in range(3)]
    recs += [_record("scratch", s, 0.8 + s / 100, {}) for s in range(3)]
    table = build_table(recs)
    assert len(table.columns) == 2
    known, unknown = sorted(table.columns, key=lambda c: c.key.input_size == "unknown")
    assert unknown.key.unknown() == [
        "input size", "intensity", "normalisation", "eval data digest", "split seed",
        "protocol config",
    ]  # fmt: skip
    assert known.key.unknown() == []
    # nothing recorded differs: the known column keeps its plain name
    assert table.column_label(known) == "body_region linear"
    assert table.column_label(unknown) == "body_region linear (settings unknown)"
    # the simclr ct runs are compared with the unknown-settings scratch runs only
    cell = table.cells[("simclr ct", unknown)]
    assert cell.comparison is not None
    assert cell.comparison.baseline.mean == pytest.approx(0.81)
    assert ("simclr ct", known) not in table.cells
    (split, flag) = table.warnings
    assert "differ in settings some runs do not record" in split
    assert "runs of scratch, simclr ct do not record their" in flag and "cannot be checked" in flag
    text = to_text(table)
    assert "warning: runs of scratch, simclr ct do not record" in text
    assert "linear config: unknown" in text
    # old runs only: nothing to split, but still flagged
    table = build_table(recs[3:])
    assert len(table.columns) == 1 and table.qualifiers == {}
    assert len(table.warnings) == 1 and "do not record" in table.warnings[0]


def test_protocol_settings_split_columns():
    recs = [_record("scratch", s, 0.9 + s / 100, _params()) for s in range(2)]
    recs += [_record("simclr ct", s, 0.95 + s / 100, _params(96, DIGEST, "linear.epochs=10"))
             for s in range(2)]  # fmt: skip
    # linear.eval_every only changes how often the validation metric is logged: these runs
    # land in the first scratch runs' column (same seeds, so they count as repeats)
    recs += [
        _record("scratch", s, 0.7 + s / 100, _params(96, DIGEST, "linear.eval_every=5"))
        for s in range(2)
    ]
    table = build_table(recs)
    labels = table.column_labels()
    assert labels == ["body_region linear epochs=10", "body_region linear epochs=100"]
    assert "differ in linear.epochs" in table.warnings[0]
    assert any("2 run(s) repeated a (row, column, seed)" in n for n in table.notes)
    assert len(table.cells) == 2
    # knn: its k set is part of the key; the linear grid is not
    k1 = ComparabilityKey.from_run(
        _tags("scratch", "knn", 1.0, 0), _params(96, DIGEST, "knn.k=[5]")
    )
    k2 = ComparabilityKey.from_run(
        _tags("scratch", "knn", 1.0, 0), _params(96, DIGEST, "linear.epochs=1")
    )
    k3 = ComparabilityKey.from_run(_tags("scratch", "knn", 1.0, 0), _params())
    assert k1 != k3 and k2 == k3 and dict(k1.protocol_config)["k"] == "[5]"
    # natural-image stores ignore the CT intensity mapping: not a reason to split
    nat = _tags("scratch", "knn", 1.0, 0, domain="natural")
    windows = _params(96, DIGEST, "input.intensity=[[40, 400]]")
    assert ComparabilityKey.from_run(nat, windows) == ComparabilityKey.from_run(nat, _params())
    ct = _tags("scratch", "knn", 1.0, 0)
    assert ComparabilityKey.from_run(ct, windows) != ComparabilityKey.from_run(ct, _params())
    csv_text = to_csv(table)
    assert json.loads(next(csv.DictReader(csv_text.splitlines()))["protocol_config"])["epochs"]


def test_baseline_by_name_or_init_and_metric_choice(store, tmp_path, capsys):
    uri, _ = store
    common = ["report", "--tracking", uri, "--experiment", "study_a"]
    out = tmp_path / "a"
    assert main([*common, "--baseline", PRE_CT, "--out", str(out), "--metric", "auc_mean"]) == 0
    rows = _read_csv(out / "report.csv")
    r = rows[("scratch", "linear", 1.0)]
    assert r["baseline"] == "simclr ct" and r["metric"] == "test/auc_mean"
    ct = np.array(VALUES[("simclr ct", "linear", 1.0)]) / 2
    sc = np.array(VALUES[("scratch", "linear", 1.0)]) / 2
    assert float(r["p"]) == pytest.approx(ttest_ind(sc, ct, equal_var=False).pvalue, rel=1e-9)
    # finetune has no simclr ct cell: no comparison there
    assert rows[("scratch", "finetune", 1.0)]["p"] == ""
    assert main([*common, "--baseline", "Simclr Natural", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()


def test_report_errors(store, tmp_path, capsys):
    uri, _ = store
    assert (
        main(["report", "--tracking", uri, "--baseline", "imagenet", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "unknown baseline 'imagenet'" in err and "simclr ct 10%" in err and "scratch" in err
    assert main(["report", "--tracking", uri, "--study", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished eval runs for study 'nope'" in err and "radengine eval" in err
    assert main(["report", "--tracking", uri, "--experiment", "missing"]) == 2
    assert "no experiment named missing" in capsys.readouterr().err
    empty = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["report", "--tracking", empty]) == 2
    assert "no tracking store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert main(["report", "--tracking", uri, "--metric", "dice_mean", "--out", str(tmp_path)]) == 2
    assert "none has test/dice_mean" in capsys.readouterr().err


def _results_folder(root: Path, name: str, init: str, vals: list[float], size: int | None,
                    digest: str | None) -> None:  # fmt: skip
    import yaml

    from radengine import config as base_config
    from radengine.eval.config import load_eval_config

    d = root / name
    d.mkdir(parents=True)
    if size is None:  # an old folder: a partial config, no digest
        cfg = {"study": "s", "data": {"label_fraction": 1.0}}
    else:
        over = ["study=s", "protocol=knn", f"input.size={size}", "input.intensity=minmax",
                "input.repeat=3"]  # fmt: skip
        cfg = base_config.to_dict(load_eval_config(overrides=over))
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    seeds = [{"seed": i, "run_id": None, "test": {"accuracy": v}} for i, v in enumerate(vals)]
    res = {"protocol": "knn", "task": "class", "init": init, "seeds": seeds,
           "primary_metric": "test/accuracy"}  # fmt: skip
    if digest:
        res["data_digest"] = digest
    (d / "results.json").write_text(json.dumps(res))


def test_tracking_none_reads_results_folders(tmp_path, capsys):
    root = tmp_path / "eval"
    _results_folder(root, "a", "scratch", [0.5, 0.6], 64, DIGEST)
    _results_folder(root, "b", "/w/moco.pth", [0.7, 0.8], 64, DIGEST)
    out = tmp_path / "rep"
    args = ["report", "--tracking", "none", "--results", str(root), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "MLflow" not in text and "warning" not in text
    with open(out / "report.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"scratch", "/w/moco.pth"}
    assert rows["scratch"]["input_size"] == "64px" and rows["scratch"]["data_digest"] == DIGEST
    assert float(rows["/w/moco.pth"]["p"]) == pytest.approx(
        ttest_ind([0.7, 0.8], [0.5, 0.6], equal_var=False).pvalue, rel=1e-9
    )
    _check_figure(out / "report.png", out / "report.svg")
    # a scratch evaluated at another size, and an old folder without settings: own columns
    _results_folder(root, "c", "/w/byol.pth", [0.9, 0.95], 224, DIGEST)
    _results_folder(root, "d", "/w/old.pth", [0.4, 0.45], None, None)
    assert main([*args[:-1], str(tmp_path / "rep2")]) == 0
    text = capsys.readouterr().out
    assert "class knn @224px" in text and "class knn @64px" in text
    assert "class knn (settings unknown)" in text and "do not record" in text
    assert main(["report", "--tracking", "none", "--results", str(tmp_path / "x")]) == 2
    assert "no finished eval runs" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("tracked", [False, True], ids=["results-folders", "mlflow"])
def test_eval_at_two_sizes_then_report_splits(tracked, store, ct_store, tmp_path, capsys):
    """The real path: `radengine eval` at two input sizes, then the report: every part of
    the key is recorded (no 'unknown'), and the sizes get their own columns."""
    from radengine.data.store import Store

    uri = store[0] if tracked else "none"
    common = ["--data", str(ct_store), "--tracking", uri, "--seeds", "1,2", "knn.k=[5]",
              f"cache.dir={tmp_path / 'cache'}", "progress=false", "study=real"]  # fmt: skip
    root = tmp_path / "eval"
    for size in (32, 48):
        out = root / f"scratch-{size}"
        assert main(["eval", "knn", "--init", "scratch", *common, f"input.size={size}",
                     "--out", str(out)]) == 0  # fmt: skip
        results = json.loads((out / "results.json").read_text())
        assert results["data_digest"] == Store(ct_store).digest()
    capsys.readouterr()
    rep = tmp_path / "rep"
    where = ["--tracking", uri, "--study", "real"] if tracked else ["--tracking", "none"]
    assert main(["report", *where, "--results", str(root), "--out", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "body_region knn @32px" in text and "body_region knn @48px" in text
    assert "differ in input size" in text and "unknown" not in text
    with open(rep / "report.csv") as f:
        cells = list(csv.DictReader(f))
    assert {c["data_digest"] for c in cells} == {Store(ct_store).digest()}
    assert {c["input_size"] for c in cells} == {"32px", "48px"}
    assert all(json.loads(c["protocol_config"])["k"] == "[5]" for c in cells)


def test_row_labels_and_ambiguous_rows():
    assert row_label({"init": "scratch", "init_kind": "scratch"}) == "scratch"
    assert row_label({"init": "/x/moco_v2_800ep.pth.tar", "method": "import:moco"}) == (
        "moco_v2_800ep [moco]"
    )
    tags = {"init": "r1", "method": "simclr", "pretrain_domain": "ct", "data_fraction": "0.01"}
    assert row_label(tags) == "simclr ct 1%"
    # two pretraining runs with one label are told apart by their run id
    recs = [
        EvalRecord(f"e{i}", {**tags, "pretrain_run_id": pre, "seed": "0", "task": "t",
                   "protocol": "knn", "primary_metric": "test/a"}, {"test/a": 0.5})
        for i, pre in enumerate(["1" * 32, "2" * 32])
    ]  # fmt: skip
    table = build_table(recs)
    assert table.rows == ["simclr ct 1% (11111111)", "simclr ct 1% (22222222)"]
    assert table.baseline is None and any("no baseline" in n for n in table.notes)
    with pytest.raises(ReportError, match="no eval runs"):
        build_table([])


@pytest.mark.parametrize(
    "cfg, label",
    [
        ({"method": "simclr", "data": {"domain": "ct"}}, "simclr ct"),
        ({"method": "simclr", "data": {"domain": "ct", "fraction": 0.1}}, "simclr ct 10%"),
        ({"method": "byol", "data": {"domain": "ct"}}, "byol ct"),
        ({"method": "dino", "data": {"domain": "ct", "fraction": 0.1}}, "dino ct 10%"),
        (
            {"method": "simclr", "data": {"domain": "ct"},
             "stages": [{"domain": "natural", "epochs": 3}, {"domain": "ct", "epochs": 3}]},
            "simclr natural -> ct",
        ),
        (
            {"method": "simclr", "data": {"domain": "ct"},
             "stages": [{"domain": "natural", "fraction": 0.5}, {"domain": "ct"}]},
            "simclr natural 50% -> ct",
        ),
        (
            {"method": "simclr", "data": {"domain": "ct", "mix": [{"domain": "natural"}]}},
            "simclr ct + natural",
        ),
    ],
)  # fmt: skip
def test_row_label_names_what_the_pretraining_saw(cfg, label):
    """Sequential and mixed pretrainings get their own names (a natural -> CT run was once
    labelled ``simclr ct``, next to the plain CT run)."""
    from radengine.eval.init import _pretrain_tags

    assert row_label({"init": "r1", **_pretrain_tags(cfg)}) == label
    # a study names its rows by the spec's init names
    assert row_label({"init": "r1", "study_init": "natural_then_ct", **_pretrain_tags(cfg)}) == (
        "natural_then_ct"
    )


def test_p_formatting_handles_nan():
    from radengine.eval.report import _p

    assert _p(math.nan) == "n/a" and _p(0.5) == "0.500" and _p(1e-5) == "1.0e-05"


def test_results_folders_keep_the_pretraining_tags(tmp_path):
    """With --tracking none the rows are named as with MLflow (``simclr natural -> ct``),
    from the tags results.json keeps, not by the --init folder path."""
    from radengine.eval.report import collect_results

    for name, init, tags in [
        ("a", "scratch", {"init_kind": "scratch"}),
        ("b", "/runs/pretrain/seq-1", {"method": "simclr", "pretrain_data": "natural -> ct"}),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text("study: s\ndata: {label_fraction: 1.0}\n")
        res = {"protocol": "linear", "task": "organs", "init": init,
               "primary_metric": "test/auc_mean", "tags": {"init": init, **tags},
               "seeds": [{"seed": 0, "test": {"auc_mean": 0.9}}]}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(res))
    labels = sorted(row_label(r.tags) for r in collect_results(tmp_path))
    assert labels == ["scratch", "simclr natural -> ct"]


def test_rows_follow_the_given_order_after_the_baseline():
    """A study's table lists its inits as the spec does (baseline first), not sorted."""

    def rec(init, value, seed):
        tags = {"init": init, "study_init": init, "seed": str(seed), "task": "t",
                "protocol": "knn", "primary_metric": "test/a"}  # fmt: skip
        return EvalRecord(f"{init}{seed}", tags, {"test/a": value})

    recs = [rec(n, 0.5 + 0.01 * s, s) for n in ("zeta", "alpha", "scratch", "mid") for s in (0, 1)]
    table = build_table(recs, row_order=["scratch", "zeta", "mid"])
    assert table.rows == ["scratch", "zeta", "mid", "alpha"]
    assert build_table(recs).rows == ["scratch", "alpha", "mid", "zeta"]
