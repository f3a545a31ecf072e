"""Synthetic CT data written as real DICOM series, to test ingest end to end.

:func:`write_synthetic_dicom` renders series of :func:`radengine.data.synthetic.generate_ct_series`
as DICOM files with realistic headers, one series per *variant* and patient. Each variant
exercises one thing a reader of real archives must get right:

=============  ==============================================================================
variant        what it is
=============  ==============================================================================
plain          signed int16 stored values, RescaleSlope 1, RescaleIntercept 0
intercept      unsigned, BitsStored 12, RescaleIntercept -1024 (the most common CT encoding)
padding        signed, intercept -1024; outside the inscribed circle PixelPaddingValue -2000
               (even slices) or values in [-2000, -1500] with PixelPaddingRangeLimit -1500
               (odd slices); a reader must turn both into air (-1024 HU)
slope          unsigned, intercept -1024, RescaleSlope 0.5 (even patients: exact) or 2 (odd
               patients: stored = rint((HU + 1024) / 2), so HU is quantised to even values)
shuffled       signed; InstanceNumber and file names in random order; a tilted (oblique)
               ImageOrientationPatient, so only the slice normal gives the right order
rle            RLE Lossless, signed (pydicom's own encoder)
jpeg2000       JPEG 2000 Lossless, unsigned with intercept -1024 (needs ``pylibjpeg`` +
               ``pylibjpeg-openjpeg`` to encode)
jpegls         JPEG-LS Lossless, signed (needs ``pyjpegls`` to encode)
jpeglossless   JPEG Lossless process 14 SV1, signed (needs ``python-gdcm`` to encode)
enhanced       one Enhanced CT multi-frame file (unsigned): geometry, spacing, kVp and a
               per-frame rescale (intercept -1024 or -1100 on alternate slices) in the
               functional groups; frames stored in random order
mixed          one slice at half the size, one slice without pixel data, and one extra file at
               the position of another slice (HU + 100, higher InstanceNumber): a reader keeps
               the rest, in order, and reports these three
mr             an MR series (Modality MR): must be skipped
broken         a CT series whose last slice is cut inside its pixel data, a copy of a slice
               cut inside its header, and a text file named like DICOM
=============  ==============================================================================

Codec variants whose encoder is not installed are left out with a :class:`UserWarning`.

Identifiers are fake but realistic (``SYNTH^PATIENT0001``, IDs, birth dates, accession numbers,
an institution), so that tests can check none of them survives pseudonymisation. UIDs are
derived from the seed with :func:`pydicom.uid.generate_uid` (entropy sources under pydicom's
root), dates are fixed, and random choices are seeded: the same arguments give byte-identical
files.

Images are the generator's, in its order (head to feet, ``slice_position`` decreasing), placed
at ``z = slice_position`` with square pixels of its ``pixel_spacing`` centred on the isocentre.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radengine.data.synthetic import BODY_REGIONS, CTSeries, generate_ct_series

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "ALL_VARIANTS",
    "CODEC_VARIANTS",
    "SynthSeries",
    "available_variants",
    "padding_mask",
    "plan_synthetic_dicom",
    "write_synthetic_dicom",
]

ALL_VARIANTS: tuple[str, ...] = (
    "plain",
    "intercept",
    "padding",
    "slope",
    "shuffled",
    "rle",
    "jpeg2000",
    "jpegls",
    "jpeglossless",
    "enhanced",
    "mixed",
    "mr",
    "broken",
)
"""Every variant, in the order series are numbered."""

CODEC_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jpeg2000": ("1.2.840.10008.1.2.4.90", ("pylibjpeg", "openjpeg")),
    "jpegls": ("1.2.840.10008.1.2.4.80", ("jpeg_ls",)),
    "jpeglossless": ("1.2.840.10008.1.2.4.70", ("gdcm",)),
}
"""Compressed variants that need an optional encoder: transfer syntax and modules needed."""

_PIP_NAMES = {
    "pylibjpeg": "pylibjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "jpeg_ls": "pyjpegls",
    "gdcm": "python-gdcm",
}

_UID_ROOT = "radengine-synthetic-dicom"
_MANUFACTURER = "radengine-synthetic"
_STUDY_DATE = "20240102"
_STUDY_TIME = "083000"
_PADDING_VALUE = -2000
_PADDING_LIMIT = -1500
_TILT_DEG = 12.0  # gantry-like tilt of the "shuffled" variant

_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_RLE = "1.2.840.10008.1.2.5"


@dataclass(frozen=True)
class SynthSeries:
    """One series of the synthetic DICOM set.

    Attributes:
        patient: Zero-based patient index (the generator's ``patient``).
        variant: One of :data:`ALL_VARIANTS`.
        region: Body-region id (index into :data:`BODY_REGIONS`).
        directory: Folder of the series' files, relative to the output directory.
    """

    patient: int
    variant: str
    region: int
    directory: str


def available_variants() -> tuple[str, ...]:
    """The variants whose encoders are installed (all but possibly the codec ones)."""
    return tuple(v for v in ALL_VARIANTS if not _missing_modules(v))


def _missing_modules(variant: str) -> list[str]:
    modules = CODEC_VARIANTS.get(variant, ("", ()))[1]
    return [m for m in modules if importlib.util.find_spec(m) is None]


def plan_synthetic_dicom(
    num_patients: int, variants: Sequence[str] = ALL_VARIANTS
) -> list[SynthSeries]:
    """Which series :func:`write_synthetic_dicom` writes (codec availability aside).

    Each patient gets one series per variant. A variant's body region rotates with the patient
    and depends only on the variant's place in :data:`ALL_VARIANTS`, never on which other
    variants are chosen.

    Args:
        num_patients: Number of patients (>= 1).
        variants: Variants to write, a subset of :data:`ALL_VARIANTS`.

    Returns:
        One :class:`SynthSeries` per (patient, variant), patient-major.

    Raises:
        ValueError: If ``num_patients`` < 1 or a variant is unknown or repeated.
    """
    if isinstance(num_patients, bool) or not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be an integer >= 1, got {num_patients!r}")
    variants = [variants] if isinstance(variants, str) else list(variants)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; expected some of {ALL_VARIANTS}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants contains duplicates: {variants}")
    ordered = [v for v in ALL_VARIANTS if v in variants]
    return [
        SynthSeries(
            patient=p,
            variant=v,
            region=(ALL_VARIANTS.index(v) + p) % len(BODY_REGIONS),
            directory=f"p{p + 1:04d}/{ALL_VARIANTS.index(v) + 1:02d}_{v}",
        )
        for p in range(num_patients)
        for v in ordered
    ]


def padding_mask(size: int) -> np.ndarray:
    """Pixels outside the inscribed circle, (size, size) bool: the padded area of "padding"."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - c) ** 2 + (xx - c) ** 2 > (size / 2.0) ** 2


# --------------------------------------------------------------------------------------------
# Header building
# --------------------------------------------------------------------------------------------
def _uid(seed: int, *parts: object) -> str:
    """A UID that depends only on its parts.

    ``generate_uid(prefix=None, ...)`` would return a random UUID-based UID (pydicom ignores the
    entropy then), so the default pydicom root is used: the UID is then a SHA-512 of the
    entropy. The parts are joined with a separator because pydicom concatenates them.
    """
    from pydicom.uid import generate_uid

    key = "/".join([_UID_ROOT, str(seed), *map(str, parts)])
    return str(generate_uid(entropy_srcs=[key]))


def _ds(value: float) -> Any:
    """A float as a DS value of at most 16 characters."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def _body_part(series: CTSeries, patient: int) -> str:
    """A realistic BodyPartExamined for the series (DICOM defined terms and common variants)."""
    region = series.region_name
    if region == "head_neck":
        return ("HEAD", "HEADNECK", "BRAIN")[patient % 3]
    if region == "thorax":
        return ("CHEST", "THORAX", "LUNG")[patient % 3]
    if region == "abdomen":
        return ("ABDOMEN", "LIVER")[patient % 2]
    if region == "hip_pelvis":
        return ("PELVIS", "HIP")[patient % 2]
    if region == "spine":
        return {"cervical": "CSPINE", "thoracic": "TSPINE", "lumbar": "LSPINE"}.get(
            series.variant, "SPINE"
        )
    return {"thigh": "THIGH", "calf": "LEG", "upper_arm": "ARM", "forearm": "FOREARM"}.get(
        series.variant, "EXTREMITY"
    )


@dataclass
class _Context:
    """What every file of one series shares."""

    seed: int
    plan: SynthSeries
    series: CTSeries
    series_number: int
    kvp: float
    study_uid: str
    series_uid: str
    frame_uid: str


def _base(ctx: _Context, sop_class: str, instance: int, modality: str = "CT") -> Dataset:
    """Patient, study, series, equipment and instance modules of one file."""
    from pydicom.dataset import Dataset, FileMetaDataset

    p = ctx.plan.patient
    sop_uid = _uid(ctx.seed, "sop", p, ctx.plan.variant, instance)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = _EXPLICIT_LE
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _STUDY_TIME
    ds.AccessionNumber = f"SYNACC{p + 1:04d}{ctx.series_number:02d}"
    ds.Modality = modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "Synthetic General Hospital"
    ds.InstitutionAddress = "1 Nowhere Street, Synthville"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StationName = "SYNTHCT01"
    ds.StudyDescription = f"{modality} synthetic study"
    ds.SeriesDescription = f"{ctx.plan.variant} {ctx.series.region_name}"
    ds.ManufacturerModelName = "procedural phantom"
    ds.PatientName = f"SYNTH^PATIENT{p + 1:04d}"
    ds.PatientID = f"SYNTH-ID-{p + 1:04d}"
    ds.PatientBirthDate = f"19{50 + p % 40:02d}{1 + p % 12:02d}{1 + p % 28:02d}"
    ds.PatientSex = ("F", "M", "O")[p % 3]
    ds.BodyPartExamined = _body_part(ctx.series, p)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = ctx.series_uid
    ds.StudyID = f"{p + 1}"
    ds.SeriesNumber = ctx.series_number
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = ctx.frame_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, bits_stored: int) -> None:
    """Image pixel module for 16-bit monochrome data of any number of frames."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape[-2:])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"


def _set_rescale(ds: Dataset, intercept: float, slope: float) -> None:
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"


def _geometry(ctx: _Context, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, origin per slice (n, 3)): pixel (0, 0) sits at ``origin``, z per slice.

    With a tilt the image plane is rotated about the patient x axis; slice i lies at
    ``z_i`` along the normal, so its position along the normal is exactly ``slice_position``.
    """
    s, size = ctx.series.pixel_spacing, ctx.series.images.shape[-1]
    t = np.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), np.sin(t)])
    normal = np.cross(row, col)
    corner = -(size / 2.0 - 0.5) * s
    in_plane = corner * row + corner * col
    origins = in_plane[None, :] + ctx.series.slice_position[:, None] * normal[None, :]
    return row, col, origins


def _ct_slice(
    ctx: _Context,
    index: int,
    instance: int,
    stored: np.ndarray,
    *,
    bits_stored: int,
    intercept: float,
    slope: float = 1.0,
    tilt_deg: float = 0.0,
) -> Dataset:
    """A classic CT Image Storage file for slice ``index`` of the series."""
    ds = _base(ctx, _CT_IMAGE, instance)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = _ds(ctx.series.slice_spacing)
    ds.KVP = _ds(ctx.kvp)
    ds.DataCollectionDiameter = _ds(500.0)
    ds.ReconstructionDiameter = _ds(ctx.series.pixel_spacing * ctx.series.images.shape[-1])
    ds.ConvolutionKernel = "BONE" if ctx.series.region_name == "spine" else "STANDARD"
    ds.AcquisitionNumber = 1
    row, col, origins = _geometry(ctx, tilt_deg)
    ds.ImagePositionPatient = [_ds(v) for v in origins[index]]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    ds.SliceLocation = _ds(ctx.series.slice_position[index])
    ds.PixelSpacing = [_ds(ctx.series.pixel_spacing)] * 2
    _set_pixels(ds, stored, bits_stored)
    _set_rescale(ds, intercept, slope)
    ds.WindowCenter = _ds(40.0)
    ds.WindowWidth = _ds(400.0)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _compress(ds: Dataset, variant: str) -> None:
    """Re-encode the pixel data of ``ds`` with the variant's transfer syntax."""
    if variant == "rle":
        # pydicom's own RLE encoder: always present, so the bytes never depend on plugins.
        ds.compress(_RLE, encoding_plugin="pydicom", generate_instance_uid=False)
    elif variant == "jpeg2000":
        ds.compress(
            CODEC_VARIANTS[variant][0], encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
    elif variant == "jpegls":
        ds.compress(
            CODEC_VARIANTS[variant][0], encoding_plugin="pyjpegls", generate_instance_uid=False
        )
    elif variant == "jpeglossless":
        _compress_gdcm(ds, CODEC_VARIANTS[variant][0])


def _compress_gdcm(ds: Dataset, transfer_syntax: str) -> None:
    """JPEG Lossless via GDCM (pydicom has no encoder for it).

    GDCM transcodes a temporary copy; only its encapsulated pixel data is taken over, because
    GDCM also rewrites header elements (dates, implementation UIDs) that must stay fixed.
    """
    import gdcm
    import pydicom

    with tempfile.TemporaryDirectory(prefix="radengine-gdcm-") as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read its input")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not encode JPEG Lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write JPEG Lossless")
        encoded = pydicom.dcmread(dst)
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = transfer_syntax


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------
def _write_classic(ctx: _Context, out: Path, rng: np.random.Generator) -> list[Path]:
    """Variants made of one classic CT file per slice."""
    variant, images = ctx.plan.variant, ctx.series.images
    n = len(images)
    paths: list[Path] = []
    instances = np.arange(1, n + 1)
    names = np.arange(1, n + 1)
    tilt = 0.0
    if variant == "shuffled":
        instances = rng.permutation(n) + 1
        names = rng.permutation(n) + 1
        tilt = _TILT_DEG
    outside = padding_mask(images.shape[-1])
    for i in range(n):
        hu = images[i].astype(np.int32)
        kwargs: dict[str, Any] = {"bits_stored": 16, "intercept": 0.0, "tilt_deg": tilt}
        if variant == "intercept" or variant == "jpeg2000":
            stored = (hu + 1024).astype(np.uint16)
            kwargs.update(bits_stored=12, intercept=-1024.0)
        elif variant == "padding":
            stored = (hu + 1024).astype(np.int16)
            if i % 2 == 0:
                stored[outside] = _PADDING_VALUE
            else:
                fill = rng.integers(_PADDING_VALUE, _PADDING_LIMIT + 1, size=int(outside.sum()))
                stored[outside] = fill.astype(np.int16)
            kwargs.update(intercept=-1024.0)
        elif variant == "slope":
            if ctx.plan.patient % 2 == 0:
                stored, slope = ((hu + 1024) * 2).astype(np.uint16), 0.5
            else:
                stored, slope = np.rint((hu + 1024) / 2.0).astype(np.uint16), 2.0
            kwargs.update(intercept=-1024.0, slope=slope)
        else:
            stored = hu.astype(np.int16)
        ds = _ct_slice(ctx, i, int(instances[i]), stored, **kwargs)
        if variant == "padding":
            ds.PixelPaddingValue = _PADDING_VALUE
            if i % 2 == 1:
                ds.PixelPaddingRangeLimit = _PADDING_LIMIT
        _compress(ds, variant)
        paths.append(_save(ds, out / f"IM{int(names[i]):04d}.dcm"))
    return paths


def _write_mixed(ctx: _Context, out: Path) -> list[Path]:
    images = ctx.series.images
    n = len(images)
    if n < 4:
        raise ValueError("variant 'mixed' needs slices_per_series >= 4")
    paths = []
    for i in range(n):
        stored = images[i]
        if i == 1:
            stored = np.ascontiguousarray(images[i][::2, ::2])  # the odd-sized slice
        ds = _ct_slice(ctx, i, i + 1, stored, bits_stored=16, intercept=0.0)
        if i == 1:
            ds.PixelSpacing = [_ds(2 * ctx.series.pixel_spacing)] * 2
        if i == 2:
            del ds.PixelData  # the header says there is an image; there is none
        paths.append(_save(ds, out / f"IM{i + 1:04d}.dcm"))
    # A second image at slice 3's position: same place, other content, a later instance.
    dup = _ct_slice(ctx, 3, n + 1, (images[3].astype(np.int32) + 100).astype(np.int16),
                    bits_stored=16, intercept=0.0)  # fmt: skip
    paths.append(_save(dup, out / f"IM{n + 1:04d}.dcm"))
    return paths


def _write_broken(ctx: _Context, out: Path) -> list[Path]:
    images = ctx.series.images
    n = len(images)
    if n < 2:
        raise ValueError("variant 'broken' needs slices_per_series >= 2")
    paths = []
    for i in range(n):
        ds = _ct_slice(ctx, i, i + 1, images[i], bits_stored=16, intercept=0.0)
        paths.append(_save(ds, out / f"IM{i + 1:04d}.dcm"))
    # The last slice loses the second half of its pixel data (an interrupted copy).
    last = paths[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - images[-1].nbytes // 2])
    # A copy of the first slice cut inside its header, and a text file posing as DICOM.
    head = paths[0].read_bytes()[:400]
    paths.append(out / "truncated_header.dcm")
    paths[-1].write_bytes(head)
    paths.append(out / "notes.dcm")
    paths[-1].write_text("Not DICOM: notes left in the export folder.\n")
    return paths


def _write_enhanced(ctx: _Context, out: Path, rng: np.random.Generator) -> list[Path]:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    images = ctx.series.images
    n = len(images)
    order = rng.permutation(n)  # file frame f holds generator slice order[f]
    # Alternate frames use another intercept, so only a per-frame rescale gives the right HU.
    intercepts = np.where(order % 2 == 0, -1024.0, -1100.0)
    stored = images[order].astype(np.int32) - intercepts[:, None, None].astype(np.int32)
    ds = _base(ctx, _ENHANCED_CT_IMAGE, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = _STUDY_DATE + _STUDY_TIME
    ds.NumberOfFrames = n
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    _set_pixels(ds, stored.astype(np.uint16), 16)
    row, col, origins = _geometry(ctx)

    def item(**elements: Any) -> Dataset:
        entry = Dataset()
        for keyword, value in elements.items():
            setattr(entry, keyword, value)
        return entry

    shared = item(
        PixelMeasuresSequence=DicomSequence(
            [
                item(
                    PixelSpacing=[_ds(ctx.series.pixel_spacing)] * 2,
                    SliceThickness=_ds(ctx.series.slice_spacing),
                )
            ]
        ),
        PlaneOrientationSequence=DicomSequence(
            [item(ImageOrientationPatient=[_ds(v) for v in (*row, *col)])]
        ),
        CTXRayDetailsSequence=DicomSequence(
            [item(KVP=_ds(ctx.kvp), FocalSpots=[_ds(0.7)], FilterType="BODY")]
        ),
    )
    per_frame = []
    # In-stack position counts from the head, as the generator orders its slices.
    for f in range(n):
        g = int(order[f])
        per_frame.append(
            item(
                FrameContentSequence=DicomSequence(
                    [
                        item(
                            StackID="1",
                            InStackPositionNumber=g + 1,
                            DimensionIndexValues=[1, g + 1],
                        )
                    ]
                ),
                PlanePositionSequence=DicomSequence(
                    [item(ImagePositionPatient=[_ds(v) for v in origins[g]])]
                ),
                PixelValueTransformationSequence=DicomSequence(
                    [
                        item(
                            RescaleIntercept=_ds(intercepts[f]),
                            RescaleSlope=_ds(1.0),
                            RescaleType="HU",
                        )
                    ]
                ),
            )
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return [_save(ds, out / "ENHANCED.dcm")]


def _write_mr(ctx: _Context, out: Path) -> list[Path]:
    images = ctx.series.images
    paths = []
    for i in range(len(images)):
        ds = _base(ctx, _MR_IMAGE, i + 1, modality="MR")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.MagneticFieldStrength = _ds(1.5)
        ds.SliceThickness = _ds(ctx.series.slice_spacing)
        row, col, origins = _geometry(ctx)
        ds.ImagePositionPatient = [_ds(v) for v in origins[i]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(ctx.series.pixel_spacing)] * 2
        # Any plausible MR intensities do; these are the HU shifted to be positive.
        _set_pixels(ds, np.clip(images[i].astype(np.int32) + 1024, 0, 4095).astype(np.uint16), 12)
        paths.append(_save(ds, out / f"MR{i + 1:04d}.dcm"))
    return paths


def write_synthetic_dicom(
    out_dir: Path,
    num_patients: int = 2,
    slices_per_series: int = 8,
    size: int = 128,
    seed: int = 0,
    variants: Sequence[str] = ALL_VARIANTS,
) -> list[Path]:
    """Write synthetic CT (and one MR) series as DICOM files, one series per variant and patient.

    Series ``plan_synthetic_dicom(num_patients, variants)`` are written under
    ``out_dir/p0001/03_padding/...``; see the module docstring for the variants. Codec variants
    whose encoder is not installed are left out with a :class:`UserWarning` naming the package.

    Args:
        out_dir: Output directory (created if needed).
        num_patients: Number of patients (>= 1).
        slices_per_series: Slices per series (>= 4 when "mixed" is requested, >= 2 for
            "broken").
        size: Image height and width in pixels (32 to 2048).
        seed: Non-negative seed, passed to the generator and used for UIDs and shuffles.
        variants: Variants to write, a subset of :data:`ALL_VARIANTS`.

    Returns:
        Every file written, sorted.

    Raises:
        ValueError: If an argument is out of range or a variant is unknown.
        ImportError: If pydicom is not installed.
    """
    try:
        import pydicom  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("writing DICOM needs pydicom: pip install 'radengine[dicom]'") from exc
    out_dir = Path(out_dir)
    plans = plan_synthetic_dicom(num_patients, variants)
    missing = {v: _missing_modules(v) for v in {p.variant for p in plans}}
    for variant in sorted(v for v, mods in missing.items() if mods):
        packages = " ".join(_PIP_NAMES[m] for m in missing[variant])
        warnings.warn(
            f"synthetic DICOM: variant {variant!r} skipped, its encoder is not installed "
            f"(pip install {packages})",
            UserWarning,
            stacklevel=2,
        )
    cache: dict[tuple[int, int], CTSeries] = {}
    written: list[Path] = []
    for plan in plans:
        if missing[plan.variant]:
            continue
        key = (plan.patient, plan.region)
        if key not in cache:
            cache[key] = generate_ct_series(
                plan.patient, plan.region, num_slices=slices_per_series, size=size, seed=seed
            )
        series = cache[key]
        number = ALL_VARIANTS.index(plan.variant) + 1
        study_kind = "mr" if plan.variant == "mr" else "ct"
        ctx = _Context(
            seed=seed,
            plan=plan,
            series=series,
            series_number=number,
            kvp=float((80, 100, 120, 140)[(plan.patient + number) % 4]),
            study_uid=_uid(seed, "study", plan.patient, study_kind),
            series_uid=_uid(seed, "series", plan.patient, plan.variant),
            frame_uid=_uid(seed, "frame", plan.patient, plan.variant),
        )
        rng = np.random.default_rng([seed, 7919, plan.patient, number])
        out = out_dir / plan.directory
        out.mkdir(parents=True, exist_ok=True)
        if plan.variant == "enhanced":
            written += _write_enhanced(ctx, out, rng)
        elif plan.variant == "mixed":
            written += _write_mixed(ctx, out)
        elif plan.variant == "broken":
            written += _write_broken(ctx, out)
        elif plan.variant == "mr":
            written += _write_mr(ctx, out)
        else:
            written += _write_classic(ctx, out, rng)
    return sorted(written)
