"""CT DICOM to Hounsfield-unit volumes: header scan, decoding, HU conversion, metadata.

Ingest runs in two steps so that a large archive is planned before any pixel is decoded:

1. :func:`scan_dicom` walks files and directories, reads headers only, keeps CT images and
   groups them by SeriesInstanceUID into :class:`SeriesRef` objects (pseudonymised keys, file
   lists). Everything else becomes a :class:`Skipped` entry with the reason.
2. :func:`load_series` decodes one series into a :class:`SeriesData`: int16 HU slices in
   geometric order plus per-slice geometry and acquisition metadata, with pseudonymised
   patient/study/series keys and never a direct identifier. Files or frames that cannot be used
   are reported as :class:`Skipped` while the rest of the series loads.

HU conversion
-------------
``HU = stored * RescaleSlope + RescaleIntercept``, rounded half to even and clipped to int16.
Slope and intercept come from the file (classic CT) or, for enhanced multi-frame CT, from the
per-frame functional group (PixelValueTransformationSequence), falling back to the shared
group and then the top level. Pixels equal to PixelPaddingValue, or between it and
PixelPaddingRangeLimit when that is present, are compared on *stored* values (that is how the
standard defines them) and become air (-1024 HU). Signed and unsigned stored values come from
pydicom, which honours PixelRepresentation and BitsStored.

Geometry
--------
Slices are ordered by their position along the slice normal, ``dot(ImagePositionPatient, n)``
with ``n = row x col`` of ImageOrientationPatient (enhanced CT: PlanePositionSequence and
PlaneOrientationSequence), ascending. InstanceNumber is used only when a slice lacks that
geometry, and then for the whole series (ties broken by file path and frame). Slices whose size
or orientation differs from the series majority, and slices at a position already taken, are
skipped with a reason.

Codecs (the ``dicom`` extra)
----------------------------
pydicom decodes uncompressed data, deflate and RLE Lossless itself. Compressed CT in archives
is mostly JPEG 2000 and JPEG Lossless (process 14), sometimes JPEG-LS or RLE. All plugins used
are under licences compatible with radengine's Apache-2.0:

* ``python-gdcm`` (wheel Apache-2.0, GDCM itself BSD-3-Clause) is the one required plugin: it
  is the only non-GPL decoder of JPEG Lossless in pydicom 3 (``pylibjpeg-libjpeg`` also
  decodes it but is GPL-3.0, so it is never used) and it also decodes JPEG 2000, JPEG-LS and
  lossy JPEG. ``pydicom`` + ``python-gdcm`` is therefore the minimal set that reads every
  syntax above, and it is what the extra installs.
* Optional, picked up when installed (all MIT): ``pylibjpeg`` + ``pylibjpeg-rle`` decode RLE
  about 8x faster than pydicom's pure-Python decoder (0.7 vs 5.4 ms per 512x512 slice);
  ``pyjpegls`` decodes JPEG-LS about 1.7x faster than GDCM; ``pylibjpeg-openjpeg`` is the JPEG
  2000 encoder of :mod:`radengine.data.dicom_synth` (for decoding, GDCM was faster on
  lossless JPEG 2000 CT here, 13-17 ms vs 18-25 ms, and pydicom tries GDCM first).

A file whose transfer syntax has no installed decoder is skipped with the syntax's name and
:data:`DICOM_EXTRA_HINT`.

pydicom is imported inside the functions that need it, so ``import radengine`` works without
it; calling them without pydicom raises an ImportError that names the extra.
"""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radengine.data.privacy import Pseudonymizer
from radengine.data.synthetic import BODY_REGIONS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "AIR_HU",
    "BODY_REGIONS",
    "CT_SOP_CLASSES",
    "DICOM_EXTRA_HINT",
    "SeriesData",
    "SeriesRef",
    "Skipped",
    "body_region",
    "load_series",
    "scan_dicom",
]

DICOM_EXTRA_HINT = "pip install 'radengine[dicom]'"
"""What to install for DICOM support (pydicom and the codec plugins)."""

AIR_HU = -1024
"""HU written for padding pixels (PixelPaddingValue and its range)."""

CT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
"""SOP classes accepted as CT images. Other objects that carry Modality CT (secondary captures
such as dose screens, raw data, reports) are skipped: they are not slices, and screenshots often
show the patient's name burned into the pixels."""

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Tolerances: DS values carry at most 16 characters, so positions agree to well under a micron
# when they are meant to be equal; orientation cosines are compared component-wise.
_POSITION_TOL_MM = 1e-2
_ORIENTATION_TOL = 1e-3

# Decoder plugins tried first, where measurably faster than pydicom's default order (see the
# module docstring); pydicom's own order is used otherwise and as the fallback.
_PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.80": ("pyjpegls",),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls",),  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.5": ("pylibjpeg",),  # RLE Lossless via pylibjpeg-rle
}

# Below this many files a serial scan beats starting worker processes: each worker imports
# radengine (and with it torch, ~1.5 s), while one header takes ~0.5 ms.
_MIN_FILES_FOR_PROCESSES = 4096

# Header attributes the scan needs; pydicom then skips converting everything else.
_SCAN_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "NumberOfFrames",
    "ImageType",
    "Rows",
    "Columns",
    "BurnedInAnnotation",
]


# --------------------------------------------------------------------------------------------
# Body region
# --------------------------------------------------------------------------------------------
_HEAD_NECK, _THORAX, _ABDOMEN, _EXTREMITIES, _HIP_PELVIS, _SPINE = (
    BODY_REGIONS.index(name)
    for name in ("head_neck", "thorax", "abdomen", "extremities", "hip_pelvis", "spine")
)
_WHOLE = -2  # marker: a whole-body / multi-region term, always unknown

# Whole normalised values (DICOM CS defined terms and common short forms) that are too short
# or too ambiguous to be searched for inside longer strings.
_EXACT_TERMS: dict[str, int] = {
    "HN": _HEAD_NECK,
    "EAR": _HEAD_NECK,
    "IAC": _HEAD_NECK,
    "RIB": _THORAX,
    "RIBS": _THORAX,
    "ABD": _ABDOMEN,
    "ABDO": _ABDOMEN,
    "TOE": _EXTREMITIES,
    "TOES": _EXTREMITIES,
    "OSG": _EXTREMITIES,  # German: upper ankle joint
    "USG": _EXTREMITIES,
    "HWS": _SPINE,  # German: cervical / thoracic / lumbar spine
    "BWS": _SPINE,
    "LWS": _SPINE,
    "WS": _SPINE,
    "CAP": _WHOLE,  # chest-abdomen-pelvis
    "WB": _WHOLE,
    "BODY": _WHOLE,  # only alone: inside a word it may be a vertebral body
}

# Keywords searched inside the normalised value. Matching is longest-first and non-overlapping,
# so a specific term consumes its letters before a shorter one can (GALLBLADDER is abdomen, not
# BLADDER; FEMORALNECK is hip, not NECK; HEART never reads as anything else).
_KEYWORDS: dict[int, tuple[str, ...]] = {
    _HEAD_NECK: (
        "HEAD", "BRAIN", "SKULL", "CRANI", "CEREBR", "CEREBEL", "NECK", "FACE", "FACIAL",
        "SINUS", "ORBIT", "MANDIB", "MAXILL", "JAW", "DENTAL", "TEETH", "THYROID", "LARYN",
        "PHARYN", "CAROTID", "TEMPORALBONE", "PETROUS", "NASAL", "PITUITAR", "SELLA",
        "INNEREAR", "KOPF", "SCHADEL", "SCHAEDEL", "HALS", "GESICHT",
    ),
    _THORAX: (
        "CHEST", "THORA", "LUNG", "PULMO", "HEART", "CARDIA", "CORONAR", "MEDIASTIN",
        "BREAST", "STERNUM", "RIBCAGE",
    ),
    _ABDOMEN: (
        "ABDOM", "LIVER", "HEPAT", "KIDNEY", "RENAL", "PANCREA", "SPLEEN", "STOMACH", "BOWEL",
        "COLON", "GALLBLADDER", "BILIAR", "LEBER", "NIERE", "BAUCH",
    ),
    _EXTREMITIES: (
        "EXTREMIT", "LIMB", "ARM", "HUMER", "ELBOW", "WRIST", "HAND", "FINGER", "THUMB",
        "SHOULDER", "LEG", "THIGH", "FEMUR", "KNEE", "TIBIA", "FIBULA", "CALF", "ANKLE", "FOOT",
        "FEET", "HEEL", "CALCANE", "PATELL", "HUMERALHEAD", "KNIE", "FUSS", "SCHULTER",
        "ELLENBOGEN", "OBERSCHENKEL", "UNTERSCHENKEL", "HANDGELENK", "SPRUNGGELENK",
    ),
    _HIP_PELVIS: (
        "PELVI", "HIP", "ACETABUL", "BLADDER", "PROSTAT", "UTERUS", "OVAR", "RECTUM",
        "SACROILIAC", "SIJOINT", "FEMORALHEAD", "FEMORALNECK", "BECKEN", "HUFTE", "HUEFTE",
    ),
    _SPINE: (
        "SPINE", "SPINAL", "VERTEBR", "SACRUM", "COCCYX", "LUMB", "MYELO", "WIRBELS",
    ),
    _WHOLE: ("WHOLEBODY", "TOTALBODY", "TRUNK", "TORSO", "GANZKOERPER", "GANZKORPER"),
}  # fmt: skip
_KEYWORD_REGION = {word: region for region, words in _KEYWORDS.items() for word in words}
_KEYWORD_RE = re.compile("|".join(sorted(_KEYWORD_REGION, key=lambda w: (-len(w), w))))


@lru_cache(maxsize=4096)
def _body_region(text: str) -> int:
    if not text:
        return -1
    if text in _EXACT_TERMS:
        region = _EXACT_TERMS[text]
        return -1 if region == _WHOLE else region
    found = {_KEYWORD_REGION[m.group()] for m in _KEYWORD_RE.finditer(text)}
    if _WHOLE in found:
        return -1
    # A spine exam is named by its level ("THORACIC SPINE", "THORACOLUMBAR"): spine wins.
    if _SPINE in found:
        return _SPINE
    return found.pop() if len(found) == 1 else -1


def body_region(body_part_examined: str | None) -> int:
    """Map DICOM BodyPartExamined (0018,0015) to the six CT body-region classes.

    The value is upper-cased, accents are dropped and everything but letters and digits is
    removed (``"C-Spine"``, ``"c spine"`` and ``"CSPINE"`` are the same). Then:

    1. Exact short terms: ``HN``, ``EAR``, ``IAC`` -> head_neck; ``RIB(S)`` -> thorax;
       ``ABD(O)`` -> abdomen; ``TOE(S)``, ``OSG``, ``USG`` -> extremities; ``HWS``, ``BWS``,
       ``LWS``, ``WS`` -> spine; ``CAP``, ``WB``, ``BODY`` -> unknown.
    2. Keywords found anywhere in the value (longest first, without overlap):

       ============  ===============================================================
       region        keywords (prefixes also match longer words, e.g. PELVI: PELVIC)
       ============  ===============================================================
       head_neck     HEAD BRAIN SKULL CRANI CEREBR CEREBEL NECK FACE FACIAL SINUS ORBIT
                     MANDIB MAXILL JAW DENTAL TEETH THYROID LARYN PHARYN CAROTID
                     TEMPORALBONE PETROUS NASAL PITUITAR SELLA INNEREAR KOPF SCHADEL
                     SCHAEDEL HALS GESICHT (e.g. HEADNECK, HEAD_NECK)
       thorax        CHEST THORA (THORAX, THORACIC) LUNG PULMO HEART CARDIA CORONAR
                     MEDIASTIN BREAST STERNUM RIBCAGE
       abdomen       ABDOM LIVER HEPAT KIDNEY RENAL PANCREA SPLEEN STOMACH BOWEL COLON
                     GALLBLADDER BILIAR LEBER NIERE BAUCH
       extremities   EXTREMIT LIMB ARM (FOREARM, UPPERARM) HUMER ELBOW WRIST HAND FINGER
                     THUMB SHOULDER LEG THIGH FEMUR KNEE TIBIA FIBULA CALF ANKLE FOOT FEET
                     HEEL CALCANE PATELL HUMERALHEAD KNIE FUSS SCHULTER ELLENBOGEN
                     OBERSCHENKEL UNTERSCHENKEL HANDGELENK SPRUNGGELENK
       hip_pelvis    PELVI HIP ACETABUL BLADDER PROSTAT UTERUS OVAR RECTUM SACROILIAC
                     SIJOINT FEMORALHEAD FEMORALNECK BECKEN HUFTE HUEFTE
       spine         SPINE (CSPINE, TSPINE, LSPINE, SSPINE, TLSPINE) SPINAL VERTEBR SACRUM
                     COCCYX LUMB MYELO WIRBELS
       unknown       WHOLEBODY TOTALBODY TRUNK TORSO GANZKOERPER GANZKORPER
       ============  ===============================================================

    3. A whole-body term gives unknown. Any spine keyword gives spine, even next to a level
       word of another region (``THORACIC SPINE``, ``THORACOLUMBAR``). Otherwise keywords of
       exactly one region give that region, and keywords of several regions give unknown:
       ``CHESTABDOMEN``, ``ABDOMENPELVIS`` or ``CHESTABDPELVIS`` series cover slices of more
       than one class, so no single label is true for all of them. As in study A, unknown and
       whole-body series are meant to be left out of the body-region task (they can still be
       used for pretraining).

    Args:
        body_part_examined: The tag's value, or None when absent.

    Returns:
        An index into :data:`BODY_REGIONS`, or -1 for unknown, whole-body or multi-region.
    """
    if body_part_examined is None:
        return -1
    text = unicodedata.normalize("NFKD", str(body_part_examined))
    text = "".join(ch for ch in text if ch.isascii() and ch.isalnum()).upper()
    return _body_region(text)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    """A file (or one frame of it) that was not ingested.

    Attributes:
        path: The file.
        reason: Why, in words a user can act on (a frame is named inside the reason).
        hint: What to do about it, e.g. :data:`DICOM_EXTRA_HINT` for a missing codec.
    """

    path: str
    reason: str
    hint: str | None = None


@dataclass
class SeriesRef:
    """One CT series found by :func:`scan_dicom` (headers only, nothing decoded).

    Attributes:
        uid_key: Pseudonymised SeriesInstanceUID (``pseudo.key("series", uid)``).
        files: The series' files, sorted by path.
        frames: Number of slices expected (the sum of NumberOfFrames, 1 per classic file).
    """

    uid_key: str
    files: list[str]
    frames: int


@dataclass(repr=False)
class SeriesData:
    """One decoded CT series, ready for the store. Holds no direct identifier.

    Attributes:
        hu: int16 HU slices, (n, H, W), sorted by position along the slice normal (ascending).
        patient: Pseudonymised patient key (PatientID; StudyInstanceUID when that is empty).
        study: Pseudonymised StudyInstanceUID.
        series: Pseudonymised SeriesInstanceUID (the :class:`SeriesRef` ``uid_key``).
        region: Body-region index into :data:`BODY_REGIONS` (:func:`body_region`), -1 unknown.
        slice_position: float64 (n,) mm along the slice normal; nan where geometry is missing.
        pixel_spacing: float32 (n, 2) (row, column) spacing in mm; nan if unknown.
        thickness: float32 (n,) SliceThickness in mm; nan if unknown.
        kvp: float32 (n,) peak tube voltage in kV; nan if unknown.
        manufacturer: Manufacturer (0008,0070), "" if unknown.
    """

    hu: np.ndarray
    patient: str
    study: str
    series: str
    region: int
    slice_position: np.ndarray
    pixel_spacing: np.ndarray
    thickness: np.ndarray
    kvp: np.ndarray
    manufacturer: str

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def __repr__(self) -> str:
        # Shapes, not pixel dumps: a repr ends up in logs.
        n, h, w = self.hu.shape
        return (
            f"SeriesData(series={self.series!r}, patient={self.patient!r}, "
            f"study={self.study!r}, slices={n}, size={h}x{w}, region={self.region}, "
            f"manufacturer={self.manufacturer!r})"
        )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class _Unusable(Exception):
    """A file or frame that cannot be used; carries the Skipped reason and hint."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading DICOM needs pydicom: {DICOM_EXTRA_HINT}") from exc
    return pydicom


def _sniff(path: str) -> bool:
    """True if the file starts like DICOM: a Part 10 preamble, or a raw data set.

    Files without the 128-byte preamble and "DICM" (old ACR-NEMA style exports) must be read
    with ``force=True``, which parses anything and can misread random bytes as huge element
    lengths; so force is only tried on files whose first tag is in group 0x0002 or 0x0008.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return head[:2] in (b"\x02\x00", b"\x08\x00") or head[:2] == b"\x00\x08"


def _read(path: str, *, header_only: bool, specific_tags: list[str] | None = None) -> Dataset:
    """Read a DICOM file; raise _Unusable with a clear reason when it is not one."""
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        if not _sniff(path):
            raise _Unusable("not a DICOM file (no 'DICM' marker and no DICOM data set)")
    except OSError as exc:
        raise _Unusable(f"unreadable: {exc.strerror or exc}") from exc
    # Malformed values in real archives make pydicom warn per file; the reasons that matter
    # are reported as Skipped instead of flooding the console.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                return pydicom.dcmread(
                    path, stop_before_pixels=header_only, specific_tags=specific_tags
                )
            except InvalidDicomError:
                return pydicom.dcmread(
                    path, stop_before_pixels=header_only, specific_tags=specific_tags, force=True
                )
        except _Unusable:
            raise
        except OSError as exc:
            raise _Unusable(f"unreadable: {exc.strerror or exc}") from exc
        except Exception as exc:  # pydicom raises many kinds on corrupt data
            raise _Unusable(f"corrupt DICOM: {type(exc).__name__}: {exc}") from exc


def _text(value: Any) -> str:
    """A DICOM string value as plain text (None and padding removed)."""
    if value is None:
        return ""
    return str(value).strip(" \0")


# --------------------------------------------------------------------------------------------
# Scan
# --------------------------------------------------------------------------------------------
_Header = tuple[str, str, str, int]  # path, SeriesInstanceUID, SOPInstanceUID, frames


def _scan_file(path: str) -> _Header | Skipped:
    """Header-only check of one file: a usable CT image, or the reason it is not."""
    try:
        ds = _read(path, header_only=True, specific_tags=_SCAN_TAGS)
    except _Unusable as exc:
        return Skipped(path, exc.reason, exc.hint)
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds.get("SOPClassUID")) or _text(
        meta.get("MediaStorageSOPClassUID") if meta is not None else None
    )
    modality = _text(ds.get("Modality")).upper()
    series_uid = _text(ds.get("SeriesInstanceUID"))
    if sop_class == _DICOMDIR_SOP_CLASS:
        return Skipped(path, "DICOMDIR (a directory index), not an image")
    missing = [
        name
        for name, value in (("Modality", modality), ("SeriesInstanceUID", series_uid))
        if not value
    ]
    if missing:
        return Skipped(
            path, f"incomplete DICOM header (no {', '.join(missing)}): truncated or not an image"
        )
    if modality != "CT":
        return Skipped(path, f"modality {modality}, not CT")
    if sop_class and sop_class not in CT_SOP_CLASSES:
        from pydicom.uid import UID

        return Skipped(
            path,
            f"SOP class {UID(sop_class).name} is not a CT image (screenshots, reports and raw "
            "data may carry Modality CT)",
        )
    if "Rows" not in ds or "Columns" not in ds:
        return Skipped(path, "no image: Rows/Columns missing (truncated header?)")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return Skipped(path, "localizer (scout) image, not a cross-sectional slice")
    if _text(ds.get("BurnedInAnnotation")).upper() == "YES":
        return Skipped(path, "BurnedInAnnotation YES: the pixels may show patient identifiers")
    try:
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        frames = 1
    return (path, series_uid, _text(ds.get("SOPInstanceUID")), frames)


def _scan_chunk(paths: Sequence[str]) -> list[_Header | Skipped]:
    return [_scan_file(p) for p in paths]


def _walk(paths: Sequence[str | Path], skipped: list[Skipped]) -> list[str]:
    """All files under ``paths`` as normalised absolute paths, sorted and deduplicated."""
    found: set[str] = set()
    for entry in paths:
        root = os.path.abspath(os.fspath(entry))
        if os.path.isfile(root):
            found.add(root)
        elif os.path.isdir(root):

            def on_error(exc: OSError, root: str = root) -> None:
                skipped.append(Skipped(exc.filename or root, f"unreadable directory: {exc}"))

            for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
                dirnames.sort()  # order does not matter (we sort at the end); keeps walks stable
                found.update(os.path.join(dirpath, name) for name in filenames)
        else:
            skipped.append(Skipped(root, "no such file or directory"))
    return sorted(found)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _mp_context() -> Any:
    """Start method for worker pools: forkserver where available.

    Plain fork copies a parent that may run torch's thread pools (unsafe, and deprecated by
    Python 3.12 when threads exist); spawn re-imports everything per worker. forkserver starts
    one clean server and forks workers from it.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def scan_dicom(
    paths: Sequence[str | Path],
    pseudo: Pseudonymizer,
    workers: int = 1,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[SeriesRef], list[Skipped]]:
    """Find the CT series under files and directories, reading headers only.

    Directories are walked recursively (symbolic links to directories are not followed). Each
    file's header is read with ``stop_before_pixels``; files without the Part 10 preamble are
    parsed with ``force`` only if they start like a DICOM data set. A file is kept if it is a CT
    image (Modality CT, a CT SOP class, Rows/Columns present, not a localizer, no burned-in
    annotation); files repeating an already seen SOPInstanceUID are reported as duplicates.

    Args:
        paths: Files and directories to scan.
        pseudo: Pseudonymiser for the series keys.
        workers: Worker processes for the header reads (1 = in this process). Trees of fewer
            than 4096 files are scanned in this process anyway: starting workers costs more.
        progress: Called with the number of files finished after each batch.

    Returns:
        ``(series, skipped)``: series sorted by ``uid_key``, each with its files sorted by
        path, and every file that was not kept, sorted by path. The result does not depend on
        the order of ``paths`` or of directory listings.

    Raises:
        ImportError: If pydicom is not installed.
        ValueError: If ``workers`` < 1.
    """
    _import_pydicom()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    skipped: list[Skipped] = []
    files = _walk(paths, skipped)
    results: list[_Header | Skipped] = []
    if workers == 1 or len(files) < _MIN_FILES_FOR_PROCESSES:
        for chunk in _chunks(files, 256):
            results.extend(_scan_chunk(chunk))
            if progress is not None:
                progress(len(chunk))
    else:
        # Small chunks keep workers busy to the end; large ones amortise pickling.
        size = max(16, min(512, len(files) // (workers * 8) or 1))
        chunks = list(_chunks(files, size))
        with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
            for chunk, part in zip(chunks, pool.map(_scan_chunk, chunks), strict=True):
                results.extend(part)
                if progress is not None:
                    progress(len(chunk))

    by_series: dict[str, list[_Header]] = {}
    seen_sop: dict[str, str] = {}
    for item in results:  # in path order, so "the first copy" is well defined
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        path, series_uid, sop_uid, _ = item
        if sop_uid and sop_uid in seen_sop:
            skipped.append(
                Skipped(path, f"duplicate SOPInstanceUID: the same image as {seen_sop[sop_uid]}")
            )
            continue
        if sop_uid:
            seen_sop[sop_uid] = path
        by_series.setdefault(series_uid, []).append(item)

    series = [
        SeriesRef(
            uid_key=pseudo.key("series", uid),
            files=[h[0] for h in headers],
            frames=sum(h[3] for h in headers),
        )
        for uid, headers in by_series.items()
    ]
    series.sort(key=lambda s: (s.uid_key, s.files))
    skipped.sort(key=lambda s: (s.path, s.reason))
    return series, skipped


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    """One candidate slice: where it came from, its geometry and its HU pixels."""

    path: str
    index: int  # frame index inside the file
    count: int  # frames in the file
    hu: np.ndarray  # int16 (rows, cols)
    ipp: np.ndarray | None
    iop: np.ndarray | None
    spacing: tuple[float, float]
    thickness: float
    kvp: float
    order: float  # InstanceNumber / InStackPositionNumber, inf if missing
    body_part: str
    patient: str
    study: str
    manufacturer: str
    position: float = float("nan")

    def label(self) -> str:
        """Suffix naming the frame inside a multi-frame file ("" for a classic file).

        It goes at the end of a reason: summaries group reasons by the text before the first
        colon, so that text must not vary from file to file.
        """
        return f" (frame {self.index + 1} of {self.count})" if self.count > 1 else ""

    def where(self) -> str:
        """The file, and the frame when the file has several."""
        return f"{self.path} (frame {self.index + 1})" if self.count > 1 else self.path


def _float(value: Any, default: float = float("nan")) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _vector(value: Any, size: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (size,) and np.isfinite(out).all() else None


def _frame_attr(groups: Sequence[Any], sequence: str, keyword: str, ds: Dataset) -> Any:
    """An attribute from the functional groups (per-frame, then shared), else the top level."""
    for group in groups:
        if group is None:
            continue
        items = group.get(sequence)
        if items:
            value = items[0].get(keyword)
            if value is not None and value != "":
                return value
    return ds.get(keyword)


def _transfer_syntax(ds: Dataset) -> Any:
    """The data set's transfer syntax, inferred from how it was read if the meta lacks it."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _decode(ds: Dataset) -> np.ndarray:
    """Stored pixel values as (frames, rows, cols); _Unusable with reason and hint on failure."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts  # raw data sets read with force lack it
    name = f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise _Unusable(f"transfer syntax {name} is not supported by pydicom") from exc
    if not decoder.is_available:
        raise _Unusable(
            f"cannot decode transfer syntax {name}: no decoder plugin installed",
            DICOM_EXTRA_HINT,
        )
    available = decoder.available_plugins
    plugins = [p for p in _PREFERRED_PLUGINS.get(str(ts), ()) if p in available]
    plugins.append("")  # "" = pydicom tries every available plugin in its own order
    error: Exception | None = None
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, _ = decoder.as_array(ds, decoding_plugin=plugin)
            break
        except Exception as exc:  # any plugin failure: try the next one
            error = exc
    else:
        # pydicom's messages run on with advice on group 0028; the first clause is the fact.
        message = str(error).splitlines()[0].split(" - ")[0] if error else "unknown error"
        if "less than expected" in message or "truncated" in message.lower():
            raise _Unusable(f"truncated pixel data: {message}") from error
        raise _Unusable(f"cannot decode pixel data ({name}): {message}") from error
    frames = int(ds.get("NumberOfFrames") or 1)
    if arr.ndim != (3 if frames > 1 else 2):
        raise _Unusable(f"unexpected pixel array shape {arr.shape} (not one sample per pixel)")
    return arr.reshape((frames, *arr.shape[-2:]))


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Pixels marked as padding by PixelPaddingValue (and PixelPaddingRangeLimit), or None."""
    bits = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1

    def as_stored(value: Any) -> int | None:
        # Padding is US or SS depending on PixelRepresentation. An ambiguous VR that pydicom
        # left unresolved arrives as raw bytes; a file written with the other VR (a common
        # vendor slip) holds the same bit pattern. Both are reinterpreted.
        if isinstance(value, (bytes, bytearray)) and len(value) == 2:
            value = int.from_bytes(value, "little", signed=signed)
        if not isinstance(value, (int, np.integer)):
            return None
        value = int(value)
        if signed and value >= 2 ** (bits - 1):
            value -= 2**bits
        elif not signed and value < 0:
            value += 2**bits
        return value

    lo = as_stored(ds.get("PixelPaddingValue"))
    if lo is None:
        return None
    hi = as_stored(ds.get("PixelPaddingRangeLimit"))
    if hi is not None:
        lo, hi = min(lo, hi), max(lo, hi)
        mask = (stored >= lo) & (stored <= hi)
    else:
        mask = stored == lo
    return mask if mask.any() else None


def _to_hu(
    stored: np.ndarray, slope: np.ndarray, intercept: np.ndarray, padding: np.ndarray | None
) -> np.ndarray:
    """Stored values (F, H, W) to int16 HU with per-frame slope and intercept (F,)."""
    out = np.empty(stored.shape, dtype=np.int16)
    for i in range(stored.shape[0]):
        s, b = float(slope[i]), float(intercept[i])
        if s == 1.0 and b == round(b):
            # Integer rescale (the common case): exact and ~3x cheaper than float64.
            value = stored[i].astype(np.int32) + int(b)
        else:
            value = np.rint(stored[i].astype(np.float64) * s + b)
        np.clip(value, -32768, 32767, out=value)
        out[i] = value
    if padding is not None:
        out[padding] = AIR_HU
    return out


def _modality_lut(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Rare CT files carry a Modality LUT Sequence instead of a rescale: let pydicom apply it."""
    from pydicom.pixels import apply_modality_lut

    hu = np.stack([apply_modality_lut(frame, ds) for frame in stored])
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def _read_frames(path: str) -> list[_Frame]:
    """Decode one file into its candidate slices (HU and metadata)."""
    ds = _read(path, header_only=False)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _Unusable("no pixel data")
    if "PixelData" not in ds:
        raise _Unusable("float pixel data is not a CT image")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise _Unusable(f"{samples} samples per pixel (colour), not a CT slice")
    stored = _decode(ds)
    count = stored.shape[0]

    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    per_frame = list(per_frame_seq) if per_frame_seq else []
    if per_frame and len(per_frame) != count:
        raise _Unusable(
            f"{len(per_frame)} per-frame functional groups for {count} frames (corrupt file)"
        )

    slopes = np.ones(count)
    intercepts = np.zeros(count)
    metas = []
    use_lut = False
    for i in range(count):
        groups = (per_frame[i] if per_frame else None, shared)
        slope = _frame_attr(groups, "PixelValueTransformationSequence", "RescaleSlope", ds)
        intercept = _frame_attr(groups, "PixelValueTransformationSequence", "RescaleIntercept", ds)
        if slope is None and intercept is None and "ModalityLUTSequence" in ds:
            use_lut = True
        slopes[i] = _float(slope, 1.0)
        intercepts[i] = _float(intercept, 0.0)
        if slopes[i] == 0.0:
            raise _Unusable("RescaleSlope is 0")
        spacing = _vector(_frame_attr(groups, "PixelMeasuresSequence", "PixelSpacing", ds), 2)
        order = _frame_attr(groups, "FrameContentSequence", "InStackPositionNumber", ds)
        if order is None or count == 1:
            order = ds.get("InstanceNumber")
        metas.append(
            dict(
                ipp=_vector(
                    _frame_attr(groups, "PlanePositionSequence", "ImagePositionPatient", ds), 3
                ),
                iop=_vector(
                    _frame_attr(groups, "PlaneOrientationSequence", "ImageOrientationPatient", ds),
                    6,
                ),
                spacing=(float("nan"), float("nan")) if spacing is None else tuple(spacing),
                thickness=_float(
                    _frame_attr(groups, "PixelMeasuresSequence", "SliceThickness", ds)
                ),
                kvp=_float(_frame_attr(groups, "CTXRayDetailsSequence", "KVP", ds)),
                order=_float(order, float("inf")) if count == 1 else _float(order, float(i)),
            )
        )

    if use_lut:
        hu = _modality_lut(ds, stored)
        padding = _padding_mask(ds, stored)
        if padding is not None:
            hu[padding] = AIR_HU
    else:
        hu = _to_hu(stored, slopes, intercepts, _padding_mask(ds, stored))
    patient = _text(ds.get("PatientID"))
    study = _text(ds.get("StudyInstanceUID"))
    common = dict(
        body_part=_text(ds.get("BodyPartExamined")),
        patient=patient,
        study=study,
        manufacturer=_text(ds.get("Manufacturer")),
    )
    return [
        _Frame(path=path, index=i, count=count, hu=hu[i], **metas[i], **common)
        for i in range(count)
    ]


def _majority(values: Sequence[Any], rank: Callable[[Any], Any]) -> Any:
    """The most common value; ties go to the highest ``rank`` (deterministic)."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], rank(v)))


def _iop_key(iop: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(iop, 3).tolist())


def load_series(ref: SeriesRef, pseudo: Pseudonymizer) -> tuple[SeriesData | None, list[Skipped]]:
    """Decode one CT series to HU with its metadata.

    Every file is read and decoded; unusable files (unreadable, no pixel data, no decoder for
    the transfer syntax, truncated pixel data) and unusable slices (a size or orientation other
    than the series majority, a position already taken) are returned as :class:`Skipped`, and
    the rest of the series is loaded. See the module docstring for the HU conversion and the
    geometric ordering.

    Args:
        ref: A series from :func:`scan_dicom`.
        pseudo: The pseudonymiser (the same secret as for the scan).

    Returns:
        ``(data, skipped)``; ``data`` is None when no slice could be loaded.

    Raises:
        ImportError: If pydicom is not installed.
    """
    _import_pydicom()
    skipped: list[Skipped] = []
    frames: list[_Frame] = []
    for path in sorted(ref.files):
        try:
            frames.extend(_read_frames(path))
        except _Unusable as exc:
            skipped.append(Skipped(path, exc.reason, exc.hint))
    if not frames:
        return None, skipped

    # Keep the majority size: a store holds one shape per series.
    sizes = [f.hu.shape for f in frames]
    size = _majority(sizes, rank=lambda s: (s[0] * s[1], s))
    kept: list[_Frame] = []
    for frame, shape in zip(frames, sizes, strict=True):
        if shape == size:
            kept.append(frame)
        else:
            skipped.append(
                Skipped(
                    frame.path,
                    f"mixed sizes in one series: {shape[0]}x{shape[1]} vs "
                    f"{size[0]}x{size[1]} (the series majority){frame.label()}",
                )
            )
    frames = kept  # never empty: the majority size has at least one slice

    oriented = [f for f in frames if f.iop is not None]
    if oriented:
        # One orientation per series: a slice in another plane is not part of this volume.
        reference = _majority([_iop_key(f.iop) for f in oriented], rank=lambda k: k)
        # The key is rounded for voting only; geometry uses the full-precision cosines.
        ref_iop = next(f.iop for f in oriented if _iop_key(f.iop) == reference)
        kept = []
        for frame in frames:
            if frame.iop is None or np.abs(frame.iop - ref_iop).max() <= _ORIENTATION_TOL:
                kept.append(frame)
            else:
                skipped.append(
                    Skipped(
                        frame.path,
                        f"orientation differs from the series majority: {_iop_key(frame.iop)} "
                        f"vs {reference}{frame.label()}",
                    )
                )
        frames = kept
        normal = np.cross(ref_iop[:3], ref_iop[3:])
        norm = float(np.linalg.norm(normal))
        if norm > 1e-6:
            normal /= norm
            for frame in frames:
                if frame.ipp is not None and frame.iop is not None:
                    frame.position = float(np.dot(frame.ipp, normal))
    geometric = all(np.isfinite(f.position) for f in frames)

    if geometric:
        frames.sort(key=lambda f: (f.position, f.order, f.path, f.index))
        kept = [frames[0]]
        for frame in frames[1:]:
            if abs(frame.position - kept[-1].position) <= _POSITION_TOL_MM:
                first = kept[-1]
                skipped.append(
                    Skipped(
                        frame.path,
                        f"duplicate slice position: {frame.position:.3f} mm, as "
                        f"{first.where()} (kept){frame.label()}",
                    )
                )
            else:
                kept.append(frame)
        frames = kept
    else:
        # No usable geometry: the acquisition order is the best available.
        frames.sort(key=lambda f: (f.order, f.path, f.index))

    def common(values: list[str]) -> str:
        return _majority(values, rank=lambda v: (v != "", v))

    patient = common([f.patient for f in frames])
    study = common([f.study for f in frames])
    data = SeriesData(
        hu=np.stack([f.hu for f in frames]),
        patient=pseudo.key("patient", patient) if patient else pseudo.key("study", study),
        study=pseudo.key("study", study),
        series=ref.uid_key,
        region=body_region(common([f.body_part for f in frames]) or None),
        slice_position=np.array([f.position for f in frames], dtype=np.float64),
        pixel_spacing=np.array([f.spacing for f in frames], dtype=np.float32).reshape(-1, 2),
        thickness=np.array([f.thickness for f in frames], dtype=np.float32),
        kvp=np.array([f.kvp for f in frames], dtype=np.float32),
        manufacturer=common([f.manufacturer for f in frames]),
    )
    skipped.sort(key=lambda s: (s.path, s.reason))
    return data, skipped
