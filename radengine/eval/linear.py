"""Linear evaluation: a grid of linear heads trained together on cached frozen features.

All G = len(lrs) x len(weight_decays) heads see the same mini-batches in the same order, so
the grid is one computation: the weights are one ``(D, G, C)`` tensor, each step is one
``(B, D) @ (D, G * C)`` GEMM forward and one ``(D, B) @ (B, G * C)`` GEMM for the weight
gradient, and the optimiser updates every head at once with its own learning rate and
weight decay (``(1, G, 1)`` broadcasts). Gradients are written out by hand (softmax
cross-entropy or sigmoid BCE have closed forms), so there is no autograd graph at all.

Each head follows exactly what training it alone would do (the tests check this against
``nn.Linear`` with ``torch.optim.SGD`` / ``AdamW`` / radengine's ``LARS`` and the same cosine
schedule): weight decay on the weights, not the biases (LARS: trust ratio on the weights
only, as ``param_groups`` does); the learning rate follows a per-step cosine from its value
to 0; weights start from N(0, 0.01^2) (the same draw for every head), biases from 0.
Features are standardised with the training set's mean and standard deviation first
(``normalize=True``; a BatchNorm without affine parameters, as MAE's linear probe).

The selected head is the one with the best validation metric at the last epoch (ties: the
first in grid order, lrs outer, weight decays inner); its test score is the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from radengine.eval import metrics
from radengine.threads import intra_op_threads

__all__ = [
    "GridResult",
    "grid_configs",
    "grid_metric",
    "grid_threads",
    "init_weights",
    "train_linear_grid",
]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LARS_ETA = 0.001
LARS_EPS = 1e-8
INIT_STD = 0.01
# Multiply-adds per thread in a step's (B, D) @ (D, G * C) GEMM below which a thread team
# costs more than it saves. With passive waiting, waking a thread costs tens of microseconds
# (a futex wake, an IPI on a VM); 2^24 multiply-adds are ~0.3-0.6 ms of one core, so the
# wake stays under ~10%. Measured on a 2-core Xeon VM: 256 x 512 x 120 (15.7M) ran in
# 0.13 s on 1 thread vs 0.19 s on 2; 256 x 2048 x 120 (63M) in 0.28 s on 2 vs 0.40 s on 1.
MIN_MACS_PER_THREAD = 1 << 24


def grid_threads(batch: int, d: int, outputs: int, available: int | None = None) -> int:
    """Intra-op threads for a grid step: one per :data:`MIN_MACS_PER_THREAD` multiply-adds
    of its ``(batch, d) @ (d, outputs)`` GEMM, at least 1, at most ``available`` (default
    ``torch.get_num_threads()``)."""
    available = torch.get_num_threads() if available is None else available
    return max(1, min(available, batch * d * outputs // MIN_MACS_PER_THREAD))


def grid_configs(lrs: list[float], weight_decays: list[float]) -> list[tuple[float, float]]:
    """The heads' (lr, weight decay) in grid order: lrs outer, weight decays inner."""
    return [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]


def init_weights(g: int, d: int, c: int, seed: int) -> Tensor:
    """``(G, D, C)`` initial weights: one N(0, 0.01^2) draw, shared by every head."""
    gen = torch.Generator().manual_seed(seed)
    one = torch.randn(d, c, generator=gen) * INIT_STD
    return one.unsqueeze(0).expand(g, d, c).clone()


def cosine_factor(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    gen = torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**62)
    return torch.randperm(n, generator=gen)


@torch.no_grad()
def grid_metric(kind: str, logits: Tensor, target: Tensor) -> Tensor:
    """The primary metric of every head: ``logits (N, G, C)`` -> ``(G,)`` float64.

    Multi-class: accuracy; multi-label: mean AUC over the labels; binary: AUC."""
    if kind == "multiclass":
        return (logits.argmax(-1) == target.unsqueeze(1)).double().mean(0)
    out = []
    for g in range(logits.shape[1]):
        auc = metrics.multilabel_auc(logits[:, g].float(), target)
        out.append(auc.mean)
    return torch.stack(out)


@dataclass
class GridResult:
    """Trained heads and how they did.

    Attributes:
        configs: (lr, weight decay) per head, grid order.
        weight: ``(G, D, C)``; bias ``(G, C)``; applied to standardised features.
        mean, std: ``(D,)`` the standardisation (0 and 1 when ``normalize=False``).
        val_metric: ``(G,)`` validation metric at the last epoch (NaN without val data).
        best: index of the selected head.
        history: per validated epoch: epoch, mean train loss per head, val metric per head.
    """

    configs: list[tuple[float, float]]
    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    val_metric: Tensor
    best: int
    history: list[dict] = field(default_factory=list)

    def logits(self, x: Tensor, head: int | None = None) -> Tensor:
        """``(N, C)`` logits of ``head`` (default: the best) on raw features ``x (N, D)``."""
        h = self.best if head is None else head
        z = (x.to(self.weight.device).float() - self.mean) / self.std
        return z @ self.weight[h] + self.bias[h]


def _loss_and_grad(kind: str, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-head mean loss ``(G,)`` and dL/dlogits ``(B, G, C)`` of each head's mean loss."""
    b, g, c = logits.shape
    if kind == "multiclass":
        logp = logits.log_softmax(-1)
        idx = y.view(b, 1, 1).expand(b, g, 1)
        loss = -logp.gather(2, idx).squeeze(2).mean(0)
        # exp(-60) ~ 1e-26 instead of a subnormal: subnormal floats are ~10x slower on
        # x86 CPUs, and the difference in the gradient is far below float32 resolution.
        d = logp.clamp_min(-60.0).exp()
        d.scatter_add_(2, idx, torch.full((b, g, 1), -1.0, device=d.device, dtype=d.dtype))
        return loss, d / b
    t = y.unsqueeze(1).expand(b, g, c)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(
        (0, 2)
    )
    return loss, (torch.sigmoid(logits.clamp(-60.0, 60.0)) - t) / (b * c)


@torch.no_grad()
def train_linear_grid(
    train_x: Tensor,
    train_y: Tensor,
    *,
    kind: str,
    num_outputs: int,
    lrs: list[float],
    weight_decays: list[float],
    optimizer: str = "sgd",
    momentum: float = 0.9,
    epochs: int = 100,
    batch_size: int = 256,
    seed: int = 0,
    normalize: bool = True,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    eval_every: int = 10,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> GridResult:
    """Train every (lr, weight decay) head of the grid together (see the module docstring).

    Args:
        train_x: ``(N, D)`` features (float, on the device to train on).
        train_y: ``(N,)`` int64 classes (multi-class) or ``(N, C)`` float 0/1 labels.
        kind: "multiclass", "multilabel" or "binary".
        num_outputs: C.
        lrs, weight_decays: the grid.
        optimizer: "sgd" (momentum), "adamw" or "lars".
        momentum: SGD/LARS momentum.
        epochs: passes over the training set.
        batch_size: samples per step (the last batch of an epoch may be smaller).
        seed: initial weights and batch order.
        normalize: standardise features with the training mean and std.
        val_x, val_y: validation data for the per-head metric and the selection.
        eval_every: epochs between validation passes (the last epoch always).
        on_epoch: called after each validated epoch with (epoch, record).

    Returns:
        A :class:`GridResult`.
    """
    if optimizer not in ("sgd", "adamw", "lars"):
        raise ValueError(f"optimizer must be sgd, adamw or lars, got {optimizer!r}")
    if kind not in ("multiclass", "multilabel", "binary"):
        raise ValueError(f"kind must be multiclass, multilabel or binary, got {kind!r}")
    device = train_x.device
    x = train_x.float()
    n, d = x.shape
    if n == 0:
        raise ValueError("no training samples")
    c = num_outputs
    configs = grid_configs(lrs, weight_decays)
    g = len(configs)
    if normalize:
        mean = x.mean(0)
        std = x.std(0, unbiased=False).clamp_min(1e-6) if n > 1 else torch.ones(d, device=device)
    else:
        mean, std = torch.zeros(d, device=device), torch.ones(d, device=device)
    # Batches are standardised as they are gathered: no second copy of the features.
    y = train_y.to(device)
    if kind != "multiclass":
        y = y.float()
    vx = ((val_x.to(device).float() - mean) / std) if val_x is not None else None
    vy = val_y.to(device) if val_y is not None else None

    lr0 = torch.tensor([lr for lr, _ in configs], device=device)
    wd = torch.tensor([w for _, w in configs], device=device)
    w = init_weights(g, d, c, seed).to(device).permute(1, 0, 2).contiguous()  # (D, G, C)
    b = torch.zeros(g, c, device=device)
    state: dict[str, Tensor] = {}
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    history: list[dict] = []
    val_metric = torch.full((g,), float("nan"), dtype=torch.float64)
    # Each step is a few small GEMMs and element-wise ops, each one parallel region: with
    # OpenMP's passive wait (radengine.threads) every region wakes its team, which only pays
    # off when each thread gets enough multiply-adds (see grid_threads).
    threads = grid_threads(min(batch_size, n), d, g * c) if device.type == "cpu" else 0
    with intra_op_threads(threads):
        for epoch in range(epochs):
            perm = epoch_permutation(n, seed, epoch).to(device)
            loss_sum = torch.zeros(g, device=device)
            for lo in range(0, n, batch_size):
                idx = perm[lo : lo + batch_size]
                xb = (x[idx] - mean) / std if normalize else x[idx]
                logits = (xb @ w.view(d, g * c)).view(-1, g, c) + b
                loss, dl = _loss_and_grad(kind, logits, y[idx])
                loss_sum += loss * len(idx)
                gw = (xb.T @ dl.reshape(len(idx), g * c)).view(d, g, c)
                gb = dl.sum(0)
                lr = lr0 * cosine_factor(step, total)
                _update(optimizer, w, b, gw, gb, lr, wd, momentum, state, step + 1)
                step += 1
            last = epoch == epochs - 1
            if (epoch + 1) % eval_every == 0 or last:
                record: dict = {"epoch": epoch + 1, "train_loss": (loss_sum / n).cpu()}
                if vx is not None and vy is not None:
                    vlogits = (vx @ w.view(d, g * c)).view(-1, g, c) + b
                    val_metric = grid_metric(kind, vlogits, vy).cpu()
                    record["val_metric"] = val_metric
                history.append(record)
                if on_epoch is not None:
                    on_epoch(epoch + 1, record)
    finite = torch.nan_to_num(val_metric, nan=-math.inf)
    best = int(torch.argmax(finite)) if torch.isfinite(finite).any() else 0
    return GridResult(
        configs=configs,
        weight=w.permute(1, 0, 2).contiguous(),
        bias=b,
        mean=mean,
        std=std,
        val_metric=val_metric,
        best=best,
        history=history,
    )


def _update(
    optimizer: str,
    w: Tensor,
    b: Tensor,
    gw: Tensor,
    gb: Tensor,
    lr: Tensor,
    wd: Tensor,
    momentum: float,
    state: dict[str, Tensor],
    t: int,
) -> None:
    """One optimiser step of every head in place: ``w (D, G, C)``, ``b (G, C)``; ``lr`` and
    ``wd`` are ``(G,)``; weight decay (and LARS' trust ratio) on ``w`` only."""
    lr_w, wd_w = lr.view(1, -1, 1), wd.view(1, -1, 1)
    lr_b = lr.view(-1, 1)
    if optimizer == "sgd":  # torch.optim.SGD: d = g + wd w; buf = m buf + d; w -= lr buf
        dw = gw + wd_w * w
        _momentum(state, "w", dw, momentum)
        _momentum(state, "b", gb, momentum)
        w.sub_(lr_w * state["w"])
        b.sub_(lr_b * state["b"])
    elif optimizer == "lars":  # radengine.engine.optim.LARS, per head
        w_norm = w.norm(dim=(0, 2)).view(1, -1, 1)
        g_norm = gw.norm(dim=(0, 2)).view(1, -1, 1)
        ratio = LARS_ETA * w_norm / (g_norm + wd_w * w_norm + LARS_EPS)
        trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
        _momentum(state, "w", trust * (gw + wd_w * w), momentum)
        _momentum(state, "b", gb, momentum)
        w.sub_(lr_w * state["w"])
        b.sub_(lr_b * state["b"])
    else:  # torch.optim.AdamW (decoupled weight decay, bias-corrected moments)
        w.mul_(1 - lr_w * wd_w)
        b1, b2 = ADAM_BETAS
        c1, c2 = 1 - b1**t, math.sqrt(1 - b2**t)
        for name, p, grad, lr_p in (("w", w, gw, lr_w), ("b", b, gb, lr_b)):
            m = state.setdefault(f"m_{name}", torch.zeros_like(p))
            v = state.setdefault(f"v_{name}", torch.zeros_like(p))
            m.lerp_(grad, 1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            p.sub_((lr_p / c1) * m / (v.sqrt() / c2 + ADAM_EPS))


def _momentum(state: dict[str, Tensor], name: str, d: Tensor, momentum: float) -> None:
    buf = state.get(name)
    if buf is None:
        state[name] = d.clone()
    else:
        buf.mul_(momentum).add_(d)
