"""A run's data: the stores of its sources opened and checked, each source's share of the
batch, and one loader per source for each stage (a single stage, or ``stages:`` run one
after another)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radengine import config as config_mod
from radengine.config import PretrainConfig
from radengine.data.loader import StoreLoader
from radengine.data.store import Store, StoreError
from radengine.engine import distributed
from radengine.engine.errors import PretrainError

__all__ = ["STORE_KIND", "Stage", "build_stages", "open_store"]

STORE_KIND = {"ct": "ct", "natural": "images"}


@dataclass
class _Source:
    domain: str
    store: Store
    indices: np.ndarray
    rows: int  # this rank's rows per step from this source
    fraction: float

    def describe(self) -> str:
        return f"{self.domain} store {self.store.path} ({len(self.indices)} samples)"


def open_store(domain: str, path: str | None, *, progress: bool = True) -> Store:
    """The store for ``domain``: ``path``, or the built-in synthetic one when None."""
    if path is None:
        from radengine.data.builtin import builtin_store

        return builtin_store(domain, progress=progress)
    try:
        store = Store(path)
    except StoreError as exc:
        raise PretrainError(f"data store: {exc}") from None
    if store.kind != STORE_KIND[domain]:
        other = "natural" if store.kind == "images" else store.kind
        raise PretrainError(
            f"store {path} holds {other} data but the run's domain is {domain}; "
            f"use --domain {other} or a {domain} store"
        )
    if not store.finished:
        raise PretrainError(
            f"store {path} is incomplete (an ingest did not finish); rerun the ingest command "
            "to complete it"
        )
    return store


def _shares(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` rows by ``weights`` (largest remainders), each share >= 1."""
    if total < len(weights):
        raise PretrainError(
            f"a batch of {total} rows per rank cannot hold {len(weights)} mixed sources"
        )
    raw = [total * w / sum(weights) for w in weights]
    shares = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(shares) < total:
        shares[order[i % len(order)]] += 1
        i += 1
    while sum(shares) > total:
        j = max(range(len(shares)), key=lambda k: shares[k])
        shares[j] -= 1
    return shares


@dataclass
class Stage:
    """``epochs`` epochs over ``sources``, one loader each, ``steps_per_epoch`` steps per epoch."""

    epochs: int
    sources: list[_Source]
    loaders: list[StoreLoader]
    steps_per_epoch: int


def build_stages(cfg: PretrainConfig, dist_info: distributed.DistInfo) -> list[Stage]:
    """The run's stages (``stages``, or one of ``optim.epochs`` over ``data``): each source's
    store and samples, its rows of this rank's batch, and its loader."""
    d = cfg.data
    if cfg.optim.batch_size % dist_info.world_size:
        raise PretrainError(
            f"optim.batch_size={cfg.optim.batch_size} is the global batch and must divide by "
            f"the {dist_info.world_size} ranks"
        )
    per_rank = cfg.optim.batch_size // dist_info.world_size
    if cfg.stages:
        plans = [
            (st.epochs, [config_mod.SourceConfig(st.domain, st.store, st.fraction)])
            for st in cfg.stages
        ]
    else:
        plans = [(cfg.optim.epochs, d.sources())]
    pin = d.pin_memory if d.pin_memory is not None else dist_info.device.type == "cuda"
    stages = []
    for s_index, (epochs, srcs) in enumerate(plans):
        rows = _shares(per_rank, [s.weight for s in srcs])
        sources, loaders = [], []
        for k, (src, n) in enumerate(zip(srcs, rows, strict=True)):
            store = open_store(
                src.domain, src.store, progress=dist_info.main and cfg.train.progress
            )
            try:
                idx = store.select(
                    None if d.split == "all" else d.split, fraction=src.fraction, seed=d.split_seed
                )
            except ValueError as exc:
                raise PretrainError(f"data ({src.domain}, {store.path}): {exc}") from None
            if len(idx) == 0:
                raise PretrainError(
                    f"the {d.split} split of {store.path} at fraction {src.fraction} is empty"
                )
            global_rows = n * dist_info.world_size
            if len(idx) < global_rows:
                raise PretrainError(
                    f"batch of {global_rows} {src.domain} samples is larger than the "
                    f"{len(idx)} samples of {store.path} ({d.split} split, fraction "
                    f"{src.fraction}); lower optim.batch_size or use more data"
                )
            sources.append(_Source(src.domain, store, idx, n, src.fraction))
            loaders.append(
                StoreLoader(
                    store,
                    idx,
                    batch_size=n,
                    seed=cfg.seed * 1000 + s_index * 10 + k,
                    rank=dist_info.rank,
                    world_size=dist_info.world_size,
                    workers=d.workers,
                    pin_memory=pin,
                    prefetch=d.prefetch,
                )
            )
        spe = min(len(ld) for ld in loaders)
        stages.append(Stage(epochs, sources, loaders, spe))
    return stages
