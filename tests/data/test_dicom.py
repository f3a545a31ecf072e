"""DICOM ingest: header scan, HU conversion, geometry, metadata, bad input, pseudonymisation.

Expected values never come from radengine's own DICOM reader: HU from pydicom's modality LUT on
pydicom's bundled files, and from the synthetic generator (with each variant's documented
transformation) on the synthetic DICOM set; identifiers and tags from pydicom's reading of the
written files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radengine.data import dicom as dicom_mod
from radengine.data.dicom import (
    AIR_HU,
    BODY_REGIONS,
    DICOM_EXTRA_HINT,
    SeriesData,
    SeriesRef,
    Skipped,
    body_region,
    load_series,
    scan_dicom,
)
from radengine.data.dicom_synth import (
    ALL_VARIANTS,
    available_variants,
    plan_synthetic_dicom,
    write_synthetic_dicom,
)
from radengine.data.privacy import Pseudonymizer
from radengine.data.synthetic import generate_ct_series

try:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, get_decoder
except ImportError:  # body_region and the lazy-import test still run
    pydicom = None

needs_pydicom = pytest.mark.skipif(pydicom is None, reason=f"pydicom missing: {DICOM_EXTRA_HINT}")

SECRET = bytes(range(32))
PATIENTS, SLICES, SIZE, SEED = 2, 8, 64, 3
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"


def region_id(name: str) -> int:
    return BODY_REGIONS.index(name)


# --------------------------------------------------------------------------------------------
# body_region
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HEAD", "head_neck"),
        ("head", "head_neck"),
        ("BRAIN", "head_neck"),
        ("SKULL", "head_neck"),
        ("NECK", "head_neck"),
        ("HEADNECK", "head_neck"),
        ("Head_Neck", "head_neck"),
        ("Schädel", "head_neck"),
        ("CHEST", "thorax"),
        ("THORAX", "thorax"),
        ("LUNG", "thorax"),
        ("Heart", "thorax"),
        ("ABDOMEN", "abdomen"),
        ("LIVER", "abdomen"),
        ("KIDNEY", "abdomen"),
        ("GALLBLADDER", "abdomen"),
        ("ABD", "abdomen"),
        ("PELVIS", "hip_pelvis"),
        ("HIP", "hip_pelvis"),
        ("BLADDER", "hip_pelvis"),
        ("FEMORAL NECK", "hip_pelvis"),
        ("EXTREMITY", "extremities"),
        ("LOWER EXTREMITIES", "extremities"),
        ("ARM", "extremities"),
        ("FOREARM", "extremities"),
        ("LEG", "extremities"),
        ("KNEE", "extremities"),
        ("ANKLE", "extremities"),
        ("FOOT", "extremities"),
        ("HAND", "extremities"),
        ("WRIST", "extremities"),
        ("ELBOW", "extremities"),
        ("SHOULDER", "extremities"),
        ("THIGH", "extremities"),
        ("SPINE", "spine"),
        ("CSPINE", "spine"),
        ("C-Spine", "spine"),
        ("TSPINE", "spine"),
        ("LSPINE", "spine"),
        ("THORACIC SPINE", "spine"),
        ("LWS", "spine"),
        ("SACRUM", "spine"),
    ],
)
def test_body_region_known(value: str, expected: str) -> None:
    assert body_region(value) == region_id(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "WHOLEBODY",
        "WHOLE BODY",
        "BODY",
        "CHESTABDOMEN",
        "ABDOMENPELVIS",
        "CHEST_ABDOMEN_PELVIS",
        "CAP",
        "PHANTOM",
        "UNKNOWN",
        "AORTA",
    ],
)
def test_body_region_unknown(value: str | None) -> None:
    assert body_region(value) == -1


# --------------------------------------------------------------------------------------------
# pydicom's bundled files
# --------------------------------------------------------------------------------------------
def modality_hu(path: str) -> tuple[np.ndarray, Any]:
    ds = pydicom.dcmread(path)
    return np.rint(apply_modality_lut(ds.pixel_array, ds)), ds


def load_one(path: str | Path, pseudo: Pseudonymizer) -> tuple[SeriesData, list[Skipped]]:
    series, skipped = scan_dicom([path], pseudo)
    assert skipped == []
    assert len(series) == 1
    data, bad = load_series(series[0], pseudo)
    assert data is not None
    return data, bad


@needs_pydicom
def test_ct_small_matches_modality_lut() -> None:
    pseudo = Pseudonymizer(SECRET)
    path = get_testdata_file("CT_small.dcm")
    expected, ds = modality_hu(path)
    data, bad = load_one(path, pseudo)
    assert bad == []
    assert data.hu.dtype == np.int16 and data.hu.shape == (1, 128, 128)
    np.testing.assert_array_equal(data.hu[0], expected)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    assert data.slice_position[0] == pytest.approx(
        np.dot(np.asarray(ds.ImagePositionPatient), normal)
    )
    np.testing.assert_allclose(
        data.pixel_spacing[0], np.asarray(ds.PixelSpacing, dtype=float), rtol=1e-6
    )
    assert data.thickness[0] == pytest.approx(float(ds.SliceThickness))
    assert data.kvp[0] == pytest.approx(float(ds.KVP))
    assert data.manufacturer == ds.Manufacturer
    assert data.patient == pseudo.key("patient", ds.PatientID)
    assert data.study == pseudo.key("study", ds.StudyInstanceUID)
    assert data.series == pseudo.key("series", ds.SeriesInstanceUID)


@needs_pydicom
@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_bundled_jpeg2000_ct_matches_modality_lut(name: str) -> None:
    path = get_testdata_file(name)
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(ts).is_available:
        pytest.skip(f"no JPEG 2000 decoder installed ({DICOM_EXTRA_HINT})")
    expected, ds = modality_hu(path)
    data, bad = load_one(path, Pseudonymizer(SECRET))
    assert bad == []
    hu = data.hu[0]
    pad = ds.get("PixelPaddingValue")
    padded = ds.pixel_array == pad if pad is not None else np.zeros(hu.shape, bool)
    # 693_J2KI marks the area outside the scan field with padding -2000: it must read as air,
    # where the plain modality LUT would give -3024 HU.
    if name == "693_J2KI.dcm":
        assert padded.sum() > 100
    np.testing.assert_array_equal(hu[~padded], expected[~padded])
    assert np.all(hu[padded] == AIR_HU)


@needs_pydicom
def test_bundled_multi_file_ct_series_sorted_by_geometry() -> None:
    root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    if not root.is_dir():
        pytest.skip("pydicom's dicomdirtests files are not installed")
    pseudo = Pseudonymizer(SECRET)
    series, skipped = scan_dicom([root], pseudo)
    assert skipped == [] and len(series) == 1
    data, bad = load_series(series[0], pseudo)
    assert bad == [] and data is not None and len(data) == len(series[0].files)
    by_position = {}
    for path in series[0].files:
        hu, ds = modality_hu(path)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        pos = float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(iop[:3], iop[3:])))
        by_position[pos] = hu
    positions = sorted(by_position)
    np.testing.assert_allclose(data.slice_position, positions)
    for i, pos in enumerate(positions):
        np.testing.assert_array_equal(data.hu[i], by_position[pos])


@needs_pydicom
def test_bundled_non_ct_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    for name in ("MR_small.dcm", "MR_truncated.dcm", "rtplan.dcm", "README.txt"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    series, skipped = scan_dicom([tmp_path], Pseudonymizer(SECRET))
    assert series == []
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["MR_small.dcm"] == "modality MR, not CT"
    assert reasons["MR_truncated.dcm"] == "modality MR, not CT"
    assert reasons["rtplan.dcm"] == "modality RTPLAN, not CT"
    assert reasons["README.txt"].startswith("not a DICOM file")


def test_skipped_entries_beyond_the_budget_spill_to_a_file_in_the_same_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, name in enumerate(["MR_small.dcm", "rtplan.dcm", "README.txt"] * 3):
        (tmp_path / f"d{i % 2}").mkdir(exist_ok=True)
        shutil.copy(get_testdata_file(name), tmp_path / f"d{i % 2}" / f"{i}-{name}")
    (tmp_path / "d0" / "a.dcm").write_bytes(b"DICM" * 4)
    reference = scan_dicom([tmp_path, tmp_path / "missing"], Pseudonymizer(SECRET))
    assert isinstance(reference[1], list) and len(reference[1]) == 11
    monkeypatch.setattr(dicom_mod, "SKIPPED_IN_MEMORY", 2)
    series, skipped = scan_dicom([tmp_path, tmp_path / "missing"], Pseudonymizer(SECRET))
    assert isinstance(skipped, dicom_mod.SpooledSkipped) and len(skipped) == 11
    assert series == reference[0] == [] and skipped == reference[1]
    assert list(skipped) == list(skipped)  # iterable again, from the start
    assert [s.path for s in skipped] == sorted(s.path for s in skipped)


# --------------------------------------------------------------------------------------------
# The synthetic DICOM set, end to end
# --------------------------------------------------------------------------------------------
class SynthSet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pseudo = Pseudonymizer(SECRET)
        missing_codecs = set(available_variants()) != set(ALL_VARIANTS)
        with pytest.warns(UserWarning) if missing_codecs else contextlib.nullcontext():
            self.files = write_synthetic_dicom(
                root, num_patients=PATIENTS, slices_per_series=SLICES, size=SIZE, seed=SEED
            )
        self.series, self.skipped = scan_dicom([root], self.pseudo)
        self.loaded = {ref.uid_key: load_series(ref, self.pseudo) for ref in self.series}
        self.plans = {
            p.directory: p
            for p in plan_synthetic_dicom(PATIENTS)
            if p.variant in available_variants()
        }

    def ref_of(self, directory: str) -> SeriesRef:
        refs = [r for r in self.series if Path(r.files[0]).parent == self.root / directory]
        assert len(refs) == 1, directory
        return refs[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    pytest.importorskip("pydicom")
    return SynthSet(tmp_path_factory.mktemp("synth_dicom"))


def expected_volume(patient: int, variant: str, region: int) -> tuple[np.ndarray, np.ndarray]:
    """HU and positions a correct reader returns: generator data, ascending position."""
    gen = generate_ct_series(patient, region, num_slices=SLICES, size=SIZE, seed=SEED)
    hu = gen.images.astype(np.int32)
    pos = gen.slice_position.copy()
    keep = np.ones(SLICES, bool)
    if variant == "padding":
        c = (SIZE - 1) / 2
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        hu[:, (yy - c) ** 2 + (xx - c) ** 2 > (SIZE / 2) ** 2] = AIR_HU
    elif variant == "slope" and patient % 2 == 1:
        hu = 2 * np.rint((hu + 1024) / 2.0).astype(np.int32) - 1024  # slope 2 quantises
    elif variant == "mixed":
        keep[[1, 2]] = False  # the half-size slice and the one without pixel data
    elif variant == "broken":
        keep[-1] = False  # truncated pixel data
    hu, pos = hu[keep], pos[keep]
    order = np.argsort(pos)
    return hu[order].astype(np.int16), pos[order]


def test_synthetic_scan_finds_every_ct_series(synth: SynthSet) -> None:
    ct_plans = [p for p in synth.plans.values() if p.variant != "mr"]
    assert len(synth.series) == len(ct_plans)
    assert [s.uid_key for s in synth.series] == sorted(s.uid_key for s in synth.series)
    for plan in ct_plans:
        ref = synth.ref_of(plan.directory)
        first = pydicom.dcmread(ref.files[0], stop_before_pixels=True)
        assert ref.uid_key == synth.pseudo.key("series", first.SeriesInstanceUID)
        assert ref.files == sorted(ref.files)
        expected_frames = {"mixed": SLICES + 1, "broken": SLICES}.get(plan.variant, SLICES)
        assert ref.frames == expected_frames, plan.variant


@pytest.mark.parametrize("variant", [v for v in ALL_VARIANTS if v not in ("mr",)])
def test_synthetic_variant_round_trips(synth: SynthSet, variant: str) -> None:
    if variant not in available_variants():
        pytest.skip(f"encoder for {variant} not installed")
    for patient in range(PATIENTS):
        plan = next(
            p for p in synth.plans.values() if p.patient == patient and p.variant == variant
        )
        ref = synth.ref_of(plan.directory)
        data, bad = synth.loaded[ref.uid_key]
        assert data is not None
        hu, pos = expected_volume(patient, variant, plan.region)
        assert data.hu.dtype == np.int16
        assert data.hu.shape == hu.shape
        np.testing.assert_array_equal(data.hu, hu, err_msg=f"{variant} patient {patient}")
        np.testing.assert_allclose(data.slice_position, pos, atol=1e-3)
        assert np.all(np.diff(data.slice_position) > 0)

        gen = generate_ct_series(patient, plan.region, num_slices=SLICES, size=SIZE, seed=SEED)
        np.testing.assert_allclose(data.pixel_spacing, gen.pixel_spacing, rtol=1e-5)
        assert data.pixel_spacing.shape == (len(data), 2) and data.pixel_spacing.dtype == np.float32
        np.testing.assert_allclose(data.thickness, gen.slice_spacing, rtol=1e-5)
        header = pydicom.dcmread(ref.files[0], stop_before_pixels=True)
        if variant == "enhanced":
            kvp = header.SharedFunctionalGroupsSequence[0].CTXRayDetailsSequence[0].KVP
        else:
            kvp = header.KVP
        np.testing.assert_array_equal(data.kvp, np.float32(kvp))
        assert data.region == plan.region
        assert data.region == body_region(header.BodyPartExamined)
        assert data.manufacturer == "radengine-synthetic"
        assert data.patient == synth.pseudo.key("patient", header.PatientID)
        assert data.study == synth.pseudo.key("study", header.StudyInstanceUID)
        assert data.series == ref.uid_key
        if variant not in ("mixed", "broken"):
            assert bad == []


def test_synthetic_mixed_series_reports_bad_slices(synth: SynthSet) -> None:
    for plan in (p for p in synth.plans.values() if p.variant == "mixed"):
        data, bad = synth.loaded[synth.ref_of(plan.directory).uid_key]
        reasons = {Path(s.path).name: s.reason for s in bad}
        half = SIZE // 2
        assert reasons == {
            "IM0002.dcm": f"mixed sizes in one series: {half}x{half} vs {SIZE}x{SIZE} "
            "(the series majority)",
            "IM0003.dcm": "no pixel data",
            f"IM{SLICES + 1:04d}.dcm": reasons[f"IM{SLICES + 1:04d}.dcm"],
        }
        dup = reasons[f"IM{SLICES + 1:04d}.dcm"]
        assert dup.startswith("duplicate slice position: ") and "IM0004.dcm (kept)" in dup
        assert data is not None and len(data) == SLICES - 2


def test_synthetic_broken_and_mr_files_are_reported(synth: SynthSet) -> None:
    scan = {os.path.relpath(s.path, synth.root): s for s in synth.skipped}
    expected = set()
    for plan in synth.plans.values():
        if plan.variant == "mr":
            for i in range(SLICES):
                name = f"{plan.directory}/MR{i + 1:04d}.dcm"
                expected.add(name)
                assert scan[name].reason == "modality MR, not CT"
        if plan.variant == "broken":
            notes = scan[f"{plan.directory}/notes.dcm"]
            assert notes.reason.startswith("not a DICOM file")
            cut = scan[f"{plan.directory}/truncated_header.dcm"]
            assert "truncated" in cut.reason and "incomplete DICOM header" in cut.reason
            expected |= {f"{plan.directory}/notes.dcm", f"{plan.directory}/truncated_header.dcm"}
            _, bad = synth.loaded[synth.ref_of(plan.directory).uid_key]
            assert [(Path(s.path).name, s.reason.split(":")[0]) for s in bad] == [
                (f"IM{SLICES:04d}.dcm", "truncated pixel data")
            ]
    assert set(scan) == expected  # nothing else was skipped


def test_no_identifier_leaks(synth: SynthSet) -> None:
    identifiers: set[str] = set()
    for path in synth.files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "InstitutionName",
            "InstitutionAddress",
            "ReferringPhysicianName",
            "StationName",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            value = str(ds.get(keyword, "")).strip()
            if value:
                identifiers.add(value)
    assert any(v.startswith("SYNTH^PATIENT") for v in identifiers)
    names = {f.name for f in fields(SeriesData)}
    for data, _ in synth.loaded.values():
        if data is None:
            continue
        for name in names:
            value = getattr(data, name)
            if isinstance(value, np.ndarray):
                assert value.dtype.kind in "iuf", name  # numbers cannot carry a name
            else:
                assert isinstance(value, (str, int)), name
        texts = [repr(data), str(data), data.patient, data.study, data.series, data.manufacturer]
        for text in texts:
            for ident in identifiers:
                assert ident not in text
        assert "SYNTH^" not in repr(data) and "SYNTH-ID" not in repr(data)
        # Keys are hex hashes, not the raw values.
        for key in (data.patient, data.study, data.series):
            assert len(key) == 16 and int(key, 16) >= 0


def test_keys_stable_for_a_secret_and_different_for_another(synth: SynthSet) -> None:
    ref = synth.series[0]
    first, _ = synth.loaded[ref.uid_key]
    again, _ = load_series(ref, Pseudonymizer(SECRET))
    assert (again.patient, again.study, again.series) == (first.patient, first.study, first.series)
    other = Pseudonymizer(b"another secret, 32 bytes long!!!")
    series, _ = scan_dicom([Path(ref.files[0]).parent], other)
    data, _ = load_series(series[0], other)
    assert data.series != first.series and data.patient != first.patient
    assert data.study != first.study
    np.testing.assert_array_equal(data.hu, first.hu)


def test_scan_is_independent_of_input_order(synth: SynthSet, tmp_path: Path) -> None:
    files = [str(f) for f in synth.files]
    forward = scan_dicom(files, synth.pseudo)
    backward = scan_dicom([*files[::-1], str(synth.root / "p0001")], synth.pseudo)
    assert forward == backward == (synth.series, synth.skipped)
    missing = scan_dicom([tmp_path / "nothing-here"], synth.pseudo)
    assert missing[0] == [] and missing[1][0].reason == "no such file or directory"


def test_scan_with_worker_processes_matches_serial(
    synth: SynthSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicom_mod, "_MIN_FILES_FOR_PROCESSES", 0)  # use the pool even here
    done: list[int] = []
    result = scan_dicom([synth.root], synth.pseudo, workers=2, progress=done.append)
    assert result == (synth.series, synth.skipped)
    assert sum(done) == len(synth.files)


def test_duplicate_sop_instance_is_reported(synth: SynthSet, tmp_path: Path) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "plain")
    src = synth.root / plan.directory
    shutil.copytree(src, tmp_path / "a")
    shutil.copytree(src, tmp_path / "b")  # the same images copied twice into an archive
    series, skipped = scan_dicom([tmp_path], synth.pseudo)
    assert len(series) == 1 and len(series[0].files) == SLICES
    assert all("/a/" in f for f in series[0].files)
    assert len(skipped) == SLICES
    assert all(
        s.reason.startswith("duplicate SOPInstanceUID: ") and "/b/" in s.path for s in skipped
    )
    assert all("/a/" in s.reason for s in skipped)


# --------------------------------------------------------------------------------------------
# Decoders and odd files
# --------------------------------------------------------------------------------------------
def test_missing_decoder_names_syntax_and_extra(
    synth: SynthSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "jpeg2000" not in available_variants():
        pytest.skip("JPEG 2000 encoder not installed")
    plan = next(p for p in synth.plans.values() if p.variant == "jpeg2000")
    ref = synth.ref_of(plan.directory)
    decoder_cls = type(get_decoder(J2K_LOSSLESS))
    real = decoder_cls.is_available

    def fake(self: object) -> bool:  # as if no JPEG 2000 plugin were installed
        return False if str(self.UID) in (J2K_LOSSLESS, J2K) else real.fget(self)

    monkeypatch.setattr(decoder_cls, "is_available", property(fake))
    data, bad = load_series(ref, synth.pseudo)
    assert data is None
    assert len(bad) == SLICES
    for s in bad:
        assert "JPEG 2000" in s.reason and J2K_LOSSLESS in s.reason
        assert "no decoder plugin installed" in s.reason
        assert s.hint == DICOM_EXTRA_HINT


def test_unsupported_transfer_syntax_is_reported(synth: SynthSet, tmp_path: Path) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "plain")
    src = sorted((synth.root / plan.directory).iterdir())
    for path in src[:3]:
        shutil.copy(path, tmp_path / path.name)
    odd = tmp_path / src[0].name
    # pydicom refuses to write an unknown transfer syntax, so patch the UID in place (same
    # length: "1.2.840.10008.1.2.1" plus its pad byte).
    raw = odd.read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\x00") == 1
    odd.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.99"))
    series, _ = scan_dicom([tmp_path], synth.pseudo)
    data, bad = load_series(series[0], synth.pseudo)
    assert data is not None and len(data) == 2
    assert len(bad) == 1 and bad[0].path == str(odd)
    assert bad[0].reason == "transfer syntax 1.2.840.10008.1.2.99 is not supported by pydicom"


def test_no_geometry_falls_back_to_instance_number(synth: SynthSet, tmp_path: Path) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "shuffled")
    for path in sorted((synth.root / plan.directory).iterdir()):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(tmp_path / path.name, enforce_file_format=True)
    series, _ = scan_dicom([tmp_path], synth.pseudo)
    data, bad = load_series(series[0], synth.pseudo)
    assert bad == [] and data is not None
    assert np.isnan(data.slice_position).all()
    by_instance = {}
    for path in series[0].files:
        ds = pydicom.dcmread(path)
        by_instance[int(ds.InstanceNumber)] = ds.pixel_array
    for i, number in enumerate(sorted(by_instance)):
        np.testing.assert_array_equal(data.hu[i], by_instance[number])


def test_other_orientation_and_duplicate_frame_are_skipped(synth: SynthSet, tmp_path: Path) -> None:
    plain = next(p for p in synth.plans.values() if p.variant == "plain")
    for i, path in enumerate(sorted((synth.root / plain.directory).iterdir())):
        ds = pydicom.dcmread(path)
        if i == 5:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal image in the series
        ds.save_as(tmp_path / path.name, enforce_file_format=True)
    series, _ = scan_dicom([tmp_path], synth.pseudo)
    data, bad = load_series(series[0], synth.pseudo)
    assert len(data) == SLICES - 1
    assert [(Path(s.path).name, s.reason.split(":")[0]) for s in bad] == [
        ("IM0006.dcm", "orientation differs from the series majority")
    ]

    enhanced = next(p for p in synth.plans.values() if p.variant == "enhanced")
    src = synth.root / enhanced.directory / "ENHANCED.dcm"
    ds = pydicom.dcmread(src)
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[4].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[2].PlanePositionSequence[0].ImagePositionPatient
    )
    ds.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    data, bad = load_one(tmp_path / "multi.dcm", synth.pseudo)
    assert len(data) == SLICES - 1
    assert len(bad) == 1 and bad[0].reason.startswith("duplicate slice position: ")
    # The frame with the lower in-stack position is kept; the other is named in the reason.
    in_stack = [int(f.FrameContentSequence[0].InStackPositionNumber) for f in frames]
    dropped = 5 if in_stack[4] > in_stack[2] else 3
    assert bad[0].reason.endswith(f"(frame {dropped} of {SLICES})")


def test_localizer_secondary_capture_and_burned_in_are_skipped(
    synth: SynthSet, tmp_path: Path
) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "plain")
    src = sorted((synth.root / plan.directory).iterdir())
    edits = {
        "scout.dcm": ("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        "capture.dcm": ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
        "burned.dcm": ("BurnedInAnnotation", "YES"),
    }
    for (name, (keyword, value)), path in zip(edits.items(), src, strict=False):
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[name])
        ds.save_as(tmp_path / name, enforce_file_format=True)
    series, skipped = scan_dicom([tmp_path], synth.pseudo)
    assert series == []
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["scout.dcm"].startswith("localizer")
    assert "Secondary Capture" in reasons["capture.dcm"]
    assert reasons["burned.dcm"].startswith("BurnedInAnnotation")


def test_padding_value_written_with_the_unsigned_vr(synth: SynthSet, tmp_path: Path) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "padding" and p.patient == 0)
    path = sorted((synth.root / plan.directory).iterdir())[0]  # slice 0: single padding value
    ds = pydicom.dcmread(path)
    assert ds.PixelRepresentation == 1 and ds.PixelPaddingValue == -2000
    del ds.PixelPaddingValue
    ds.add_new("PixelPaddingValue", "US", 65536 - 2000)  # the same bits, read as unsigned
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "one.dcm").PixelPaddingValue == 63536
    data, _ = load_one(tmp_path / "one.dcm", synth.pseudo)
    expected, _ = load_one(path, synth.pseudo)
    np.testing.assert_array_equal(data.hu, expected.hu)
    assert (data.hu == AIR_HU).sum() > 0


@pytest.mark.parametrize(
    ("slope", "intercept"), [(0.3, -1024.5), (2.5, -1000.25), (40.0, -1024.0), (1.0, 0.5)]
)
def test_fractional_rescale_rounds_and_clips_like_modality_lut(
    synth: SynthSet, tmp_path: Path, slope: float, intercept: float
) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "intercept")
    path = sorted((synth.root / plan.directory).iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    expected, _ = modality_hu(str(tmp_path / "one.dcm"))
    data, _ = load_one(tmp_path / "one.dcm", synth.pseudo)
    np.testing.assert_array_equal(data.hu[0], np.clip(expected, -32768, 32767))
    if slope == 40.0:
        assert data.hu.max() == 32767  # 4095 * 40 - 1024 does not fit int16: clipped


def test_raw_dataset_without_preamble_is_read(synth: SynthSet, tmp_path: Path) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "intercept")
    path = sorted((synth.root / plan.directory).iterdir())[0]
    expected, ds = modality_hu(str(path))
    raw = tmp_path / "raw"
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert raw.read_bytes()[128:132] != b"DICM"
    data, bad = load_one(raw, synth.pseudo)
    assert bad == []
    np.testing.assert_array_equal(data.hu[0], expected)


@needs_pydicom
def test_synthetic_writer_is_deterministic(tmp_path: Path) -> None:
    variants = [v for v in ("plain", "shuffled", "rle", "jpeg2000", "enhanced", "broken")
                if v in available_variants()]  # fmt: skip
    a = write_synthetic_dicom(tmp_path / "a", 1, 4, 32, seed=5, variants=variants)
    b = write_synthetic_dicom(tmp_path / "b", 1, 4, 32, seed=5, variants=variants)
    c = write_synthetic_dicom(tmp_path / "c", 1, 4, 32, seed=6, variants=variants)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert any(x.read_bytes() != z.read_bytes() for x, z in zip(a, c, strict=True))


@needs_pydicom
def test_synthetic_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        write_synthetic_dicom(tmp_path, variants=["plain", "jpegxl"])
    with pytest.raises(ValueError, match="num_patients"):
        write_synthetic_dicom(tmp_path, num_patients=0)
    with pytest.raises(ValueError, match="mixed"):
        write_synthetic_dicom(tmp_path, slices_per_series=3, variants=["mixed"])


def test_imports_without_pydicom() -> None:
    code = (
        "import sys; sys.modules['pydicom'] = None\n"  # an import of pydicom would now fail
        "import radengine.data.dicom, radengine.data.dicom_synth, radengine.data.privacy\n"
        "from radengine.data.dicom import body_region, scan_dicom\n"
        "assert body_region('CHEST') == 1\n"
        "try:\n"
        "    scan_dicom([], None)\n"
        "except ImportError as e:\n"
        "    assert 'radengine[dicom]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(dicom_mod.__file__).parents[2]
    )


# --------------------------------------------------------------------------------------------
# Fast path (classic uncompressed files read without pydicom's Dataset machinery)
# --------------------------------------------------------------------------------------------
def reference_load(ref: SeriesRef, pseudo: Pseudonymizer) -> Any:
    """load_series through pydicom only (or the exception it raises)."""
    try:
        return dicom_mod._load_series(ref, pseudo, fast=False)
    except Exception as exc:
        return type(exc), str(exc)


def fast_load(ref: SeriesRef, pseudo: Pseudonymizer) -> Any:
    try:
        return dicom_mod._load_series(ref, pseudo, fast=True)
    except Exception as exc:
        return type(exc), str(exc)


def assert_same_series(got: SeriesData | None, expected: SeriesData | None) -> None:
    assert (got is None) == (expected is None)
    if got is None:
        return
    for field in fields(SeriesData):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)  # NaN equals NaN here
        else:
            assert a == b, field.name


def assert_same_load(got: Any, expected: Any) -> None:
    if isinstance(expected[0], type):  # an exception
        assert got == expected
        return
    assert_same_series(got[0], expected[0])
    assert got[1] == expected[1]


def takes_fast_load(path: str | Path) -> bool:
    try:
        dicom_mod._fast_frame(str(path), dicom_mod._fast_parts())
    except dicom_mod._Bail:
        return False
    return True


def assert_fast_matches_reference(path: str | Path, pseudo: Pseudonymizer) -> None:
    """Scan verdict and loaded series of one file: the same with and without the fast path."""
    path = str(path)
    parts = dicom_mod._fast_parts()
    assert dicom_mod._scan_file(path, parts) == dicom_mod._scan_file(path, None), path
    ref = SeriesRef(pseudo.key("series", path), [path], 1)
    assert_same_load(fast_load(ref, pseudo), reference_load(ref, pseudo))


@needs_pydicom
def test_fast_path_tags_and_vrs_are_pydicom_s() -> None:
    for keyword, (tag, vr) in dicom_mod._FAST_TAGS.items():
        assert pydicom.datadict.tag_for_keyword(keyword) == tag
        assert pydicom.datadict.dictionary_VR(tag) == vr
    assert set(dicom_mod._SCAN_TAGS) <= set(dicom_mod._FAST_TAGS)


@needs_pydicom
def test_fast_path_is_on_by_default_and_off_for_configured_pydicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert dicom_mod._fast_path_enabled()
    with monkeypatch.context() as m:
        m.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
        assert not dicom_mod._fast_path_enabled()
    with monkeypatch.context() as m:
        m.setattr(pydicom.hooks.hooks, "raw_element_value", lambda raw, data, **kw: None)
        assert not dicom_mod._fast_path_enabled()
    monkeypatch.setattr(dicom_mod, "_FAST_PATH", False)
    assert not dicom_mod._fast_path_enabled()


def test_fast_path_matches_reference_on_synthetic_set(
    synth: SynthSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for ref in synth.series:
        assert_same_load(synth.loaded[ref.uid_key], reference_load(ref, synth.pseudo))
    monkeypatch.setattr(dicom_mod, "_FAST_PATH", False)
    assert scan_dicom([synth.root], synth.pseudo) == (synth.series, synth.skipped)


def test_fast_path_takes_classic_uncompressed_slices_only(synth: SynthSet) -> None:
    parts = dicom_mod._fast_parts()
    for plan in synth.plans.values():
        for path in sorted((synth.root / plan.directory).iterdir()):
            compressed = plan.variant in ("rle", "jpeg2000", "jpegls", "jpeglossless")
            odd = path.name in ("notes.dcm", "truncated_header.dcm") or (
                plan.variant == "broken" and path.name == f"IM{SLICES:04d}.dcm"  # truncated
            )
            no_pixels = plan.variant == "mixed" and path.name == "IM0003.dcm"
            uncompressed = not (compressed or odd or no_pixels or plan.variant == "enhanced")
            assert takes_fast_load(path) == uncompressed, path
            # The scan reads the header of every well-formed file itself, compressed or not.
            if not odd:
                dicom_mod._read_raw_header(str(path), parts)


def test_plain_series_never_reach_pydicom(synth: SynthSet, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast path should have read this file")

    monkeypatch.setattr(dicom_mod, "_read", boom)
    for variant in ("plain", "intercept", "padding", "slope", "shuffled"):
        for plan in (p for p in synth.plans.values() if p.variant == variant):
            series, skipped = scan_dicom([synth.root / plan.directory], synth.pseudo)
            assert skipped == [] and series == [synth.ref_of(plan.directory)]
            assert_same_load(load_series(series[0], synth.pseudo), synth.loaded[series[0].uid_key])


@needs_pydicom
def test_fast_path_matches_reference_on_bundled_files() -> None:
    pseudo = Pseudonymizer(SECRET)
    root = Path(get_testdata_file("CT_small.dcm")).parent
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(paths) > 50
    for path in paths:
        assert_fast_matches_reference(path, pseudo)
    # Trailing padding after the pixel data (CT_small), implicit VR, undefined-length
    # sequences (the dicomdirtests files): all taken by the fast path.
    assert takes_fast_load(root / "CT_small.dcm")
    assert takes_fast_load(root / "MR_small_implicit.dcm")
    for name in ("MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        assert not takes_fast_load(root / name)
    dicomdir = root / "dicomdirtests"
    if dicomdir.is_dir():
        ct = sorted((dicomdir / "98892001" / "CT5N").iterdir())
        assert ct and all(takes_fast_load(p) for p in ct)


def garbage_high_bits(values: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Stored values with random bits above BitsStored (the standard says: ignore them)."""
    low = values.astype(np.int64) & ((1 << bits) - 1)
    noise = np.random.default_rng(seed).integers(0, 1 << (16 - bits), values.shape) << bits
    return (low | noise).astype(np.uint16)


def _bits12_signed(ds: Any) -> None:
    hu = np.clip(ds.pixel_array.astype(np.int64), -2048, 2047)
    raw = garbage_high_bits(hu, 12, seed=1)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = raw.view(np.int16).tobytes()


def _bits12_unsigned(ds: Any) -> None:  # from the "intercept" variant: unsigned, 12 bits
    ds.PixelData = garbage_high_bits(ds.pixel_array, 12, seed=2).tobytes()


def _bits5_signed(ds: Any) -> None:
    raw = garbage_high_bits(ds.pixel_array.astype(np.int64) % 32 - 16, 5, seed=3)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 5, 4, 1
    ds.PixelData = raw.view(np.int16).tobytes()


def _unsigned_beyond_int16(ds: Any) -> None:  # HU above 32767 must clip
    raw = np.random.default_rng(4).integers(0, 65536, ds.pixel_array.shape).astype(np.uint16)
    ds.PixelRepresentation, ds.RescaleIntercept = 0, 0
    ds.PixelData = raw.tobytes()


def _undefined_length_sequences(ds: Any) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([item, Dataset()])  # and an empty item
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[1].is_undefined_length_sequence_item = True
    ds.SourceImageSequence = Sequence([])  # defined length, empty
    block = ds.private_block(0x0009, "RADENGINE TEST", create=True)
    block.add_new(0x10, "SQ", Sequence([Dataset()]))
    ds[block.get_tag(0x10)].is_undefined_length = True
    ds.DataSetTrailingPadding = b"\0" * 10  # after the pixel data


def _implicit(ds: Any) -> None:
    _undefined_length_sequences(ds)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian


def _non_ascii_patient(ds: Any) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = "MÜLLER-7"


def _modality_lut(ds: Any) -> None:
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.LUTData = (np.arange(4096) - 1024).astype(np.uint16).tobytes()
    lut["LUTData"].VR = "OW"
    ds.ModalityLUTSequence = [lut]
    del ds.RescaleSlope, ds.RescaleIntercept


def _odd_values(ds: Any) -> None:
    ds.RescaleSlope = [1, 2]  # multi-valued: read as no slope
    ds.KVP = None  # empty
    ds.SliceThickness = "  "  # blank
    ds.InstanceNumber = "7.0"
    ds.ImageType = "LOCALIZER"  # a single value is not a list of values
    ds.NumberOfFrames = 1
    ds.PhotometricInterpretation = "MONOCHROME1"


def _setter(**values: Any) -> Any:
    def edit(ds: Any) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return edit


# name: (source variant, edit, expected to take the fast path)
FAST_PATH_EDITS: dict[str, tuple[str, Any, bool]] = {
    "bits12-signed-garbage": ("plain", _bits12_signed, True),
    "bits12-unsigned-garbage": ("intercept", _bits12_unsigned, True),
    "bits5-signed-garbage": ("plain", _bits5_signed, True),
    "unsigned-beyond-int16": ("intercept", _unsigned_beyond_int16, True),
    "intercept-clips": ("plain", _setter(RescaleIntercept=32000), True),
    "sequences-and-trailing-padding": ("padding", _undefined_length_sequences, True),
    "implicit-vr": ("padding", _implicit, True),
    "odd-values": ("intercept", _odd_values, True),
    "zero-slope": ("plain", _setter(RescaleSlope=0), False),
    "non-ascii-patient": ("plain", _non_ascii_patient, False),
    "modality-lut": ("intercept", _modality_lut, False),
    "two-frames": ("plain", _setter(NumberOfFrames=2), False),
    "excess-pixel-bytes": ("plain", lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\0\0"), False),
    "rgb": ("plain", _setter(SamplesPerPixel=3, PlanarConfiguration=0), False),
    "bits-allocated-32": ("plain", _setter(BitsAllocated=32), False),
    "functional-groups": ("plain", _setter(SharedFunctionalGroupsSequence=[]), False),
}  # fmt: skip


FAST_PATH_HU_CHECKED = {
    "bits12-signed-garbage",
    "bits12-unsigned-garbage",
    "bits5-signed-garbage",
    "unsigned-beyond-int16",
    "intercept-clips",
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # the odd values, on purpose
@pytest.mark.parametrize("name", list(FAST_PATH_EDITS))
def test_fast_path_matches_reference_on_edited_files(
    synth: SynthSet, tmp_path: Path, name: str
) -> None:
    variant, edit, fast = FAST_PATH_EDITS[name]
    plan = next(p for p in synth.plans.values() if p.variant == variant and p.patient == 1)
    path = tmp_path / f"{name}.dcm"
    for source in sorted((synth.root / plan.directory).iterdir())[:2]:  # even and odd slices
        ds = pydicom.dcmread(source)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
        assert takes_fast_load(path) == fast
        assert_fast_matches_reference(path, synth.pseudo)
        if name in FAST_PATH_HU_CHECKED:
            # HU from pydicom's decoder (it ignores the unused high bits) and modality LUT.
            expected, _ = modality_hu(str(path))
            data, _ = load_series(SeriesRef("k", [str(path)], 1), synth.pseudo)
            np.testing.assert_array_equal(data.hu[0], np.clip(expected, -32768, 32767))


def test_file_changed_after_its_header_was_read(
    synth: SynthSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = next(p for p in synth.plans.values() if p.variant == "plain")
    shutil.copytree(synth.root / plan.directory, tmp_path / "s")
    series, _ = scan_dicom([tmp_path / "s"], synth.pseudo)
    victim = series[0].files[3]
    real = dicom_mod._fast_frame

    def then_truncate(path: str, parts: Any) -> Any:
        frame = real(path, parts)
        if path == victim:
            os.truncate(path, os.path.getsize(path) - 100)
        return frame

    monkeypatch.setattr(dicom_mod, "_fast_frame", then_truncate)
    data, bad = load_series(series[0], synth.pseudo)
    assert [(s.path, s.reason.split(":")[0]) for s in bad] == [(victim, "truncated pixel data")]
    assert_same_load((data, bad), reference_load(series[0], synth.pseudo))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int32])
def test_hu_frame_is_the_rounded_clipped_rescale(dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(5)
    stored = rng.integers(max(info.min, -40000), min(info.max, 70000), (32, 32), endpoint=True)
    stored = stored.astype(dtype)
    if stored.dtype.itemsize <= 2:  # (32-bit extremes overflow the int32 sum, as they did)
        stored.flat[:2] = info.min, info.max
    for slope, intercept in [
        (1.0, 0.0), (1.0, -1024.0), (1.0, 1024.0), (1.0, -32768.0), (1.0, 32767.0),
        (1.0, 40000.0), (1.0, -1e6), (1.0, 0.5), (2.0, -1024.0), (0.3, -1024.5), (-1.0, 0.0),
    ]:  # fmt: skip
        expected = np.rint(stored.astype(np.float64) * slope + intercept)
        expected = np.clip(expected, -32768, 32767).astype(np.int16)
        out = np.empty(stored.shape, np.int16)
        dicom_mod._hu_frame(stored, slope, intercept, out)
        np.testing.assert_array_equal(out, expected, err_msg=f"{slope} {intercept}")
        if stored.dtype.itemsize == 2:  # in place, as the fast path does
            buffer = stored.copy()
            dicom_mod._hu_frame(buffer, slope, intercept, buffer.view(np.int16))
            np.testing.assert_array_equal(buffer.view(np.int16), expected)
