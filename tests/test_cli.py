"""The `radengine` command: info (text and JSON), --version, and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import radengine
from radengine import _native
from radengine.cli import main


def test_info_text(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"radengine {radengine.__version__}" in out
    assert "radengine._cpu" in out and "radengine._cuda" in out
    assert "hu_window on cpu tensors:" in out and "resize on cpu tensors:" in out
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in out


def test_info_json_reports_why_a_backend_is_missing(capsys, monkeypatch):
    monkeypatch.setattr(_native, "cpu", None)
    monkeypatch.setitem(_native.ERRORS, "_cpu", "radengine._cpu failed to import (test)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["native"]["radengine._cpu"] == {
        "loaded": False,
        "reason": "radengine._cpu failed to import (test)",
        "build": _native.BUILD_INFO.get("cpu", {}),
    }
    assert data["backends"]["hu_window"]["cpu"]["cpu"] == "radengine._cpu failed to import (test)"
    assert data["default_backend"]["hu_window"]["cpu"] == "reference"
    assert data["tracking_uri"] == "http://tracking.example:5000"


def test_version_and_usage(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == radengine.__version__
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["no-such-verb"])
    assert exc.value.code == 2


def test_console_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "radengine.cli", "info"], capture_output=True, text=True, check=True
    )
    assert "op backends" in out.stdout


def test_percent_is_the_one_format_for_people():
    from radengine.fmt import percent

    assert percent(0.8854) == "88.54%"
    assert percent(1.0) == "100.00%"
    assert percent(0.123456, 1) == "12.3%"
    assert [percent(v) for v in (None, float("nan"), float("inf"))] == ["n/a"] * 3


def test_eval_prints_metrics_in_percent(tmp_path, capsys, monkeypatch):
    """People read percent (MLflow and results.json keep fractions); ~15 s on 2 cores."""
    import re

    from radengine.data.builtin import write_synthetic_ct_store

    monkeypatch.chdir(tmp_path)
    store = write_synthetic_ct_store(tmp_path / "ct", patients=10, slices=2, size=32).path
    argv = ["eval", "knn", "--tracking", "none", "--init", "scratch", "--data", str(store)]
    assert main([*argv, "--seeds", "0,1", "--out", str(tmp_path / "e")]) == 0
    captured = capsys.readouterr()
    assert re.search(r"seed 0 .*test/accuracy \d{1,3}\.\d\d%", captured.out), captured.out
    assert re.search(r"over 2 seeds: \d{1,3}\.\d\d% \+- \d{1,3}\.\d\d%", captured.out)
    assert re.search(r"seed 1: test accuracy \d{1,3}\.\d\d%, val \d{1,3}\.\d\d%", captured.err)
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    accuracy = results["seeds"][0]["test"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0  # results.json (like MLflow) keeps fractions
    assert f"test/accuracy {100 * accuracy:.2f}%" in captured.out
