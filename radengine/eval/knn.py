"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO).

Features are L2-normalised; each of a query's k nearest training samples by cosine
similarity votes with weight ``exp(sim / T)`` (T = 0.07). Multi-class: the class scores are
the summed votes per class, normalised to sum to one (so they rank like probabilities for
the AUC). Multi-label and binary: each label's score is the vote-weighted mean of the
neighbours' 0/1 labels. Several k share one top-k search (the largest k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_scores"]


@torch.no_grad()
def knn_scores(
    queries: Tensor,
    bank: Tensor,
    bank_targets: Tensor,
    ks: list[int],
    temperature: float = 0.07,
    *,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[int, Tensor]:
    """kNN scores of every query for every k.

    Args:
        queries: ``(Q, D)`` features (normalised here).
        bank: ``(N, D)`` training features (normalised here).
        bank_targets: ``(N,)`` int64 classes (multi-class), or ``(N, L)`` float 0/1 labels.
        ks: neighbour counts; each is capped at N.
        temperature: T of the vote weights.
        num_classes: C for multi-class targets (default: max + 1).
        chunk: queries per similarity block (memory ``chunk * N``).

    Returns:
        ``{k: (Q, C) scores}`` in float32, on the queries' device: class shares summing to
        one (multi-class) or per-label weighted means in [0, 1].
    """
    if bank.shape[0] == 0:
        raise ValueError("the kNN bank is empty")
    multiclass = bank_targets.ndim == 1
    if multiclass:
        c = num_classes if num_classes is not None else int(bank_targets.max()) + 1
    q = F.normalize(queries.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    targets = bank_targets.to(q.device)
    kmax = min(max(ks), b.shape[0])
    out: dict[int, list[Tensor]] = {k: [] for k in ks}
    for lo in range(0, q.shape[0], chunk):
        sim = q[lo : lo + chunk] @ b.T
        top, idx = sim.topk(kmax, dim=1)  # sorted, largest first
        # relative to the nearest neighbour: the same shares, and no overflow at small T
        w = ((top - top[:, :1]) / temperature).exp()
        for k in ks:
            kk = min(k, kmax)
            wk, ik = w[:, :kk], idx[:, :kk]
            if multiclass:
                votes = torch.zeros(wk.shape[0], c, device=q.device)
                votes.scatter_add_(1, targets[ik], wk)
                scores = votes / votes.sum(1, keepdim=True)
            else:
                scores = (wk.unsqueeze(2) * targets[ik].float()).sum(1) / wk.sum(1, keepdim=True)
            out[k].append(scores)
    return {k: torch.cat(v) for k, v in out.items()}
