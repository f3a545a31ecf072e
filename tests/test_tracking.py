"""radengine.tracking: flatten, the disabled tracker (both without mlflow), and, with mlflow,
a full run on a fresh SQLite store per test: params, tags, buffered metrics, dataset inputs,
artifacts, models (logged, loaded back, registered), statuses, resume, and the UI."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from radengine import tracking
from radengine.tracking import Tracker, flatten

REPO = Path(__file__).resolve().parents[1]


def _env_with_repo() -> dict[str, str]:
    """The environment for a subprocess that imports radengine from this checkout."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


# ------------------------------------------------------------------ without mlflow


@dataclasses.dataclass
class _Optim:
    lr: float = 0.1
    betas: tuple = (0.9, 0.999)


def test_flatten_nested_lists_dataclasses_and_limits():
    config = {
        "model": {"arch": "resnet18", "dims": [64, 128], "head": {"hidden": 2048}},
        "optim": _Optim(),
        "data": {"root": Path("/store/ct"), "aug": {}},
        "seed": 7,
        "fraction": 0.1,
        "flag": True,
        "none": None,
        "long": "x" * 7000,
    }
    flat = flatten(config)
    assert flat == {
        "model.arch": "resnet18",
        "model.dims": "[64, 128]",
        "model.head.hidden": "2048",
        "optim.lr": "0.1",
        "optim.betas": "[0.9, 0.999]",
        "data.root": "/store/ct",
        "data.aug": "{}",
        "seed": "7",
        "fraction": "0.1",
        "flag": "True",
        "none": "None",
        "long": "x" * 6000,  # MLflow 3's param value limit
    }
    assert flatten({"a": {"b": 1}}, prefix="cfg", sep="/") == {"cfg/a/b": "1"}
    assert flatten({"xs": [Path("/a"), (1, None)]}) == {"xs": '["/a", [1, null]]'}


def test_sanitize_key():
    assert tracking.sanitize_key("train/loss") == "train/loss"
    assert tracking.sanitize_key("val acc@1 (%)") == "val acc_1 ___"
    assert tracking.sanitize_key("/a//b/../c/") == "a/b/_/c"
    assert tracking.sanitize_key("a:b") == "a_b"  # colons are invalid on Windows servers
    assert tracking.sanitize_key("") == "_"
    assert len(tracking.sanitize_key("k" * 400)) == 250


def test_disabled_tracker_is_a_noop_and_never_imports_mlflow(tmp_path):
    code = (
        "import sys, radengine.tracking as t; tr=t.Tracker(enabled=False); "
        "tr.start(params={'a':1}); tr.log_metrics({'x':1.0}, step=0); tr.finish(); "
        "assert 'mlflow' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env_with_repo(), check=True, timeout=120
    )

    tr = Tracker(enabled=False)
    with tr:
        assert tr.enabled is False
        assert tr.start(params={"a": 1}, tags={"study": "s"}) is None
        assert tr.run_id is None and tr.experiment_id is None
        tr.log_metrics({"x": 1.0}, step=0)
        tr.flush()
        tr.set_tags({"a": 1})
        tr.log_dataset(name="d", path="/p", digest="0", num_samples=1, fraction=1.0, domain="ct")
        tr.log_artifact(tmp_path / "missing.txt")
        tr.log_dict({"a": 1}, "config.yaml")
        tr.log_text("t", "t.txt")
        assert tr.log_model(object()) is None
    assert list(tmp_path.iterdir()) == []  # no store created


def test_tracking_uri_default_and_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.tracking_uri("http://server:5000") == "http://server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db/mlflow")
    assert tracking.tracking_uri() == "postgresql://db/mlflow"
    assert tracking.tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert Tracker().uri == "postgresql://db/mlflow"  # constructing never connects


def test_ui_command(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.ui_command("sqlite:////data/mlflow.db", host="0.0.0.0", port=8080) == [
        sys.executable,
        *("-m", "mlflow", "ui"),
        *("--backend-store-uri", "sqlite:////data/mlflow.db"),
        *("--host", "0.0.0.0", "--port", "8080"),
    ]
    argv = tracking.ui_command()
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert argv[argv.index("--port") + 1] == "5000"


def test_missing_mlflow_errors_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(RuntimeError, match=r"radengine\[tracking\].*--tracking none"):
        tracking.require_mlflow()
    with pytest.raises(RuntimeError, match=r"radengine\[tracking\]"):
        Tracker(uri="sqlite:///unused.db").start()
    monkeypatch.setattr(tracking, "mlflow_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"radengine\[tracking\]"):
        tracking.run_ui()


# ------------------------------------------------------------------ with mlflow


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow SQLite store: creating one runs MLflow's migrations
    (seconds), so each test copies this file instead."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def store(_template_db, tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking URI in tmp_path, with tmp_path as the working directory (so
    artifacts land in tmp_path/mlruns) and no MLFLOW_TRACKING_URI from outside."""
    shutil.copy(_template_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_run_params_tags_metrics_dataset_artifacts(store, tmp_path):
    import yaml

    config = {"model": {"arch": "resnet18", "dims": [64, 128]}, "optim": {"lr": 0.1}, "seed": 3}
    tr = Tracker(store, "study-a", flush_every=3600)
    run_id = tr.start(
        run_name="pretrain-simclr",
        tags={"study": "s1", "stage": "pretrain", "seed": 3, "init": None},
        params=config,
        description="a test run",
    )
    client = _client(store)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "pretrain-simclr"
    assert client.get_experiment(run.info.experiment_id).name == "study-a"
    assert tr.experiment_id == run.info.experiment_id
    # artifacts go under ./mlruns (the working directory's) unless the experiment says otherwise
    assert tr.artifact_uri == run.info.artifact_uri
    assert Path(tr.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "mlruns")
    assert run.data.params == {
        "model.arch": "resnet18",
        "model.dims": "[64, 128]",
        "optim.lr": "0.1",
        "seed": "3",
    }
    tags = run.data.tags
    assert tags["study"] == "s1" and tags["stage"] == "pretrain" and tags["seed"] == "3"
    assert "init" not in tags
    assert tags["mlflow.note.content"] == "a test run"
    assert "mlflow.user" in tags and "mlflow.source.name" in tags  # MLflow's default tags

    for step in range(5):
        tr.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.1 * step}, step=step)
    tr.log_metrics({"val acc@1": 0.5, "diverged": math.nan}, step=4)
    assert client.get_metric_history(run_id, "train/loss") == []  # still buffered
    tr.set_tags({"protocol": "linear"})

    tr.log_dataset(
        name="lidc-train",
        path="/store/lidc",
        digest="sha256:" + "ab" * 32,  # longer than MLflow's 36-character digest field
        num_samples=1000,
        fraction=0.1,
        domain="ct",
        extra={"split": "train"},
    )
    tr.log_dataset(
        name="lidc-val", path="/store/lidc-val", digest="cafe", num_samples=100,
        fraction=1.0, domain="ct", context="val",
    )  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    tr.log_artifact(notes)
    tr.log_artifact(notes, artifact_path="docs")
    tr.log_dict({"model": {"arch": "resnet18", "root": Path("/x"), "sizes": (1, 2)}}, "config.yaml")
    tr.log_dict({"a": 1}, "summary.json")
    tr.log_text("report", "reports/r.txt")
    tr.finish()
    tr.finish()  # idempotent

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.data.tags["protocol"] == "linear"
    assert _history(client, run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert _history(client, run_id, "lr") == [(s, 0.1 * s) for s in range(5)]
    assert _history(client, run_id, "val acc_1") == [(4, 0.5)]  # key sanitised
    (nan,) = client.get_metric_history(run_id, "diverged")
    assert math.isnan(nan.value)  # logged as it is

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    train, val = inputs["lidc-train"], inputs["lidc-val"]
    assert train.dataset.digest == ("sha256:" + "ab" * 32)[:36]
    assert val.dataset.digest == "cafe"
    assert "/store/lidc" in train.dataset.source
    train_tags = {t.key: t.value for t in train.tags}
    assert train_tags["mlflow.data.context"] == "train"
    assert train_tags["digest"] == "sha256:" + "ab" * 32
    assert train_tags["domain"] == "ct" and train_tags["num_samples"] == "1000"
    assert train_tags["split"] == "train"
    assert {t.key: t.value for t in val.tags}["mlflow.data.context"] == "val"
    params = run.data.params  # from the first dataset only
    assert params["data.path"] == "/store/lidc" and params["data.digest"].endswith("ab" * 32)
    assert params["data.num_samples"] == "1000" and params["data.fraction"] == "0.1"

    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"notes.txt", "docs", "config.yaml", "summary.json", "reports"} <= files
    out = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(out.read_text()) == {
        "model": {"arch": "resnet18", "root": "/x", "sizes": [1, 2]}
    }
    out = Path(client.download_artifacts(run_id, "docs/notes.txt", str(tmp_path)))
    assert out.read_text() == "hello"
    out = Path(client.download_artifacts(run_id, "reports/r.txt", str(tmp_path)))
    assert out.read_text() == "report"


def test_prune_artifacts_keeps_the_named_files(store, tmp_path):
    tr = Tracker(store)
    run_id = tr.start(system_metrics=False)
    for name in ("step-1.pt", "step-2.pt", "step-3.pt"):
        (tmp_path / name).write_text(name)
        tr.log_artifact(tmp_path / name, "checkpoints")
    tr.log_artifact(tmp_path / "step-1.pt")  # outside the folder: untouched
    assert tr.prune_artifacts("checkpoints", keep={"step-3.pt"}) == [
        "checkpoints/step-1.pt",
        "checkpoints/step-2.pt",
    ]
    assert tr.prune_artifacts("checkpoints", keep={"step-3.pt"}) == []
    client = _client(store)
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/step-3.pt"
    ]
    assert {a.path for a in client.list_artifacts(run_id)} == {"checkpoints", "step-1.pt"}
    assert Tracker(store, enabled=False).prune_artifacts("checkpoints", keep=()) == []
    tr.finish()


def test_metrics_flush_on_time_and_in_batches(store):
    tr = Tracker(store, flush_every=0.0)  # every call flushes
    run_id = tr.start(system_metrics=True)  # psutil or not: never fails
    client = _client(store)
    tr.log_metrics({"a": 1.0}, step=0)
    assert _history(client, run_id, "a") == [(0, 1.0)]
    tr.flush_every = 3600.0
    tr.log_metrics({f"m{i}": float(i) for i in range(2500)}, step=1)  # > 1000 per batch
    assert client.get_metric_history(run_id, "m0") == []
    tr.flush()
    assert _history(client, run_id, "m2499") == [(1, 2499.0)]
    assert len(client.get_run(run_id).data.metrics) == 2501
    tr.finish()


def test_log_metrics_only_buffers_until_a_flush(store):
    """log_metrics is on the training step's path: it must only append to a buffer, never
    talk to the tracking store per call (checked by counting store calls, not by timing)."""
    tr = Tracker(store, flush_every=3600)
    run_id = tr.start(system_metrics=False)
    calls: list[int] = []
    real = tr._client.log_batch

    def counting(*args, **kwargs):
        calls.append(len(kwargs.get("metrics") or []))
        return real(*args, **kwargs)

    tr._client.log_batch = counting
    for step in range(2000):
        tr.log_metrics({"loss": 0.5, "lr": 0.1, "grad_norm": 1.0, "throughput": 9.0}, step=step)
    assert calls == []  # nothing sent while training
    tr.finish()  # one flush of 8000 metrics, in batches
    assert sum(calls) == 8000 and len(calls) < 20
    assert len(_client(store).get_metric_history(run_id, "loss")) == 2000


def _tiny_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )


def test_log_model_load_and_register(store, monkeypatch):
    import mlflow.pytorch
    import numpy as np
    import torch

    net = _tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    example = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with Tracker(store, "models") as tr:
        run_id = tr.start(params={"seed": 0})
        uri = tr.log_model(net, name="encoder", registered_name="ct-encoder", input_example=example)
        uri_pickled = tr.log_model(net, name="encoder_pickled")
    assert uri.startswith("models:/") and uri_pickled.startswith("models:/")
    assert net.training  # the caller's module is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # global state restored

    client = _client(store)
    run = client.get_run(run_id)
    model_ids = {o.model_id for o in run.outputs.model_outputs}
    assert {uri.split("/")[-1], uri_pickled.split("/")[-1]} <= model_ids
    model = client.get_logged_model(uri.split("/")[-1])
    assert model.experiment_id == run.info.experiment_id and model.source_run_id == run_id
    (version,) = client.search_model_versions("name='ct-encoder'")
    assert str(version.version) == "1"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # models:/ URIs resolve on it
    x = torch.from_numpy(np.random.default_rng(1).random((5, 1, 12, 12), dtype=np.float32))
    with torch.no_grad():
        expected = net.eval()(x)
    for loaded in (
        mlflow.pytorch.load_model(uri),  # pt2: loads without unpickling
        mlflow.pytorch.load_model("models:/ct-encoder/1"),
        tracking.load_model(uri_pickled, uri=store, allow_pickle=True),
    ):
        state = loaded.state_dict()
        assert state.keys() == before.keys()
        assert all(torch.equal(before[k], state[k]) for k in before)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected)  # other batch and spatial size
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") is None


def test_log_model_carries_the_metrics_of_its_step(store):
    # MLflow 3 links the run's metrics at the model's step to the logged model (its model
    # page): the final values, not the ones from before training (step 0).
    import numpy as np

    with Tracker(store, flush_every=3600) as tr:  # metrics still buffered at log_model
        tr.start()
        tr.log_metrics({"knn/accuracy": 0.25, "train/loss": 5.0}, step=0)
        tr.log_metrics({"knn/accuracy": 0.75, "train/loss": 3.5}, step=12)
        uri = tr.log_model(
            _tiny_net(), name="encoder", input_example=np.zeros((2, 1, 8, 8), np.float32), step=12
        )
    model = _client(store).get_logged_model(uri.split("/")[-1])
    assert sorted((m.key, m.step, m.value) for m in model.metrics) == [
        ("knn/accuracy", 12, 0.75),
        ("train/loss", 12, 3.5),
    ]


def test_log_model_of_a_channels_last_module_warns_nothing(store, recwarn):
    # torch.export's archive writer warned "No complete tensor found in the group!" once per
    # conv weight of a channels_last module (weights that do not span their storage).
    import numpy as np
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.Flatten()
    ).to(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous()
    example = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    with Tracker(store) as tr:
        tr.start()
        uri = tr.log_model(net, name="encoder", input_example=example)
    assert not [w for w in recwarn if "complete tensor" in str(w.message)]
    assert not net[0].weight.is_contiguous()  # the caller's module is untouched
    loaded = tracking.load_model(uri, uri=store)
    x = torch.from_numpy(example)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


class _Branchy:
    """Built lazily (torch is imported inside the tests): a module whose forward branches on
    a tensor value in Python, which torch.export cannot trace."""

    @staticmethod
    def make():
        import torch

        class Branchy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.lin(x) if float(x.sum()) > 0 else -self.lin(x)

        return Branchy()


def test_log_model_falls_back_to_pickle_when_export_fails(store, caplog):
    import numpy as np
    import torch

    net = _Branchy.make()
    with Tracker(store) as tr:
        tr.start()
        with caplog.at_level("WARNING", logger="radengine.tracking"):
            uri = tr.log_model(net, name="branchy", input_example=np.ones((2, 4), np.float32))
    assert "logging it pickled instead" in caplog.text
    loaded = tracking.load_model(uri, uri=store, allow_pickle=True)
    x = torch.ones(3, 4)
    torch.testing.assert_close(loaded(x), net(x))
    torch.testing.assert_close(loaded(-x), net(-x))


def test_context_manager_failed_and_killed(store):
    client = _client(store)
    with pytest.raises(ZeroDivisionError), Tracker(store) as tr:
        run_id = tr.start()
        tr.log_metrics({"loss": 1.0}, step=0)
        _ = 1 / 0
    assert client.get_run(run_id).info.status == "FAILED"
    assert _history(client, run_id, "loss") == [(0, 1.0)]  # flushed on the way out

    with pytest.raises(KeyboardInterrupt), Tracker(store) as tr:
        run_id = tr.start()
        raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"


def test_two_runs_in_one_process_and_misuse(store):
    import mlflow

    tr = Tracker(store)
    with pytest.raises(RuntimeError, match="start"):
        tr.log_metrics({"x": 1.0}, step=0)
    first = tr.start(run_name="one")
    with pytest.raises(RuntimeError, match="active run"):
        tr.start()
    tr.finish()
    second = tr.start(run_name="two")
    third = Tracker(store).start(run_name="three")
    tr.finish()
    assert len({first, second, third}) == 3
    assert mlflow.active_run() is None  # no fluent run is ever opened
    client = _client(store)
    assert [client.get_run(r).info.status for r in (first, second, third)] == [
        *("FINISHED", "FINISHED", "RUNNING")
    ]
    with pytest.raises(ValueError, match="status"):
        tr.start()
        tr.finish("DONE")
    tr.finish("KILLED")


def test_resume_continues_the_run_and_rejects_changed_params(store):
    config = {"optim": {"lr": 0.1}, "epochs": 10}
    tr = Tracker(store)
    run_id = tr.start(params=config, tags={"stage": "pretrain"})
    for step in range(3):
        tr.log_metrics({"loss": float(step)}, step=step)
    tr.finish("KILLED")
    client = _client(store)
    assert client.get_run(run_id).info.status == "KILLED"

    changed = {"optim": {"lr": 0.2}, "epochs": 10}
    with pytest.raises(ValueError, match=r"'optim\.lr'.*'0\.1' -> '0\.2'"):
        Tracker(store).start(run_id=run_id, params=changed)
    assert client.get_run(run_id).info.status == "KILLED"  # untouched
    with pytest.raises(ValueError, match="cannot resume"):
        Tracker(store).start(run_id="0" * 32)

    tr = Tracker(store)
    assert tr.start(run_id=run_id, params={**config, "resumed_from": 3}) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    tr.log_metrics({"loss": 3.0}, step=3)
    tr.finish()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _history(client, run_id, "loss") == [(s, float(s)) for s in range(4)]
    assert run.data.params == {"optim.lr": "0.1", "epochs": "10", "resumed_from": "3"}
    assert run.data.tags["stage"] == "pretrain"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_ui_serves_the_store(store):
    """run_ui in a subprocess answers HTTP 200 on the store, then stops (~5-15 s: the
    server's start-up)."""
    Tracker(store).start(run_name="visible")
    port = _free_port()
    code = f"import sys, radengine.tracking as t; sys.exit(t.run_ui({store!r}, port={port}))"
    # Its own process group, so that stopping it also stops the server run_ui started.
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_env_with_repo(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status = response.status
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0].decode(errors="replace")
    assert status == 200, f"mlflow ui did not answer within 60 s:\n{output[-3000:]}"


def test_experiments_open_on_training_runs(store):
    """MLflow 3's UI opens an experiment without `mlflow.experimentKind` in its GenAI view;
    every experiment radengine creates or writes into says it holds model development runs."""
    client = _client(store)
    Tracker(store, "fresh").start(run_name="a")
    fresh = client.get_experiment_by_name("fresh")
    assert fresh.tags["mlflow.experimentKind"] == "custom_model_development"

    old = client.create_experiment("made-before")  # as an older radengine left it
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    Tracker(store, "made-before").start(run_name="b")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
