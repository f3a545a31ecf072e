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

Speed
-----
Classic single-frame files with uncompressed little-endian pixel data (the bulk of CT archives)
take a fast path: the header is walked without building pydicom Datasets, the few values used
are converted with pydicom's own converters, and the pixel bytes are read straight into the
series array (unused high bits cleared or sign-extended as pydicom does). Any file the fast
path cannot vouch for is read by pydicom; both give the same results. On a 512x512 slice this
takes the scan from ~0.35 to ~0.05 ms per file and the load from ~1.9 to ~0.25 ms per slice.

pydicom is imported inside the functions that need it, so ``import radengine`` works without
it; calling them without pydicom raises an ImportError that names the extra.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sys
import unicodedata
import warnings
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radengine.data.paths import PathList, PathTable
from radengine.data.paths import walk as walk_paths
from radengine.data.privacy import Pseudonymizer
from radengine.data.synthetic import BODY_REGIONS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "AIR_HU",
    "BODY_REGIONS",
    "CT_SOP_CLASSES",
    "DICOM_EXTRA_HINT",
    "MAX_DECODED_BYTES",
    "SeriesData",
    "SeriesRef",
    "Skipped",
    "body_region",
    "describe_error",
    "is_fatal",
    "load_series",
    "scan_dicom",
    "skipped_for",
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

MAX_DECODED_BYTES = 4 << 30
"""Largest decoded pixel array accepted from one file (4 GiB: about 8000 slices of 512 x 512
at 16 bits). Larger headers are taken as corrupt; see :func:`_check_decoded_size`."""

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
# radengine (and with it torch, ~1.5 s), while one header takes ~0.05-0.5 ms.
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


SKIPPED_IN_MEMORY = 100_000
"""Skipped entries :func:`scan_dicom` holds before it spills them to a temporary file: the
budget of per-file objects an archive of mostly unusable files costs."""


def _skipped_order(s: Skipped) -> tuple[str, str]:
    return (s.path, s.reason)


class SpooledSkipped:
    """The skipped entries of a scan too large to hold: those spilled to an unlinked
    temporary file (in path order) merged with those kept in memory, in (path, reason)
    order, each time it is iterated. Compares equal to the list of the same entries."""

    def __init__(self, spill: Any, spilled: int, tail: list[Skipped], others: list[Skipped]):
        self._spill = spill  # a TemporaryFile: gone from the disk when this object is
        self._spilled = spilled
        self._tail = tail
        self._others = others

    def __len__(self) -> int:
        return self._spilled + len(self._tail) + len(self._others)

    def _read_spill(self) -> Iterator[Skipped]:
        import json

        fd, offset, rest = self._spill.fileno(), 0, b""
        while block := os.pread(fd, 1 << 20, offset):  # pread: iterations do not interfere
            offset += len(block)
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield Skipped(*json.loads(line))

    def __iter__(self) -> Iterator[Skipped]:
        import heapq

        return heapq.merge(
            self._read_spill(), iter(self._tail), iter(self._others), key=_skipped_order
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SpooledSkipped, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class _SkipSpool:
    """Collects a scan's skipped entries, which arrive in path order: up to ``budget`` in
    memory, the rest appended to a temporary file (json lines)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: list[Skipped] = []
        self.file: Any = None
        self.spilled = 0

    def add(self, s: Skipped) -> None:
        self.entries.append(s)
        if len(self.entries) >= self.budget:
            import json
            import tempfile

            if self.file is None:
                self.file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the result)
            lines = (json.dumps([e.path, e.reason, e.hint]) + "\n" for e in self.entries)
            self.file.write("".join(lines).encode())
            self.file.flush()
            self.spilled += len(self.entries)
            self.entries = []

    def result(self, others: list[Skipped]) -> list[Skipped] | SpooledSkipped:
        """Every entry, in (path, reason) order: a list while they fit the budget."""
        if self.file is None:
            return sorted(self.entries + others, key=_skipped_order)
        return SpooledSkipped(
            self.file, self.spilled, sorted(self.entries, key=_skipped_order),
            sorted(others, key=_skipped_order),
        )  # fmt: skip


@dataclass
class SeriesRef:
    """One CT series found by :func:`scan_dicom` (headers only, nothing decoded).

    Attributes:
        uid_key: Pseudonymised SeriesInstanceUID (``pseudo.key("series", uid)``).
        files: The series' files, sorted by path (a list, or the scan's compact
            :class:`radengine.data.paths.PathList`, which compares and pickles as one).
        frames: Number of slices expected (the sum of NumberOfFrames, 1 per classic file).
    """

    uid_key: str
    files: Sequence[str]
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


# Exceptions that stop the program on purpose (Ctrl-C, sys.exit, a closing generator): they
# must cross every isolation boundary. Anything else raised while reading one file or series,
# BaseException included (pyo3's PanicException from Rust-based codecs is one), is that input's
# fault and is reported for it alone.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def is_fatal(exc: BaseException) -> bool:
    """True for exceptions that must never be turned into a skipped file (Ctrl-C, exit).

    Args:
        exc: The exception caught at an isolation boundary.

    Returns:
        Whether the boundary has to re-raise it.
    """
    return isinstance(exc, _FATAL)


def describe_error(exc: BaseException) -> str:
    """One readable line for an exception: ``"Type: first line of the message"``.

    Decoders raise exceptions with empty or multi-line messages (pydicom's run on with advice,
    some codecs give none at all), so the type name is always there and only the first
    non-empty line of the message follows it. OSErrors give their strerror (the file is named
    by the entry the reason goes into).

    Args:
        exc: Any exception.

    Returns:
        ``"Type: message"``, or ``"Type"`` when the message is empty.
    """
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not break the report either
            text = ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{name}: {first[:300]}" if first else name


def skipped_for(path: str, exc: BaseException) -> Skipped:
    """The :class:`Skipped` entry for a file whose reading raised ``exc``.

    The one place that turns any failure while reading, decoding or converting a file into a
    reason: an :class:`_Unusable` keeps its own reason and hint; an OSError (a file that
    vanished or became unreadable during the ingest) reads "unreadable"; a MemoryError names
    the size problem; anything else is corrupt data that crashed a parser or a decoder.

    Args:
        path: The file.
        exc: What reading it raised (never a fatal one, see :func:`is_fatal`).

    Returns:
        The entry, with a reason whose text before the first ':' names the class of problem.
    """
    if isinstance(exc, _Unusable):
        return Skipped(path, exc.reason, exc.hint)
    if isinstance(exc, OSError):
        return Skipped(path, f"unreadable: {describe_error(exc)}")
    if isinstance(exc, MemoryError):
        return Skipped(path, f"too large to decode in memory: {describe_error(exc)}")
    return Skipped(path, f"corrupt DICOM: {describe_error(exc)}")


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
    """Read a DICOM file; _Unusable when it does not even start like one.

    Every other failure (an OSError for a file that vanished, pydicom's many exception types
    on corrupt data) propagates to the caller's per-file isolation boundary, which turns it
    into a reason with :func:`skipped_for`.
    """
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    if not _sniff(path):  # an OSError (file gone, no permission) is the caller's to report
        raise _Unusable("not a DICOM file (no 'DICM' marker and no DICOM data set)")
    # Malformed values in real archives make pydicom warn per file; the reasons that matter
    # are reported as Skipped instead of flooding the console.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Any other failure (pydicom raises many kinds on corrupt data) propagates to the
        # caller's per-file boundary, which words it with skipped_for.
        try:
            return pydicom.dcmread(
                path, stop_before_pixels=header_only, specific_tags=specific_tags
            )
        except InvalidDicomError:
            return pydicom.dcmread(
                path, stop_before_pixels=header_only, specific_tags=specific_tags, force=True
            )


def _text(value: Any) -> str:
    """A DICOM string value as plain text (None and padding removed)."""
    if value is None:
        return ""
    return str(value).strip(" \0")


# --------------------------------------------------------------------------------------------
# Fast path: classic uncompressed files read without pydicom's Dataset machinery
# --------------------------------------------------------------------------------------------
# pydicom spends most of a classic CT file's time building Dataset and DataElement objects:
# ~0.3 ms for a header, ~0.5 ms more for `pixel_array`. The fast path walks the header itself
# (element boundaries only, skipping values it does not need), converts the few values it uses
# with pydicom's own value converters, and reads the pixel bytes straight into the series
# array. It takes a file only when it can show that pydicom would read it the same way; at the
# first doubt (odd structure, unexpected VR or length, compressed or big-endian data, several
# frames, functional groups, a modality LUT, non-ASCII text, ...) it raises _Bail and the file
# goes through pydicom as before. The tests compare both paths on every synthetic variant, on
# pydicom's bundled files and on edited copies.

_FAST_PATH = True
"""Whether :func:`scan_dicom` and :func:`load_series` may use the fast path (tests turn it off
to get the reference results)."""

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # BE, deflate
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_CHARSET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # pydicom's stop_before_pixels
_CHUNK = 16384  # first read: covers a typical header whole

_IMPLICIT_HEAD = struct.Struct("<HHI").unpack_from  # group, element, 4-byte length
_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 2-byte length
_U32 = struct.Struct("<I").unpack_from

# Top-level attributes the fast path reads: keyword -> (tag, dictionary VR).
_FAST_TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "Modality": (0x00080060, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "PatientID": (0x00100020, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "SliceThickness": (0x00180050, "DS"),
    "KVP": (0x00180060, "DS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "PlanarConfiguration": (0x00280006, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "PixelSpacing": (0x00280030, "DS"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "PixelPaddingValue": (0x00280120, "US or SS"),
    "PixelPaddingRangeLimit": (0x00280121, "US or SS"),
    "BurnedInAnnotation": (0x00280301, "CS"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}
_FAST_TAG_SET = frozenset(tag for tag, _ in _FAST_TAGS.values())
# Top-level attributes that send a file to pydicom's path in load_series: a modality LUT,
# functional groups, an in-stack position (read there), extended offset tables.
_SLOW_LOAD_TAGS = frozenset(
    {0x00283000, 0x52009229, 0x52009230, 0x00209057, 0x7FE00001, 0x7FE00002}
)


class _Bail(Exception):
    """The fast path declines a file: pydicom reads it."""


@lru_cache(maxsize=1)
def _fast_parts() -> Any:
    """pydicom pieces the fast path uses, imported once."""
    from types import SimpleNamespace

    from pydicom import charset, datadict, filereader, valuerep, values
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import PrivateTransferSyntaxes

    long_vrs = frozenset(vr.encode() for vr in valuerep.EXPLICIT_VR_LENGTH_32 if len(vr) == 2)
    short_vrs = frozenset(vr.encode() for vr in valuerep.EXPLICIT_VR_LENGTH_16)
    dictionary_vr = getattr(filereader, "_dictionary_vr_fast", datadict.dictionary_VR)
    return SimpleNamespace(
        RawDataElement=RawDataElement,
        convert_value=values.convert_value,
        python_encoding=charset.python_encoding,
        private_syntaxes=frozenset(str(uid) for uid in PrivateTransferSyntaxes),
        long_vrs=long_vrs,
        short_vrs=short_vrs,
        dictionary_vr=dictionary_vr,
    )


def _fast_path_enabled() -> bool:
    """True unless pydicom is configured to read values differently from its defaults."""
    if not _FAST_PATH or sys.byteorder != "little":
        return False
    from pydicom import config, hooks

    state = tuple(
        getattr(config, name, None)
        for name in (
            "use_DS_decimal",
            "use_DS_numpy",
            "use_IS_numpy",
            "use_none_as_empty_text_VR_value",
            "datetime_conversion",
        )
    )
    if state != _VALUE_CACHE_STATE[0]:  # converted values depend on these settings
        _VALUE_CACHE.clear()
        _VALUE_CACHE_STATE[0] = state
    registry = hooks.hooks
    return (
        config.settings.reading_validation_mode != config.RAISE
        and config.data_element_callback is None
        and registry.raw_element_vr is hooks.raw_element_vr
        and registry.raw_element_value is hooks.raw_element_value
        and not registry.raw_element_kwargs
    )


class _RawHeader:
    """A file's header as the fast path's walker found it (values still encoded)."""

    __slots__ = ("flags", "implicit", "meta_sop_class", "pixel", "ts", "values")

    def __init__(self) -> None:
        self.implicit = False
        self.ts = ""
        self.meta_sop_class: tuple[bytes, bytes] | None = None
        self.values: dict[int, tuple[bytes | None, bytes]] = {}  # tag -> (VR or None, value)
        self.flags: set[int] = set()  # _SLOW_LOAD_TAGS present at the top level
        self.pixel: tuple[int, bytes | None, int, int] | None = None  # tag, VR, offset, length


def _read_upto(fh: Any, n: int) -> bytes:
    """``n`` bytes from a raw file (fewer only at the end of the file)."""
    data = fh.read(n)
    while len(data) < n:
        more = fh.read(n - len(data))
        if not more:
            break
        data += more
    return data


class _Walker:
    """Walks DICOM elements the way pydicom's reader does, through a window on the file."""

    __slots__ = ("base", "buf", "fh", "implicit", "long_vrs", "parts", "short_vrs", "size")

    def __init__(self, fh: Any, parts: Any) -> None:
        self.fh = fh
        self.parts = parts
        self.long_vrs = parts.long_vrs
        self.short_vrs = parts.short_vrs
        self.size = os.fstat(fh.fileno()).st_size
        self.buf = _read_upto(fh, min(_CHUNK, self.size))
        self.base = 0
        self.implicit = False

    def window(self, pos: int, n: int) -> int:
        """Make file bytes [pos, pos + n) available in ``buf``; returns their offset there."""
        off = pos - self.base
        if off < 0 or off + n > len(self.buf):
            if pos + n > self.size:
                raise _Bail
            self.fh.seek(pos)
            self.buf = _read_upto(self.fh, min(max(n, _CHUNK), self.size - pos))
            self.base = pos
            if len(self.buf) < n:
                raise _Bail
            off = 0
        return off

    def value(self, pos: int, length: int) -> bytes:
        off = self.window(pos, length)
        return self.buf[off : off + length]

    def element(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, length, value offset) of the element header at ``pos``."""
        off = self.window(pos, 8)
        if self.implicit:
            group, elem, length = _IMPLICIT_HEAD(self.buf, off)
            return group << 16 | elem, None, length, pos + 8
        group, elem, vr, length = _EXPLICIT_HEAD(self.buf, off)
        if group == 0xFFFE:  # item and delimiter tags: no VR, 4-byte length
            return group << 16 | elem, None, _U32(self.buf, off + 4)[0], pos + 8
        if vr in self.short_vrs:
            return group << 16 | elem, vr, length, pos + 8
        if vr in self.long_vrs:
            off = self.window(pos, 12)
            return group << 16 | elem, vr, _U32(self.buf, off + 8)[0], pos + 12
        raise _Bail  # unknown VR: pydicom guesses (implicit switch or 2-byte length)

    def undefined(self, tag: int, vr: bytes | None, pos: int) -> int:
        """Skip an undefined-length value starting at ``pos`` (a sequence); returns its end."""
        if vr is None:  # implicit VR: pydicom looks the tag up, or peeks for an item
            try:
                dict_vr = self.parts.dictionary_vr(tag)
            except KeyError:
                off = self.window(pos, 8)
                group, elem, _ = _IMPLICIT_HEAD(self.buf, off)
                dict_vr = "SQ" if group << 16 | elem == _ITEM else ""
            if dict_vr != "SQ":
                raise _Bail
        elif vr != b"SQ":
            raise _Bail  # undefined-length UN, OB, ...
        while True:
            off = self.window(pos, 8)
            group, elem, length = _IMPLICIT_HEAD(self.buf, off)
            item = group << 16 | elem
            pos += 8
            if item == _SEQUENCE_END:
                return pos
            if item != _ITEM:
                raise _Bail
            if length == _UNDEFINED:
                pos = self.item(pos, None)
            else:
                end = pos + length
                if end > self.size or self.item(pos, end) != end:
                    raise _Bail
                pos = end

    def item(self, pos: int, end: int | None) -> int:
        """Walk a sequence item's data set; returns where it ends."""
        while end is None or pos < end:
            tag, vr, length, pos = self.element(pos)
            if tag == _ITEM_END and end is None:
                return pos
            if tag >> 16 == 0xFFFE or tag == _CHARSET:
                raise _Bail  # misplaced delimiters; a character set is converted on reading
            if length == _UNDEFINED:
                pos = self.undefined(tag, vr, pos)
                continue
            pos += length
            if pos > self.size:
                raise _Bail
        return pos


def _read_raw_header(path: str, parts: Any, *, through: bool = False) -> _RawHeader:
    """Walk a Part 10 file's elements; raise _Bail at anything unusual.

    The walk stops at the pixel data, as pydicom's ``stop_before_pixels`` does; with
    ``through`` it goes on past it to the end of the file (trailing padding, say), as a full
    read does.
    """
    out = _RawHeader()
    with open(path, "rb", buffering=0) as fh:
        w = _Walker(fh, parts)
        size = w.size
        if size < 140 or w.buf[128:132] != b"DICM":
            raise _Bail  # no preamble: pydicom guesses (force)
        # File meta information: explicit VR little endian, group 0002.
        pos, first = 132, True
        while True:
            off = w.window(pos, 8)
            if w.buf[off + 1] != 0 or w.buf[off] != 2:
                break
            tag, vr, length, start = w.element(pos)
            if vr is None or length == _UNDEFINED or start + length > size:
                raise _Bail
            if first:
                # pydicom converts the first meta element to test the encoding
                try:
                    _convert(parts, tag, vr.decode(), w.value(start, length), False)
                except Exception as exc:
                    raise _Bail from exc
                first = False
            if tag == 0x00020010:
                if vr != b"UI":
                    raise _Bail
                ts = _convert(parts, tag, "UI", w.value(start, length), False)
                if not isinstance(ts, str) or not ts:
                    raise _Bail
                out.ts = str(ts)
            elif tag == 0x00020002:
                out.meta_sop_class = (vr, w.value(start, length))
            pos = start + length
        if not out.ts or out.ts in _NOT_EXPLICIT_LE or out.ts in parts.private_syntaxes:
            raise _Bail
        if through and out.ts not in (_IMPLICIT_LE, _EXPLICIT_LE):
            raise _Bail  # compressed pixel data: pydicom decodes it
        implicit = w.implicit = out.ts == _IMPLICIT_LE
        off = w.window(pos, 8)
        group = w.buf[off] | w.buf[off + 1] << 8
        if group == 0:
            raise _Bail  # command set elements
        # pydicom checks the first element's VR bytes and follows them if they disagree
        vr0, vr1 = w.buf[off + 4], w.buf[off + 5]
        if (not (0x40 < vr0 < 0x5B and 0x40 < vr1 < 0x5B)) != implicit:
            raise _Bail
        values, flags = out.values, out.flags
        element, short_vrs = w.element, w.short_vrs
        while pos < size:
            # The common short explicit element inline; everything else through w.element.
            buf, off = w.buf, pos - w.base
            if off < 0 or off + 8 > len(buf):
                tag, vr, length, start = element(pos)
            elif implicit:
                group, elem, length = _IMPLICIT_HEAD(buf, off)
                tag, vr, start = group << 16 | elem, None, pos + 8
            else:
                group, elem, vr, length = _EXPLICIT_HEAD(buf, off)
                if vr in short_vrs and group != 0xFFFE:
                    tag, start = group << 16 | elem, pos + 8
                else:
                    tag, vr, length, start = element(pos)
            if tag in _PIXEL_TAGS:
                if not through:
                    out.pixel = (tag, vr, start, length)
                    break
                if out.pixel is not None or length == _UNDEFINED:
                    raise _Bail
                out.pixel = (tag, vr, start, length)
                pos = start + length
                if pos > size:
                    raise _Bail
                continue
            if tag >> 16 == 0xFFFE:
                raise _Bail
            if length == _UNDEFINED:
                if tag in _FAST_TAG_SET:
                    raise _Bail
                pos = w.undefined(tag, vr, start)
                if tag in _SLOW_LOAD_TAGS:
                    flags.add(tag)
                continue
            pos = start + length
            if pos > size:
                raise _Bail
            if tag in _FAST_TAG_SET:
                if tag in values:
                    raise _Bail  # repeated: pydicom keeps the last one
                values[tag] = (vr, w.value(start, length))
            elif tag in _SLOW_LOAD_TAGS:
                flags.add(tag)
        out.implicit = implicit
    charset = values.get(_CHARSET)
    if charset is not None:
        # pydicom converts it while reading; only standard single values are taken here
        name = _convert(parts, _CHARSET, "CS", charset[1], implicit, charset[0])
        if not isinstance(name, str) or name not in parts.python_encoding:
            raise _Bail
    return out


def _convert(
    parts: Any, tag: int, vr: str, value: bytes, implicit: bool, raw_vr: bytes | None = None
) -> Any:
    """pydicom's value for one element (pydicom's converter for the dictionary VR)."""
    if raw_vr is not None and raw_vr != vr.encode():
        raise _Bail  # another VR in the file: pydicom would convert with that one
    if vr == "US":
        if len(value) == 2:
            return value[0] | value[1] << 8
        if not value:
            return None
        raise _Bail
    key = (vr, value)
    if key in _VALUE_CACHE:
        return _VALUE_CACHE[key]
    if vr == "LO" and (not value.isascii() or b"\x1b" in value):
        raise _Bail  # decoding depends on the character set
    raw = parts.RawDataElement(tag, vr, len(value), value, 0, implicit, True)
    converted = parts.convert_value(vr, raw, None)
    if len(_VALUE_CACHE) >= 4096:
        _VALUE_CACHE.clear()
    _VALUE_CACHE[key] = converted
    return converted


# Converted values by (VR, encoded value): most of a series' header repeats from file to file.
# Callers only read the values (never change a MultiValue in place).
_VALUE_CACHE: dict[tuple[str, bytes], Any] = {}
_VALUE_CACHE_STATE: list[tuple[Any, ...] | None] = [None]


class _HeaderView:
    """The part of a pydicom Dataset that the scan uses, over a _RawHeader."""

    __slots__ = ("file_meta", "parts", "raw")

    def __init__(self, raw: _RawHeader, parts: Any) -> None:
        self.raw = raw
        self.parts = parts
        meta = {}
        if raw.meta_sop_class is not None:
            vr, value = raw.meta_sop_class
            meta["MediaStorageSOPClassUID"] = _convert(parts, 0x00020002, "UI", value, False, vr)
        self.file_meta = meta

    def __contains__(self, keyword: str) -> bool:
        return _FAST_TAGS[keyword][0] in self.raw.values

    def get(self, keyword: str, default: Any = None) -> Any:
        tag, vr = _FAST_TAGS[keyword]
        entry = self.raw.values.get(tag)
        if entry is None:
            return default
        return _convert(self.parts, tag, vr, entry[1], self.raw.implicit, entry[0])


def _stored_padding(entry: tuple[bytes | None, bytes] | None, signed: bool) -> int | None:
    """PixelPaddingValue / RangeLimit as a stored value (what _padding_mask's as_stored gives)."""
    if entry is None:
        return None
    vr, value = entry
    if vr not in (None, b"US", b"SS"):
        raise _Bail
    if not value:
        return None
    if len(value) != 2:
        raise _Bail
    return int.from_bytes(value, "little", signed=signed)


@dataclass(frozen=True)
class _Pixels:
    """Where a fast-path slice's pixels are and how they become HU."""

    offset: int
    nbytes: int
    signed: bool
    bits_stored: int
    padding: tuple[int, int | None] | None  # (PixelPaddingValue, PixelPaddingRangeLimit)
    slope: float
    intercept: float


def _fast_frame(path: str, parts: Any) -> _Frame:
    """A classic uncompressed CT file as a slice whose pixels are read later; or _Bail."""
    raw = _read_raw_header(path, parts, through=True)
    if raw.ts not in (_IMPLICIT_LE, _EXPLICIT_LE) or raw.flags or raw.pixel is None:
        raise _Bail
    tag, pixel_vr, offset, nbytes = raw.pixel
    if tag != _PIXEL_DATA or pixel_vr not in (None, b"OW", b"OB"):
        raise _Bail  # float pixel data
    ds = _HeaderView(raw, parts)

    def integer(keyword: str) -> int:
        value = ds.get(keyword)
        if type(value) is not int:  # a plain US value, nothing else
            raise _Bail
        return value

    if integer("SamplesPerPixel") != 1 or integer("BitsAllocated") != 16:
        raise _Bail
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        raise _Bail
    frames = ds.get("NumberOfFrames")
    if "NumberOfFrames" in ds and not (isinstance(frames, int) and frames == 1):
        raise _Bail
    ds.get("PlanarConfiguration")  # converted by pydicom's decoder: must be a valid US
    rows, cols = integer("Rows"), integer("Columns")
    bits_stored, representation = integer("BitsStored"), integer("PixelRepresentation")
    if rows < 1 or cols < 1 or not 1 <= bits_stored <= 16 or representation not in (0, 1):
        raise _Bail
    if nbytes != rows * cols * 2:
        raise _Bail  # pydicom warns, trims or finds extra frames: let it
    slope = _float(ds.get("RescaleSlope"), 1.0)
    intercept = _float(ds.get("RescaleIntercept"), 0.0)
    if slope == 0.0:
        raise _Bail
    signed = representation == 1
    lo = _stored_padding(raw.values.get(0x00280120), signed)
    hi = _stored_padding(raw.values.get(0x00280121), signed)
    spacing = _vector(ds.get("PixelSpacing"), 2)
    return _Frame(
        path=path,
        index=0,
        count=1,
        hu=None,
        shape=(rows, cols),
        ipp=_vector(ds.get("ImagePositionPatient"), 3),
        iop=_vector(ds.get("ImageOrientationPatient"), 6),
        spacing=(float("nan"), float("nan")) if spacing is None else tuple(spacing),
        thickness=_float(ds.get("SliceThickness")),
        kvp=_float(ds.get("KVP")),
        order=_float(ds.get("InstanceNumber"), float("inf")),
        body_part=_text(ds.get("BodyPartExamined")),
        patient=_text(ds.get("PatientID")),
        study=_text(ds.get("StudyInstanceUID")),
        manufacturer=_text(ds.get("Manufacturer")),
        pixels=_Pixels(
            offset=offset,
            nbytes=nbytes,
            signed=signed,
            bits_stored=bits_stored,
            padding=None if lo is None else (lo, hi),
            slope=slope,
            intercept=intercept,
        ),
    )


def _read_pixels(path: str, px: _Pixels, out: np.ndarray) -> None:
    """Read a fast-path slice's stored values into ``out`` (int16) and turn them into HU.

    Exactly what pydicom's native decoder and :func:`_to_hu` give: the little-endian values,
    with the unused high bits shifted out (sign-extending signed data) when BitsStored <
    BitsAllocated, padding compared on stored values, then the rescale.
    """
    view = memoryview(out).cast("B")
    with open(path, "rb", buffering=0) as fh:
        fh.seek(px.offset)
        done = 0
        while done < px.nbytes:
            n = fh.readinto(view[done:])
            if not n:
                raise _Bail  # the file shrank since its header was read
            done += n
    stored = out if px.signed else out.view(np.uint16)
    if px.bits_stored < 16:
        shift = 16 - px.bits_stored
        np.left_shift(stored, shift, out=stored)
        np.right_shift(stored, shift, out=stored)
    padding = None
    if px.padding is not None:
        padding = _padding_values_mask(stored, *px.padding)
    _hu_frame(stored, px.slope, px.intercept, out)
    if padding is not None:
        out[padding] = AIR_HU


# --------------------------------------------------------------------------------------------
# Scan
# --------------------------------------------------------------------------------------------
_Header = tuple[str, str, str, int]  # path, SeriesInstanceUID, SOPInstanceUID, frames


def _scan_file(path: str, parts: Any = None) -> _Header | Skipped:
    """Header-only check of one file: a usable CT image, or the reason it is not.

    ``parts`` (from :func:`_fast_parts`) enables the fast path; pydicom reads the file when
    the fast path declines it.
    """
    if parts is not None:
        try:
            return _classify(path, _HeaderView(_read_raw_header(path, parts), parts))
        except BaseException as exc:  # _Bail, or anything odd: the reference path decides
            if is_fatal(exc):
                raise
    # The scan's per-file isolation boundary: whatever reading or judging this one header
    # raises (a vanished file, a parser crash on corrupt bytes, an absurd length) skips this
    # file with a reason, and the scan goes on.
    try:
        return _classify(path, _read(path, header_only=True, specific_tags=_SCAN_TAGS))
    except BaseException as exc:
        if is_fatal(exc):
            raise
        return skipped_for(path, exc)


def _classify(path: str, ds: Any) -> _Header | Skipped:
    """The scan's verdict from a header (a pydicom Dataset or a :class:`_HeaderView`)."""
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
    parts = _fast_parts() if _fast_path_enabled() else None
    return [_scan_file(p, parts) for p in paths]


def walk_files(paths: Sequence[str | Path] | PathTable, skipped: list[Skipped]) -> PathTable:
    """Every file under ``paths`` once (radengine.data.paths.walk), as a compact table;
    entries that do not exist and folders that cannot be listed become ``skipped`` entries."""
    if isinstance(paths, PathTable):
        return paths

    def on_error(path: str, exc: OSError | None) -> None:
        if exc is None:
            skipped.append(Skipped(path, "no such file or directory"))
        else:
            skipped.append(Skipped(path, f"unreadable: {describe_error(exc)}"))

    return walk_paths(paths, on_error)


def _scan_results(
    table: PathTable,
    workers: int,
    executor: Executor | None,
    progress: Callable[[int], None] | None,
) -> Iterator[list[_Header | Skipped]]:
    """Header results chunk by chunk, in table order. Chunks are cut from the table as they
    are submitted, with a bounded number in flight, so only those chunks' paths exist as
    Python strings at any time."""
    n = len(table)
    own = None
    if executor is not None and n > 256:
        pool, size = executor, max(16, min(512, n // (max(1, workers) * 8) or 1))
    elif workers == 1 or n < _MIN_FILES_FOR_PROCESSES:
        pool, size = None, 256
    else:
        # Small chunks keep workers busy to the end; large ones amortise pickling.
        size = max(16, min(512, n // (workers * 8) or 1))
        own = pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
    try:
        starts = iter(range(0, n, size))
        if pool is None:
            for start in starts:
                chunk = table.slice(start, start + size)
                yield _scan_chunk(chunk)
                if progress is not None:
                    progress(len(chunk))
            return
        ahead = 4 * max(1, workers)
        pending: list[tuple[int, Any]] = []
        while True:
            while len(pending) < ahead:
                start = next(starts, None)
                if start is None:
                    break
                chunk = table.slice(start, start + size)
                pending.append((len(chunk), pool.submit(_scan_chunk, chunk)))
            if not pending:
                return
            count, future = pending.pop(0)
            yield future.result()
            if progress is not None:
                progress(count)
    finally:
        if own is not None:
            own.shutdown(cancel_futures=True)


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
    paths: Sequence[str | Path] | PathTable,
    pseudo: Pseudonymizer,
    workers: int = 1,
    *,
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> tuple[list[SeriesRef], list[Skipped]]:
    """Find the CT series under files and directories, reading headers only.

    Directories are walked recursively (symbolic links to directories are not followed). Each
    file's header is read with ``stop_before_pixels``; files without the Part 10 preamble are
    parsed with ``force`` only if they start like a DICOM data set. A file is kept if it is a CT
    image (Modality CT, a CT SOP class, Rows/Columns present, not a localizer, no burned-in
    annotation); files repeating an already seen SOPInstanceUID are reported as duplicates.

    Memory: an archive's files are listed in a :class:`radengine.data.paths.PathTable` (each
    folder once, each name as bytes), headers are read chunk by chunk with a bounded number of
    chunks in flight, and each kept file is remembered as three numbers (its series, frames
    and a 128-bit digest of its SOPInstanceUID for the duplicate check), never as Python
    objects; a series' paths become strings only while it is sorted. Skipped files are held
    as :class:`Skipped` entries up to :data:`SKIPPED_IN_MEMORY`, the rest in a temporary file
    (then ``skipped`` is a :class:`SpooledSkipped`, iterable in the same order).
    docs/benchmarks.md states the planner's memory on a 12M-file listing.

    Args:
        paths: Files and directories to scan, or a PathTable in path order (what
            :func:`radengine.data.paths.walk` makes).
        pseudo: Pseudonymiser for the series keys.
        workers: Worker processes for the header reads (1 = in this process). Trees of fewer
            than 4096 files are scanned in this process anyway: starting workers costs more.
        progress: Called with the number of files finished after each batch.
        executor: An already running process pool to read headers in (ingest passes the
            pool its shard workers will use, so no second pool is started); then used
            whenever there are more than a few hundred files, whatever ``workers`` says.

    Returns:
        ``(series, skipped)``: series sorted by ``uid_key``, each with its files sorted by
        path, and every file that was not kept, sorted by path (a list, or a
        :class:`SpooledSkipped` beyond :data:`SKIPPED_IN_MEMORY` entries). The result does not depend on
        the order of ``paths`` or of directory listings.

    Raises:
        ImportError: If pydicom is not installed.
        ValueError: If ``workers`` < 1.
    """
    _import_pydicom()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    skipped: list[Skipped] = []  # the walk's and the duplicates: few
    table = walk_files(paths, skipped)
    spool = _SkipSpool(SKIPPED_IN_MEMORY)  # the headers': in path order, possibly millions
    # Per file, in flat arrays (no Python object per kept file): its series' number, its
    # frames and a 128-bit digest of its SOPInstanceUID (zero bytes: none, or skipped).
    series_of = array("i")
    frames_of = array("i")
    sops = bytearray()
    no_sop = bytes(16)
    series_codes: dict[str, int] = {}
    for part in _scan_results(table, workers, executor, progress):
        for item in part:
            if isinstance(item, Skipped):
                spool.add(item)
                series_of.append(-1)
                frames_of.append(0)
                sops += no_sop
                continue
            _, series_uid, sop_uid, frames = item
            series_of.append(series_codes.setdefault(series_uid, len(series_codes)))
            frames_of.append(frames)
            sops += (
                hashlib.blake2b(sop_uid.encode(), digest_size=16).digest() if sop_uid else no_sop
            )
    series_arr = (
        np.frombuffer(series_of, dtype=np.int32).copy() if len(series_of) else np.zeros(0, np.int32)
    )
    frames_arr = (
        np.frombuffer(frames_of, dtype=np.int32) if len(frames_of) else np.zeros(0, np.int32)
    )
    skipped += _drop_duplicates(table, series_arr, sops)
    del series_of, sops  # the digests' only use was the duplicate check

    kept = np.flatnonzero(series_arr >= 0).astype(np.int32)
    order = kept[np.argsort(series_arr[kept], kind="stable")]
    del kept
    bounds = np.flatnonzero(np.diff(series_arr[order])) + 1
    uids = list(series_codes)
    series = []
    for members in np.split(order, bounds) if len(order) else []:
        # each series' files sorted by path: only this series' paths as strings
        paths_of = sorted(zip(table.take(members), members.tolist(), strict=True))
        series.append(
            SeriesRef(
                uid_key=pseudo.key("series", uids[int(series_arr[members[0]])]),
                files=PathList(table, [i for _, i in paths_of]),
                frames=int(frames_arr[members].sum()),
            )
        )
    series.sort(key=lambda s: s.uid_key)
    return series, spool.result(skipped)


def _drop_duplicates(table: PathTable, series_of: np.ndarray, sops: bytearray) -> list[Skipped]:
    """Files that repeat a kept file's SOPInstanceUID: all but the first by path are marked
    dropped in ``series_of`` (-1) and returned as skipped entries naming that first copy.

    Sorted by the digest's first 64 bits (int32 file numbers, one uint64 key per kept file);
    files whose keys agree are then told apart by the whole 128-bit digest."""
    if not len(series_of):
        return []
    digests = np.frombuffer(sops, dtype=np.uint64).reshape(-1, 2)
    candidates = np.flatnonzero((series_of >= 0) & (digests != 0).any(axis=1)).astype(np.int32)
    keys = digests[candidates, 0]
    order = np.argsort(keys, kind="stable")
    keys, candidates = keys[order], candidates[order]
    del order
    repeats = np.flatnonzero(keys[1:] == keys[:-1])
    if not len(repeats):
        return []
    groups: dict[bytes, list[int]] = {}
    for i in np.union1d(repeats, repeats + 1).tolist():
        f = int(candidates[i])
        groups.setdefault(digests[f].tobytes(), []).append(f)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(zip(table.take(members), members, strict=True))
        first = ranked[0][0]
        for path, f in ranked[1:]:
            series_of[f] = -1
            out.append(Skipped(path, f"duplicate SOPInstanceUID: the same image as {first}"))
    return out


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    """One candidate slice: where it came from, its geometry and its HU pixels."""

    path: str
    index: int  # frame index inside the file
    count: int  # frames in the file
    hu: np.ndarray | None  # int16 (rows, cols); None until a fast-path slice is read
    shape: tuple[int, int]  # (rows, cols)
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
    pixels: _Pixels | None = None  # fast path: where the pixels are, read into the series array

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


# JPEG family (baseline .. lossless, JPEG-LS) and JPEG 2000 family (incl. HTJ2K) syntaxes.
_JPEG_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"}
    | {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
)
_J2K_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92"}
    | {"1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"}
    | {"1.2.840.10008.1.2.4.203"}
)
# Start-of-frame markers: JPEG processes (not DHT, JPG, DAC) and JPEG-LS's SOF55.
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}) | {
    *range(0xCD, 0xD0),
    0xF7,
}


def _jpeg_frame_header(frame: bytes) -> tuple[int, int, int, int] | None:
    """(precision, rows, columns, components) from a JPEG / JPEG-LS frame header, or None."""
    if frame[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 10 > len(frame):
                return None
            body = frame[pos + 4 : pos + 10]
            return (
                body[0],
                int.from_bytes(body[1:3], "big"),
                int.from_bytes(body[3:5], "big"),
                body[5],
            )
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k_frame_header(frame: bytes) -> tuple[int, int, int, int] | None:
    """(precision, rows, columns, components) from a JPEG 2000 SIZ segment, or None."""
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (a JP2 file has boxes before it)
    if at < 0 or at + 43 > len(frame):
        return None
    siz = frame[at + 4 :]
    x, y, x0, y0 = (int.from_bytes(siz[i : i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(siz[36:38], "big")
    precision = (siz[38] & 0x7F) + 1
    return precision, y - y0, x - x0, components


def _check_codestream(ds: Dataset, ts: str) -> None:
    """Refuse compressed pixel data whose own frame header disagrees with the DICOM header.

    Decoders trust Rows, Columns, SamplesPerPixel and BitsAllocated for the size of their
    output buffer; GDCM aborts the whole process (a C++ assertion, no exception) when the
    codestream says otherwise. So the first frame's header is compared first, and a
    disagreement (or no frame header at all) is reported like any other corrupt file.
    """
    if ts not in _JPEG_SYNTAXES and ts not in _J2K_SYNTAXES:
        return
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=_frame_count(ds)))
    except _Unusable:
        raise
    except Exception as exc:
        raise _Unusable(f"corrupt compressed pixel data: {describe_error(exc)}") from exc
    header = (_jpeg_frame_header if ts in _JPEG_SYNTAXES else _j2k_frame_header)(bytes(frame))
    if header is None:
        raise _Unusable("corrupt compressed pixel data: no frame header in the first frame")
    precision, rows, cols, components = header
    expected = (
        int(ds.get("Rows") or 0),
        int(ds.get("Columns") or 0),
        int(ds.get("SamplesPerPixel") or 1),
    )
    bits = int(ds.get("BitsAllocated") or 0)
    container = 8 if precision <= 8 else 16 if precision <= 16 else 32
    if (rows, cols, components) != expected or bits != container:
        raise _Unusable(
            "pixel data disagree with the header: the codestream holds "
            f"{rows} x {cols} x {components} sample(s) of {precision} bits, the header says "
            f"{expected[0]} x {expected[1]} x {expected[2]} of {bits} bits allocated"
        )


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
    _check_codestream(ds, str(ts))
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
        # Any plugin failure: try the next one. BaseException, because Rust-based plugins
        # (pylibjpeg-rle) raise pyo3's PanicException on some corrupt data.
        except BaseException as exc:
            if is_fatal(exc):
                raise
            error = exc
    else:
        if error is not None and is_fatal(error):
            raise error
        # pydicom's messages run on with advice on group 0028; the first clause is the fact.
        # Some decoders raise with no message at all: describe_error then gives the type.
        message = describe_error(error).split(" - ")[0] if error else "unknown error"
        if "less than expected" in message or "truncated" in message.lower():
            raise _Unusable(f"truncated pixel data: {message}") from error
        raise _Unusable(f"cannot decode pixel data ({name}): {message}") from error
    frames = _frame_count(ds)
    if arr.ndim != (3 if frames > 1 else 2) or (arr.shape[0] != frames and frames > 1):
        raise _Unusable(
            f"unexpected pixel array shape {arr.shape} for {frames} frame(s) "
            "(not one sample per pixel, or NumberOfFrames disagrees with the data)"
        )
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
    return _padding_values_mask(stored, lo, as_stored(ds.get("PixelPaddingRangeLimit")))


def _padding_values_mask(stored: np.ndarray, lo: int, hi: int | None) -> np.ndarray | None:
    """Pixels equal to the stored padding value ``lo``, or between it and ``hi``; or None."""
    if hi is not None:
        lo, hi = min(lo, hi), max(lo, hi)
        mask = (stored >= lo) & (stored <= hi)
    else:
        mask = stored == lo
    return mask if mask.any() else None


def _hu_frame(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """One frame of stored values to int16 HU in ``out`` (``stored`` may be ``out`` itself).

    ``HU = stored * slope + intercept``, rounded half to even and clipped to int16.
    """
    s, b = float(slope), float(intercept)
    if s == 1.0 and b == round(b):
        # Integer rescale (the common case): exact, and for 16-bit data whose result fits
        # int16 no clip is needed, so one in-place add (modulo 2**16, then exact) does it.
        ib = int(b)
        dtype = stored.dtype
        if dtype.itemsize == 2 and dtype.kind in "iu" and dtype.isnative and abs(ib) < 32768:
            if ib == 0 and dtype.kind == "i":
                if stored is not out:
                    np.copyto(out, stored)
                return
            if int(stored.min()) + ib >= -32768 and int(stored.max()) + ib <= 32767:
                np.add(stored.view(np.int16), np.int16(ib), out=out)
                return
        value = stored.astype(np.int32) + ib
    else:
        value = np.rint(stored.astype(np.float64) * s + b)
    np.clip(value, -32768, 32767, out=value)
    out[...] = value


def _to_hu(
    stored: np.ndarray, slope: np.ndarray, intercept: np.ndarray, padding: np.ndarray | None
) -> np.ndarray:
    """Stored values (F, H, W) to int16 HU with per-frame slope and intercept (F,)."""
    out = np.empty(stored.shape, dtype=np.int16)
    for i in range(stored.shape[0]):
        _hu_frame(stored[i], slope[i], intercept[i], out[i])
    if padding is not None:
        out[padding] = AIR_HU
    return out


def _modality_lut(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Rare CT files carry a Modality LUT Sequence instead of a rescale: let pydicom apply it."""
    from pydicom.pixels import apply_modality_lut

    hu = np.stack([apply_modality_lut(frame, ds) for frame in stored])
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def _frame_count(ds: Dataset) -> int:
    """NumberOfFrames as a count >= 1 (absent or empty: 1); _Unusable when it is no number."""
    value = ds.get("NumberOfFrames")
    try:
        frames = int(value or 1)
    except (TypeError, ValueError) as exc:
        raise _Unusable(f"NumberOfFrames is not a number: {str(value)[:40]!r}") from exc
    if frames < 1:
        raise _Unusable(f"NumberOfFrames is {frames}")
    return frames


def _check_decoded_size(ds: Dataset) -> None:
    """Refuse a header whose Rows x Columns x NumberOfFrames x BitsAllocated is absurd.

    Decoders allocate the whole array from these values before they find that the data are
    far shorter. With memory overcommit, a multi-terabyte allocation can even succeed and the
    worker is killed later, by the kernel, where nothing can report it; so the size is
    checked first, against :data:`MAX_DECODED_BYTES`.
    """
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        bits = int(ds.get("BitsAllocated") or 16)
    except (TypeError, ValueError) as exc:
        raise _Unusable("Rows, Columns or BitsAllocated is not a number") from exc
    if rows < 1 or cols < 1:
        raise _Unusable(f"no image: Rows x Columns is {rows} x {cols}")
    if bits not in (1, 8, 16, 32, 64):
        raise _Unusable(f"BitsAllocated {bits} is not a pixel size (1, 8, 16, 32 or 64)")
    frames = _frame_count(ds)
    nbytes = rows * cols * frames * max(1, bits // 8)
    if nbytes > MAX_DECODED_BYTES:
        raise _Unusable(
            f"image too large: {rows} x {cols} x {frames} frame(s) of {bits} bits is "
            f"{nbytes / 2**30:.1f} GiB decoded (at most {MAX_DECODED_BYTES / 2**30:.0f} GiB "
            "per file; a corrupt header?)"
        )


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
    _check_decoded_size(ds)
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
        _Frame(path=path, index=i, count=count, hu=hu[i], shape=hu.shape[1:], **metas[i], **common)
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

    Every file is read and decoded; unusable files (unreadable, vanished, no pixel data, no
    decoder for the transfer syntax, truncated or corrupt pixel data, anything a decoder
    raises) and unusable slices (a size or orientation other
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
    return _load_series(ref, pseudo, fast=_fast_path_enabled())


def _load_series(
    ref: SeriesRef, pseudo: Pseudonymizer, *, fast: bool
) -> tuple[SeriesData | None, list[Skipped]]:
    """load_series; ``fast`` lets classic uncompressed files take the fast path.

    Fast-path slices carry their metadata only: once the slices to keep and their order are
    known, their pixels are read straight into the series array.
    """
    parts = _fast_parts() if fast else None
    skipped: list[Skipped] = []
    frames: list[_Frame] = []
    for path in sorted(ref.files):
        if parts is not None:
            try:
                frames.append(_fast_frame(path, parts))
                continue
            except BaseException as exc:  # _Bail, or anything odd: the reference path decides
                if is_fatal(exc):
                    raise
        # The load's per-file isolation boundary: any failure to read, decode or convert this
        # file (corrupt data crashing a codec, a vanished file, an absurd size) skips it alone.
        try:
            frames.extend(_read_frames(path))
        except BaseException as exc:
            if is_fatal(exc):
                raise
            skipped.append(skipped_for(path, exc))
    if not frames:
        return None, skipped

    # Keep the majority size: a store holds one shape per series.
    sizes = [f.shape for f in frames]
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

    hu = np.empty((len(frames), *size), dtype=np.int16)
    try:
        for out, frame in zip(hu, frames, strict=True):
            if frame.pixels is None:
                out[...] = frame.hu
            else:
                _read_pixels(frame.path, frame.pixels, out)
    except (_Bail, OSError):
        # A file changed between its header and its pixels: start over the reference way.
        return _load_series(ref, pseudo, fast=False)

    patient = common([f.patient for f in frames])
    study = common([f.study for f in frames])
    data = SeriesData(
        hu=hu,
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
