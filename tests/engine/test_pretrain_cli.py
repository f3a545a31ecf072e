"""`radengine pretrain` end to end: a tiny tracked run read back from MLflow, a resumed run
continuing the same MLflow run, and the command's errors (exit 2, the key named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radengine.cli import main
from radengine.data.builtin import write_synthetic_ct_store

TINY = [
    "augment.size=32",
    "optim.batch_size=16",
    "optim.epochs=1",
    "data.workers=0",
    "train.progress=false",
    "train.checkpoint_every=4",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "ct"
    # 10 patients: 8 train, 1 val, 1 test, so the kNN monitor has held-out labels
    write_synthetic_ct_store(path, patients=10, slices=4, size=32)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["optim.epoch=3"], "unknown config key 'optim.epoch'; did you mean 'optim.epochs'"),
        (["--data", "/nonexistent/store"], "store /nonexistent/store does not exist"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["--resume", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
    ],
)
def test_errors_exit_2_and_say_what(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--tracking", "none", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tracked_run_and_resume_in_mlflow(store, tmp_path, monkeypatch, capsys, recwarn):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(store), "--out", str(out), *TINY]
    assert main([*args, "train.max_steps=4", "tracking.log_model=false"]) == 0
    printed = capsys.readouterr().out
    assert "MLflow run" in printed and f"--resume {out}" in printed

    # the default store: mlflow.db in the working directory
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("radengine-pretrain").experiment_id])
    run_id = run.info.run_id
    assert run_id in printed
    tags, params = run.data.tags, run.data.params
    for key, value in {
        "stage": "pretrain",
        "domain": "ct",
        "method": "simclr",
        "arch": "resnet18",
        "init": "scratch",
        "study": "quickstart",
        "seed": "0",
        "data_fraction": "1.0",
    }.items():
        assert tags[key] == value, key
    assert params["optim.batch_size"] == "16" and params["model.arch"] == "resnet18"
    assert float(params["resolved.lr"]) == pytest.approx(0.075 * 16**0.5)
    (dataset,) = run.inputs.dataset_inputs
    from radengine.data.store import Store

    assert params["data.digest"] == Store(store).digest()
    assert dataset.dataset.source and str(store) in dataset.dataset.source
    losses = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in losses] == [4]  # logged at the stop, though log_every is 10
    assert client.get_metric_history(run_id, "knn/accuracy")[0].step == 0
    # checkpoints stay in the run folder only: by default none is uploaded to MLflow
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"config.yaml"}
    assert (out / "checkpoints" / "step-00000004.pt").is_file()
    # summary.json says where MLflow keeps the run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert summary["artifact_uri"] == run.info.artifact_uri

    # resume: the same MLflow run continues; the final encoder is logged as a model. A
    # remedy for divergence may change on a resume: params are write-once, so the change is
    # a tag and the first values stay the params. tracking.* may change on a resume:
    # tracking.log_checkpoints=true uploads the checkpoints from now on (steps 6 and 8), and
    # the run keeps those the run folder keeps (train.keep_checkpoints=1: step 8)
    resume = [*args, "--resume", str(out), "train.max_steps=8", "optim.grad_clip=1.0"]
    keep_one = ["train.checkpoint_every=2", "train.keep_checkpoints=1"]
    assert main([*resume, *keep_one, "tracking.log_checkpoints=true"]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000008.pt"]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/step-00000008.pt"
    ]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert json.loads(runs[0].data.tags["resume_changes"]) == [
        {"step": 4, "changes": {"optim.grad_clip": [None, 1.0]}}
    ]
    assert runs[0].data.params["optim.grad_clip"] == "None"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert max(steps) == 8
    assert runs[0].info.status == "FINISHED"
    models = (
        mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
        if hasattr(mlflow, "search_logged_models")
        else None
    )
    if models is not None:
        assert any(m.source_run_id == run_id and m.name == "encoder" for m in models)
    # the model page shows the final metrics (step 8, where the stopped run measured its
    # final weights), not the ones from before training
    (model_id,) = {o.model_id for o in client.get_run(run_id).outputs.model_outputs}
    linked = {
        m.key: (m.step, m.value)
        for m in client.get_logged_model(model_id).metrics
        if not m.key.startswith("system/")
    }
    (final_knn,) = [m for m in client.get_metric_history(run_id, "knn/accuracy") if m.step == 8]
    assert linked["knn/accuracy"] == (8, final_knn.value)
    assert linked["final/knn_accuracy"] == (8, final_knn.value)
    assert linked["train/loss"] == linked["final/loss"]
    assert linked["train/loss"][0] == 8
    # logging the channels_last encoder as a torch.export model warns nothing
    assert not [w for w in recwarn if "complete tensor" in str(w.message)]


def test_a_full_disk_at_a_checkpoint_is_an_error_naming_the_file(
    store, tmp_path, capsys, monkeypatch
):
    import errno
    import os

    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while a checkpoint is written
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".step-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    args = ["pretrain", "--tracking", "none", "--data", str(store), "--out", str(out), *TINY]
    assert main([*args, "train.max_steps=4", "knn.every=0"]) == 2
    err = capsys.readouterr().err
    target = out / "checkpoints" / "step-00000004.pt"
    assert f"error: could not write {target}: no space left on the device (it needs" in err
    assert "Traceback" not in err
    assert list((out / "checkpoints").iterdir()) == []  # the temporary file is gone
