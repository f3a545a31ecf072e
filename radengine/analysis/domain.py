"""Domain separability: how linearly an encoder's features tell CT slices from natural
images, layer by layer.

For every stage of the encoder (``forward_intermediates``: stem, layer1..layer4, each
average-pooled over space) and its pooled output, a logistic-regression probe (features
standardised with the training mean/std, L2 penalty, full-batch L-BFGS in float64) is
trained on one split of the samples of both domains and scored on a held-out split. The
split is by patient within each store (slices of one CT series never straddle it), seeded.
High accuracy everywhere says the domains are far apart in that encoder's feature space;
chance level (about the share of the larger domain) says they are mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from radengine.data.store import Store

__all__ = ["ProbeResult", "linear_probe", "patient_split"]


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of a linear probe on its training and held-out samples."""

    train_accuracy: float
    test_accuracy: float
    num_train: int
    num_test: int


def linear_probe(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> ProbeResult:
    """Multinomial logistic regression on ``x_train (n, d)``, integer labels ``y_train (n,)``,
    scored on ``(x_test, y_test)``.

    Features are standardised with the training mean and std (constant features get std 1);
    the loss is mean cross-entropy + ``weight_decay / 2 * ||W||^2``, minimised by L-BFGS
    (strong Wolfe line search) in float64 from zero weights, so the result is deterministic.

    Args:
        x_train: training features ``(n, d)``.
        y_train: labels ``(n,)`` in ``[0, K)``.
        x_test: held-out features ``(m, d)``.
        y_test: held-out labels ``(m,)``.
        weight_decay: L2 penalty on the weights (not the bias).
        max_iter: L-BFGS iterations.
    """
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"features must be (n, d) and (m, d), got {tuple(x_train.shape)} and "
            f"{tuple(x_test.shape)}"
        )
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError("one label per sample is needed")
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("the training and held-out sets must not be empty")
    xt, xs = x_train.double(), x_test.double()
    mean = xt.mean(0)
    std = xt.std(0, correction=0) if len(xt) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    xt, xs = (xt - mean) / std, (xs - mean) / std
    yt, ys = y_train.long(), y_test.long()
    k = int(max(int(yt.max()), int(ys.max()))) + 1
    w = torch.zeros(xt.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        train_acc = ((xt @ w + b).argmax(1) == yt).double().mean().item()
        test_acc = ((xs @ w + b).argmax(1) == ys).double().mean().item()
    return ProbeResult(train_acc, test_acc, len(xt), len(xs))


def patient_split(
    store: Store, rows: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (train, test) positions by patient, seeded: about
    ``test_fraction`` of the patients held out, at least one on each side (by sample when
    the rows come from a single patient)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    patients = store.index["patient"][rows] if "patient" in store.index else None
    positions = np.arange(len(rows))
    if patients is None or len(np.unique(patients)) < 2:
        perm = rng.permutation(positions)
        n_test = min(max(1, round(test_fraction * len(rows))), len(rows) - 1)
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    unique = np.unique(patients)
    perm = rng.permutation(len(unique))
    n_test = min(max(1, math.ceil(test_fraction * len(unique))), len(unique) - 1)
    held = set(unique[perm[:n_test]].tolist())
    is_test = np.array([p in held for p in patients.tolist()])
    return positions[~is_test], positions[is_test]
