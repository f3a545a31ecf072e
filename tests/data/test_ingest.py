"""Ingest end to end: ImageFolder and CT (synthetic DICOM + NIfTI) into stores; bad files
reported and skipped; kill and resume; no identifier in the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radengine.cli import main
from radengine.data import ingest
from radengine.data.store import Store
from radengine.data.synthetic import synthetic_natural


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def image_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    data = synthetic_natural(30, num_classes=3, size=48, seed=0)
    root = tmp_path / "folder"
    for i, (img, label) in enumerate(zip(data.images, data.labels, strict=True)):
        d = root / data.class_names[label]
        d.mkdir(parents=True, exist_ok=True)
        # Landscape and portrait sizes, PNG and JPEG.
        pil.fromarray(img).resize((48 + 2 * i, 40)).save(d / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (root / data.class_names[0] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root, data


def test_ingest_images(image_folder, tmp_path, capsys):
    root, data = image_folder
    out = tmp_path / "store"
    code = main(
        ["ingest", "images", str(root), "--out", str(out), "--size", "32", "--workers", "1"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ingested 30 images" in printed and "skipped 1 file(s)" in printed
    store = Store(out)
    assert store.kind == "images" and len(store) == 30 and store.verify() == []
    assert store.classes == sorted(data.class_names[:3])
    assert store.images(np.arange(30)).shape == (30, 32, 32, 3)
    # Labels follow the sorted class folders; every image of a class folder has its label.
    counts = np.bincount(store.index["label"], minlength=3)
    assert counts.sum() == 30 and np.all(counts > 0)
    errors = [
        json.loads(x) for x in (tmp_path / "store.ingest" / "errors.jsonl").read_text().splitlines()
    ]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.jpg")
    assert not any("broken" in p.name for p in out.rglob("*"))


def test_ingest_images_parallel_equals_serial_and_resumes(image_folder, tmp_path):
    root, _ = image_folder
    serial = ingest.ingest_images(
        root, tmp_path / "a", size=24, workers=1, shard_slices=8, progress=False
    )
    ingest.ingest_images(root, tmp_path / "b", size=24, workers=2, shard_slices=8, progress=False)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert serial.shards_written == 4 and serial.slices == 30
    # Simulate a crash after two shards: drop the others' manifests, rerun, same bytes.
    for shard in (2, 3):
        (tmp_path / "b" / "shards" / f"{shard:06d}.json").unlink()
    again = ingest.ingest_images(
        root, tmp_path / "b", size=24, workers=1, shard_slices=8, progress=False
    )
    assert again.shards_reused == 2 and again.shards_written == 2
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_ingest_errors_are_clear(tmp_path, capsys):
    assert main(["ingest", "images", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    assert main(["ingest", "images", str(empty), "--out", str(tmp_path / "s2")]) == 1
    assert "nothing could be ingested" in capsys.readouterr().err


def test_plan_is_deterministic():
    units = [
        ingest.Unit("dicom", f"k{i:02d}", n, None) for i, n in enumerate([5, 300, 20, 700, 1, 1])
    ]
    plan = ingest.plan_shards(list(reversed(units)), 400)
    assert [[u.key for u in s] for s in plan] == [["k00", "k01", "k02", "k03"], ["k04", "k05"]]
