"""The sharded, append-only, checksummed store that training streams from.

On-disk layout (format version 2)::

    STORE/
      store.json              what the store holds: kind ("ct" | "images"), per-slice arrays
                              with dtype and shape, class names, provenance, the row count,
                              the content digest and the index's columns
      shards/
        000000.image.bin      raw C-order array (n, *shape): int16 HU or uint8 RGB
        000000.mask.bin       optional per-slice arrays (e.g. uint8 organ masks)
        000000.index.npz      per-slice index columns of this shard
        000000.json           the shard's manifest: count, every file's size and SHA-256.
                              Written last, atomically: a shard without one does not exist
      manifest.json           every shard's manifest in one file (digest, verify, info)
      index/                  the consolidated index, one .npy per column, memory-mapped:
        shards.npy            (shards, 3) int64: shard number, slices, first row
        shard.npy offset.npy  int32 per row: where the row's arrays are
        patient.npy ...       int32 codes into patient.keys.npy (the sorted unique values as
                              UTF-8 bytes) for every string column (keys, manufacturer)
        slice_position.npy .. numbers as float32 / int32 where those hold them exactly enough

Opening a finished store reads store.json and maps the index files: a handful of reads
whatever the number of shards, and no memory that grows with the rows is copied into the
process (the page cache holds the columns once for every process on the node). Per-shard
manifests are read by ``verify``, ``info`` and writers only. Version-1 stores (index.npz, no
consolidated files) are still read, by merging the shards' indexes as before;
``radengine store upgrade`` (:func:`upgrade`) rewrites their index as version 2 in seconds,
without touching the shards.

Every file is written to a temporary name, fsynced and renamed, so a crash or a kill leaves
either the whole shard or nothing; reopening a store for writing (and finishing it) deletes
the leftovers, temporary files in the store root included, and :meth:`Store.verify` reports
any it finds. A store without a single slice is never marked finished, and readers refuse
unfinished and empty stores (:class:`Store`). Shards are
memory-mappable (``numpy.memmap``) for random access, and whole-shard reads give sequential
streaming. Index columns: ``shard``, ``offset`` (row in its shard), ``label``, ``patient``,
``study``, ``series`` (keyed hashes, never identifiers), plus kind-specific columns
(:data:`CT_COLUMNS`, :data:`IMAGE_COLUMNS`). ``store.index[col]`` is the stored column
(codes for string columns); :meth:`Store.keys` and :meth:`Store.column` give the values.

Splits and subsets are by patient and deterministic from a seed (:meth:`Store.select`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radengine.errors import UserError

FORMAT = "radengine-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
INDEX_DIR = "index"
MANIFEST = "manifest.json"
KINDS = ("ct", "images")
KEY_COLUMNS = ("label", "patient", "study", "series")
CT_COLUMNS = (
    "region",
    "lesion",
    "slice_position",
    "pixel_spacing",
    "thickness",
    "kvp",
    "manufacturer",
)
IMAGE_COLUMNS = ()
SPLITS = ("train", "val", "test")
_SHARD_RE = re.compile(r"^(\d{6})\.json$")
# The temporary names atomic_write_bytes uses (".<name>.tmp-<pid>"): what a kill leaves.
_TEMP_RE = re.compile(r"^\..+\.tmp-\d+$")
_ROOT_FILES = frozenset({"store.json", "shards", INDEX_DIR, MANIFEST})
_V1_ROOT_FILES = frozenset({"store.json", "index.npz", "shards"})


class StoreError(UserError, RuntimeError):
    """A store that is missing, malformed or corrupt; the message names the file."""


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    ``sync_dir=False`` leaves the directory entry's durability to a later fsync of the
    directory (one for several files, as :func:`commit_shard` does). On any failure (a full
    disk, an interrupt) the temporary file is removed before the exception propagates, so a
    failed write never leaves the disk fuller than before; what a SIGKILL leaves,
    :func:`remove_temp_files` clears on the next run."""
    atomic_write_chunks(path, (data,), sync_dir=sync_dir)


def atomic_write_chunks(
    path: Path, chunks: Iterable[bytes | memoryview], *, sync_dir: bool = True
) -> None:
    """:func:`atomic_write_bytes` for data produced piece by piece (a file of millions of
    lines is never one string in memory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for data in chunks:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def is_temp_file(name: str) -> bool:
    """True for a file name :func:`atomic_write_bytes` writes before its rename."""
    return bool(_TEMP_RE.match(name))


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``directory`` (not below it).

    Only names of :func:`atomic_write_bytes`'s pattern are touched, so a user's own files
    next to a store are safe. Call it only where no other process is writing.

    Args:
        directory: A folder atomic files are written to (a store root, its shards/ folder,
            an ingest's work folder); a missing folder has nothing to clean.

    Returns:
        The files deleted.
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return removed
    for f in entries:
        if is_temp_file(f.name) and f.is_file():
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _npz_bytes(columns: Mapping[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in columns.items()})
    return buf.getvalue()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ArraySpec:
    """One per-slice array of a store: its dtype and per-slice shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def slice_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def _required_columns(kind: str) -> tuple[str, ...]:
    return KEY_COLUMNS + (CT_COLUMNS if kind == "ct" else IMAGE_COLUMNS)


class StoreWriter:
    """Creates a store, or reopens an unfinished one to resume it.

    Shards are numbered by the caller from a deterministic plan, so a rerun after a crash
    writes exactly the shards that are missing and the finished store is the same.

    Args:
        path: the store directory.
        kind: "ct" or "images".
        arrays: per-slice arrays, e.g. ``{"image": ArraySpec("int16", (256, 256))}``; an
            "image" array is required.
        meta: extra store.json fields (classes, provenance, synthetic=True, ...). Must be
            the same on a resume, else the store belongs to another ingest.
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        arrays: Mapping[str, ArraySpec],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if "image" not in arrays:
            raise ValueError("arrays must include 'image'")
        self.path = Path(path)
        self.kind = kind
        self.arrays = dict(arrays)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "arrays": {k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in arrays.items()},
            **(meta or {}),
        }
        json_path = self.path / "store.json"
        existing = _read_json(json_path) if json_path.exists() else None
        if existing is not None:
            # the shards of every version are alike: a version-1 ingest resumes as version 2
            same = [k for k in header if k != "version"]
            if {k: existing.get(k) for k in same} != json.loads(
                json.dumps({k: header[k] for k in same})
            ):
                raise StoreError(
                    f"{json_path}: this store was made with other settings; use a new --out "
                    "or delete it to start over"
                )
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        if existing is None:
            atomic_write_json(json_path, {**header, "finished": False})
        # A finished store reopened for more shards stays readable as it was (its index and
        # digest name the shards it had) until finish() commits the new index.
        self._header = header
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Delete what a killed writer can leave: temporary files in the store root (of
        store.json and index.npz, from a kill during :meth:`finish`) and in shards/, and
        shard files that have no manifest (a shard in flight). Afterwards the store holds
        exactly what an uninterrupted run would have written so far."""
        remove_temp_files(self.path)
        if (self.path / INDEX_DIR).is_dir():
            remove_temp_files(self.path / INDEX_DIR)
        shards = self.path / "shards"
        done = self.completed()
        for f in shards.iterdir():
            stem = f.name.split(".", 1)[0]
            if f.name.startswith(".") or not stem.isdigit() or int(stem) not in done:
                f.unlink()

    def count(self) -> int:
        """Slices in the shards committed so far."""
        return sum(m["count"] for m in _manifests(self.path))

    def discard(self) -> None:
        """Delete the store: every file a writer makes, then its folders if they are empty.

        For an ingest that found nothing to store: a finished empty store would only fail
        later, in every command that reads it. Files that are not the writer's stay.
        """
        shards = self.path / "shards"
        if shards.is_dir():
            for f in shards.iterdir():
                if _SHARD_RE.match(f.name) or f.name[:6].isdigit() or is_temp_file(f.name):
                    f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone else's files
                shards.rmdir()
        remove_temp_files(self.path)
        index = self.path / INDEX_DIR
        if index.is_dir():
            for f in index.iterdir():
                if f.name.endswith(".npy") or is_temp_file(f.name):
                    f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                index.rmdir()
        for name in ("index.npz", MANIFEST, "store.json"):
            (self.path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def completed(self) -> set[int]:
        """Shard numbers already committed (their manifest exists)."""
        out = set()
        for f in (self.path / "shards").iterdir():
            m = _SHARD_RE.match(f.name)
            if m:
                out.add(int(m.group(1)))
        return out

    def write_shard(
        self, shard: int, arrays: Mapping[str, np.ndarray], columns: Mapping[str, Any]
    ) -> dict:
        """Commit one shard atomically; returns its manifest. See :func:`commit_shard`."""
        return commit_shard(self.path, self.kind, self.arrays, shard, arrays, columns)

    def finish(self, extra_meta: Mapping[str, Any] | None = None) -> Store:
        """Merge the shards' indexes into index.npz, mark the store finished, open it.

        Raises:
            StoreError: If the shards hold no slice: an empty store is never marked
                finished (every reader would refuse it), so the caller reports why nothing
                was stored instead, and may :meth:`discard` the store.
        """
        # Every shard is committed or abandoned by now: what a worker killed mid-write left
        # (its pool terminated after another worker crashed) goes before the index is built.
        self._clean_leftovers()
        manifests = _manifests(self.path)
        index = build_index(self.path, manifests)
        if index.count == 0:
            raise StoreError(f"store {self.path}: no slice was written, nothing to finish")
        write_index(self.path, index, manifests, {**self._header, **(extra_meta or {})})
        return Store(self.path)


def commit_shard(
    path: str | Path,
    kind: str,
    specs: Mapping[str, ArraySpec],
    shard: int,
    arrays: Mapping[str, np.ndarray],
    columns: Mapping[str, Any],
) -> dict:
    """Commit one shard of an open store atomically and return its manifest.

    Safe to call from several processes at once for different shards (what parallel ingest
    workers do); the manifest, written last, is the commit.

    Args:
        path: the store directory (created by a :class:`StoreWriter`).
        kind: the store's kind.
        specs: the store's arrays.
        shard: its number in the caller's plan (0 .. 999999).
        arrays: every array of the store, each (n, *shape) of its dtype.
        columns: index columns, each of length n (see the module docstring).
    """
    if not 0 <= shard < 1_000_000:
        raise ValueError(f"shard number must be in [0, 999999], got {shard}")
    if set(arrays) != set(specs):
        raise ValueError(f"arrays must be exactly {sorted(specs)}, got {sorted(arrays)}")
    n = len(arrays["image"])
    for name, spec in specs.items():
        a = arrays[name]
        if a.dtype != np.dtype(spec.dtype) or tuple(a.shape) != (n, *spec.shape):
            raise ValueError(
                f"array {name!r}: expected {spec.dtype} {(n, *spec.shape)}, "
                f"got {a.dtype} {tuple(a.shape)}"
            )
    cols = {k: np.asarray(v) for k, v in columns.items()}
    missing = [c for c in _required_columns(kind) if c not in cols]
    if missing:
        raise ValueError(f"index columns missing: {missing}")
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"index column {k!r} has {len(v)} rows, the shard has {n}")
    cols["offset"] = np.arange(n, dtype=np.int32)

    shards = Path(path) / "shards"
    files = {}
    # Checksums of the bytes in memory, as written: no second read of the files.
    blobs = {f"{shard:06d}.{k}.bin": np.ascontiguousarray(a).data for k, a in arrays.items()}
    blobs[f"{shard:06d}.index.npz"] = memoryview(_npz_bytes(cols))
    for (name, blob), key in zip(blobs.items(), [*arrays, "index"], strict=True):
        atomic_write_bytes(shards / name, blob, sync_dir=False)
        files[key] = {
            "file": name,
            "bytes": blob.nbytes,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
    manifest = {"shard": shard, "count": int(n), "files": files}
    _fsync_dir(shards)  # the data files' names are durable before the manifest names them
    atomic_write_json(shards / f"{shard:06d}.json", manifest)
    return manifest


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} not found: is {path.parent} a radengine store?") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is unreadable or not JSON ({exc})") from None


def _manifests(path: Path) -> list[dict]:
    shards = path / "shards"
    if not shards.is_dir():
        return []
    names = sorted(f.name for f in shards.iterdir() if _SHARD_RE.match(f.name))
    return [_read_json(shards / n) for n in names]


@dataclass
class Index:
    """A store's index in memory or mapped from index/: columns (codes for strings), the
    sorted tables of coded columns (UTF-8 bytes), and per shard (number, slices, first row)."""

    columns: dict[str, np.ndarray]
    tables: dict[str, np.ndarray]
    shards: np.ndarray  # (n_shards, 3) int64

    @property
    def count(self) -> int:
        return len(self.columns["shard"]) if "shard" in self.columns else 0


def _narrow(col: np.ndarray) -> np.ndarray:
    """float32 for floats, int32 for integers that fit: what the index stores."""
    if col.dtype.kind == "f" and col.dtype.itemsize > 4:
        return col.astype(np.float32)
    if col.dtype.kind in "iu" and col.dtype.itemsize > 4:
        info = np.iinfo(np.int32)
        if not len(col) or (int(col.min()) >= info.min and int(col.max()) <= info.max):
            return col.astype(np.int32)
    return col


def build_index(path: Path, manifests: Sequence[Mapping[str, Any]]) -> Index:
    """The consolidated index from the shards' own index files, one shard at a time, so the
    memory it needs is that of the result (numbers, codes and the tables of distinct
    strings), never that of every row's strings at once."""
    total = sum(int(m["count"]) for m in manifests)
    columns: dict[str, np.ndarray] = {}
    provisional: dict[str, dict[str, int]] = {}  # string column -> value -> first-seen code
    row = 0
    shards = np.zeros((len(manifests), 3), dtype=np.int64)
    for i, m in enumerate(manifests):
        n = int(m["count"])
        shards[i] = (m["shard"], n, row)
        with np.load(path / "shards" / m["files"]["index"]["file"]) as z:
            part = {k: z[k] for k in z.files}
        part["shard"] = np.full(n, m["shard"], dtype=np.int32)
        for name, col in part.items():
            if col.dtype.kind in "USO":
                seen = provisional.setdefault(name, {})
                values, inverse = np.unique(col.astype(str), return_inverse=True)
                codes = np.array([seen.setdefault(v, len(seen)) for v in values.tolist()])
                col = codes.astype(np.int32)[inverse.reshape(-1)].reshape(col.shape)
            else:
                col = _narrow(col)
            if name not in columns:
                columns[name] = np.empty((total, *col.shape[1:]), dtype=col.dtype)
            columns[name][row : row + n] = col
        row += n
    tables: dict[str, np.ndarray] = {}
    for name, seen in provisional.items():
        values = np.array(list(seen), dtype=str)
        order = np.argsort(values, kind="stable")  # codes follow the values' sort order
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        columns[name] = rank[columns[name]]
        tables[name] = np.char.encode(values[order], "utf-8") if len(values) else np.zeros(0, "S1")
    return Index(columns, tables, shards)


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _store_digest(manifests: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 over every shard's recorded checksums: the store's exact content."""
    h = hashlib.sha256()
    for m in sorted(manifests, key=lambda m: m["shard"]):
        for name, f in sorted(m["files"].items()):
            h.update(f"{m['shard']}:{name}:{f['sha256']}\n".encode())
    return h.hexdigest()


def write_index(
    path: Path, index: Index, manifests: Sequence[Mapping[str, Any]], header: Mapping[str, Any]
) -> None:
    """Write index/, manifest.json, then store.json (finished, version 2): the last write is
    the commit, so a kill anywhere before it leaves the store as it was."""
    folder = path / INDEX_DIR
    folder.mkdir(exist_ok=True)
    files = {"shards.npy": index.shards}
    files |= {f"{k}.npy": v for k, v in index.columns.items()}
    files |= {f"{k}.keys.npy": v for k, v in index.tables.items()}
    for name, array in files.items():
        atomic_write_bytes(folder / name, _npy_bytes(array), sync_dir=False)
    for f in folder.iterdir():  # a column an earlier index had and this one has not
        if f.name not in files:
            f.unlink(missing_ok=True)
    _fsync_dir(folder)
    ordered = sorted(manifests, key=lambda m: m["shard"])
    atomic_write_json(path / MANIFEST, {"shards": ordered})
    meta = {
        **header,
        "version": VERSION,
        "finished": True,
        "count": index.count,
        "digest": _store_digest(ordered),
        "index": {"columns": sorted(index.columns), "coded": sorted(index.tables)},
    }
    atomic_write_json(path / "store.json", meta)
    (path / "index.npz").unlink(missing_ok=True)  # a version-1 index, now superseded


def _map_index(path: Path, meta: Mapping[str, Any]) -> Index:
    """The index/ files of a finished version-2 store, memory-mapped (read-only)."""
    folder = path / INDEX_DIR
    spec = meta.get("index") or {}
    try:
        columns = {c: np.load(folder / f"{c}.npy", mmap_mode="r") for c in spec["columns"]}
        tables = {c: np.load(folder / f"{c}.keys.npy") for c in spec["coded"]}
        shards = np.load(folder / "shards.npy")
    except (KeyError, OSError, ValueError) as exc:
        raise StoreError(
            f"store {path}: its index ({folder}) is missing or unreadable ({exc}); "
            f"`radengine store verify {path}` says more, `radengine store upgrade {path}` "
            "rebuilds it from the shards"
        ) from None
    index = Index(columns, tables, shards)
    if index.count != meta.get("count") or int(shards[:, 1].sum()) != index.count:
        raise StoreError(
            f"store {path}: its index holds {index.count} rows, store.json says "
            f"{meta.get('count')}; rebuild it with `radengine store upgrade {path}`"
        )
    return index


def _score(seed: int, salt: str, keys: np.ndarray) -> np.ndarray:
    """A deterministic uniform-looking number in [0, 1) per key (SHA-256 of seed and key)."""
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        d = hashlib.sha256(f"{seed}:{salt}:{k}".encode()).digest()
        out[i] = int.from_bytes(d[:8], "little") / 2.0**64
    return out


class ShardReader:
    """Reads slices by (shard, offset) from memory-mapped shard files: all a loader worker
    needs of a store (its path, array specs and slices per shard), small to send and
    instant to start, whatever the store's size."""

    def __init__(self, path: Path, arrays: Mapping[str, ArraySpec], counts: Mapping[int, int]):
        self.path = Path(path)
        self.arrays = dict(arrays)
        self.counts = dict(counts)
        self._maps: dict[tuple[int, str], np.memmap] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "arrays": self.arrays, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["arrays"], state["counts"])  # type: ignore[misc]

    def shard_array(self, shard: int, name: str = "image") -> np.memmap:
        """One shard's array, memory-mapped: (n, *shape). Sequential reads stream it."""
        key = (shard, name)
        if key not in self._maps:
            spec = self.arrays[name]
            path = self.path / "shards" / f"{shard:06d}.{name}.bin"
            self._maps[key] = np.memmap(
                path, dtype=spec.dtype, mode="r", shape=(self.counts[shard], *spec.shape)
            )
        return self._maps[key]

    def read(self, shards: np.ndarray, offsets: np.ndarray, name: str = "image") -> np.ndarray:
        """Slices by (shard, offset) pairs into one new array (n, *shape), each shard's rows
        read in offset order."""
        spec = self.arrays[name]
        shards, offsets = np.asarray(shards), np.asarray(offsets)
        out = np.empty((len(shards), *spec.shape), dtype=spec.dtype)
        order = np.lexsort((offsets, shards))
        for s in np.unique(shards):
            sel = order[shards[order] == s]
            out[sel] = self.shard_array(int(s), name)[offsets[sel]]
        return out


class Store:
    """A finished store, opened for reading (or any store, with ``inspect=True``).

    Every command that trains on, evaluates or analyses a store opens it this way, so each
    gets the same refusal of a store it cannot use: one that an ingest has not finished, or
    one without a single sample.

    Args:
        path: The store directory.
        inspect: Also open an unfinished or empty store, for ``radengine store info`` and
            ``radengine store verify``, which report on it rather than read samples.

    Raises:
        StoreError: The store is missing, malformed or of another format version; or,
            unless ``inspect``, unfinished or empty.

    Example:
        >>> store = Store("~/data/ct-store")
        >>> train = store.select("train", fraction=0.1, seed=0)  # 10% of training patients
        >>> x = store.images(train[:256])  # (256, 256, 256) int16 HU
    """

    def __init__(self, path: str | Path, *, inspect: bool = False) -> None:
        self.path = Path(path).expanduser()
        self._inspect = inspect
        if not self.path.is_dir():
            raise StoreError(f"store {self.path} does not exist (make one with radengine ingest)")
        self.meta = _read_json(self.path / "store.json")
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{self.path / 'store.json'}: not a radengine store")
        self.version = self.meta.get("version")
        if self.version not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path / 'store.json'}: format version {self.version}, "
                f"this radengine reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        self.kind: str = self.meta["kind"]
        self.arrays = {
            k: ArraySpec(v["dtype"], tuple(v["shape"])) for k, v in self.meta["arrays"].items()
        }
        self._manifests: dict[int, dict] | None = None
        if self.version == VERSION and self.finished:
            index = _map_index(self.path, self.meta)
        else:  # version 1, or an unfinished store being inspected: from the shards
            index = build_index(self.path, list(self.manifests.values()))
        self.index: dict[str, np.ndarray] = index.columns
        self._tables = index.tables
        self._shards = index.shards
        counts = {int(n): int(c) for n, c, _ in index.shards.tolist()}
        self.reader = ShardReader(self.path, self.arrays, counts)
        self._keys: dict[str, np.ndarray] = {}
        if not inspect:
            self.check_readable()

    def __getstate__(self) -> dict[str, Any]:
        # a Store crosses processes as its path (memory maps would be pickled as copies)
        return {"path": str(self.path), "inspect": self._inspect}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], inspect=state["inspect"])  # type: ignore[misc]

    @property
    def manifests(self) -> dict[int, dict]:
        """Every shard's manifest by shard number: from manifest.json in a finished
        version-2 store, else from the shards' own files."""
        if self._manifests is None:
            consolidated = self.path / MANIFEST
            if self.version == VERSION and self.finished and consolidated.is_file():
                found = _read_json(consolidated).get("shards", [])
            else:
                found = _manifests(self.path)
            self._manifests = {int(m["shard"]): m for m in found}
        return self._manifests

    def check_readable(self) -> None:
        """Raise a :class:`StoreError` unless the store is finished and holds samples.

        Raises:
            StoreError: Naming the store, what is wrong and what to do.
        """
        if not self.finished:
            raise StoreError(
                f"store {self.path} is unfinished: the ingest writing it was stopped (or is "
                "still running); rerun the same `radengine ingest` command to complete it"
            )
        if len(self) == 0:
            raise StoreError(
                f"store {self.path} holds no samples; ingest usable data into it "
                "(`radengine ingest`) or use another store"
            )

    @property
    def finished(self) -> bool:
        return bool(self.meta.get("finished"))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def __len__(self) -> int:
        return len(self.index.get("shard", ()))

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, kind={self.kind!r}, slices={len(self)})"

    # ---- array access

    def shard_array(self, shard: int, name: str = "image") -> np.memmap:
        """One shard's array, memory-mapped: (n, *shape). Sequential reads stream it."""
        return self.reader.shard_array(shard, name)

    def get(self, i: int, name: str = "image") -> np.ndarray:
        """Slice ``i`` of array ``name`` (a read-only view into the memory map)."""
        return self.shard_array(int(self.index["shard"][i]), name)[int(self.index["offset"][i])]

    def images(self, indices: Sequence[int] | np.ndarray, name: str = "image") -> np.ndarray:
        """Gather slices into one new array (n, *shape), reading each shard in offset order."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.read(self.index["shard"][indices], self.index["offset"][indices], name)

    def read(self, shards: np.ndarray, offsets: np.ndarray, name: str = "image") -> np.ndarray:
        """Slices by (shard, offset) pairs (see :class:`ShardReader`)."""
        return self.reader.read(shards, offsets, name)

    def iter_chunks(
        self, indices: np.ndarray | None = None, chunk: int = 1024, name: str = "image"
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, arrays) in chunks of ``chunk``, in the given order."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(indices), chunk):
            sel = indices[start : start + chunk]
            yield sel, self.images(sel, name)

    # ---- splits and subsets

    def keys(self, column: str) -> np.ndarray:
        """The sorted distinct values of a string column (patient, series, manufacturer, ...):
        ``store.index[column]`` holds codes into it."""
        if column not in self._keys:
            if column not in self._tables:
                raise KeyError(f"{column!r} is not a string column of store {self.path}")
            self._keys[column] = np.char.decode(self._tables[column], "utf-8").astype(str)
        return self._keys[column]

    def column(self, name: str, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Column ``name`` (at ``rows``, else whole) as values: strings for string columns."""
        col = self.index[name] if rows is None else self.index[name][np.asarray(rows)]
        return self.keys(name)[col] if name in self._tables else np.asarray(col)

    def patients(self) -> np.ndarray:
        """Every patient key, sorted (no pass over the rows)."""
        return self.keys("patient") if "patient" in self._tables else np.zeros(0, dtype=str)

    def select(
        self,
        split: str | None = None,
        *,
        fraction: float = 1.0,
        seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        labelled: bool = False,
    ) -> np.ndarray:
        """Slice indices of a patient-level split and subset, deterministic from ``seed``.

        Patients are ranked by a keyed hash of (seed, patient): the first 80% (by default)
        are "train", the next 10% "val", the rest "test", so no patient is in two splits.
        ``fraction`` keeps that share of the split's patients (at least one), ranked by a
        second hash, so smaller fractions are subsets of larger ones (0.1% in 1% in 10%).

        Args:
            split: "train", "val", "test" or None (all patients).
            fraction: share of the split's patients to keep, in (0, 1].
            seed: the split's seed.
            split_fractions: train/val/test shares of patients; they must sum to 1.
            labelled: keep only slices with a known label (label >= 0).
        """
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if len(split_fractions) != 3 or abs(sum(split_fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions must be 3 shares summing to 1, got {split_fractions}"
            )
        # Each distinct patient is hashed once; rows are then picked by their integer code.
        patients = self.patients()
        chosen = np.arange(len(patients))
        if split is not None:
            ranked = np.argsort(_score(seed, "split", patients), kind="stable")
            bounds = np.round(np.cumsum(split_fractions) * len(ranked)).astype(int)
            start = 0 if split == "train" else bounds[SPLITS.index(split) - 1]
            chosen = ranked[start : bounds[SPLITS.index(split)]]
        if fraction < 1.0 and len(chosen):
            ranked = chosen[np.argsort(_score(seed, "subset", patients[chosen]), kind="stable")]
            chosen = ranked[: max(1, round(fraction * len(ranked)))]
        keep = np.zeros(len(patients), dtype=bool)
        keep[chosen] = True
        mask = keep[self.index["patient"]] if len(patients) else np.zeros(len(self), dtype=bool)
        if labelled:
            mask &= self.index["label"] >= 0
        return np.flatnonzero(mask)

    # ---- inspection

    def digest(self) -> str:
        """SHA-256 over every shard's recorded checksums: names the store's exact content
        (for MLflow dataset inputs) without reading the data again."""
        return self.meta.get("digest") or _store_digest(list(self.manifests.values()))

    def info(self) -> dict[str, Any]:
        """Counts, classes, patients and bytes, for `radengine store info`."""
        labels = self.index.get("label", np.zeros(0, dtype=np.int64))
        counts = {}
        names = self.classes
        for lab, n in zip(*np.unique(labels, return_counts=True), strict=True):
            name = names[lab] if 0 <= lab < len(names) else "unknown"
            counts[name] = int(n)
        nbytes = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path),
            "kind": self.kind,
            "finished": self.finished,
            "slices": len(self),
            "shards": len(self._shards),
            "patients": len(self.patients()) if len(self) else 0,
            "series": len(self.keys("series")) if len(self) else 0,
            "version": self.version,
            "arrays": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.arrays.items()
            },
            "classes": counts,
            "bytes": nbytes,
            "synthetic": bool(self.meta.get("synthetic", False)),
            "digest": self.digest(),
        }

    def verify(self) -> list[str]:
        """Check every shard file's size and SHA-256 against the shard's own manifest, and the
        consolidated manifest and index against the shards; returns the problems."""
        problems = []
        manifests = {int(m["shard"]): m for m in _manifests(self.path)}
        for _, m in sorted(manifests.items()):
            for name, f in m["files"].items():
                p = self.path / "shards" / f["file"]
                if not p.exists():
                    problems.append(f"{p}: missing")
                    continue
                if p.stat().st_size != f["bytes"]:
                    problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {f['bytes']}")
                    continue
                if _sha256_file(p) != f["sha256"]:
                    problems.append(f"{p}: checksum mismatch (corrupt)")
                if name in self.arrays and f["bytes"] != m["count"] * self.arrays[name].slice_bytes:
                    problems.append(f"{p}: size does not match {m['count']} slices")
        if not self.finished:
            problems.append(f"{self.path}: ingest did not finish (rerun it to resume)")
        elif len(self) == 0:
            problems.append(f"{self.path}: the store holds no samples")
        elif self.version == VERSION:
            problems += self._verify_index(manifests)
        elif (self.path / "index.npz").exists():
            with np.load(self.path / "index.npz") as z:
                stored = {k: z[k] for k in z.files}
            raw = [dict(np.load(self.path / "shards" / m["files"]["index"]["file"]))
                   for _, m in sorted(manifests.items())]  # fmt: skip
            merged = {k: np.concatenate([r[k] for r in raw]) for k in raw[0]} if raw else {}
            if raw:
                merged["shard"] = np.concatenate(
                    [np.full(m["count"], m["shard"]) for _, m in sorted(manifests.items())]
                )
            if set(stored) != set(merged) or any(
                not _same_column(stored[k], merged[k]) for k in stored
            ):
                problems.append(f"{self.path / 'index.npz'}: does not match the shards' indexes")
        problems += [f"{p}: stray file (not part of the store; a killed writer's leftover?)"
                     for p in self.stray_files()]  # fmt: skip
        return problems

    def _verify_index(self, manifests: Mapping[int, dict]) -> list[str]:
        """A finished version-2 store: manifest.json, index/ and the digest against the
        shards' own manifests and index files."""
        problems = []
        consolidated = self.path / MANIFEST
        listed = {int(m["shard"]): m for m in _read_json(consolidated).get("shards", [])}
        if json.loads(json.dumps(listed)) != json.loads(json.dumps(manifests)):
            problems.append(f"{consolidated}: does not match the shards' manifests")
        if self.meta.get("digest") != _store_digest(list(manifests.values())):
            problems.append(f"{self.path / 'store.json'}: its digest does not match the shards")
        rebuilt = build_index(self.path, [m for _, m in sorted(manifests.items())])
        folder = self.path / INDEX_DIR
        if set(rebuilt.columns) != set(self.index) or set(rebuilt.tables) != set(self._tables):
            problems.append(f"{folder}: its columns are not the shards' columns")
            return problems
        if not np.array_equal(rebuilt.shards, self._shards):
            problems.append(f"{folder / 'shards.npy'}: does not match the shards")
        for k, col in rebuilt.columns.items():
            if not _same_column(np.asarray(self.index[k]), col):
                problems.append(f"{folder / (k + '.npy')}: does not match the shards' indexes")
        for k, table in rebuilt.tables.items():
            if not np.array_equal(self._tables[k], table):
                problems.append(f"{folder / (k + '.keys.npy')}: does not match the shards")
        return problems

    def stray_files(self) -> list[Path]:
        """Files in the store that no manifest names and that are not the store's own
        (store.json, manifest.json, index/): temporary files of a killed writer, shard files
        without a manifest, index files of no column."""
        root = _ROOT_FILES if self.version == VERSION else _V1_ROOT_FILES
        stray = [f for f in self.path.iterdir() if f.name not in root]
        shards = self.path / "shards"
        if shards.is_dir():
            manifests = _manifests(self.path)
            known = {f"{m['shard']:06d}.json" for m in manifests}
            known |= {f["file"] for m in manifests for f in m["files"].values()}
            stray += [f for f in shards.iterdir() if f.name not in known]
        index = self.path / INDEX_DIR
        if self.version == VERSION and index.is_dir():
            spec = self.meta.get("index") or {}
            known = {"shards.npy"} | {f"{c}.npy" for c in spec.get("columns", [])}
            known |= {f"{c}.keys.npy" for c in spec.get("coded", [])}
            stray += [f for f in index.iterdir() if f.name not in known]
        return sorted(stray)


def upgrade(path: str | Path) -> dict[str, Any]:
    """Rewrite a finished version-1 store's index as version 2 (index/, manifest.json,
    store.json; index.npz removed), or rebuild a version-2 index that cannot be opened. The
    shards are not touched. Each file is written atomically and store.json last, so a kill
    leaves the store as it was and a rerun finishes the job. Returns what was done:
    ``{"path", "from", "to", "slices", "shards"}``, with ``"rebuilt": True`` when the index
    was written."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise StoreError(f"store {path} does not exist")
    meta = _read_json(path / "store.json")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise StoreError(f"{path / 'store.json'}: not a radengine store this version reads")
    if not meta.get("finished"):
        raise StoreError(
            f"store {path} is unfinished: finish it first by rerunning the ingest that writes "
            "it (which writes a version-2 store)"
        )
    version = meta["version"]
    if version == VERSION:
        with contextlib.suppress(StoreError):
            index = _map_index(path, meta)
            return {"path": str(path), "from": VERSION, "to": VERSION, "slices": index.count,
                    "shards": len(index.shards)}  # fmt: skip
    remove_temp_files(path)
    if (path / INDEX_DIR).is_dir():
        remove_temp_files(path / INDEX_DIR)
    manifests = _manifests(path)
    index = build_index(path, manifests)
    header = {k: v for k, v in meta.items() if k not in ("finished", "count", "index", "digest")}
    write_index(path, index, manifests, header)
    return {"path": str(path), "from": version, "to": VERSION, "slices": index.count,
            "shards": len(manifests), "rebuilt": True}  # fmt: skip


def _same_column(a: np.ndarray, b: np.ndarray) -> bool:
    """Index columns equal, with NaN equal to NaN: a missing kVp or thickness is NaN in the
    stored index and in the shards alike, and must not read as a mismatch."""
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
