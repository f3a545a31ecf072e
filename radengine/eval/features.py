"""Frozen-encoder features, extracted once and cached on disk.

Extraction: the store's images in store order, read one batch ahead by a thread, made into
network input on the device by ``augment_views`` with the ``"none"`` preset (the whole image
resized to the eval size, the eval intensity mapping), the encoder in eval mode (BatchNorm
uses its running statistics), channels_last and bf16 autocast where the device computes bf16
natively, pooled ``forward_features`` kept in float32.

Cache: one file per (encoder weights, store content, split rows, input mapping, precision):
``<cache>/<key>.pt`` with the rows and their features (float16 unless a value overflows it),
written atomically (temporary file, fsync, rename), read with ``weights_only=True``. The key
covers everything that changes the features, so a cached file is reused across seeds, label
fractions, tasks and protocols (kNN and the linear grid share it), and never goes stale.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from radengine.data.store import Store, atomic_write_bytes
from radengine.eval.common import autocast, eval_mode, stable_hash

__all__ = ["FeatureCache", "ViewSpec", "extract_features"]

CACHE_FORMAT = 1


@dataclass(frozen=True)
class ViewSpec:
    """How store images become network input: size, CT intensity mapping, normalisation."""

    size: int
    intensity: Any = "minmax"
    repeat: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def channels(self, store_kind: str) -> int:
        if store_kind != "ct":
            return 3
        from radengine.ops.hu_window import WindowSpec

        return WindowSpec.parse(self.intensity, repeat=self.repeat).channels

    def make(
        self,
        x: Tensor,
        spec: Any = "none",
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> Tensor:
        """One view ``(B, C, size, size)`` of int16 HU ``(B, H, W)`` or uint8 RGB images."""
        from radengine.ops.augment import augment_views

        (view,), _ = augment_views(
            x,
            spec,
            views=1,
            size=self.size,
            intensity=self.intensity,
            repeat=self.repeat,
            mean=list(self.mean) if self.mean is not None else None,
            std=list(self.std) if self.std is not None else None,
            seed=seed,
            dtype=dtype,
            channels_last=channels_last,
        )
        return view


def batches_ahead(
    store: Store, rows: np.ndarray, batch_size: int, arrays: tuple[str, ...] = ("image",)
):
    """Yield ``(rows, {array: ndarray})`` batches in order, reading the next one in a thread
    while the caller computes (memory-mapped reads release the GIL)."""
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    if not chunks:
        return

    def read(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {a: store.images(idx, a) for a in arrays}

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, chunks[0])
        for i, idx in enumerate(chunks):
            data = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(read, chunks[i + 1])
            yield idx, data


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    store: Store,
    rows: np.ndarray,
    view: ViewSpec,
    *,
    device: torch.device,
    amp: torch.dtype | None = None,
    channels_last: bool = True,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Pooled features ``(N, feature_dim)`` float32 on the CPU of store ``rows`` (in order).

    Args:
        encoder: a backbone with ``forward_features``; run in eval mode here.
        store: the store.
        rows: store rows.
        view: the input mapping (augment_views "none" at ``view.size``).
        device: where to compute.
        amp: autocast dtype (None: fp32); views are made in it.
        channels_last: feed channels_last views (convolutional backbones).
        batch_size: images per forward pass.
        progress: called with the number of images done after each batch.
    """
    dtype = amp if amp is not None else torch.float32
    out: list[Tensor] = []
    with eval_mode(encoder):
        for idx, data in batches_ahead(store, np.asarray(rows), batch_size):
            x = torch.from_numpy(data["image"]).to(device, non_blocking=True)
            v = view.make(x, dtype=dtype, channels_last=channels_last)
            with autocast(device, amp):
                f = encoder.forward_features(v)
            out.append(f.float())
            if progress is not None:
                progress(len(idx))
    if not out:
        return torch.zeros(0, getattr(encoder, "feature_dim", 0))
    return torch.cat(out).cpu()


class FeatureCache:
    """Features on disk under ``folder``, keyed by everything that determines them.

    Args:
        folder: cache folder (created on first write).
        enabled: False computes every time and writes nothing.
        dtype: "float16" (halves the files; float32 is kept where a value overflows it) or
            "float32".
    """

    def __init__(self, folder: str | Path, *, enabled: bool = True, dtype: str = "float16"):
        self.folder = Path(folder)
        self.enabled = enabled
        self.dtype = dtype
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key[:40]}.pt"

    @staticmethod
    def key(
        *,
        encoder_digest: str,
        store_digest: str,
        split: str,
        rows: np.ndarray,
        view: ViewSpec,
        precision: str,
    ) -> str:
        rows_digest = stable_hash(np.asarray(rows, dtype=np.int64).tobytes())
        return stable_hash(
            "features",
            CACHE_FORMAT,
            encoder_digest,
            store_digest,
            split,
            rows_digest,
            view,
            precision,
        )

    def get(self, key: str, rows: np.ndarray) -> Tensor | None:
        """The cached features of ``rows`` under ``key``, or None."""
        if not self.enabled:
            return None
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: recompute and overwrite
            return None
        if data.get("format") != CACHE_FORMAT or not np.array_equal(
            data["rows"].numpy(), np.asarray(rows, dtype=np.int64)
        ):
            return None
        self.hits += 1
        return data["features"].float()

    def put(self, key: str, rows: np.ndarray, features: Tensor, meta: dict[str, str]) -> None:
        if not self.enabled:
            return
        stored = features
        if self.dtype == "float16":
            half = features.half()
            if torch.isfinite(half).all():
                stored = half
        buf = io.BytesIO()
        torch.save(
            {
                "format": CACHE_FORMAT,
                "rows": torch.from_numpy(np.asarray(rows, dtype=np.int64)),
                "features": stored.contiguous(),
                "meta": dict(meta),
            },
            buf,
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(key), buf.getbuffer())

    def get_or_compute(
        self, key: str, rows: np.ndarray, compute: Callable[[], Tensor], meta: dict[str, str]
    ) -> Tensor:
        found = self.get(key, rows)
        if found is not None:
            return found
        self.misses += 1
        features = compute()
        self.put(key, rows, features, meta)
        if self.enabled and self.dtype == "float16":
            # what a later hit returns, so a first run and a cached rerun agree exactly
            half = features.half()
            if torch.isfinite(half).all():
                features = half.float()
        return features
