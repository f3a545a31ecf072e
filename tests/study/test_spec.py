"""Study specs: the shipped studies expand without their data, the schema's key checks name
the closest key, and content keys change with what decides a job's result only."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from radengine.cli import main
from radengine.config import ConfigError, load_pretrain_config, to_dict
from radengine.study.jobs import content_key
from radengine.study.spec import experiments_dir, find_spec, load_study

ROW_KEYS = {"id", "kind", "init", "task", "protocol", "label_fraction", "seed", "status"}

TINY = """
name: tiny
stores: {ct: null, natural: {domain: natural}}
pretrain:
  overrides: {optim.epochs: 2, augment.size: 32}
inits:
  scratch: scratch
  simclr: {data: ct, fractions: [1.0, 0.1]}
  seq: {stages: [natural, ct]}
  moco: {weights: moco.pth, format: moco}
  model: {model: "models:/imagenet/1"}
input: {size: 32}
evals:
  - protocols: [linear, segment]
    tasks: [body_region, segmentation]
    label_fractions: [1.0, 0.5]
    seeds: [42, 1]
    data: ct
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize(
    "name, pretrains, evals",
    [("mini", 3, 160), ("study_a", 9, 240), ("study_b", 0, 220), ("methods_ct", 8, 216)],
)
def test_shipped_studies_expand_without_data(name, pretrains, evals, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: every job is to do
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["study", "run", name, "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["kind"] == "pretrain" for r in rows) == pretrains
    assert sum(r["kind"] == "eval" for r in rows) == evals
    assert all(set(r) >= ROW_KEYS and r["status"] == "to do" for r in rows)
    assert len({r["id"] for r in rows}) == len(rows) == len({r["key"] for r in rows})
    pretrain_ids = {r["id"] for r in rows if r["kind"] == "pretrain"}
    assert {r["depends_on"] for r in rows if r["depends_on"]} <= pretrain_ids
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_study_a_pretrainings_are_the_shipped_configs():
    study = load_study("study_a")
    jobs = {j.init: j for j in study.jobs if j.kind == "pretrain"}
    assert set(jobs) == {
        "simclr_ct_100pct",
        "simclr_ct_10pct",
        "simclr_ct_1pct",
        "simclr_ct_0p1pct",
        "simclr_imagenet_100pct",
        "simclr_imagenet_10pct",
        "simclr_imagenet_1pct",
        "imagenet_then_ct",
        "mixed",
    }
    pre = experiments_dir() / "pretrain"
    for init, shipped in [
        ("simclr_ct_10pct", "study_a_ct_10pct"),
        ("simclr_ct_0p1pct", "study_a_ct_0p1pct"),
        ("simclr_imagenet_1pct", "study_a_imagenet_1pct"),
        ("imagenet_then_ct", "study_a_imagenet_then_ct"),
        ("mixed", "study_a_mixed"),
    ]:
        assert jobs[init].config == to_dict(load_pretrain_config(pre / f"{shipped}.yaml")), init
    evals = [j for j in study.jobs if j.kind == "eval"]
    assert {(j.protocol, j.label_fraction) for j in evals} == {
        (p, f) for p in ("linear", "finetune") for f in (1.0, 0.5, 0.1)
    }
    ft = next(j for j in evals if j.protocol == "finetune")
    assert ft.config["finetune"]["optimizer"] == "lars" and ft.config["input"]["size"] == 256
    assert ft.config["tracking"]["experiment"] == "study_a"  # the recipe's; the launcher sets it


def test_expansion(spec):
    study = load_study(spec)
    kinds = [j.kind for j in study.jobs]
    assert kinds == ["pretrain"] * 3 + ["eval"] * (6 * 2 * 2 * 2)  # pretrainings first
    assert study.init_names["simclr"] == ["simclr_100pct", "simclr_10pct"]
    seq = next(j for j in study.jobs if j.init == "seq")
    assert [(s["domain"], s["epochs"]) for s in seq.config["stages"]] == [
        ("natural", 1),
        ("ct", 1),
    ]
    assert seq.data_label == "natural -> ct"
    ten = next(j for j in study.jobs if j.init == "simclr_10pct")
    assert ten.config["data"]["fraction"] == 0.1 and ten.config["study"] == "tiny"
    evals = [j for j in study.jobs if j.kind == "eval"]
    # linear runs classification tasks, segment segmentation: the other pairs are left out
    assert {(j.protocol, j.task) for j in evals} == {
        ("linear", "body_region"),
        ("segment", "segmentation"),
    }
    moco = next(j for j in evals if j.init == "moco")
    assert moco.init_source == str(spec.parent / "moco.pth")
    assert moco.config["init"]["format"] == "moco"
    dependent = next(j for j in evals if j.init == "simclr_10pct")
    assert dependent.depends_on == ten.id and dependent.init_source is None
    assert all(j.config["input"]["size"] == 32 and j.config["seeds"] == [j.seed] for j in evals)


def test_content_keys(spec):
    keys = {j.id: j.key for j in load_study(spec).jobs}
    assert keys == {j.id: j.key for j in load_study(spec).jobs}  # stable
    # where and how a job runs is not part of its key
    same = load_study(spec, ["pretrain.overrides.data.workers=1", "evals.0.overrides.cache.dir=x"])
    assert {j.id: j.key for j in same.jobs} == keys
    # an eval setting changes the eval jobs only
    ev = load_study(spec, ["evals.0.overrides.linear.epochs=3"])
    changed = {j.id for j in ev.jobs if j.id not in keys}
    assert changed and all(i.startswith("linear-") for i in changed)
    # a pretraining setting changes that pretraining and every eval that uses it
    pre = load_study(spec, ["inits.seq.overrides.optim.lr=0.1"])
    moved = [j for j in pre.jobs if j.id not in keys]
    assert {j.init for j in moved} == {"seq"} and len(moved) == 1 + 8
    # the data: a store's digest, not its path
    base = {"data": {"store": "/a"}}
    assert content_key("eval", base, "scratch", {"d": "store:1"}) == content_key(
        "eval", {"data": {"store": "/b"}}, "scratch", {"d": "store:1"}
    )
    assert content_key("eval", base, "scratch", {"d": "store:1"}) != content_key(
        "eval", base, "scratch", {"d": "store:2"}
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["evals.0.protocol=knn"],
            "unknown config key 'evals[0].protocol'; did you mean 'evals[0].protocols'?",
        ),
        (
            ["inits.simclr.fraction=[0.5]"],
            "unknown config key 'inits.simclr.fraction'; did you mean 'inits.simclr.fractions'?",
        ),
        (["baseline=scartch"], "'scartch' is not an init of the study; did you mean 'scratch'?"),
        (["evals.0.data=cct"], "unknown store 'cct'; did you mean 'ct'?"),
        (["evals.0.tasks=organ"], "unknown task 'organ'; did you mean 'organs'?"),
        (["evals.0.protocols=lineer"], "unknown protocol 'lineer'; did you mean 'linear'?"),
        (["evals.0.inits=[simclr_5pct]"], "unknown init 'simclr_5pct'"),
        (
            ["pretrain.overrides.optim.epoch=3"],
            "unknown config key 'optim.epoch'; did you mean 'optim.epochs'?",
        ),
        (["evals.0.overrides.linear.epoch=3"], "unknown config key 'linear.epoch'"),
        (["stores.cct=/data/ct"], "no store 'cct' and nothing uses it; did you mean 'stores.ct'?"),
        (["inits.simclr_10pct=scratch"], "names the init 'simclr_10pct', and so does inits.simclr"),
        (["input.sise=64"], "unknown config key 'input.sise'; did you mean 'input.size'?"),
        (["inits.moco.data=ct"], "must be one kind of init"),
        (["evals.0.label_fractions=[0]"], "'evals[0].label_fractions' must be in (0, 1]"),
        (["evals.0.protocols=segment", "evals.0.tasks=organs"], "no protocol of ['segment']"),
        (["evals.0.config=study_a_ctbr_linear"], "is a config for `eval linear`, not segment"),
        (["pretrain.config=study_a_cct"], "did you mean 'study_a_ct'?"),
        (
            ["inits.seq.stages=[natural, ct, ct]", "pretrain.overrides.optim.epochs=2"],
            "3 stages need optim.epochs >= 3",
        ),
    ],
)
def test_spec_errors_name_the_key(spec, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_study(spec, overrides)
    assert message in str(info.value)


def test_cli_errors_exit_2(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", "minni", "--dry-run"]) == 2
    assert "did you mean 'mini'?" in capsys.readouterr().err
    assert main(["study", "run", str(spec), "--dry-run", "evals.0.seed=1"]) == 2
    assert "did you mean 'evals[0].seeds'?" in capsys.readouterr().err
    # running needs the data: a required store, a missing store or weights file
    assert main(["study", "run", "study_a", "--tracking", "none"]) == 2
    assert "stores.ct=PATH" in capsys.readouterr().err
    assert (
        main(["study", "run", "study_b", "stores.medical=/nonexistent", "--tracking", "none"]) == 2
    )
    assert "store /nonexistent does not exist" in capsys.readouterr().err
    assert main(["study", "run", str(spec), "--tracking", "none", "--json"]) == 2
    assert "--json goes with --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_list_and_status(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("mini", "study_a", "study_b"):
        assert name in listed
    assert find_spec("mini") == experiments_dir() / "studies" / "mini.yaml"
    assert main(["study", "status", str(spec), "--tracking", "none"]) == 0
    text = capsys.readouterr().out
    assert "study tiny: 51 jobs" in text and "to do 48" in text
    assert main(["study", "run", str(spec), "--dry-run", "stores.ct=/nonexistent"]) == 0
    assert "pretrain-simclr_100pct" in capsys.readouterr().out


def test_status_from_the_job_folders(spec, tmp_path):
    import os

    from radengine.study.run import StudyTracking, _try_lock, _write_record, refresh_status

    study = load_study(spec)
    out = tmp_path / "out"
    pre, ev = study.jobs[0], study.jobs[-1]
    _write_record(_mkdir(out / ev.id), {"key": ev.key, "status": "done"})
    _write_record(_mkdir(out / study.jobs[1].id), {"key": study.jobs[1].key, "status": "failed"})
    lock = _try_lock(out / pre.id)
    try:
        refresh_status(study, out, StudyTracking(None, False))
        assert pre.status == "running" and ev.status == "done"
        assert study.jobs[1].status == "failed" and "exit" in study.jobs[1].detail
        assert study.jobs[2].status == "to do"
    finally:
        os.close(lock)
    refresh_status(study, out, StudyTracking(None, False))
    assert pre.status == "to do"
    # a record of another key (the spec changed) does not count
    _write_record(out / ev.id, {"key": "0" * 64, "status": "done"})
    refresh_status(study, out, StudyTracking(None, False))
    assert ev.status == "to do"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_one_gpu_per_job_and_the_run_tags(spec, monkeypatch):
    from radengine.study.run import _env, _gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert _gpus() == ["2", "5"]
    job = load_study(spec).jobs[0]
    env = _env(job, "parent-id", "5", None)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert json.loads(env["MLFLOW_RUN_CONTEXT"]) == {
        "study_job_key": job.key,
        "study_job_id": job.id,
        "study_run_id": "parent-id",
        "mlflow.parentRunId": "parent-id",
    }


def test_estimate_of_the_jobs_left_comes_from_done_jobs_like_them():
    from radengine.study.jobs import Job
    from radengine.study.run import estimate_remaining

    def job(kind, protocol, fraction, status, seconds=None):
        return Job(id="j", kind=kind, init="i", init_kind="scratch", key="k", config={},
                   protocol=protocol, label_fraction=fraction, status=status,
                   seconds=seconds)  # fmt: skip

    S = types.SimpleNamespace(jobs=[job("eval", "finetune", 1.0, "to do")])
    assert estimate_remaining(S) is None  # nothing done: no estimate
    S.jobs = [
        job("eval", "finetune", 1.0, "done", 600.0),
        job("eval", "finetune", 0.1, "done", 60.0),
        job("eval", "finetune", 1.0, "to do"),  # like the first: 600 s
        job("eval", "finetune", 0.01, "failed"),  # no 1% done: finetune's mean, 330 s
        job("pretrain", None, None, "to do"),  # nothing like it done
    ]
    text = estimate_remaining(S)
    assert "~16 min for 2 of the 3 jobs left" in text and "1 has no done job" in text


def test_the_methods_study_pretrains_each_method_with_its_recipe():
    study = load_study("methods_ct")
    jobs = {j.init: j for j in study.jobs if j.kind == "pretrain"}
    from radengine.ssl import METHODS

    assert set(jobs) == set(METHODS)
    for name, job in jobs.items():
        assert job.config["method"] == name
    # each method's quick run: its paper's recipe with the quick-run settings over it
    assert jobs["mocov2"].config["ssl"]["queue_size"] == 1024
    assert jobs["byol"].config["optim"]["lr_scaling"] == "sqrt"
    assert jobs["byol"].config["ssl"]["momentum"] == 0.99
    assert jobs["dino"].config["optim"]["name"] == "lars"
    epochs = {name: job.config["optim"]["epochs"] for name, job in jobs.items()}
    assert epochs == {"simclr": 6, "mocov2": 6, "simsiam": 4, "barlowtwins": 3, "vicreg": 3,
                      "mocov3": 2, "byol": 2, "dino": 2}  # fmt: skip
