"""The batched linear-head grid: it learns, and every head equals that head trained alone
with torch's optimisers (or radengine's LARS) on the same batches; plus the kNN scores."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from radengine.engine.monitor import weighted_knn
from radengine.engine.optim import LARS
from radengine.eval.knn import knn_scores
from radengine.eval.linear import (
    cosine_factor,
    epoch_permutation,
    grid_configs,
    init_weights,
    train_linear_grid,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _separable(gen, n=300, d=24, c=4):
    centers = torch.randn(c, d, generator=gen) * 4
    y = torch.randint(c, (n,), generator=gen)
    x = centers[y] + torch.randn(n, d, generator=gen)
    return x, y


def test_linear_probe_is_near_perfect_on_separable_features(gen):
    x_all, y_all = _separable(gen, n=420)
    x, y, vx, vy = x_all[:300], y_all[:300], x_all[300:], y_all[300:]
    res = train_linear_grid(
        x, y, kind="multiclass", num_outputs=4, lrs=[1e-6, 0.1], weight_decays=[0.0, 1e-4],
        epochs=20, batch_size=64, seed=1, val_x=vx, val_y=vy,
    )  # fmt: skip
    acc = (res.logits(vx).argmax(1) == vy).float().mean().item()
    assert acc >= 0.98
    # the selection takes the best validation metric (the first in grid order on ties)
    assert res.val_metric[res.best] == res.val_metric.max()
    assert res.best == int((res.val_metric == res.val_metric.max()).nonzero()[0])
    # a learning rate of 1e-6 leaves the random initial head almost untouched: worse
    assert res.val_metric[0] < res.val_metric[res.best]


def _train_one(kind, x, y, c, lr, wd, optimizer, epochs, batch, seed, g_index, g_total):
    """One head as a user would train it alone: nn.Linear + a torch optimiser + cosine."""
    d = x.shape[1]
    head = nn.Linear(d, c)
    with torch.no_grad():
        head.weight.copy_(init_weights(g_total, d, c, seed)[g_index].T)
        head.bias.zero_()
    groups = [
        {"params": [head.weight], "weight_decay": wd, "lars": True},
        {"params": [head.bias], "weight_decay": 0.0, "lars": False},
    ]
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        opt = LARS(groups, lr=lr, momentum=0.9)
    n = x.shape[0]
    spe = math.ceil(n / batch)
    total = epochs * spe
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, total))
    loss_fn = nn.CrossEntropyLoss() if kind == "multiclass" else nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        perm = epoch_permutation(n, seed, epoch)
        for lo in range(0, n, batch):
            idx = perm[lo : lo + batch]
            opt.zero_grad()
            loss_fn(head(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return head


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "lars"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_grid_equals_each_head_trained_alone(gen, optimizer, kind):
    n, d, c = 70, 9, 3  # 70 = 2 full batches of 32 + 6: the short last batch is covered
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).float()
    if kind == "multiclass":
        y = torch.randint(c, (n,), generator=gen)
    else:
        y = (torch.rand(n, c, generator=gen) < 0.4).float()
    lrs = [0.5, 0.05] if optimizer == "lars" else [0.1, 0.01]
    wds = [0.0, 1e-2]
    res = train_linear_grid(
        x, y, kind=kind, num_outputs=c, lrs=lrs, weight_decays=wds, optimizer=optimizer,
        epochs=3, batch_size=32, seed=5, normalize=False,
    )  # fmt: skip
    configs = grid_configs(lrs, wds)
    assert len(configs) == 4
    for i, (lr, wd) in enumerate(configs):
        head = _train_one(kind, x, y, c, lr, wd, optimizer, 3, 32, 5, i, len(configs))
        torch.testing.assert_close(res.weight[i], head.weight.detach().T, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.bias[i], head.bias.detach(), rtol=1e-4, atol=1e-6)
    # and the heads really differ (the grid is not one head copied)
    assert not torch.allclose(res.weight[0], res.weight[3])


def test_knn_scores_agree_with_the_pretraining_monitor(gen):
    bank = torch.randn(50, 8, generator=gen)
    labels = torch.randint(3, (50,), generator=gen)
    queries = torch.randn(17, 8, generator=gen)
    scores = knn_scores(queries, bank, labels, [5, 20, 500], 0.07, num_classes=3, chunk=4)
    nb, nq = nn.functional.normalize(bank, dim=1), nn.functional.normalize(queries, dim=1)
    for k in (5, 20):
        assert torch.equal(scores[k].argmax(1), weighted_knn(nq, nb, labels, k, 0.07))
        torch.testing.assert_close(scores[k].sum(1), torch.ones(17))
    assert torch.equal(scores[500].argmax(1), weighted_knn(nq, nb, labels, 50, 0.07))
    # multi-label: the vote-weighted mean of the neighbours' labels, in [0, 1]
    multi = (torch.rand(50, 2, generator=gen) < 0.5).float()
    s = knn_scores(queries, bank, multi, [1], 0.07)[1]
    nearest = (nq @ nb.T).argmax(1)
    torch.testing.assert_close(s, multi[nearest])
