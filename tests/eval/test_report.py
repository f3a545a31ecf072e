"""`radengine report`: the transfer table from eval runs made directly with mlflow (the tags
radengine.eval.run sets), checked against hand-computed statistics; the files it writes,
the report run it logs, and its errors."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from radengine.cli import main
from radengine.eval import stats
from radengine.eval.report import EvalRecord, ReportError, build_table, row_label

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # A new experiment's artifact root is ./mlruns of the working directory.
    monkeypatch.chdir(tmp_path)


PRE_CT = "a" * 32
PRE_NAT = "b" * 32
PRE_CT10 = "c" * 32

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


def _tags(row: str, protocol: str, lf: float, seed: int, study: str = "study_a") -> dict:
    return {
        "study": study,
        "stage": "eval",
        "protocol": protocol,
        "task": "body_region",
        "arch": "resnet18",
        "domain": "ct",
        "label_fraction": str(lf),
        "seed": str(seed),
        "primary_metric": "test/accuracy",
        **INITS[row],
    }


def _run(client, exp, tags, metrics, status="FINISHED", start=None):
    run = client.create_run(exp, tags=tags, start_time=start)
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
    t = 1_700_000_000_000
    for (row, protocol, lf), values in VALUES.items():
        for seed, v in zip(SEEDS, values, strict=True):
            t += 1000
            _run(client, exp, _tags(row, protocol, lf, seed), {"test/accuracy": v,
                 "test/auc_mean": v / 2}, start=t)  # fmt: skip
    # An older duplicate of scratch linear seed 42 (the newer one counts), a failed run, a
    # pretraining run, and a run of another study: all left out.
    _run(client, exp, _tags("scratch", "linear", 1.0, 42), {"test/accuracy": 0.1}, start=1)
    _run(client, exp, _tags("scratch", "linear", 1.0, 7), {"test/accuracy": 0.2}, "FAILED")
    _run(client, exp, {"stage": "pretrain", "study": "study_a"}, {"test/accuracy": 0.3})
    _run(client, other, _tags("scratch", "linear", 1.0, 9, "study_b"), {"test/accuracy": 0.4})
    return uri, folder


def _read_csv(path: Path) -> dict[tuple[str, str, float], dict]:
    with open(path) as f:
        return {(r["row"], r["protocol"], float(r["label_fraction"])): r for r in csv.DictReader(f)}


def test_report_reproduces_hand_computed_statistics(store, tmp_path, capsys):
    uri, _ = store
    out = tmp_path / "rep"
    assert main(["report", "--tracking", uri, "--study", "study_a", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "scratch" in text and "simclr ct 10%" in text and "body_region linear 10%" in text
    for ext in ("txt", "md", "csv", "html", "svg"):
        assert (out / f"report.{ext}").stat().st_size > 0
    rows = _read_csv(out / "report.csv")
    assert len(rows) == len(VALUES)
    for key, values in VALUES.items():
        r = rows[key]
        x = np.array(values)
        assert int(r["n"]) == 4
        assert float(r["mean"]) == pytest.approx(x.mean(), abs=1e-12)
        assert float(r["std"]) == pytest.approx(x.std(ddof=1), abs=1e-12)
        row, protocol, lf = key
        assert r["baseline"] == "scratch"
        base = np.array(VALUES[("scratch", protocol, lf)])
        if row == "scratch":
            assert r["p_value"] == "" and r["delta"] == ""
            continue
        # Welch by hand: t, Welch-Satterthwaite df; p from radengine's Student t tail.
        va, vb = x.var(ddof=1) / 4, base.var(ddof=1) / 4
        t = (x.mean() - base.mean()) / math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
        assert float(r["delta"]) == pytest.approx(x.mean() - base.mean(), abs=1e-12)
        assert float(r["relative_delta"]) == pytest.approx(
            (x.mean() - base.mean()) / base.mean(), rel=1e-9
        )
        assert float(r["t"]) == pytest.approx(t, rel=1e-9)
        assert float(r["df"]) == pytest.approx(df, rel=1e-9)
        assert float(r["p_value"]) == pytest.approx(2 * stats.student_t_sf(abs(t), df), rel=1e-9)
        try:
            from scipy.stats import ttest_ind
        except ImportError:
            continue
        assert float(r["p_value"]) == pytest.approx(
            ttest_ind(x, base, equal_var=False).pvalue, rel=1e-6
        )
    # figures and pages are well-formed; one bar per cell
    svg = ET.parse(out / "report.svg").getroot()
    bars = [e for e in svg.iter() if e.get("class") == "bar"]
    assert len(bars) == len(VALUES)
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == 1 + len(INITS)  # header + one line per row
    assert "<table>" in (out / "report.html").read_text()

    # the report run: stage=report, artifacts, in its own experiment
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("radengine-report")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'report'")
    assert len(runs) == 1 and runs[0].data.tags["study"] == "study_a"
    assert runs[0].data.tags["baseline"] == "scratch"
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert arts == {f"report/report.{e}" for e in ("txt", "md", "csv", "html", "svg")}


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
    assert float(r["p_value"]) == pytest.approx(stats.welch_ttest(sc, ct).p_value, rel=1e-12)
    # finetune has no simclr ct cell: no comparison there
    assert rows[("scratch", "finetune", 1.0)]["p_value"] == ""
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


def test_tracking_none_reads_results_folders(tmp_path, capsys):
    import yaml

    for init, vals in (("scratch", [0.5, 0.6]), ("/w/moco.pth", [0.7, 0.8])):
        d = tmp_path / "eval" / init.replace("/", "_")
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(
            yaml.safe_dump({"study": "s", "data": {"label_fraction": 1.0}})
        )
        seeds = [{"seed": i, "run_id": None, "test": {"accuracy": v}} for i, v in enumerate(vals)]
        res = {"protocol": "knn", "task": "class", "init": init, "seeds": seeds,
               "primary_metric": "test/accuracy"}  # fmt: skip
        (d / "results.json").write_text(json.dumps(res))
    out = tmp_path / "rep"
    args = ["report", "--tracking", "none", "--results", str(tmp_path / "eval"), "--out", str(out)]
    assert main(args) == 0
    assert "MLflow" not in capsys.readouterr().out
    with open(out / "report.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"scratch", "/w/moco.pth"}
    assert float(rows["/w/moco.pth"]["p_value"]) == pytest.approx(
        stats.welch_ttest([0.7, 0.8], [0.5, 0.6]).p_value
    )
    assert main(["report", "--tracking", "none", "--results", str(tmp_path / "x")]) == 2
    assert "no finished eval runs" in capsys.readouterr().err


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
