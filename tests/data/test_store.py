"""The store: atomic shards, resume after a crash, checksums, random and sequential
access, and deterministic patient-level splits and subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radengine.data.store import ArraySpec, Store, StoreError, StoreWriter

SHAPE = (8, 6)


def shard_data(rng: np.random.Generator, n: int, patients: list[str], first: int = 0):
    images = rng.integers(-1024, 3072, size=(n, *SHAPE), dtype=np.int16)
    masks = rng.integers(0, 4, size=(n, *SHAPE), dtype=np.uint8)
    pats = np.array([patients[i % len(patients)] for i in range(n)])
    cols = {
        "label": rng.integers(-1, 6, n),
        "patient": pats,
        "study": np.char.add(pats, "-s"),
        "series": np.char.add(pats, "-x"),
        "region": rng.integers(-1, 6, n).astype(np.int8),
        "lesion": rng.integers(0, 2, n).astype(np.int8),
        "slice_position": np.arange(first, first + n, dtype=np.float32),
        "pixel_spacing": np.full((n, 2), 0.7, dtype=np.float32),
        "thickness": np.full(n, 1.25, dtype=np.float32),
        "kvp": np.full(n, 120.0, dtype=np.float32),
        "manufacturer": np.array(["acme"] * n),
    }
    return {"image": images, "mask": masks}, cols


def writer(path, **meta):
    arrays = {"image": ArraySpec("int16", SHAPE), "mask": ArraySpec("uint8", SHAPE)}
    return StoreWriter(path, "ct", arrays, {"classes": ["a", "b", "c", "d", "e", "f"], **meta})


def make_store(path, rng, shards=3, per_shard=10, patients_per_shard=3):
    w = writer(path)
    written = []
    for s in range(shards):
        pats = [f"p{s}-{i}" for i in range(patients_per_shard)]
        arrays, cols = shard_data(rng, per_shard, pats, first=100 * s)
        w.write_shard(s, arrays, cols)
        written.append((arrays, cols))
    return w.finish(), written


def test_round_trip_random_and_sequential_access(tmp_path):
    rng = np.random.default_rng(0)
    store, written = make_store(tmp_path / "s", rng)
    assert len(store) == 30 and store.finished and store.kind == "ct"
    all_images = np.concatenate([a["image"] for a, _ in written])
    all_masks = np.concatenate([a["mask"] for a, _ in written])
    for i in rng.permutation(30)[:10]:
        np.testing.assert_array_equal(store.get(int(i)), all_images[i])
        np.testing.assert_array_equal(store.get(int(i), "mask"), all_masks[i])
    idx = rng.permutation(30)[:17]
    np.testing.assert_array_equal(store.images(idx), all_images[idx])
    chunks = list(store.iter_chunks(chunk=7))
    assert [len(i) for i, _ in chunks] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), all_images)
    np.testing.assert_array_equal(store.shard_array(1), written[1][0]["image"])
    np.testing.assert_array_equal(store.index["slice_position"][10:20], np.arange(100, 110))
    assert store.verify() == []
    info = store.info()
    assert info["slices"] == 30 and info["shards"] == 3 and info["patients"] == 9
    assert sum(info["classes"].values()) == 30


def test_crash_leftovers_are_removed_and_resume_gives_the_same_store(tmp_path):
    rng = np.random.default_rng(1)
    full, _ = make_store(tmp_path / "full", np.random.default_rng(1))
    # A "crashed" run: shard 0 committed, shard 1's data written but no manifest, a temp file.
    part = tmp_path / "part"
    w = writer(part)
    datas = []
    for s in range(3):
        pats = [f"p{s}-{i}" for i in range(3)]
        datas.append(shard_data(rng, 10, pats, first=100 * s))
    w.write_shard(0, *datas[0])
    (part / "shards" / "000001.image.bin").write_bytes(b"half a shard")
    (part / "shards" / ".000002.image.bin.tmp-123").write_bytes(b"junk")
    assert not Store(part, inspect=True).finished and len(Store(part, inspect=True)) == 10
    w2 = writer(part)  # the rerun
    assert w2.completed() == {0}
    assert sorted(f.name for f in (part / "shards").iterdir()) == [
        "000000.image.bin", "000000.index.npz", "000000.json", "000000.mask.bin",
    ]  # fmt: skip
    for s in (1, 2):
        w2.write_shard(s, *datas[s])
    resumed = w2.finish()
    names = ["manifest.json", "shards/000001.image.bin", "shards/000002.mask.bin"]
    names += [f"index/{f.name}" for f in (tmp_path / "full" / "index").iterdir()]
    assert len(names) > 10
    for name in names:
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    assert json.loads((part / "store.json").read_text()) == json.loads(
        (tmp_path / "full" / "store.json").read_text()
    )
    assert len(resumed) == len(full) == 30


def test_resume_with_other_settings_is_refused(tmp_path):
    make_store(tmp_path / "s", np.random.default_rng(2))
    with pytest.raises(StoreError, match="other settings"):
        StoreWriter(tmp_path / "s", "ct", {"image": ArraySpec("int16", (9, 9))})


def test_verify_finds_corruption(tmp_path):
    make_store(tmp_path / "s", np.random.default_rng(3))
    p = tmp_path / "s" / "shards" / "000001.image.bin"
    data = bytearray(p.read_bytes())
    data[5] ^= 0xFF
    p.write_bytes(bytes(data))
    (tmp_path / "s" / "shards" / "000002.mask.bin").write_bytes(b"short")
    problems = Store(tmp_path / "s").verify()
    assert any("000001.image.bin: checksum mismatch" in p for p in problems)
    assert any("000002.mask.bin: 5 bytes" in p for p in problems)


def test_bad_shards_are_rejected(tmp_path):
    w = writer(tmp_path / "s")
    arrays, cols = shard_data(np.random.default_rng(4), 4, ["p"])
    with pytest.raises(ValueError, match="array 'image': expected int16"):
        w.write_shard(0, {**arrays, "image": arrays["image"].astype(np.int32)}, cols)
    with pytest.raises(ValueError, match="index columns missing: \\['patient'\\]"):
        w.write_shard(0, arrays, {k: v for k, v in cols.items() if k != "patient"})
    with pytest.raises(ValueError, match="'kvp' has 3 rows"):
        w.write_shard(0, arrays, {**cols, "kvp": cols["kvp"][:3]})
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError, match=r"store\.json not found"):
        Store(tmp_path / "x")


def test_splits_are_patient_level_deterministic_and_nested(tmp_path):
    store, _ = make_store(
        tmp_path / "s", np.random.default_rng(5), shards=10, patients_per_shard=10
    )
    pat = store.index["patient"]
    splits = {s: store.select(s, seed=7) for s in ("train", "val", "test")}
    sets = {s: set(pat[i]) for s, i in splits.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    assert len(sets["train"]) == 80 and len(sets["val"]) == 10 and len(sets["test"]) == 10
    assert sum(len(i) for i in splits.values()) == len(store)
    np.testing.assert_array_equal(store.select("train", seed=7), splits["train"])
    assert set(pat[store.select("train", seed=8)]) != sets["train"]
    ten, one = (
        store.select("train", fraction=0.1, seed=7),
        store.select("train", fraction=0.01, seed=7),
    )
    assert len(set(pat[ten])) == 8 and len(set(pat[one])) == 1
    assert set(pat[one]) <= set(pat[ten]) <= sets["train"]
    labelled = store.select(labelled=True)
    assert np.all(store.index["label"][labelled] >= 0)
    with pytest.raises(ValueError, match="fraction must be in"):
        store.select("train", fraction=0.0)
    with pytest.raises(ValueError, match="split must be one of"):
        store.select("validation")


# --------------------------------------------------------------------------- format version 2


def _as_version_1(path):
    """Rewrite a store as radengine wrote version 1: index.npz (the shards' columns as
    stored, concatenated, plus ``shard``), no index/ or manifest.json, store.json version 1."""
    import shutil

    manifests = [json.loads(f.read_text()) for f in sorted((path / "shards").glob("*.json"))]
    parts = []
    for m in manifests:
        with np.load(path / "shards" / m["files"]["index"]["file"]) as z:
            cols = {k: z[k] for k in z.files}
        cols["shard"] = np.full(m["count"], m["shard"], dtype=np.int32)
        parts.append(cols)
    np.savez(path / "index.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    shutil.rmtree(path / "index")
    (path / "manifest.json").unlink()
    meta = json.loads((path / "store.json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("digest", "index")} | {"version": 1}
    (path / "store.json").write_text(json.dumps(meta))


def _old_select(store, patients_by_row, split, fraction, seed):
    """Version 1's select, on the patient strings: np.isin over every row's key."""
    import hashlib

    def score(keys):
        return np.array([
            int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{k}".encode()).digest()[:8], "little")
            / 2.0**64 for k in keys
        ])  # fmt: skip

    patients = np.unique(patients_by_row)
    salt = "split"
    ranked = patients[np.argsort(score(patients), kind="stable")]
    bounds = np.round(np.cumsum((0.8, 0.1, 0.1)) * len(ranked)).astype(int)
    i = ("train", "val", "test").index(split)
    chosen = ranked[(0 if i == 0 else bounds[i - 1]) : bounds[i]]
    if fraction < 1.0:
        salt = "subset"
        chosen = chosen[np.argsort(score(chosen), kind="stable")][
            : max(1, round(fraction * len(chosen)))
        ]
    return np.flatnonzero(np.isin(patients_by_row, chosen))


def test_version_2_index_is_mapped_coded_and_selects_as_version_1(tmp_path):
    store, written = make_store(
        tmp_path / "s", np.random.default_rng(11), shards=6, patients_per_shard=7
    )
    assert store.version == 2 and json.loads((tmp_path / "s" / "store.json").read_text())["count"]
    assert isinstance(store.index["label"], np.memmap)  # mapped, not read into the process
    assert store.index["patient"].dtype == np.int32 and store.index["label"].dtype == np.int32
    assert store.index["slice_position"].dtype == np.float32
    patients = np.concatenate([c["patient"] for _, c in written])
    np.testing.assert_array_equal(store.column("patient"), patients)
    np.testing.assert_array_equal(store.keys("patient"), np.unique(patients))
    np.testing.assert_array_equal(store.column("manufacturer", [0, 5]), ["acme", "acme"])
    with pytest.raises(KeyError, match="not a string column"):
        store.keys("label")
    for split in ("train", "val", "test"):
        for fraction in (1.0, 0.3, 0.01):
            np.testing.assert_array_equal(
                store.select(split, fraction=fraction, seed=5),
                _old_select(store, patients, split, fraction, 5),
            )
    # a Store crosses processes as its path, not as its mapped columns
    import pickle

    blob = pickle.dumps(store)
    assert len(blob) < 1000 and len(pickle.loads(blob)) == len(store)


def test_opening_reads_a_handful_of_files_not_one_per_shard(tmp_path, monkeypatch):
    import builtins

    make_store(tmp_path / "s", np.random.default_rng(12), shards=40, per_shard=5)
    opened = []
    real = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    store = Store(tmp_path / "s")
    store.select("train", fraction=0.5)
    monkeypatch.undo()
    assert not [f for f in opened if "/shards/" in f and f.endswith(".json")]
    files = set(opened)  # store.json, each column (mapped), the shards and key tables
    assert len(files) <= 2 + len(store.index) + 4, sorted(files)


def test_version_1_stores_are_read_and_upgraded_in_place(tmp_path, capsys):
    from radengine.cli import main

    path = tmp_path / "s"
    store, _ = make_store(path, np.random.default_rng(13), shards=4)
    before = {
        "digest": store.digest(),
        "train": store.select("train", fraction=0.5, seed=3),
        "patients": store.column("patient"),
        "images": store.images(np.arange(len(store))),
        "kvp": np.asarray(store.index["kvp"]),
    }
    _as_version_1(path)
    old = Store(path)
    assert old.version == 1 and old.verify() == []
    for s in (old,):  # version 1 reads the same as version 2
        assert s.digest() == before["digest"]
        np.testing.assert_array_equal(s.select("train", fraction=0.5, seed=3), before["train"])
        np.testing.assert_array_equal(s.column("patient"), before["patients"])
    assert main(["store", "info", str(path)]) == 0
    assert "store upgrade" in capsys.readouterr().out
    assert main(["store", "upgrade", str(path)]) == 0
    assert "format version 1 -> 2" in capsys.readouterr().out
    new = Store(path)
    assert new.version == 2 and new.verify() == [] and not (path / "index.npz").exists()
    assert new.digest() == before["digest"]
    np.testing.assert_array_equal(new.select("train", fraction=0.5, seed=3), before["train"])
    np.testing.assert_array_equal(new.column("patient"), before["patients"])
    np.testing.assert_array_equal(new.images(np.arange(len(new))), before["images"])
    np.testing.assert_array_equal(new.index["kvp"], before["kvp"])
    assert main(["store", "upgrade", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_upgrade_refuses_an_unfinished_store_and_verify_catches_a_stale_index(tmp_path, capsys):
    from radengine.cli import main

    w = writer(tmp_path / "u")
    arrays, cols = shard_data(np.random.default_rng(0), 4, ["a"])
    w.write_shard(0, arrays, cols)
    assert main(["store", "upgrade", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and "Traceback" not in err

    make_store(tmp_path / "s", np.random.default_rng(14))
    labels = tmp_path / "s" / "index" / "label.npy"
    data = np.load(labels)
    data[0] += 1
    np.save(labels, data)
    problems = Store(tmp_path / "s").verify()
    assert any("label.npy: does not match" in p for p in problems), problems
    (tmp_path / "s" / "index" / "patient.npy").unlink()
    with pytest.raises(StoreError, match="store upgrade"):
        Store(tmp_path / "s")
    assert main(["store", "upgrade", str(tmp_path / "s")]) == 0  # rebuilt from the shards
    assert Store(tmp_path / "s").verify() == []


# What radengine's version-1 code (commit ff92632) wrote and selected for the fixture
# tests/data/fixtures/store-v1, made by that code: version 2 must read and upgrade it to
# the same content, splits and digest.
V1_FIXTURE = Path(__file__).parent / "fixtures" / "store-v1"
V1_DIGEST = "85e94c6b706579d8b26943a017d12cd0f12f9d23d713d1e3b451dd1ac8668d93"
V1_SELECT = {
    ("train", 1.0): [0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 14, 16, 17],
    ("val", 1.0): [12, 15],
    ("test", 1.0): [7, 10],
    ("train", 0.5): [0, 2, 3, 5, 6, 9, 13, 16],
}


def test_a_store_written_by_version_1_code_reads_and_upgrades_the_same(tmp_path, capsys):
    import shutil

    from radengine.cli import main

    path = tmp_path / "v1"
    shutil.copytree(V1_FIXTURE, path)
    raw = np.load(path / "index.npz")
    for step in ("read", "upgraded"):
        store = Store(path)
        assert store.version == (1 if step == "read" else 2)
        assert store.digest() == V1_DIGEST and len(store) == 18
        for (split, fraction), rows in V1_SELECT.items():
            assert store.select(split, fraction=fraction, seed=3).tolist() == rows, (step, split)
        assert store.select(labelled=True).tolist() == np.flatnonzero(raw["label"] >= 0).tolist()
        for col in ("patient", "series", "manufacturer"):
            np.testing.assert_array_equal(store.column(col), raw[col])
        np.testing.assert_array_equal(store.index["kvp"], raw["kvp"])  # NaN where unknown
        np.testing.assert_allclose(store.index["slice_position"], raw["slice_position"])
        assert store.verify() == []
        if step == "read":
            assert main(["store", "upgrade", str(path)]) == 0
    assert "format version 1 -> 2 (18 slices in 3 shards" in capsys.readouterr().out
