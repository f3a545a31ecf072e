"""Optimisers and learning-rate schedules for pretraining: LARS, warmup + cosine.

Study A (SimCLR): LARS with lr = 0.075 * sqrt(batch) (4.8 at batch 4096), momentum 0.9,
weight decay 1e-6 with biases and BN parameters excluded from both the weight decay and the
trust ratio, linear warmup then cosine annealing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["LARS", "WarmupCosine", "lr_at", "param_groups", "scaled_lr"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter w with gradient g in a group with ``lars=True`` (the default)::

        trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)    (1 if ||w|| or ||g|| is 0)
        d     = trust * (g + wd * w)

    and in a group with ``lars=False`` (biases and norm layers; see :func:`param_groups`)
    ``d = g``: neither the trust ratio nor weight decay, as SimCLR and BYOL exclude them.
    Then, as ``torch.optim.SGD`` (without dampening or Nesterov)::

        buf = momentum * buf + d       (buf = d at the first step)
        w   = w - lr * buf

    so a ``lars=False`` group steps exactly like ``SGD(momentum=momentum)``. The learning
    rate multiplies the momentum buffer (PyTorch's convention) rather than entering it (the
    paper's); the two agree for a constant lr. Norms are per parameter tensor (per layer),
    computed in fp32 at least, without host synchronisation.

    Args:
        params: parameters or parameter groups; a group may set ``lr``, ``momentum``,
            ``weight_decay``, ``trust_coefficient``, ``eps`` and ``lars``.
        lr: learning rate (study A: :func:`scaled_lr`, 4.8 at batch 4096).
        momentum: in [0, 1).
        weight_decay: >= 0, applied only where ``lars`` is True.
        trust_coefficient: eta > 0 (0.001 as in the LARS paper and SimCLR).
        eps: > 0, guards the trust ratio's denominator.

    Raises:
        ValueError: an out-of-range hyperparameter, naming it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        _check_hyper(lr, momentum, weight_decay, trust_coefficient, eps)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars=True,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyper(
                group["lr"],
                group["momentum"],
                group["weight_decay"],
                group["trust_coefficient"],
                group["eps"],
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient.

        Args:
            closure: optional, re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            lars, wd = group["lars"], group["weight_decay"]
            eta, eps = group["trust_coefficient"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                d = _lars_direction(p, g, wd, eta, eps) if lars else g
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    buf.mul_(momentum).add_(d)
                p.add_(buf, alpha=-lr)
        return loss


def _lars_direction(p: Tensor, g: Tensor, wd: float, eta: float, eps: float) -> Tensor:
    """trust * (g + wd * p), the trust ratio as a 0-d tensor (no .item(), no host sync)."""
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    w_norm = torch.linalg.vector_norm(p, dtype=acc)
    g_norm = torch.linalg.vector_norm(g, dtype=acc)
    ratio = eta * w_norm / (g_norm + wd * w_norm + eps)
    trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
    d = g.add(p, alpha=wd) if wd != 0 else g.clone()
    return d.mul_(trust.to(d.dtype))


def _check_hyper(
    lr: float, momentum: float, weight_decay: float, trust_coefficient: float, eps: float
) -> None:
    if not (isinstance(lr, (int, float)) and lr >= 0):
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not trust_coefficient > 0:
        raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def param_groups(
    model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into LARS + weight-decay and excluded groups.

    Excluded (``weight_decay=0``, ``lars=False``): every parameter with at most one
    dimension, i.e. biases and the weights of BatchNorm/LayerNorm/GroupNorm, plus the names
    a model lists in ``no_weight_decay()`` (the timm convention, e.g. ViT position
    embeddings and class token). Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: the module whose ``named_parameters()`` to split.
        weight_decay: for the decayed group.
        exclude_bias_and_norm: False puts every parameter in the decayed LARS group.

    Returns:
        Non-empty groups, each ``{"name", "params", "weight_decay", "lars"}``, decayed first;
        pass them to :class:`LARS` (or any optimiser, which ignores ``lars``).
    """
    skip_names = set(getattr(model, "no_weight_decay", lambda: ())())
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim <= 1 or name in skip_names or name.rsplit(".", 1)[-1] in skip_names
        (no_decay if exclude_bias_and_norm and excluded else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay, "lars": True},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars": False},
    ]
    return [g for g in groups if g["params"]]


def lr_at(
    step: int, total_steps: int, base_lr: float, warmup_steps: int, final_lr: float = 0.0
) -> float:
    """Linear warmup from 0, then cosine annealing from ``base_lr`` to ``final_lr``.

    ::

        step < warmup:  base_lr * step / warmup_steps
        otherwise:      final + (base - final) * (1 + cos(pi * t)) / 2,
                        t = min(1, (step - warmup) / (total - warmup))

    So ``lr_at(warmup) == base_lr``, the midpoint of the cosine gives the mean of the two,
    and steps at or past ``total_steps`` give ``final_lr``.

    Args:
        step: 0-based optimiser step, >= 0.
        total_steps: >= 1, warmup included.
        base_lr: peak learning rate.
        warmup_steps: in [0, total_steps].
        final_lr: learning rate at the end.

    Raises:
        ValueError: naming the argument out of range.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine(LRScheduler):
    """Per-step warmup + cosine (:func:`lr_at`) on every group's initial lr.

    Each group's lr at step s is ``lr_at(s, total_steps, initial_lr, warmup_steps,
    final_fraction * initial_lr)`` in closed form, so resuming from ``state_dict`` continues
    exactly. Call ``step()`` once after each ``optimizer.step()``; on construction the
    optimiser gets the lr of step 0.

    Args:
        optimizer: the wrapped optimiser.
        total_steps: >= 1, warmup included.
        warmup_steps: in [0, total_steps].
        final_fraction: the final lr as a fraction of each group's initial lr (>= 0).
        last_epoch: the index of the last step taken (-1 for a fresh start), as in torch.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        final_fraction: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        lr_at(0, total_steps, 1.0, warmup_steps)  # validates
        if not final_fraction >= 0:
            raise ValueError(f"final_fraction must be >= 0, got {final_fraction}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_fraction = final_fraction
        super().__init__(optimizer, last_epoch)

    def _factor(self, step: int) -> float:
        return lr_at(max(step, 0), self.total_steps, 1.0, self.warmup_steps, self.final_fraction)

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def scaled_lr(batch: int, rule: str = "sqrt", base: float | None = None) -> float:
    """The learning rate for a batch size by SimCLR's scaling rules.

    ``"sqrt"``: ``base * sqrt(batch)``, base 0.075 by default (study A: 4.8 at 4096; the
    SimCLR paper's choice for LARS at small batches and long training). ``"linear"``:
    ``base * batch / 256``, base 0.3 by default (SimCLR's other rule, also 4.8 at 4096).

    Raises:
        ValueError: batch < 1 or an unknown rule.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if rule == "sqrt":
        return (0.075 if base is None else base) * math.sqrt(batch)
    if rule == "linear":
        return (0.3 if base is None else base) * batch / 256
    raise ValueError(f"rule must be 'sqrt' or 'linear', got {rule!r}")
