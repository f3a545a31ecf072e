"""`radengine eval` and `radengine weights import` end to end: a tiny tracked pretraining
run evaluated with no --init (the newest finished pretraining run), its MLflow tags, params,
metrics and datasets, the feature cache reused across seeds and protocols, a published
file imported as an MLflow model and evaluated from its models:/ URI, finetuning with
--tracking none, and the command's errors (exit 2, saying what is wrong)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from radengine.cli import main
from radengine.data.builtin import write_synthetic_natural_store
from radengine.models import resnet18

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_PRETRAIN = [
    "augment.size=32",
    "optim.batch_size=16",
    "optim.epochs=1",
    "data.workers=0",
    "train.progress=false",
    "train.max_steps=2",
    "knn.every=0",
    "tracking.log_model=false",
    "tracking.system_metrics=false",
]
QUIET = ["progress=false"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ct_store):
    """A tiny pretraining run logged to its own SQLite store."""
    mlflow = pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # An experiment's artifact root is ./mlruns of the working directory it is created in.
    cwd = pytest.MonkeyPatch()
    cwd.chdir(folder)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["pretrain", "--data", str(ct_store), "--out", str(folder / "run")]
        # checkpoints logged (off by default) so that a run whose folder is gone still loads
        assert (
            main([*args, "--tracking", uri, *TINY_PRETRAIN, "tracking.log_checkpoints=true"]) == 0
        )
    finally:
        torch.set_num_threads(before)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("radengine-pretrain")
    (run,) = client.search_runs([exp.experiment_id])
    yield SimpleNamespace(
        uri=uri,
        client=client,
        run_id=run.info.run_id,
        pretrain_experiment=exp.experiment_id,
        folder=folder,
        run=folder / "run",
        cache=folder / "features",
    )
    cwd.undo()


def _eval_runs(client, **tags):
    exp = client.get_experiment_by_name("radengine-eval")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def test_pretrain_then_eval_linear_with_no_init(tracked, ct_store, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "linear", "--data", str(ct_store), "--tracking", tracked.uri]
    extra = ["--out", str(out), f"cache.dir={tracked.cache}", "linear.epochs=4"]
    assert main([*args, *extra, *QUIET, "linear.eval_every=1"]) == 0
    captured = capsys.readouterr()
    assert f"evaluating the newest pretraining run {tracked.run_id}" in captured.err

    (run,) = _eval_runs(tracked.client, init=tracked.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    for key, value in {
        "stage": "eval",
        "protocol": "linear",
        "task": "body_region",
        "init_kind": "run",
        "pretrain_run_id": tracked.run_id,
        "label_fraction": "1.0",
        "seed": "0",
        "arch": "resnet18",
        "method": "simclr",
        "domain": "ct",
        "pretrain_domain": "ct",
        "primary_metric": "test/accuracy",
        "study": "quickstart",
    }.items():
        assert tags[key] == value, key
    assert float(tags["best_lr"]) in (0.01, 0.03, 0.1, 0.3)
    for name in ("test/accuracy", "test/balanced_accuracy", "test/auc_mean", "val/accuracy"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert any(k.startswith("test/auc/") for k in metrics)
    assert sum(k.startswith("grid/") for k in metrics) == 12
    history = tracked.client.get_metric_history(run.info.run_id, "val/accuracy_best")
    assert [m.step for m in history] == [1, 2, 3, 4]
    # the input mapping follows the pretraining run (32 px views), the config is logged
    assert params["resolved.size"] == "32" and params["linear.epochs"] == "4"
    assert params["data.digest"] and int(params["resolved.train_samples"]) == 192
    artifacts = {a.path for a in tracked.client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "init_report.json"} <= artifacts
    contexts = {
        t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"
    }
    assert contexts == {"train", "test"}
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"][0]["run_id"] == run.info.run_id
    assert results["seeds"][0]["test"]["accuracy"] == pytest.approx(metrics["test/accuracy"])
    # the saved config is the resolved one: it names the run found, the task, the input
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["init"]["source"] == tracked.run_id and saved["task"] == "body_region"
    assert saved["input"]["size"] == 32 and saved["model"]["arch"] == "resnet18"
    assert params["init.source"] == tracked.run_id
    assert "test/accuracy" in captured.out

    # ... and on to the transfer report: the eval run is a cell of the pretraining's row.
    report = tmp_path / "report"
    assert main(["report", "--tracking", tracked.uri, "--out", str(report)]) == 0
    assert {"report.md", "report.csv", "report.html", "report.svg"} <= {
        f.name for f in report.iterdir()
    }
    cells = (report / "report.csv").read_text().splitlines()
    (cell,) = [line for line in cells if run.info.run_id in line]
    assert cell.startswith("simclr ct") and f"{metrics['test/accuracy']:.6g}" in cell


def test_the_newest_finished_pretraining_run_is_picked_and_the_cache_reused(
    tracked, ct_store, tmp_path, capsys
):
    client = tracked.client
    # a newer finished pretraining run (a copy of the first one's folder) ...
    copy = tmp_path / "run-copy"
    shutil.copytree(tracked.run, copy)
    newer = client.create_run(
        tracked.pretrain_experiment, tags={"stage": "pretrain", "out": str(copy)}
    ).info.run_id
    client.set_terminated(newer, "FINISHED")
    # ... and even newer ones that did not finish: never picked
    failed = client.create_run(tracked.pretrain_experiment, tags={"stage": "pretrain"})
    client.set_terminated(failed.info.run_id, "FAILED")
    client.create_run(tracked.pretrain_experiment, tags={"stage": "pretrain"})  # RUNNING
    cache_arg = f"cache.dir={tracked.cache}"
    common = ["--data", str(ct_store), "--tracking", tracked.uri, cache_arg, *QUIET]
    assert main(["eval", "knn", *common, "--seeds", "1,2", "--out", str(tmp_path / "a")]) == 0
    runs = _eval_runs(client, init=newer, protocol="knn")
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    for r in runs:
        assert r.data.tags["best_k"] in ("10", "20", "100", "200")
        assert {f"test/k{k}/accuracy" for k in (10, 20, 100, 200)} <= set(r.data.metrics)
    files = sorted(tracked.cache.glob("*.pt"))
    assert len(files) == 3  # train, val and test features of these weights, once
    stamps = [f.stat().st_mtime_ns for f in files]
    # another protocol, seed and label fraction on the same weights: all from the cache
    more = ["--init", newer, "--label-fraction", "0.5", "--seed", "7", "linear.epochs=2"]
    assert main(["eval", "linear", *common, *more, "--out", str(tmp_path / "b")]) == 0
    assert sorted(tracked.cache.glob("*.pt")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "extracting features" not in capsys.readouterr().err.split("label fraction 0.5")[-1]
    (run,) = _eval_runs(client, init=newer, protocol="linear")
    assert run.data.tags["label_fraction"] == "0.5" and run.data.tags["seed"] == "7"
    assert run.data.params["resolved.train_patients"] == "4"


def test_a_run_whose_folder_is_gone_loads_its_logged_checkpoint(tracked, ct_store, tmp_path):
    from radengine.eval.common import module_digest
    from radengine.eval.init import build_encoder, resolve_init

    def digest() -> str:
        init = resolve_init(f"runs:/{tracked.run_id}", uri=tracked.uri, echo=lambda s: None)
        return init.kind, module_digest(build_encoder(init, "resnet18", 3)[0])

    kind, local = digest()
    hidden = tracked.folder / "run-elsewhere"
    tracked.run.rename(hidden)  # e.g. evaluating on another machine than the pretraining's
    try:
        kind2, remote = digest()
        args = ["eval", "knn", "--init", f"runs:/{tracked.run_id}", "--data", str(ct_store)]
        extra = ["--tracking", tracked.uri, "knn.k=[5]", f"cache.dir={tmp_path}", "--out"]
        assert main([*args, *extra, str(tmp_path / "e"), *QUIET]) == 0
    finally:
        hidden.rename(tracked.run)
    assert (kind, kind2) == ("run", "run") and local == remote  # the same weights
    (run,) = _eval_runs(tracked.client, init=f"runs:/{tracked.run_id}")
    assert run.data.tags["pretrain_run_id"] == tracked.run_id
    assert run.data.params["resolved.size"] == "32"  # from the run's params


def test_no_pretraining_run_says_to_pretrain_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["eval", "linear"]) == 2
    err = capsys.readouterr().err
    assert "no finished pretraining run" in err and "radengine pretrain --domain ct" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create a store
    assert not (tmp_path / "runs").exists()


def test_weights_import_then_eval_from_the_model_uri(tracked, ct_store, tmp_path, capsys):
    src = resnet18(num_classes=1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(src.state_dict(), path)
    assert (
        main(["weights", "import", str(path), "--format", "torchvision", "--tracking", tracked.uri])
        == 0
    )
    printed = capsys.readouterr().out
    model_uri = re.search(r"model\s+(models:/\S+)", printed).group(1)
    assert "registered     models:/resnet18-imagenet/1" in printed
    args = ["eval", "knn", "--init", model_uri, "--data", str(ct_store), "--tracking", tracked.uri]
    extra = [f"cache.dir={tmp_path / 'cache'}", "knn.k=[5]", "--out", str(tmp_path / "e")]
    assert main([*args, *extra, *QUIET]) == 0
    (run,) = _eval_runs(tracked.client, init=model_uri)
    tags = run.data.tags
    assert tags["init_kind"] == "model" and tags["method"] == "import:torchvision"
    assert tags["arch"] == "resnet18" and "pretrain_run_id" not in tags
    assert 0 <= run.data.metrics["test/accuracy"] <= 1
    # the imported weights are exactly the file's (fc dropped)
    report = json.loads(
        Path(tracked.client.download_artifacts(run.info.run_id, "init_report.json")).read_text()
    )
    assert not report["missing"] and not report["unexpected"]


def test_finetune_with_tracking_none(ct_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ft"
    args = ["eval", "finetune", "--init", "scratch", "--data", str(ct_store), "--tracking", "none"]
    extra = [
        "--out", str(out), "input.size=32", "finetune.epochs=2", "finetune.batch_size=16",
        "finetune.max_steps=3", "finetune.test_checkpoint=best", "finetune.monitor=metric",
        "--label-fraction", "0.25",
    ]  # fmt: skip
    assert main([*args, *extra, *QUIET]) == 0
    res = json.loads((out / "results.json").read_text())["seeds"][0]
    assert res["run_id"] is None and res["details"]["tested_checkpoint"] == "best@1"
    assert res["details"]["stopped"] == "max_steps=3 reached"
    assert 0 <= res["test"]["accuracy"] <= 1 and "auc_mean" in res["test"]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "organ"], "unknown task 'organ'; did you mean 'organs'"),
        (["--label-fraction", "1.5"], "'data.label_fraction' must be in (0, 1], got 1.5"),
        (["linear.lr=0.1"], "unknown config key 'linear.lr'; did you mean 'linear.lrs'"),
        (["--init", "nothing-here.pth"], "is neither 'scratch', an MLflow run id"),
        (["SMALL"], "the val split of"),
        (["IMAGES", "--task", "organs"], "task organs needs a store with a 'mask' array"),
        (["R18", "model.arch=resnet50"], "checkpoint does not match the model"),
    ],
)
def test_bad_input_exits_2_and_says_what(
    args, message, ct_store, small_ct_store, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    base = ["eval", "linear", "--tracking", "none", "--data", str(ct_store), *QUIET]
    if "SMALL" in args:
        args = ["--data", str(small_ct_store), "--init", "scratch"]
    elif "IMAGES" in args:
        store = write_synthetic_natural_store(tmp_path / "img", images=20, classes=2, size=32)
        args = ["--data", str(store.path), "--init", "scratch", *args[1:]]
    elif "R18" in args:
        torch.save(resnet18(num_classes=0).state_dict(), tmp_path / "r18.pth")
        args = ["--init", str(tmp_path / "r18.pth"), *args[1:]]
    elif "--init" not in args:
        args = ["--init", "scratch", *args]
    assert main([*base, *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
