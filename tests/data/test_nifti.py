"""Tests of the NIfTI reader (radengine.data.nifti): orientation, scaling, geometry, errors."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import shutil
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from radengine.data.nifti import (  # noqa: E402 - after the importorskip above
    NAN_HU,
    SeriesData,
    Skipped,
    load_nifti,
    nifti_stem,
    scan_nifti,
)

# Voxel sizes along R, A, S and the RAS position of voxel (0, 0, 0), mm.
SPACING = np.array([0.8, 0.7, 2.5])
ORIGIN = np.array([-10.0, 20.0, -300.0])
SHAPE = (5, 4, 3)  # (R, A, S): distinct sizes so a swapped axis cannot go unnoticed


class HmacPseudo:
    """Stand-in for the ingest pseudonymiser: a keyed hash per (kind, value)."""

    def __init__(self, secret: bytes = b"test-secret") -> None:
        self.secret = secret

    def key(self, kind: str, value: str) -> str:
        return hmac.new(self.secret, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:20]


PSEUDO = HmacPseudo()


def ras_volume() -> np.ndarray:
    """Distinct HU-like values in RAS+ voxel order (v[i, j, k]: i->Right, j->Anterior)."""
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 7 - 1000).astype(np.int16)


def ras_affine() -> np.ndarray:
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = ORIGIN
    return a


def expected_slices(ras: np.ndarray) -> np.ndarray:
    """Display slices written out by hand: hu[k, row, col] = v[I-1-col, J-1-row, k]."""
    ni, nj, nk = ras.shape
    out = np.empty((nk, nj, ni), dtype=np.int16)
    for k in range(nk):
        for row in range(nj):
            for col in range(ni):
                out[k, row, col] = ras[ni - 1 - col, nj - 1 - row, k]
    return out


def save(tmp_path, name, data, affine, slope=None, inter=None):
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    img.to_filename(path)
    return str(path)


def load_ok(path, **kw) -> SeriesData:
    series, skipped = load_nifti(path, PSEUDO, **kw)
    assert skipped == [] and series is not None
    return series


def check_geometry(s: SeriesData, n: int, z0: float, dz: float, row_col: tuple[float, float]):
    assert s.slice_position.dtype == np.float64 and s.slice_position.shape == (n,)
    np.testing.assert_allclose(s.slice_position, z0 + dz * np.arange(n), atol=1e-9)
    assert s.pixel_spacing.dtype == np.float32 and s.pixel_spacing.shape == (n, 2)
    np.testing.assert_allclose(s.pixel_spacing, np.tile(row_col, (n, 1)), rtol=1e-6)
    assert s.thickness.dtype == np.float32 and s.thickness.shape == (n,)
    np.testing.assert_allclose(s.thickness, dz, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Orientation
# ------------------------------------------------------------------------------------------
def test_ras_volume_layout_and_fields(tmp_path):
    ras = ras_volume()
    s = load_ok(save(tmp_path, "case.nii", ras, ras_affine()), body_region=2)
    assert s.hu.dtype == np.int16 and s.hu.shape == (3, 4, 5)
    np.testing.assert_array_equal(s.hu, expected_slices(ras))
    # Spot check of the convention without the helper: the image's top-left pixel is the most
    # anterior, most patient-right voxel (i = I-1 is the rightmost, j = J-1 the most anterior).
    assert s.hu[0, 0, 0] == ras[4, 3, 0] and s.hu[0, -1, -1] == ras[0, 0, 0]
    assert s.hu[2, 0, 4] == ras[0, 3, 2]  # last slice is the most superior
    check_geometry(s, 3, ORIGIN[2], SPACING[2], (SPACING[1], SPACING[0]))
    assert s.region == 2
    assert s.kvp.dtype == np.float32 and s.kvp.shape == (3,) and np.isnan(s.kvp).all()
    assert s.manufacturer == ""


def test_lps_and_inferior_flipped_storage_give_the_same_slices(tmp_path):
    """The same anatomy stored LPS and with slices running superior->inferior."""
    ras = ras_volume()
    ni, nj, nk = SHAPE
    ref = load_ok(save(tmp_path, "ras.nii", ras, ras_affine()))

    lps = ras[::-1, ::-1, :]  # voxel i now runs towards Left, j towards Posterior
    a = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    a[:3, 3] = ORIGIN + np.array([SPACING[0] * (ni - 1), SPACING[1] * (nj - 1), 0.0])
    s_lps = load_ok(save(tmp_path, "lps.nii", np.ascontiguousarray(lps), a))

    lpi = ras[::-1, ::-1, ::-1]  # and slices stored top to bottom
    a = np.diag([-SPACING[0], -SPACING[1], -SPACING[2], 1.0])
    a[:3, 3] = ORIGIN + SPACING * (np.array(SHAPE) - 1)
    s_lpi = load_ok(save(tmp_path, "lpi.nii.gz", np.ascontiguousarray(lpi), a))

    for s in (s_lps, s_lpi):
        np.testing.assert_array_equal(s.hu, ref.hu)
        check_geometry(s, nk, ORIGIN[2], SPACING[2], (SPACING[1], SPACING[0]))


def test_permuted_axes_are_brought_to_axial(tmp_path):
    """Stored as (S, R, A), e.g. a volume written slice-first: still axial slices out."""
    ras = ras_volume()
    stored = np.ascontiguousarray(ras.transpose(2, 0, 1))  # stored[k, i, j] = ras[i, j, k]
    a = np.zeros((4, 4))
    a[0, 1], a[1, 2], a[2, 0], a[3, 3] = SPACING[0], SPACING[1], SPACING[2], 1.0
    a[:3, 3] = ORIGIN
    s = load_ok(save(tmp_path, "perm.nii", stored, a))
    np.testing.assert_array_equal(s.hu, expected_slices(ras))
    check_geometry(s, 3, ORIGIN[2], SPACING[2], (SPACING[1], SPACING[0]))


def test_oblique_affine_matches_nibabel_canonical(tmp_path):
    """A tilted, rotated affine: slices as nibabel.as_closest_canonical orders them, and the
    slice position measured along the tilted slice normal."""
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 3000, size=(6, 7, 4)).astype(np.int16)
    tilt, spin = np.deg2rad(15), np.deg2rad(10)
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    rz = np.array([[np.cos(spin), -np.sin(spin), 0], [np.sin(spin), np.cos(spin), 0], [0, 0, 1]])
    m = rz @ rx @ np.diag(SPACING)
    # Flip storage of x so the reader has to reorient, then check against nibabel itself.
    m[:, 0] *= -1
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = m, ORIGIN
    path = save(tmp_path, "tilted.nii.gz", data, a)

    s = load_ok(path)
    canon = nib.as_closest_canonical(nib.load(path))
    want = np.rint(canon.get_fdata()).astype(np.int16)[::-1, ::-1, :].transpose(2, 1, 0)
    np.testing.assert_array_equal(s.hu, want)

    normal = rz @ rx @ np.array([0.0, 0.0, 1.0])  # the rotated superior axis
    start = canon.affine[:3, 3] @ normal
    check_geometry(s, 4, start, SPACING[2], (SPACING[1], SPACING[0]))


# ------------------------------------------------------------------------------------------
# Values: scaling, rounding, clipping, 4-D singleton
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scaled.nii", "scaled.nii.gz"])
def test_slope_intercept_applied_to_integer_storage(tmp_path, name):
    raw = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 37 % 2048).astype(np.int16)
    path = save(tmp_path, name, raw, ras_affine(), slope=2.0, inter=-1024.0)
    stored = nib.load(path)  # the file really holds the raw integers plus the scaling
    assert (stored.dataobj.slope, stored.dataobj.inter) == (2.0, -1024.0)
    np.testing.assert_array_equal(np.asarray(stored.dataobj.get_unscaled()), raw)

    s = load_ok(path)
    hu = (raw.astype(np.int32) * 2 - 1024).astype(np.int16)
    np.testing.assert_array_equal(s.hu, expected_slices(hu))


def test_uint8_storage_with_fractional_slope_rounds(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    path = save(tmp_path, "u8.nii", raw, ras_affine(), slope=0.5, inter=-100.25)
    s = load_ok(path)
    np.testing.assert_array_equal(s.hu, expected_slices(np.rint(raw * 0.5 - 100.25)))


def test_float_values_rounded_clipped_and_nan_is_air(tmp_path):
    vals = np.array([1.4, 1.6, -2.5, 40000.0, -1e9, np.nan, np.inf, 0.5], dtype=np.float32)
    data = np.resize(vals, np.prod(SHAPE)).reshape(SHAPE)
    s = load_ok(save(tmp_path, "float.nii", data, ras_affine()))
    want = np.resize(np.array([1, 2, -2, 32767, -32768, NAN_HU, 32767, 0]), np.prod(SHAPE))
    np.testing.assert_array_equal(s.hu, expected_slices(want.reshape(SHAPE)))


def test_4d_with_one_volume_is_loaded(tmp_path):
    ras = ras_volume()
    s = load_ok(save(tmp_path, "four.nii.gz", ras[..., None], ras_affine()))
    np.testing.assert_array_equal(s.hu, expected_slices(ras))


# ------------------------------------------------------------------------------------------
# Identifiers
# ------------------------------------------------------------------------------------------
def test_keys_are_pseudonyms_of_the_file_stem(tmp_path):
    stem = "DOE_JOHN_1234567"
    s = load_ok(save(tmp_path, f"{stem}.nii.gz", ras_volume(), ras_affine()))
    assert nifti_stem(f"/x/{stem}.nii.gz") == nifti_stem(f"{stem}.NII") == stem
    assert (s.patient, s.study, s.series) == (
        PSEUDO.key("patient", stem),
        PSEUDO.key("study", stem),
        PSEUDO.key("series", stem),
    )
    assert len({s.patient, s.study, s.series}) == 3
    for key in (s.patient, s.study, s.series):
        assert stem not in key and "1234567" not in key and "DOE" not in key.upper()

    other = load_ok(save(tmp_path, "ct.nii", ras_volume(), ras_affine()), identifier="case-0001/ct")
    assert other.patient == PSEUDO.key("patient", "case-0001/ct")


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [(5, 4), (5, 4, 3, 2), (5, 4, 3, 1, 2)], ids=["2d", "4d-two-volumes", "5d"]
)
def test_wrong_dimensionality_skipped(tmp_path, shape):
    path = save(tmp_path, "bad.nii", np.zeros(shape, np.int16), np.eye(4))
    series, skipped = load_nifti(path, PSEUDO)
    assert series is None and len(skipped) == 1
    assert skipped[0].path == path
    assert "3-D" in skipped[0].reason and str(shape) in skipped[0].reason


def test_unreadable_and_truncated_files_skipped(tmp_path):
    text = tmp_path / "notes.nii"
    text.write_text("this is not a NIfTI header\n" * 20)
    series, skipped = load_nifti(str(text), PSEUDO)
    assert series is None and skipped[0].path == str(text)
    assert "header" in skipped[0].reason

    good = save(tmp_path, "whole.nii", np.zeros((64, 64, 16), np.int16), ras_affine())
    cut = tmp_path / "cut.nii.gz"
    payload = Path(good).read_bytes()
    with gzip.open(cut, "wb") as f:
        f.write(payload[: len(payload) // 2])
    series, skipped = load_nifti(str(cut), PSEUDO)
    assert series is None and len(skipped) == 1 and "voxel data" in skipped[0].reason


def test_degenerate_affine_skipped(tmp_path):
    a = ras_affine()
    a[:3, 2] = a[:3, 0]  # two voxel axes pointing the same way: no 3-D geometry
    path = save(tmp_path, "flat.nii", ras_volume(), a)
    series, skipped = load_nifti(path, PSEUDO)
    assert series is None and "affine" in skipped[0].reason


def test_scan_walks_sorts_dedupes_and_reports(tmp_path):
    for rel in ["b/z.nii.gz", "b/a.NII", "a/deep/c.nii", "a/x.nii"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        save(tmp_path, rel, ras_volume(), ras_affine())
    (tmp_path / "a" / "readme.txt").write_text("not data")
    (tmp_path / "a" / "x.nii.gz.bak").write_text("not data")
    (tmp_path / "b" / "broken.nii.gz").write_bytes(b"\x00" * 10)
    notes = tmp_path / "notes.txt"
    notes.write_text("listed explicitly")

    paths = [tmp_path / "b", tmp_path / "a", tmp_path / "a" / "x.nii", notes, tmp_path / "gone"]
    files, skipped = scan_nifti(paths)
    want = ["a/deep/c.nii", "a/x.nii", "b/a.NII", "b/z.nii.gz"]
    assert files == [str(tmp_path / w) for w in want]
    by_path = {s.path: s for s in skipped}
    assert set(by_path) == {
        str(tmp_path / "b" / "broken.nii.gz"),
        str(notes),
        str(tmp_path / "gone"),
    }
    assert "header" in by_path[str(tmp_path / "b" / "broken.nii.gz")].reason
    assert all(isinstance(s, Skipped) for s in skipped)

    # A copy in another directory is a different file, not a duplicate.
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / "x.nii", tmp_path / "c" / "x.nii")
    files, _ = scan_nifti([tmp_path / "c", tmp_path / "a"])
    assert files == [str(tmp_path / w) for w in ["a/deep/c.nii", "a/x.nii", "c/x.nii"]]
