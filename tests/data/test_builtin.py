"""Built-in synthetic stores: determinism, kill -9 and resume, the cache, and the
`radengine synth` / `radengine store` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radengine.cli import main
from radengine.data import builtin, synthetic
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
    args = dict(patients=48, slices=3, size=64, seed=1)  # 3 shards of 16 patients
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


def test_ct_store_groups_patients_and_records_contrast_and_variant(tmp_path):
    s = builtin.write_synthetic_ct_store(tmp_path / "ct", patients=18, slices=1, size=32, seed=2)
    assert len(s) == 18 * 6 and len(s.patients()) == 18
    assert sorted(int(k) for k in s.manifests) == [0, 1], "16 patients per shard"
    contrast = s.index["contrast"]
    assert set(contrast.tolist()) <= set(range(len(synthetic.CONTRAST_PHASES)))
    variants = s.column("variant")
    spine = s.index["region"] == synthetic.BODY_REGIONS.index("spine")
    assert set(variants[spine].tolist()) <= {"cervical", "thoracic", "lumbar"}
    assert set(variants[s.index["region"] == 0].tolist()) == {""}
    for p in range(18):  # each patient's series are the generator's, shard grouping or not
        one = synthetic.generate_ct_series(p, "thorax", num_slices=1, size=32, seed=2)
        row = np.flatnonzero(s.column("series") == one.series)
        np.testing.assert_array_equal(s.get(int(row[0])), one.images[0])
        assert s.index["contrast"][row[0]] == synthetic.CONTRAST_PHASES.index(one.contrast)
    assert s.meta["source"]["version"] == builtin.GENERATOR_VERSION


def test_builtin_cache_key_follows_defaults_and_generator_version(tmp_path, monkeypatch):
    monkeypatch.setenv("RADENGINE_CACHE", str(tmp_path / "cache"))
    small = dict(patients=3, slices=1, size=32)
    a = builtin.builtin_store("ct", progress=False, **small)
    assert f"-v{builtin.GENERATOR_VERSION}-" in a.path.name
    assert a.path.name == builtin.builtin_key("ct", **small)
    monkeypatch.setitem(builtin.CT_DEFAULTS, "seed", 7)  # a changed default: a new store
    b = builtin.builtin_store("ct", progress=False, **small)
    assert b.path != a.path and b.meta["source"]["seed"] == 7
    monkeypatch.setattr(builtin, "GENERATOR_VERSION", builtin.GENERATOR_VERSION + 1)
    c = builtin.builtin_store("ct", progress=False, **small)
    assert (
        c.path not in (a.path, b.path) and c.meta["source"]["version"] == builtin.GENERATOR_VERSION
    )


def test_default_ct_store_sizes():
    """The built-in CT store is sized so that its test split measures a few points: many
    patients, one slice per series, and about as many slices as pretraining has always used."""
    d = builtin.CT_DEFAULTS
    patients = d["patients"]
    assert patients >= 500 and d["slices"] == 1 and d["size"] <= 96
    slices = patients * len(synthetic.BODY_REGIONS) * d["slices"]
    assert 3000 <= slices <= 3700
    assert round(0.1 * patients) >= 50, "test split: >= 50 patients"


def test_pretraining_never_sees_validation_or_test_patients(tmp_path, monkeypatch):
    """Pretraining reads Store.select("train"), the same patient-level split evaluation uses:
    no val or test patient is in any stage's loader."""
    import torch

    from radengine.config import load_pretrain_config
    from radengine.engine import distributed
    from radengine.engine.stages import build_stages
    from radengine.eval.tasks import build_task

    monkeypatch.setenv("RADENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(builtin.CT_DEFAULTS, "patients", 40)
    monkeypatch.setitem(builtin.CT_DEFAULTS, "size", 32)
    dist = distributed.DistInfo(0, 1, 0, torch.device("cpu"), False)
    for overrides in (["optim.batch_size=8"], ["optim.batch_size=8", "stages=[{epochs: 1}]"]):
        cfg = load_pretrain_config(overrides=[*overrides, "data.workers=0"])
        stages = build_stages(cfg, dist)
        store = stages[0].sources[0].store
        assert store.path.parent == tmp_path / "cache"
        task = build_task(store, "body_region", "linear")
        seen = {
            p
            for st in stages
            for src in st.sources
            for p in src.store.column("patient", src.indices).tolist()
        }
        held_out = set(
            store.column("patient", np.concatenate([task.splits["val"], task.splits["test"]]))
        )
        train = set(store.column("patient", task.splits["train"]).tolist())
        assert seen == train and not seen & held_out and len(held_out) >= 8
