"""Ingest end to end: ImageFolder and CT (synthetic DICOM + NIfTI) into stores; bad files
reported and skipped; kill and resume; no identifier in the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radengine.cli import main
from radengine.data import ingest
from radengine.data.store import Store
from radengine.data.synthetic import synthetic_natural
from tests.data.util import kill_when_exists, tree_bytes


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
    assert main(["ingest", "images", str(empty), "--out", str(tmp_path / "s2")]) == 2
    assert "nothing could be ingested" in capsys.readouterr().err


def test_plan_is_deterministic():
    units = [
        ingest.Unit("dicom", f"k{i:02d}", n, None) for i, n in enumerate([5, 300, 20, 700, 1, 1])
    ]
    plan = ingest.plan_shards(list(reversed(units)), 400)
    assert [[u.key for u in s] for s in plan] == [["k00", "k01", "k02", "k03"], ["k04", "k05"]]


# --------------------------------------------------------------------------- CT


@pytest.fixture
def dicom_archive(tmp_path):
    pytest.importorskip("pydicom")
    from radengine.data.dicom_synth import available_variants, write_synthetic_dicom

    root = tmp_path / "archive"
    with pytest.warns(UserWarning) if len(available_variants()) < 13 else _nothing():
        write_synthetic_dicom(root / "dicom", num_patients=2, slices_per_series=6, size=64, seed=5)
    return root


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_ingest_ct_end_to_end(dicom_archive, tmp_path, capsys):
    secret = tmp_path / "secret"
    out = tmp_path / "ct-store"
    code = main(
        ["ingest", "ct", str(dicom_archive), "--out", str(out), "--size", "32",
         "--secret", str(secret), "--workers", "2", "--shard-slices", "20"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed
    store = Store(out)
    assert store.finished and store.verify() == [] and store.arrays["image"].shape == (32, 32)
    assert len(np.unique(store.index["patient"])) == 2
    assert np.all(store.index["region"] >= -1)
    errors = (tmp_path / "ct-store.ingest" / "errors.jsonl").read_text()
    for reason in ("modality MR, not CT", "not a DICOM file", "mixed sizes in one series"):
        assert reason in errors, reason
    assert "modality MR, not CT" in printed
    # No identifier of the archive reaches the store, in any file.
    blob = b"".join(tree_bytes(out).values())
    for needle in (
        b"SYNTH^PATIENT",
        b"SYNTH-ID-",
        b"SYNACC",
        b"Synthetic General Hospital",
        # whole birth dates (dicom_synth: 19500101, 19510202, ...): a 4-digit year also
        # turns up by chance in the hex of the keyed hashes (a fresh secret per run)
        b"19500101",
        b"19510202",
    ):
        assert needle not in blob, needle
    assert not secret.is_relative_to(out)


def test_ingest_ct_kill_and_resume(dicom_archive, tmp_path):
    args = dict(size=32, shard_slices=6, secret=str(tmp_path / "secret"), progress=False)
    ingest.ingest_ct([dicom_archive], tmp_path / "ref", workers=1, **args)
    out = tmp_path / "killed"
    code = (
        "from radengine.data import ingest\n"
        f"ingest.ingest_ct([{str(dicom_archive)!r}], {str(out)!r}, workers=1, **{args!r})\n"
    )
    kill_when_exists(code, out / "shards" / "000002.json")
    assert not Store(out, inspect=True).finished
    again = ingest.ingest_ct([dicom_archive], out, workers=2, **args)
    assert again.shards_reused >= 3
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")


def test_ingest_ct_nifti_and_hu(tmp_path):
    nib = pytest.importorskip("nibabel")
    from radengine.data.synthetic import generate_ct_series
    from radengine.ops import resize

    series = generate_ct_series(0, "abdomen", num_slices=5, size=40, seed=2)
    vol = np.ascontiguousarray(series.images.transpose(2, 1, 0)[::-1, ::-1])  # to RAS (x, y, z)
    d = tmp_path / "nii" / "case01"
    d.mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([0.8, 0.8, 2.0, 1.0])), d / "ct.nii.gz")
    s = ingest.ingest_ct([tmp_path / "nii"], tmp_path / "store", size=20, workers=1,
                         secret=tmp_path / "secret", progress=False)  # fmt: skip
    store = Store(tmp_path / "store")
    assert s.slices == 5 and len(store) == 5
    got = store.images(np.arange(5))
    import torch

    expected = resize(torch.from_numpy(series.images), 20).numpy()
    # Slices come out in ascending z, the volume's index order here.
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(np.diff(store.index["slice_position"]), 2.0)
    np.testing.assert_allclose(store.index["pixel_spacing"], 0.8 * np.ones((5, 2)), rtol=1e-6)
    assert "case01" not in store.column("patient", [0])[0]


def test_cli_synth_dicom_then_ingest(tmp_path, capsys):
    pytest.importorskip("pydicom")
    dcm = tmp_path / "dcm"
    assert (
        main(
            [
                "synth",
                "ct",
                "--dicom",
                "--out",
                str(dcm),
                "--patients",
                "1",
                "--slices",
                "4",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "synthetic DICOM files" in capsys.readouterr().out
    out = tmp_path / "store"
    assert (
        main(
            [
                "ingest",
                "ct",
                str(dcm),
                "--out",
                str(out),
                "--size",
                "32",
                "--secret",
                str(tmp_path / "k"),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert Store(out).verify() == []


def test_file_lists(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# archive part 1\na.dcm\n\n{tmp_path / 'b'}\n")
    assert ingest.expand_sources([f"@{listing}", tmp_path / "c"]) == [
        tmp_path / "a.dcm", tmp_path / "b", tmp_path / "c",
    ]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="file list not found"):
        ingest.expand_sources(["@" + str(tmp_path / "missing.txt")])


def test_ingest_ct_parallel_equals_serial(tmp_path):
    """Above 256 files the header scan also runs in the worker pool; same store either way."""
    pytest.importorskip("pydicom")
    from radengine.data.dicom_synth import available_variants, write_synthetic_dicom

    files = write_synthetic_dicom(tmp_path / "dcm", 3, 8, 32, seed=9, variants=available_variants())
    assert len(files) > 256
    args = dict(size=16, secret=tmp_path / "secret", progress=False)
    a = ingest.ingest_ct([tmp_path / "dcm"], tmp_path / "a", workers=1, **args)
    b = ingest.ingest_ct([tmp_path / "dcm"], tmp_path / "b", workers=2, **args)
    assert a.slices == b.slices > 0 and a.skipped_by_reason == b.skipped_by_reason
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_summary_names_the_fix(dicom_archive, tmp_path, monkeypatch, capsys):
    from radengine.data import dicom

    real = dicom.scan_dicom

    def scan_with_undecodable(*args, **kwargs):
        refs, skipped = real(*args, **kwargs)
        why = "cannot decode transfer syntax JPEG 2000 (1.2.840.10008.1.2.4.90): no decoder"
        return refs, [*skipped, dicom.Skipped("x.dcm", why, dicom.DICOM_EXTRA_HINT)]

    monkeypatch.setattr(dicom, "scan_dicom", scan_with_undecodable)
    args = ["ingest", "ct", str(dicom_archive), "--out", str(tmp_path / "s"), "--workers", "1"]
    assert main([*args, "--size", "16", "--secret", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert f"cannot decode transfer syntax JPEG 2000 (to fix: {dicom.DICOM_EXTRA_HINT})" in out
