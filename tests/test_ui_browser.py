"""The MLflow UI that `radengine ui` serves, rendered by a real browser (headless Chromium):
an experiment radengine creates opens in MLflow 3's training runs view (the runs table with
the run), not the GenAI view (traces), because radengine tags it
``mlflow.experimentKind = custom_model_development``.

Uses the helpers of scripts/screenshots.py (the docs' screenshots come from the same code).
Skipped without Chromium (Debian's package ``chromium``). About 20-40 s on 2 busy cores:
the UI's start dominates.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "screenshots.py"
RUN_NAME = "ui-browser-probe"


def _screenshots():
    """scripts/screenshots.py as a module (scripts/ is not a package)."""
    name = "radengine_docs_screenshots"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shots():
    module = _screenshots()
    try:
        module.find_chromium()
    except module.Missing as exc:  # its message names Debian's package, `chromium`
        pytest.skip(str(exc))
    pytest.importorskip("mlflow")
    return module


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite store with one experiment made the way radengine makes it (through its
    Tracker) holding one finished run with a metric."""
    from radengine.tracking import Tracker

    monkeypatch.chdir(tmp_path)  # the experiment's artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "radengine-ui-test") as tracker:
        tracker.start(
            run_name=RUN_NAME,
            tags={"stage": "pretrain", "study": "ui"},
            params={"optim": {"lr": 0.3}},
            system_metrics=False,
        )
        for step, loss in enumerate((2.0, 1.5, 1.2), start=1):
            tracker.log_metrics({"train/loss": loss}, step=step)
    return uri, tracker.experiment_id, tracker.run_id


def test_a_radengine_experiment_opens_in_the_training_runs_view(shots, store):
    import mlflow

    uri, experiment_id, run_id = store
    experiment = mlflow.MlflowClient(uri).get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # MLflow 3.17's UI shows every experiment in the view of its sidebar switch (GenAI in a
    # fresh browser) rather than the one the tag names; the docs tell users to switch to
    # "Model training" once, which the URL below does for this browser.
    chromium = shots.find_chromium()
    with shots.ui_server(uri) as server:
        page = f"{server.url}/#/experiments/{experiment_id}?{shots.TRAINING_VIEW}"
        dom = shots.dump_dom(chromium, page)
    assert server.proc.returncode == 143  # stopped by SIGTERM, cleanly
    assert "radengine-ui-test" in dom  # the experiment's page ...
    assert "Run Name" in dom and RUN_NAME in dom  # ... opens on the runs table, with the run
    assert f"/runs/{run_id}" in dom  # (its name links to the run's page)
    for genai in shots.GENAI_ONLY:  # not the GenAI view's overview (traces, tokens)
        assert genai not in dom, genai
