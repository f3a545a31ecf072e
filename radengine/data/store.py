"""The sharded, append-only, checksummed store that training streams from.

On-disk layout (format version 1)::

    STORE/
      store.json              what the store holds: kind ("ct" | "images"), per-slice arrays
                              with dtype and shape, class names, provenance
      shards/
        000000.image.bin      raw C-order array (n, *shape): int16 HU or uint8 RGB
        000000.mask.bin       optional per-slice arrays (e.g. uint8 organ masks)
        000000.index.npz      per-slice index columns of this shard
        000000.json           the shard's manifest: count, every file's size and SHA-256.
                              Written last, atomically: a shard without one does not exist
      index.npz               all shards' index columns, concatenated in shard order
                              (rebuilt from the shards whenever it is missing or stale)

Every file is written to a temporary name, fsynced and renamed, so a crash or a kill leaves
either the whole shard or nothing; reopening a store for writing (and finishing it) deletes
the leftovers, temporary files in the store root included, and :meth:`Store.verify` reports
any it finds. A store without a single slice is never marked finished, and readers refuse
unfinished and empty stores (:class:`Store`). Shards are
memory-mappable (``numpy.memmap``) for random access, and whole-shard reads give sequential
streaming. Index columns: ``shard``, ``offset`` (row in its shard), ``label``, ``patient``,
``study``, ``series`` (keyed hashes, never identifiers), plus kind-specific columns
(:data:`CT_COLUMNS`, :data:`IMAGE_COLUMNS`).

Splits and subsets are by patient and deterministic from a seed (:meth:`Store.select`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radengine.errors import UserError

FORMAT = "radengine-store"
VERSION = 1
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
_ROOT_FILES = frozenset({"store.json", "index.npz", "shards"})


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
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
        if json_path.exists():
            existing = _read_json(json_path)
            if {k: existing.get(k) for k in header} != json.loads(json.dumps(header)):
                raise StoreError(
                    f"{json_path}: this store was made with other settings; use a new --out "
                    "or delete it to start over"
                )
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        if not json_path.exists():
            atomic_write_json(json_path, {**header, "finished": False})
        self._header = header
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Delete what a killed writer can leave: temporary files in the store root (of
        store.json and index.npz, from a kill during :meth:`finish`) and in shards/, and
        shard files that have no manifest (a shard in flight). Afterwards the store holds
        exactly what an uninterrupted run would have written so far."""
        remove_temp_files(self.path)
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
        for name in ("index.npz", "store.json"):
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
        index = _merge_shard_indexes(self.path)
        count = len(index["shard"]) if index else 0
        if count == 0:
            raise StoreError(f"store {self.path}: no slice was written, nothing to finish")
        atomic_write_bytes(self.path / "index.npz", _npz_bytes(index))
        atomic_write_json(
            self.path / "store.json",
            {**self._header, **(extra_meta or {}), "finished": True, "count": count},
        )
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


def _merge_shard_indexes(path: Path) -> dict[str, np.ndarray]:
    parts = []
    for m in _manifests(path):
        with np.load(path / "shards" / m["files"]["index"]["file"]) as z:
            cols = {k: z[k] for k in z.files}
        cols["shard"] = np.full(m["count"], m["shard"], dtype=np.int32)
        parts.append(cols)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _score(seed: int, salt: str, keys: np.ndarray) -> np.ndarray:
    """A deterministic uniform-looking number in [0, 1) per key (SHA-256 of seed and key)."""
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        d = hashlib.sha256(f"{seed}:{salt}:{k}".encode()).digest()
        out[i] = int.from_bytes(d[:8], "little") / 2.0**64
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
        if not self.path.is_dir():
            raise StoreError(f"store {self.path} does not exist (make one with radengine ingest)")
        self.meta = _read_json(self.path / "store.json")
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{self.path / 'store.json'}: not a radengine store")
        if self.meta.get("version") != VERSION:
            raise StoreError(
                f"{self.path / 'store.json'}: format version {self.meta.get('version')}, "
                f"this radengine reads version {VERSION}"
            )
        self.kind: str = self.meta["kind"]
        self.arrays = {
            k: ArraySpec(v["dtype"], tuple(v["shape"])) for k, v in self.meta["arrays"].items()
        }
        self.manifests = {m["shard"]: m for m in _manifests(self.path)}
        self.index = self._load_index()
        self._maps: dict[tuple[int, str], np.memmap] = {}
        if not inspect:
            self.check_readable()

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

    def _load_index(self) -> dict[str, np.ndarray]:
        path = self.path / "index.npz"
        expected = sum(m["count"] for m in self.manifests.values())
        if path.exists():
            with np.load(path) as z:
                index = {k: z[k] for k in z.files}
            shards = set(np.unique(index["shard"]).tolist()) if "shard" in index else set()
            if len(index.get("shard", ())) == expected and shards == set(
                k for k, m in self.manifests.items() if m["count"]
            ):
                return index
        return _merge_shard_indexes(self.path)

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
        key = (shard, name)
        if key not in self._maps:
            spec = self.arrays[name]
            m = self.manifests[shard]
            path = self.path / "shards" / m["files"][name]["file"]
            self._maps[key] = np.memmap(
                path, dtype=spec.dtype, mode="r", shape=(m["count"], *spec.shape)
            )
        return self._maps[key]

    def get(self, i: int, name: str = "image") -> np.ndarray:
        """Slice ``i`` of array ``name`` (a read-only view into the memory map)."""
        return self.shard_array(int(self.index["shard"][i]), name)[int(self.index["offset"][i])]

    def images(self, indices: Sequence[int] | np.ndarray, name: str = "image") -> np.ndarray:
        """Gather slices into one new array (n, *shape), reading each shard in offset order."""
        indices = np.asarray(indices, dtype=np.int64)
        spec = self.arrays[name]
        out = np.empty((len(indices), *spec.shape), dtype=spec.dtype)
        shards, offsets = self.index["shard"][indices], self.index["offset"][indices]
        order = np.lexsort((offsets, shards))
        for s in np.unique(shards):
            sel = order[shards[order] == s]
            out[sel] = self.shard_array(int(s), name)[offsets[sel]]
        return out

    def iter_chunks(
        self, indices: np.ndarray | None = None, chunk: int = 1024, name: str = "image"
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, arrays) in chunks of ``chunk``, in the given order."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(indices), chunk):
            sel = indices[start : start + chunk]
            yield sel, self.images(sel, name)

    # ---- splits and subsets

    def patients(self) -> np.ndarray:
        return np.unique(self.index["patient"])

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
        patients = self.patients()
        chosen = patients
        if split is not None:
            ranked = patients[np.argsort(_score(seed, "split", patients), kind="stable")]
            bounds = np.round(np.cumsum(split_fractions) * len(ranked)).astype(int)
            start = 0 if split == "train" else bounds[SPLITS.index(split) - 1]
            chosen = ranked[start : bounds[SPLITS.index(split)]]
        if fraction < 1.0 and len(chosen):
            ranked = chosen[np.argsort(_score(seed, "subset", chosen), kind="stable")]
            chosen = ranked[: max(1, round(fraction * len(ranked)))]
        mask = np.isin(self.index["patient"], chosen)
        if labelled:
            mask &= self.index["label"] >= 0
        return np.flatnonzero(mask)

    # ---- inspection

    def digest(self) -> str:
        """SHA-256 over every shard's recorded checksums: names the store's exact content
        (for MLflow dataset inputs) without reading the data again."""
        h = hashlib.sha256()
        for _, m in sorted(self.manifests.items()):
            for name, f in sorted(m["files"].items()):
                h.update(f"{m['shard']}:{name}:{f['sha256']}\n".encode())
        return h.hexdigest()

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
            "shards": len(self.manifests),
            "patients": len(self.patients()) if len(self) else 0,
            "series": len(np.unique(self.index["series"])) if len(self) else 0,
            "arrays": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.arrays.items()
            },
            "classes": counts,
            "bytes": nbytes,
            "synthetic": bool(self.meta.get("synthetic", False)),
            "digest": self.digest(),
        }

    def verify(self) -> list[str]:
        """Check every shard file's size and SHA-256 and the index; returns the problems."""
        problems = []
        for _, m in sorted(self.manifests.items()):
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
        index_path = self.path / "index.npz"
        if index_path.exists():
            merged = _merge_shard_indexes(self.path)
            with np.load(index_path) as z:
                stale = set(z.files) != set(merged) or any(
                    not _same_column(z[k], merged[k]) for k in z.files
                )
            if stale:
                problems.append(f"{index_path}: does not match the shards' indexes")
        problems += [f"{p}: stray file (not part of the store; a killed writer's leftover?)"
                     for p in self.stray_files()]  # fmt: skip
        return problems

    def stray_files(self) -> list[Path]:
        """Files in the store that no manifest names and that are not store.json or
        index.npz: temporary files of a killed writer, shard files without a manifest."""
        stray = [f for f in self.path.iterdir() if f.name not in _ROOT_FILES]
        shards = self.path / "shards"
        if shards.is_dir():
            known = {f"{m['shard']:06d}.json" for m in self.manifests.values()}
            known |= {f["file"] for m in self.manifests.values() for f in m["files"].values()}
            stray += [f for f in shards.iterdir() if f.name not in known]
        return sorted(stray)


def _same_column(a: np.ndarray, b: np.ndarray) -> bool:
    """Index columns equal, with NaN equal to NaN: a missing kVp or thickness is NaN in the
    stored index and in the shards alike, and must not read as a mismatch."""
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
