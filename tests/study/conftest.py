"""Fixtures shared by the study tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean working folder: own cache, one thread, no tracking URI from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RADENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
