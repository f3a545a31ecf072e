"""The kNN monitor: weighted kNN accuracy of held-out labels on the encoder's frozen
features, run during pretraining (``knn.*``)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from radengine.config import PretrainConfig
from radengine.data.store import Store

__all__ = ["KnnScore", "knn_monitor", "weighted_knn"]


class KnnScore(NamedTuple):
    """A kNN monitor pass: the accuracy (a fraction) on ``queries`` held-out samples."""

    accuracy: float
    queries: int


@torch.no_grad()
def knn_monitor(
    cfg: PretrainConfig,
    encoder: nn.Module,
    store: Store,
    domain: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    channels_last: bool = False,
) -> KnnScore | None:
    """Weighted kNN accuracy (k, T from cfg.knn) of held-out labels on frozen features.

    Bank: up to ``knn.bank`` labelled training samples; queries: up to ``knn.queries`` of
    ``knn.split``. Both are fixed subsets (seeded), so epochs compare like with like.
    ``channels_last``: the images in the encoder's memory format (as the trainer's views).
    None when the store has no labelled samples in one of the two splits."""
    from radengine.ops.augment import augment_views

    k = cfg.knn
    rng = np.random.default_rng(12345)

    def pick(split: str, n: int) -> np.ndarray:
        idx = store.select(split, seed=cfg.data.split_seed, labelled=True)
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, n, replace=False))
        return idx

    bank_idx, query_idx = pick("train", k.bank), pick(k.split, k.queries)
    if len(bank_idx) == 0 or len(query_idx) == 0:
        return None
    was_training = encoder.training
    encoder.eval()
    low = dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if low else contextlib.nullcontext()

    def features(idx: np.ndarray) -> Tensor:
        out = []
        for lo in range(0, len(idx), 256):
            x = torch.from_numpy(store.images(idx[lo : lo + 256])).to(device)
            (v,), _ = augment_views(
                x,
                "none",
                views=1,
                size=cfg.augment.size,
                intensity=cfg.augment.intensity,
                repeat=cfg.augment.repeat,
                mean=cfg.augment.mean,
                std=cfg.augment.std,
                dtype=dtype,
                channels_last=channels_last,
            )
            with autocast:
                f = encoder.forward_features(v).float()
            out.append(nn.functional.normalize(f, dim=1))
        return torch.cat(out)

    try:
        bank, queries = features(bank_idx), features(query_idx)
    finally:
        encoder.train(was_training)
    bank_labels = torch.from_numpy(store.index["label"][bank_idx].astype(np.int64)).to(device)
    query_labels = torch.from_numpy(store.index["label"][query_idx].astype(np.int64)).to(device)
    pred = weighted_knn(queries, bank, bank_labels, k.k, k.temperature)
    return KnnScore(float((pred == query_labels).float().mean()), len(query_idx))


def weighted_knn(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int, temperature: float
) -> Tensor:
    """Predicted labels: each of the k nearest (cosine) neighbours votes exp(sim / T).

    Args:
        queries: (Q, D) L2-normalised features.
        bank: (N, D) L2-normalised features.
        bank_labels: (N,) int64 labels in [0, C).
    Returns:
        (Q,) int64 predictions.
    """
    num_classes = int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    sim = queries @ bank.T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return votes.argmax(1)
