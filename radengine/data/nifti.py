"""NIfTI CT volumes: find ``*.nii`` / ``*.nii.gz`` files and read them as axial int16 HU slices.

nibabel is imported inside the functions so that ``import radengine`` works without it
(``pip install "radengine[nifti]"`` adds it).

Image convention (the same as the DICOM reader, which keeps slices as stored in standard axial
DICOM): every slice is ``hu[k]`` of shape ``(H, W)`` with

- rows, top to bottom, running from the patient's anterior to posterior, and
- columns, left to right of the image, running from the patient's right to left,

i.e. the radiological display ("looking up from the feet"). Slices are ordered inferior to
superior, so ``slice_position`` increases with ``k``.

How a volume gets there: its affine is brought to the closest canonical orientation (RAS+:
voxel axes increasing towards patient Right, Anterior, Superior), exactly what
``nibabel.as_closest_canonical`` does, but applied to the raw stored values as numpy views so
that a large volume is never held as float64 in one piece. In RAS+ the third axis is the
axial one; an axial slice ``v[:, :, k]`` is indexed (right->left reversed, posterior->anterior
reversed), so ``hu[k] = v[::-1, ::-1, k].T``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# One shape for every CT reader: the types live with the DICOM reader.
from radengine.data.dicom import SeriesData, Skipped, describe_error

__all__ = [
    "NIFTI_SUFFIXES",
    "SeriesData",
    "Skipped",
    "SupportsKey",
    "load_nifti",
    "nifti_stem",
    "scan_nifti",
]

#: File name endings recognised as NIfTI (compared case-insensitively).
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Value given to non-finite voxels (NaN in float volumes): air, the CT background value, so
#: that a masked-out region does not look like tissue. Infinities are clipped like any other
#: out-of-range value.
NAN_HU = -1024

_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max
_NIFTI_EXTRA = 'install the NIfTI extra: pip install "radengine[nifti]" (nibabel)'


class SupportsKey(Protocol):
    """What the readers need from the pseudonymiser: a keyed hash per identifier kind."""

    def key(self, kind: str, value: str) -> str:
        """Return the pseudonymised key of ``value`` ("patient", "study" or "series")."""
        ...


def nifti_stem(path: str | Path) -> str:
    """Return the file name without its NIfTI extension (``ct_001.nii.gz`` -> ``ct_001``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def scan_nifti(paths: Sequence[str | Path]) -> tuple[list[str], list[Skipped]]:
    """Find the NIfTI files under ``paths`` whose header can be read.

    Directories are walked recursively (symbolic links to directories are not followed, so
    a link cycle cannot hang the walk); files given directly are taken as they are. A file
    reached twice (listed and also under a listed directory) is returned once.

    Args:
        paths: Files and/or directories.

    Returns:
        ``(files, skipped)``: the readable ``*.nii`` / ``*.nii.gz`` files, sorted by path, and
        the paths that were not usable (missing, not named like NIfTI when listed directly,
        header unreadable), each with its reason.

    Raises:
        ImportError: nibabel is not installed.
    """
    nib = _import_nibabel()
    candidates: list[str] = []
    skipped: list[Skipped] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()  # only for a deterministic walk; the result is sorted anyway
                candidates.extend(os.path.join(dirpath, f) for f in filenames if _is_nifti_name(f))
        elif os.path.isfile(p):
            if _is_nifti_name(p):
                candidates.append(p)
            else:
                skipped.append(Skipped(p, "not a NIfTI file (expected a .nii or .nii.gz name)"))
        else:
            skipped.append(Skipped(p, "no such file or directory"))

    files: list[str] = []
    seen: set[str] = set()
    for f in sorted(candidates):
        real = os.path.realpath(f)
        if real in seen:
            continue
        seen.add(real)
        try:
            nib.load(f)  # parses the header only; voxel data are read later by load_nifti
        except Exception as e:  # any parse failure is this file's problem only
            skipped.append(Skipped(f, f"unreadable NIfTI header: {describe_error(e)}"))
            continue
        files.append(f)
    return files, sorted(skipped, key=lambda s: s.path)


def load_nifti(
    path: str | Path,
    pseudo: SupportsKey,
    body_region: int = -1,
    *,
    identifier: str | None = None,
) -> tuple[SeriesData | None, list[Skipped]]:
    """Read one NIfTI volume as axial int16 HU slices (see the module docstring for axes).

    The stored values are scaled with the header's ``scl_slope`` / ``scl_inter`` (as nibabel
    interprets them: a slope of 0 or nan means no scaling), rounded to the nearest integer
    (ties to even), clipped to the int16 range; NaN becomes -1024 (air). The modality is not
    guessed: whatever the volume holds is loaded as if it were HU.

    The patient, study and series keys are ``pseudo.key(kind, identifier)``; one NIfTI file is
    one series of its own study and patient, since the format records neither.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        pseudo: Pseudonymiser with ``key(kind, value) -> str``.
        body_region: Body region id for every slice (-1: unknown).
        identifier: The value the keys are derived from; default the file name without its
            extension. Pass something unique when several files share a name (e.g. the
            ``<case>/ct.nii.gz`` layout), else they would become one patient.

    Returns:
        ``(series, skipped)``: the series, or ``None`` with one :class:`Skipped` saying why
        (unreadable file, not 3-D, unsupported voxel type, degenerate affine).

    Raises:
        ImportError: nibabel is not installed.
    """
    nib = _import_nibabel()
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    path = os.fspath(path)

    def skip(reason: str, hint: str | None = None) -> tuple[None, list[Skipped]]:
        return None, [Skipped(path, reason, hint)]

    try:
        img = nib.load(path)
    except Exception as e:  # a bad file is reported, never fatal to ingest
        return skip(f"unreadable NIfTI header: {describe_error(e)}")

    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        squeeze = True  # a 3-D volume stored as a single-volume 4-D series
    elif len(shape) == 3:
        squeeze = False
    else:
        return skip(
            f"expected a 3-D volume (or 4-D with a single volume), got shape {shape}",
            "split multi-volume (4-D/5-D) series into one 3-D file per volume",
        )
    shape3 = shape[:3]
    if min(shape3) == 0:
        return skip(f"empty volume, shape {shape}")

    dtype = img.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        return skip(f"unsupported voxel type {dtype} (expected integer or real scalars)")

    affine = np.asarray(img.affine, dtype=np.float64)
    linear = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) <= 1e-12 * max(
        1.0, float(np.abs(linear).max()) ** 3
    ):
        return skip(f"degenerate or non-finite affine (voxel-to-world matrix):\n{affine}")

    try:
        raw, slope, inter = _raw_and_scaling(img)
    except Exception as e:  # truncated gzip, short file, I/O error ...
        return skip(f"cannot read voxel data: {describe_error(e)}")
    if squeeze:
        raw = raw[..., 0]

    # Reorient with views (flips and a transpose), as nibabel.as_closest_canonical would,
    # and carry the affine along so the geometry below is that of the canonical volume.
    ornt = io_orientation(affine)
    canon = apply_orientation(raw, ornt)
    canon_affine = affine @ inv_ornt_aff(ornt, shape3)

    try:
        hu = _to_hu_slices(canon, slope, inter)
    except Exception as e:  # lazily read data (memmap, gzip) can fail here too
        return skip(f"cannot read voxel data: {describe_error(e)}")

    n = hu.shape[0]
    m = canon_affine[:3, :3]
    zooms = np.sqrt((m**2).sum(axis=0))  # voxel size along canonical axes 0 (cols), 1 (rows), 2
    # Position along the slice normal, like the DICOM reader's dot(ImagePositionPatient,
    # normal); the dot product is the same in RAS and LPS because both flip x and y.
    normal = np.cross(m[:, 0], m[:, 1])
    normal /= np.linalg.norm(normal)
    step = float(m[:, 2] @ normal)
    if step < 0:  # a left-handed canonical affine; keep positions increasing with k
        normal, step = -normal, -step
    position = float(canon_affine[:3, 3] @ normal) + step * np.arange(n, dtype=np.float64)

    value = nifti_stem(path) if identifier is None else identifier
    series = SeriesData(
        hu=hu,
        patient=pseudo.key("patient", value),
        study=pseudo.key("study", value),
        series=pseudo.key("series", value),
        region=int(body_region),
        slice_position=position,
        pixel_spacing=np.tile(np.array([zooms[1], zooms[0]], dtype=np.float32), (n, 1)),
        # The distance between slice planes: NIfTI has no separate thickness field.
        thickness=np.full(n, step, dtype=np.float32),
        kvp=np.full(n, np.nan, dtype=np.float32),
        manufacturer="",
    )
    return series, []


def _raw_and_scaling(img: Any) -> tuple[np.ndarray, float, float]:
    """The stored (unscaled) voxel array and the slope/intercept nibabel would apply.

    Reading the raw integers keeps memory at the storage dtype (a memmap for ``.nii``); the
    scaling is applied per block of slices in :func:`_to_hu_slices`.
    """
    import nibabel as nib

    dataobj = img.dataobj
    if nib.is_proxy(dataobj) and hasattr(dataobj, "get_unscaled"):
        slope = float(getattr(dataobj, "slope", 1.0))
        inter = float(getattr(dataobj, "inter", 0.0))
        return np.asarray(dataobj.get_unscaled()), slope, inter
    return np.asarray(dataobj), 1.0, 0.0  # an in-memory image: values are already scaled


def _to_hu_slices(canon: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Scale, round and clip a canonical (RAS+) volume to int16 ``(n, H, W)`` display slices."""
    ni, nj, nk = canon.shape
    hu = np.empty((nk, nj, ni), dtype=np.int16)
    # float64 keeps every int32 value and slope/intercept product exact enough to round
    # correctly; blocks of ~4 M voxels (32 MiB) bound the temporary memory.
    block = max(1, (1 << 22) // (ni * nj))
    for k0 in range(0, nk, block):
        vals = np.asarray(canon[:, :, k0 : k0 + block], dtype=np.float64)
        if slope != 1.0:
            vals = vals * slope
        if inter != 0.0:
            vals = vals + inter
        vals = np.where(np.isnan(vals), float(NAN_HU), vals)
        np.rint(vals, out=vals)
        np.clip(vals, _INT16_MIN, _INT16_MAX, out=vals)
        # (i: R->L reversed, j: P->A reversed, k) -> (k, row: A->P, col: R->L)
        hu[k0 : k0 + block] = vals[::-1, ::-1, :].transpose(2, 1, 0)
    return hu


def _import_nibabel() -> Any:
    try:
        import nibabel
    except ImportError as e:
        raise ImportError(f"reading NIfTI needs nibabel: {_NIFTI_EXTRA}") from e
    return nibabel
