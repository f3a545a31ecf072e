"""The built-in synthetic datasets as stores, and where they are cached.

``radengine synth ct|natural --out STORE`` writes them anywhere; the commands that take
``--data`` fall back to :func:`builtin_store`, which builds them once under the cache
directory (``$RADENGINE_CACHE``, else ``$XDG_CACHE_HOME/radengine``, else
``~/.cache/radengine``) and reuses them. A file lock makes concurrent callers (e.g. the ranks
of one torchrun job) build a store once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from radengine.data import synthetic
from radengine.data.store import ArraySpec, Store, StoreWriter

CT_DEFAULTS = {"patients": 576, "slices": 1, "size": 96, "seed": 0}
"""The built-in CT store: many patients with one slice per body-region series, so that the
test split (10% of the patients, 58 here: 348 slices from 348 different series) measures
differences of a few points; about as many slices (3456) as pretraining went through before.
See docs/builtin-data.md."""
NATURAL_DEFAULTS = {"images": 3072, "classes": 10, "size": 96, "seed": 0}
GENERATOR_VERSION = 2
"""Bumped whenever the generators' output changes: part of the cache key and of store.json, so
a changed generator never reuses a store that an older one built (1: before the cache key
carried a version)."""
_NATURAL_SHARD = 1024
_CT_SHARD_PATIENTS = 16  # patients per shard: many small patients, few files


def cache_dir() -> Path:
    """Where built-in stores live: $RADENGINE_CACHE, $XDG_CACHE_HOME/radengine, ~/.cache/radengine."""
    if os.environ.get("RADENGINE_CACHE"):
        return Path(os.environ["RADENGINE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "radengine"


def write_synthetic_ct_store(
    out: str | Path,
    *,
    patients: int = CT_DEFAULTS["patients"],
    slices: int = CT_DEFAULTS["slices"],
    size: int = CT_DEFAULTS["size"],
    seed: int = CT_DEFAULTS["seed"],
    progress: bool = False,
) -> Store:
    """Write the synthetic CT set (:func:`radengine.data.synthetic.iter_ct_series`) as a
    store: one series per body region per patient of ``slices`` slices, int16 HU images,
    uint8 organ masks, label = body region, plus lesion, contrast phase and region variant
    columns. Shard ``i`` holds patients ``16 i`` to ``16 i + 15``. Resumable: a rerun after a
    kill writes only the missing shards."""
    meta = {
        "classes": list(synthetic.BODY_REGIONS),
        "label": "body_region",
        "mask_classes": list(synthetic.ORGANS),
        "contrast_classes": list(synthetic.CONTRAST_PHASES),
        "synthetic": True,
        "source": {
            "generator": "radengine.data.synthetic (procedural; not real patients)",
            "version": GENERATOR_VERSION,
            "patients": patients,
            "slices_per_series": slices,
            "size": size,
            "seed": seed,
        },
    }
    arrays = {"image": ArraySpec("int16", (size, size)), "mask": ArraySpec("uint8", (size, size))}
    writer = StoreWriter(out, "ct", arrays, meta)
    done = writer.completed()
    shards = range((patients + _CT_SHARD_PATIENTS - 1) // _CT_SHARD_PATIENTS)
    for shard in _progress([s for s in shards if s not in done], progress, "synthetic CT shards"):
        lo = shard * _CT_SHARD_PATIENTS
        series = [
            synthetic.generate_ct_series(p, r, num_slices=slices, size=size, seed=seed)
            for p in range(lo, min(patients, lo + _CT_SHARD_PATIENTS))
            for r in range(len(synthetic.BODY_REGIONS))
        ]
        n = sum(len(s) for s in series)

        def cat(field: str, dtype, series=series):
            return np.concatenate([np.asarray(getattr(s, field)) for s in series]).astype(dtype)

        def rep(fn, dtype, series=series):
            return np.concatenate([np.full(len(s), fn(s)) for s in series]).astype(dtype)

        columns = {
            "label": rep(lambda s: s.region, np.int64),
            "patient": rep(lambda s: s.patient, str),
            "study": rep(lambda s: s.patient, str),
            "series": rep(lambda s: s.series, str),
            "region": rep(lambda s: s.region, np.int8),
            "lesion": cat("lesion", np.int8),
            "contrast": rep(lambda s: synthetic.CONTRAST_PHASES.index(s.contrast), np.int8),
            "variant": rep(lambda s: s.variant, str),
            "slice_position": cat("slice_position", np.float32),
            "pixel_spacing": np.repeat(rep(lambda s: s.pixel_spacing, np.float32)[:, None], 2, 1),
            "thickness": rep(lambda s: s.slice_spacing, np.float32),
            "kvp": np.full(n, 120.0, dtype=np.float32),
            "manufacturer": np.full(n, "radengine-synthetic"),
        }
        writer.write_shard(
            shard, {"image": cat("images", np.int16), "mask": cat("masks", np.uint8)}, columns
        )
    return writer.finish()


def write_synthetic_natural_store(
    out: str | Path,
    *,
    images: int = NATURAL_DEFAULTS["images"],
    classes: int = NATURAL_DEFAULTS["classes"],
    size: int = NATURAL_DEFAULTS["size"],
    seed: int = NATURAL_DEFAULTS["seed"],
    progress: bool = False,
) -> Store:
    """Write the synthetic natural-image proxy (not ImageNet) as an "images" store."""
    data = synthetic.synthetic_natural(images, num_classes=classes, size=size, seed=seed)
    meta = {
        "classes": list(data.class_names),
        "label": "class",
        "synthetic": True,
        "source": {
            "generator": "radengine.data.synthetic_natural (procedural; NOT ImageNet)",
            "version": GENERATOR_VERSION,
            "images": images,
            "classes": classes,
            "size": size,
            "seed": seed,
        },
    }
    writer = StoreWriter(out, "images", {"image": ArraySpec("uint8", (size, size, 3))}, meta)
    done = writer.completed()
    starts = range(0, images, _NATURAL_SHARD)
    for shard in _progress([s for s in range(len(starts)) if s not in done], progress, "shards"):
        lo, hi = starts[shard], min(images, starts[shard] + _NATURAL_SHARD)
        keys = np.array([f"synth-img-{i:06d}" for i in range(lo, hi)])
        columns = {"label": data.labels[lo:hi], "patient": keys, "study": keys, "series": keys}
        writer.write_shard(shard, {"image": data.images[lo:hi]}, columns)
    return writer.finish()


def builtin_key(domain: str, **params: int) -> str:
    """The built-in store's identity, e.g. ``synthetic-ct-v2-patients576-slices1-size96-seed0``:
    the generator version and every parameter (defaults and ``params`` overrides). It names the
    cache folder; use it wherever the built-in store must be told apart from another version.

    Raises:
        ValueError: an unknown domain or parameter.
    """
    defaults = {"ct": CT_DEFAULTS, "natural": NATURAL_DEFAULTS}.get(domain)
    if defaults is None:
        raise ValueError(f"domain must be 'ct' or 'natural', got {domain!r}")
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {domain} synthetic parameter(s) {sorted(unknown)}")
    p = {**defaults, **params}
    return f"synthetic-{domain}-v{GENERATOR_VERSION}-" + "-".join(f"{k}{v}" for k, v in p.items())


def builtin_store(domain: str, *, progress: bool = True, **params: int) -> Store:
    """The built-in synthetic store for ``domain`` ("ct" or "natural"), built on first use.

    Args:
        domain: "ct" or "natural".
        progress: show a progress bar while building.
        **params: overrides of :data:`CT_DEFAULTS` / :data:`NATURAL_DEFAULTS`.

    The cache folder is :func:`builtin_key`: the generator version and every parameter, so
    changed defaults or a changed generator build a new store instead of reusing an old one.
    """
    name = builtin_key(domain, **params)
    p = {**(CT_DEFAULTS if domain == "ct" else NATURAL_DEFAULTS), **params}
    path = cache_dir() / name
    with _locked(cache_dir() / f".{name}.lock"):
        if (path / "store.json").exists():
            # inspect: an unfinished cache (a build that was killed) is resumed below, not
            # refused as a reader would refuse it.
            store = Store(path, inspect=True)
            if store.finished and len(store):
                return store
        write = write_synthetic_ct_store if domain == "ct" else write_synthetic_natural_store
        return write(path, progress=progress, **p)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no concurrent builders to guard against
            pass
        yield


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="", dynamic_ncols=True)
