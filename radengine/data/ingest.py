"""Ingest: a CT archive (DICOM, NIfTI) or an ImageFolder into a store, in parallel, resumably.

The work is planned before anything is written: inputs are scanned, sorted by a stable key
and grouped into shards of about ``shard_slices`` slices. Worker processes each load, resample
and commit whole shards (radengine.data.store.commit_shard: atomic, checksummed), so a kill
at any moment loses only shards in flight, and a rerun, which computes the same plan, writes
exactly the missing ones: the result is byte-identical to an uninterrupted run.

Paths of skipped files go to ``<STORE>.ingest/errors.jsonl`` beside the store, never into
it (folder names of hospital archives can hold patient names).

No single input can end an ingest. Failures are isolated once per file (the header scan,
:func:`radengine.data.dicom.scan_dicom`; each file's decode in
:func:`radengine.data.dicom.load_series`) and once per series or image (the shard workers
here: loading, converting, resampling), whatever they raise: a decoder's exception with an
empty message, a MemoryError, an OSError for a file that vanished. Each such input is a line
in errors.jsonl with a reason. A native crash that kills a worker process (a codec's failed
assertion) is caught one level up: the shard is redone in isolation, and only the input
that crashes it is left out. An ingest that stores nothing leaves no store, only
errors.jsonl and :attr:`IngestSummary.error`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radengine.data.store import (
    ArraySpec,
    Store,
    StoreWriter,
    atomic_write_bytes,
    atomic_write_chunks,
    commit_shard,
    remove_temp_files,
)
from radengine.errors import UserError

AIR_HU = -1024


class SourceError(UserError, FileNotFoundError):
    """A source (folder, file or @file list) that does not exist; found before anything is
    written. Still a FileNotFoundError for callers that catch that."""


class IngestError(UserError, ValueError):
    """An ingest argument out of range; found before anything is written."""


IMAGES_HINT = "for photos and other natural images use `radengine ingest images ROOT --out STORE`"
"""What to do when a CT source holds image files (JPEG, PNG, ...) instead of DICOM/NIfTI."""


@dataclass
class Unit:
    """One plannable piece of input: a DICOM series, a NIfTI volume or an image."""

    kind: str  # "dicom" | "nifti" | "image"
    key: str  # stable sort key, never an identifier
    slices: int  # estimate used for planning and progress
    payload: Any  # SeriesRef | path | (path, class id)


@dataclass
class IngestSummary:
    """What an ingest did; printed by the CLI and stored (without paths) in store.json."""

    store: str
    slices: int = 0
    series: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)  # reason group -> what to do
    shards_written: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    errors_file: str | None = None
    # Set when nothing could be stored (and so no store was left behind): why, and what to do.
    error: str | None = None

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0


def work_dir(store: str | Path) -> Path:
    """The side directory of an ingest: errors files (which hold source paths)."""
    store = Path(store)
    return store.with_name(store.name + ".ingest")


def default_shard_slices(units: Sequence[Unit]) -> int:
    """About 1/64 of the input per shard, within [64, 1024] slices: small inputs still spread
    over every worker, large ones get few files. It depends on the input alone (never on
    --workers), so a rerun with other settings resumes the same plan."""
    total = sum(max(1, u.slices) for u in units)
    return int(min(1024, max(64, -(-total // 64))))


def plan_shards(units: Sequence[Unit], shard_slices: int) -> list[list[Unit]]:
    """Group units, in key order, into consecutive shards of about ``shard_slices``."""
    shards: list[list[Unit]] = []
    current: list[Unit] = []
    count = 0
    for u in sorted(units, key=lambda u: (u.key, u.kind)):
        current.append(u)
        count += max(1, u.slices)
        if count >= shard_slices:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


# --------------------------------------------------------------------------- CT


def _square(hu: np.ndarray) -> np.ndarray:
    """Pad (n, H, W) to square with air, centred, so resampling keeps the aspect ratio."""
    n, h, w = hu.shape
    if h == w:
        return hu
    s = max(h, w)
    out = np.full((n, s, s), AIR_HU, dtype=hu.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[:, top : top + h, left : left + w] = hu
    return out


def _resize_slices(images: np.ndarray, size: int) -> np.ndarray:
    from radengine.numpy_ops import resize_array

    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    return resize_array(images, size)


def expand_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Paths as given, where ``@LIST`` stands for the paths in the text file LIST (one per
    line; blank lines and lines starting with '#' ignored; relative to LIST's folder)."""
    out: list[Path] = []
    for src in sources:
        text = str(src)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise SourceError(f"{listing}: file list not found (from {text!r})")
            for line in listing.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    out.append(p if p.is_absolute() else listing.parent / p)
        else:
            out.append(Path(src))
    return out


def checked_sources(sources: Sequence[str | Path]) -> list[Path]:
    """:func:`expand_sources`, each of which must exist: checked before anything is created.

    Raises:
        SourceError: A source or a file list is missing (the message names it).
    """
    out = expand_sources(sources)
    if not out:
        raise SourceError("no source given: name the folders or files to ingest")
    for src in out:
        if not src.exists():
            raise SourceError(f"{src}: no such file or directory")
    return out


def _walk_sources(sources: Sequence[Path], skipped: list, nifti: list[tuple[str, str]]):
    """Every file under ``sources`` as a PathTable; NIfTI files go to ``nifti`` instead, as
    (the source entry, the path). Folders that vanish or cannot be listed while the walk runs
    (a busy folder such as /tmp) are skipped with a reason."""
    from radengine.data.dicom import Skipped, describe_error
    from radengine.data.paths import walk

    def on_error(path: str, exc: OSError | None) -> None:
        reason = (
            "no such file or directory" if exc is None else f"unreadable: {describe_error(exc)}"
        )
        skipped.append(Skipped(path, reason))

    def is_nifti(name: str) -> bool:
        return name.lower().endswith((".nii", ".nii.gz"))

    return walk(sources, on_error, exclude=is_nifti, excluded=nifti)


def scan_ct(sources: Sequence[str | Path], pseudo, workers: int = 1, executor=None):
    """Find DICOM series and NIfTI volumes under ``sources``: (units, skipped).

    No single file can stop the scan: each one that vanishes, cannot be read or crashes a
    parser is a skipped entry with its reason. ``skipped`` is an iterable of them (the
    DICOM scan's may be spooled to a temporary file: radengine.data.dicom.SpooledSkipped).
    """
    from radengine.data import dicom, nifti
    from radengine.data.images import IMAGE_EXTENSIONS

    skipped: list = []
    found_nifti: list[tuple[str, str]] = []
    # A compact listing (radengine.data.paths): millions of files without a Python object
    # each; NIfTI volumes (few) are set aside by name.
    files = _walk_sources(checked_sources(sources), skipped, found_nifti)
    nifti_files, rel = [], {}
    for entry, path in found_nifti:
        nifti_files.append(Path(path))
        # The volume's identity: its path under the source, so that <case>/ct.nii.gz layouts
        # give one patient per case and moving the archive changes nothing.
        rel[path] = os.path.basename(path) if path == entry else os.path.relpath(path, entry)
    found: Iterable = ()
    if len(files):
        refs, found = dicom.scan_dicom(files, pseudo, workers=workers, executor=executor)
    else:
        refs = []

    def scanned():  # lazily: the scan's entries may be millions
        for s in found:
            # A JPEG or PNG in a CT source is a mix-up of commands, not a corrupt DICOM file.
            if s.path.lower().endswith(IMAGE_EXTENSIONS) and s.reason.startswith("not a DICOM"):
                s = dicom.Skipped(s.path, "an image file (JPEG, PNG, ...), not DICOM", IMAGES_HINT)
            yield s

    units = [Unit("dicom", f"d:{r.uid_key}", r.frames, r) for r in refs]
    volumes, nskipped = nifti.scan_nifti(nifti_files) if nifti_files else ([], [])
    skipped += nskipped
    for path in volumes:
        ident = rel.get(os.path.abspath(path), os.path.basename(path))
        key = pseudo.key("series", ident)
        try:
            depth = _nifti_depth(path)
        except BaseException as exc:  # the file changed or broke since scan_nifti read it
            if dicom.is_fatal(exc):
                raise
            skipped.append(
                dicom.Skipped(path, f"unreadable NIfTI header: {dicom.describe_error(exc)}")
            )
            continue
        units.append(Unit("nifti", f"n:{key}", depth, (path, ident)))
    return units, _Entries(skipped, scanned)


class _Entries:
    """Skipped entries from a list and a generator function: iterable more than once."""

    def __init__(self, listed: list, more: Callable[[], Iterator]) -> None:
        self.listed, self.more = listed, more

    def __iter__(self) -> Iterator:
        yield from self.listed
        yield from self.more()


def _nifti_depth(path: str) -> int:
    import nibabel as nib

    shape = nib.load(path).shape
    return int(max(shape[:3])) if len(shape) >= 3 else 1


def _ct_shard_worker(
    store: str,
    specs: dict,
    shard: int,
    units: list[Unit],
    size: int,
    secret: bytes,
    errors: str,
    known_skipped: Sequence[dict] = (),
) -> tuple[int, int, int, list[dict]]:
    """Load, resample and commit one CT shard; ``known_skipped`` are entries found before
    (units that crashed a worker process) that go into the shard's errors file."""
    from radengine.data import dicom, nifti
    from radengine.data.privacy import Pseudonymizer

    pseudo = Pseudonymizer(secret)
    images, columns, skipped, series = [], [], list(known_skipped), 0
    for unit in units:
        # The per-series isolation boundary: whatever loading, converting or resampling one
        # series raises (a codec crash, an absurd size, a file that vanished) skips that
        # series, every file of it named in errors.jsonl, and the shard goes on.
        try:
            if unit.kind == "dicom":
                data, bad = dicom.load_series(unit.payload, pseudo)
            else:
                path, ident = unit.payload
                data, bad = nifti.load_nifti(path, pseudo, identifier=ident)
            rows = None if data is None or len(data.hu) == 0 else _ct_rows(data, size)
        except BaseException as exc:
            if dicom.is_fatal(exc):
                raise
            bad, rows = _unit_failed(unit, "series could not be loaded", exc), None
        skipped += [asdict(s) for s in bad]
        if rows is not None:
            images.append(rows[0])
            columns.append(rows[1])
            series += 1
    _write_shard_errors(Path(errors), skipped)
    arrays = {"image": np.concatenate(images) if images else np.empty((0, size, size), np.int16)}
    cols = _concat_columns(columns, CT_EMPTY)
    commit_shard(store, "ct", {k: ArraySpec(**v) for k, v in specs.items()}, shard, arrays, cols)
    return shard, len(arrays["image"]), series, skipped


def _ct_rows(data, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One loaded series as store rows: resampled slices and their index columns."""
    n = len(data.hu)
    image = _resize_slices(_square(data.hu), size)
    columns = {
        "label": np.full(n, data.region, dtype=np.int64),
        "patient": np.full(n, data.patient),
        "study": np.full(n, data.study),
        "series": np.full(n, data.series),
        "region": np.full(n, data.region, dtype=np.int8),
        "lesion": np.full(n, -1, dtype=np.int8),
        "slice_position": np.asarray(data.slice_position, dtype=np.float32),
        "pixel_spacing": np.asarray(data.pixel_spacing, dtype=np.float32).reshape(n, 2),
        "thickness": np.asarray(data.thickness, dtype=np.float32),
        "kvp": np.asarray(data.kvp, dtype=np.float32),
        "manufacturer": np.full(n, data.manufacturer or ""),
    }
    return image, columns


def _unit_files(unit: Unit) -> list[str]:
    """The input files of a unit (every file of a DICOM series)."""
    if unit.kind == "dicom":
        return list(unit.payload.files)
    return [str(unit.payload[0])]


def _unit_failed(unit: Unit, what: str, exc: BaseException) -> list:
    """Skipped entries for every file of a unit that failed as a whole: each input file is
    accounted for in errors.jsonl, with the failure as the reason."""
    from radengine.data.dicom import Skipped, describe_error

    reason = f"{what}: {describe_error(exc)}"
    return [Skipped(path, reason) for path in _unit_files(unit)]


CT_EMPTY = {
    "label": np.int64,
    "patient": str,
    "study": str,
    "series": str,
    "region": np.int8,
    "lesion": np.int8,
    "slice_position": np.float32,
    "pixel_spacing": (np.float32, 2),
    "thickness": np.float32,
    "kvp": np.float32,
    "manufacturer": str,
}
IMAGES_EMPTY = {"label": np.int64, "patient": str, "study": str, "series": str}


def _concat_columns(parts: list[dict], empty: dict) -> dict[str, np.ndarray]:
    if parts:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out = {}
    for k, t in empty.items():
        out[k] = np.empty((0, t[1]), t[0]) if isinstance(t, tuple) else np.empty(0, t)
    return out


def _write_errors(path: Path, skipped: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(json.dumps(s) + "\n" for s in skipped).encode())


def _write_shard_errors(path: Path, skipped: list[dict]) -> None:
    """A shard's skipped files, written before the shard commits; none written when there
    are none (a missing file reads as no errors), which saves two fsyncs per clean shard."""
    if skipped:
        _write_errors(path, skipped)
    else:
        path.unlink(missing_ok=True)


def ingest_ct(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    size: int = 256,
    workers: int | None = None,
    secret: str | Path | None = None,
    shard_slices: int | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest DICOM series and NIfTI volumes under ``sources`` into a CT store at ``out``.

    Args:
        sources: directories and/or files.
        out: the store directory; an unfinished store there is resumed.
        size: pixels per side of the stored slices (padded to square with air, resampled
            with the antialiased resize op).
        workers: processes (default: all cores).
        secret: the pseudonymisation secret file (default: see
            :func:`radengine.data.privacy.load_or_create_secret`); never inside the store.
        shard_slices: about how many slices per shard (default: :func:`default_shard_slices`).
        progress: show a progress bar.
    """
    from radengine.data.privacy import (
        Pseudonymizer,
        ensure_outside,
        load_or_create_secret,
        secret_path,
    )

    if size < 8:
        raise IngestError(f"--size must be >= 8 pixels, got {size}")
    # Every argument is checked before the secret is created: a typo in a source path must
    # not leave a new secret behind (and keys that silently differ from a later one).
    checked_sources(sources)
    ensure_outside(secret_path(secret), out)
    key, _ = load_or_create_secret(secret)
    pseudo = Pseudonymizer(key)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with _worker_pool(workers) as pool:
        return _ingest_ct(
            sources, out, size, shard_slices, pool, workers, pseudo, key, progress, t0
        )


def _ingest_ct(sources, out, size, shard_slices, pool, workers, pseudo, key, progress, t0):
    from radengine.data.synthetic import BODY_REGIONS

    units, skipped = scan_ct(sources, pseudo, workers=workers, executor=pool)
    shard_slices = shard_slices or default_shard_slices(units)
    meta = {
        "classes": list(BODY_REGIONS),
        "label": "body_region",
        "synthetic": False,
        "source": {"ingest": "ct", "size": size, "shard_slices": shard_slices},
    }
    writer = StoreWriter(out, "ct", {"image": ArraySpec("int16", (size, size))}, meta)
    return _run(
        writer, units, skipped, shard_slices, pool, progress, t0, _ct_shard_worker, (size, key)
    )


# --------------------------------------------------------------------------- images


def _image_shard_worker(
    store: str,
    specs: dict,
    shard: int,
    units: list[Unit],
    size: int,
    root: str,
    errors: str,
    known_skipped: Sequence[dict] = (),
) -> tuple[int, int, int, list[dict]]:
    """Decode, resize and commit one shard of images; ``known_skipped`` as for CT."""
    from radengine.data.dicom import is_fatal
    from radengine.data.images import ImageReadError, load_image, resize_shorter_center_crop
    from radengine.numpy_ops import resize_array

    def our_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
        return resize_array(img[None], (h, w))[0]

    images, labels, keys, skipped = [], [], [], list(known_skipped)
    for unit in units:
        path, label = unit.payload
        # The per-image isolation boundary: decoding and resampling one file can fail in any
        # way (load_image words the decoder's failures; anything else, e.g. a MemoryError
        # while resampling, is worded here) without ending the shard.
        try:
            img = resize_shorter_center_crop(load_image(path), size, resize=our_resize)
        except ImageReadError as exc:
            skipped.append({"path": str(path), "reason": str(exc.reason), "hint": None})
            continue
        except BaseException as exc:
            if is_fatal(exc):
                raise
            skipped += [asdict(s) for s in _unit_failed(unit, "cannot read image", exc)]
            continue
        images.append(img)
        labels.append(label)
        keys.append(unit.key)
    _write_shard_errors(Path(errors), skipped)
    arrays = {"image": np.stack(images) if images else np.empty((0, size, size, 3), dtype=np.uint8)}
    k = np.array(keys, dtype=str)
    cols = {"label": np.array(labels, dtype=np.int64), "patient": k, "study": k, "series": k}
    commit_shard(
        store, "images", {k: ArraySpec(**v) for k, v in specs.items()}, shard, arrays, cols
    )
    return shard, len(images), len(images), skipped


def ingest_images(
    root: str | Path,
    out: str | Path,
    *,
    size: int = 224,
    workers: int | None = None,
    shard_slices: int | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest an ImageFolder (one subfolder per class) into an "images" store: uint8 RGB,
    shorter side resized to ``size`` then centre-cropped; class ids from sorted folder names."""
    from radengine.data.images import scan_image_folder

    if size < 8:
        raise IngestError(f"--size must be >= 8 pixels, got {size}")
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory (expected ROOT/<class>/<image>)")
    with _worker_pool(workers) as pool:
        items, classes, skipped = scan_image_folder(root)
        units = []
        for path, label in items:
            rel = os.path.relpath(path, root)
            key = "img-" + hashlib.sha256(rel.encode()).hexdigest()[:16]
            units.append(Unit("image", key, 1, (str(path), int(label))))
        shard_slices = shard_slices or default_shard_slices(units)
        meta = {
            "classes": list(classes),
            "label": "class",
            "synthetic": False,
            "source": {"ingest": "images", "size": size, "shard_slices": shard_slices},
        }
        writer = StoreWriter(out, "images", {"image": ArraySpec("uint8", (size, size, 3))}, meta)
        return _run(
            writer, units, skipped, shard_slices, pool, progress, t0, _image_shard_worker,
            (size, str(root)),
        )  # fmt: skip


# --------------------------------------------------------------------------- shared driver


def _reason_class(reason: str) -> str:
    """Group reasons for the summary: the text before the first ':' or '(' (no paths)."""
    return reason.split(":")[0].split("(")[0].strip()[:60] or "unknown"


_CRASH_REASON = "process crashed while reading: a native decoder aborted or memory ran out"


def _in_fresh_process(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new one-process pool; None if that process died."""
    ctx = mp.get_context("spawn")  # as _worker_pool: OpenMP runtimes are not fork-safe
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            return None


def _run_isolated(worker_fn: Any, job: tuple) -> tuple[int, int, int, list[dict]]:
    """Redo a shard whose worker process died, so that one input cannot end the ingest.

    The shard runs again alone (the crash may have been another shard's, or memory pressure
    from all workers together). If its process dies again, each unit is tried alone on a
    scratch store; the units that kill their process are left out, every file of them in the
    errors file with :data:`_CRASH_REASON`, and the shard is committed with the rest.

    Args:
        worker_fn: The shard worker.
        job: Its arguments: ``(store, specs, shard, units, *args, errors)``.

    Returns:
        The worker's result for the shard.
    """
    import shutil
    import tempfile

    from radengine.data.dicom import Skipped

    result = _in_fresh_process(worker_fn, *job)
    if result is not None:
        return result
    store, specs, shard, units, *args, errors = job
    survivors, crashed = [], []
    for unit in units:
        scratch = Path(tempfile.mkdtemp(prefix="radengine-probe-"))
        try:
            (scratch / "shards").mkdir()
            probe = (str(scratch), specs, 0, [unit], *args, str(scratch / "errors.jsonl"))
            if _in_fresh_process(worker_fn, *probe) is None:
                crashed += [asdict(Skipped(path, _CRASH_REASON)) for path in _unit_files(unit)]
            else:
                survivors.append(unit)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    result = _in_fresh_process(
        worker_fn, store, specs, shard, survivors, *args, errors, known_skipped=crashed
    )
    if result is None:  # no single unit crashes, yet the shard does: not an input's fault
        raise RuntimeError(f"shard {shard}: its worker process keeps crashing")
    return result


def _nothing_ingested(summary: IngestSummary, store: Path) -> str:
    """The message of an ingest that stored nothing: why, where the details are, what to do."""
    if not summary.skipped:
        return (
            f"nothing could be ingested: the sources hold no files; no store was written at {store}"
        )
    reasons = "; ".join(f"{n} x {r}" for r, n in list(summary.skipped_by_reason.items())[:5])
    hints = "".join(f"; to fix: {h}" for h in dict.fromkeys(summary.hints.values()))
    return (
        f"nothing could be ingested: all {summary.skipped} file(s) were skipped ({reasons}){hints}; "
        f"every skipped file and its reason: {summary.errors_file}; no store was written at {store}"
    )


def _warm_worker() -> None:
    """Worker start-up: import what the shard workers use while the parent still scans."""
    import radengine.data.dicom
    import radengine.numpy_ops

    with contextlib.suppress(ImportError):
        radengine.data.dicom._import_pydicom()


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``workers`` processes, started at once so that their start-up (interpreter,
    imports) overlaps the header scan; None for one worker (work runs in this process)."""
    if workers <= 1:
        yield None
        return
    # spawn, not fork: OpenMP runtimes (ours and torch's) are not fork-safe.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_warm_worker) as pool:
        for _ in range(workers):
            pool.submit(int)  # a trivial task starts each process now
        yield pool


def _run(writer, units, skipped, shard_slices, pool, progress, t0, worker_fn, args):
    plan = plan_shards(units, shard_slices)
    done = writer.completed()
    wd = work_dir(writer.path)
    wd.mkdir(parents=True, exist_ok=True)
    # A kill while an errors file was being written leaves its temporary file: a rerun ends
    # with exactly the files of an uninterrupted run (the writer cleans the store itself).
    remove_temp_files(wd)
    summary = IngestSummary(store=str(writer.path))
    todo = [i for i in range(len(plan)) if i not in done]
    summary.shards_reused = len(plan) - len(todo)
    specs = {k: {"dtype": v.dtype, "shape": v.shape} for k, v in writer.arrays.items()}
    total = sum(u.slices for i in todo for u in plan[i])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="slice", desc="ingest", dynamic_ncols=True, smoothing=0.1)

    def jobs():
        for i in todo:
            yield (str(writer.path), specs, i, plan[i], *args, str(wd / f"errors-{i:06d}.jsonl"))

    def account(result) -> None:
        shard, n, series, _ = result
        summary.slices += n
        summary.series += series
        summary.shards_written += 1
        if bar is not None:
            bar.update(sum(u.slices for u in plan[shard]))
            bar.set_postfix(shards=f"{summary.shards_written}/{len(todo)}")

    if pool is None:
        for job in jobs():
            account(worker_fn(*job))
    else:
        futures = {pool.submit(worker_fn, *job): job for job in jobs()}
        crashed = []
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except BrokenProcessPool:
                # A worker process died (a native decoder abort, the kernel's OOM killer):
                # the pool is gone, with every shard still in it. Redo those in isolation.
                crashed.append(futures[fut])
                continue
            account(result)
        for job in sorted(crashed, key=lambda job: job[2]):
            account(_run_isolated(worker_fn, job))
    if bar is not None:
        bar.close()

    # Errors: the scan's, then every shard's (also those of shards done by an earlier run),
    # streamed into errors.jsonl and counted on the way: never all of them in memory.
    reasons: Counter = Counter()

    def entries() -> Iterator[dict]:
        for s in skipped:
            yield s if isinstance(s, dict) else asdict(s)
        for i in range(len(plan)):
            p = wd / f"errors-{i:06d}.jsonl"
            if p.exists():
                with open(p, encoding="utf-8") as f:
                    yield from (json.loads(line) for line in f if line.strip())

    def lines() -> Iterator[bytes]:
        batch = []
        for s in entries():
            reason = _reason_class(s["reason"])
            reasons[reason] += 1
            if s.get("hint"):
                summary.hints.setdefault(reason, s["hint"])
            batch.append(json.dumps(s) + "\n")
            if len(batch) == 4096:
                yield "".join(batch).encode()
                batch = []
        yield "".join(batch).encode()

    errors_file = wd / "errors.jsonl"
    atomic_write_chunks(errors_file, lines())
    summary.skipped = sum(reasons.values())
    summary.skipped_by_reason = dict(reasons.most_common())
    summary.errors_file = str(errors_file)

    if writer.count() == 0:
        # A finished empty store would only fail later, in every command that reads it:
        # leave none, and say why nothing could be stored.
        writer.discard()
        summary.seconds = time.perf_counter() - t0
        summary.error = _nothing_ingested(summary, writer.path)
        return summary
    store: Store = writer.finish()
    summary.slices = len(store)
    summary.series = len(store.keys("series")) if len(store) else 0
    summary.seconds = time.perf_counter() - t0
    return summary
