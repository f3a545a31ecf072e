"""Shared fixtures of the evaluation tests (none is autouse, so the other eval tests are
unaffected): a tiny synthetic CT store and single-threaded torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from radengine.data.builtin import write_synthetic_ct_store


@pytest.fixture(scope="session")
def ct_store(tmp_path_factory) -> Path:
    """10 patients x 6 regions x 4 slices of 32 px: 8 train, 1 val, 1 test patients."""
    path = tmp_path_factory.mktemp("eval-stores") / "ct"
    write_synthetic_ct_store(path, patients=10, slices=4, size=32)
    return path


@pytest.fixture(scope="session")
def small_ct_store(tmp_path_factory) -> Path:
    """2 patients: too few for a validation split."""
    path = tmp_path_factory.mktemp("eval-stores") / "ct2"
    write_synthetic_ct_store(path, patients=2, slices=2, size=32)
    return path
