"""Built-in synthetic stores: determinism, kill -9 and resume, the cache, and the
`radengine synth` / `radengine store` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radengine.cli import main
from radengine.data import builtin
from radengine.data.store import Store
from tests.data.util import kill_when_exists, tree_bytes


def test_ct_store_is_deterministic_and_labelled(tmp_path):
    a = builtin.write_synthetic_ct_store(tmp_path / "a", patients=2, slices=4, size=48, seed=3)
    builtin.write_synthetic_ct_store(tmp_path / "b", patients=2, slices=4, size=48, seed=3)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert len(a) == 2 * 6 * 4 and a.meta["synthetic"] is True
    np.testing.assert_array_equal(a.index["label"], a.index["region"])
    assert sorted(set(a.index["label"].tolist())) == list(range(6))
    assert a.arrays["mask"].dtype == "uint8" and a.get(0, "mask").shape == (48, 48)
    assert a.verify() == []


def test_kill_and_resume_gives_the_identical_store(tmp_path):
    args = dict(patients=12, slices=12, size=96, seed=1)
    builtin.write_synthetic_ct_store(tmp_path / "ref", **args)
    out = tmp_path / "killed"
    code = (
        "from radengine.data import builtin\n"
        f"builtin.write_synthetic_ct_store({str(out)!r}, **{args!r})\n"
    )
    kill_when_exists(code, out / "shards" / "000001.json")
    store = Store(out, inspect=True)
    assert not store.finished, "killed before the end, so the store must be unfinished"
    builtin.write_synthetic_ct_store(out, **args)  # the rerun resumes
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")


def test_builtin_store_is_built_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADENGINE_CACHE", str(tmp_path / "cache"))
    s1 = builtin.builtin_store("natural", progress=False, images=40, size=32)
    stamp = (s1.path / "store.json").stat().st_mtime_ns
    s2 = builtin.builtin_store("natural", progress=False, images=40, size=32)
    assert s1.path == s2.path and s1.path.parent == tmp_path / "cache"
    assert (s2.path / "store.json").stat().st_mtime_ns == stamp
    assert s2.kind == "images" and len(s2) == 40 and s2.get(0).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown natural synthetic parameter"):
        builtin.builtin_store("natural", patients=3)
    with pytest.raises(ValueError, match="domain must be"):
        builtin.builtin_store("mri")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("RADENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert builtin.cache_dir() == tmp_path / "radengine"
    monkeypatch.setenv("RADENGINE_CACHE", str(tmp_path / "x"))
    assert builtin.cache_dir() == tmp_path / "x"


def test_cli_synth_info_verify(tmp_path, capsys):
    out = tmp_path / "ct"
    assert (
        main(["synth", "ct", "--out", str(out), "--patients", "1", "--slices", "3", "--size", "40"])
        == 0
    )
    assert "wrote 18 synthetic ct images" in capsys.readouterr().out
    assert main(["store", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["slices"] == 18 and info["classes"]["thorax"] == 3
    assert main(["store", "verify", str(out)]) == 0
    shard = out / "shards" / "000000.image.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["store", "verify", str(out)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
    assert main(["store", "info", str(tmp_path / "missing")]) == 2  # not a store: exit 2
    assert "does not exist" in capsys.readouterr().err
