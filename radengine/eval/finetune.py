"""Finetuning: the whole network trained on the task, validated every epoch, then tested.

One loop serves classification finetuning (an encoder + a linear head) and segmentation
(:mod:`radengine.eval.segment`): batches from the store's training rows (``StoreLoader``,
seeded, reshuffled per epoch), inputs made on the device by ``augment_views`` (the protocol's
light augmentation, a fresh draw per step), bf16 autocast where native, channels_last.

The recipes of the studies are configurations of it (``TrainLoopConfig``):

- study A, CT body region: LARS (lr 1e-2, wd 1e-4, batch 4096, 100 epochs, cosine);
- study A, medical tasks: AdamW (2e-4..1e-3, batch 128, 50 epochs), lr x 0.95-0.97 per
  epoch (``schedule: exponential``), the last epoch tested;
- study B: Adam 2e-4, batch 32, ``schedule: plateau`` (x0.5 after 5 epochs without
  improvement of the validation loss), early stopping after 10, the best validation
  checkpoint tested (``test_checkpoint: best``).

Which weights are tested is explicit: ``test_checkpoint`` = ``last`` (the weights after the
last epoch run) or ``best`` (the epoch with the best ``monitor``: validation loss, or the
task's primary validation metric); the result records which (e.g. ``best@7``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radengine.data.loader import StoreLoader
from radengine.eval.common import EvalError, autocast, sub_seed
from radengine.eval.config import TrainLoopConfig, augment_spec
from radengine.eval.features import ViewSpec, batches_ahead
from radengine.eval.scoring import classification_metrics
from radengine.eval.tasks import TaskData
from radengine.fmt import percent

__all__ = ["ClassificationProblem", "Classifier", "FitResult", "fit"]


class Classifier(nn.Module):
    """Encoder + linear head: ``(B, C_in, H, W) -> (B, num_outputs)`` logits."""

    def __init__(self, encoder: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder.forward_features(x))


class ClassificationProblem:
    """How the loop makes inputs, targets, losses and metrics for a classification task."""

    arrays = ("image",)

    def __init__(self, task: TaskData, view: ViewSpec, spec: Any) -> None:
        self.task = task
        self.view = view
        self.spec = spec
        self.kind = task.spec.kind

    def inputs(
        self, data: dict[str, Tensor], rows: np.ndarray, split: str, *, train: bool,
        seed: int, device: torch.device, dtype: torch.dtype, channels_last: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        x = data["image"].to(device, non_blocking=True)
        v = self.view.make(
            x, self.spec if train else "none", seed=seed, dtype=dtype, channels_last=channels_last
        )
        y = torch.from_numpy(self.task.lookup(split, rows)).to(device)
        return v, y

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.kind == "multiclass":
            return F.cross_entropy(out.float(), y)
        return F.binary_cross_entropy_with_logits(out.float(), y.float())

    def new_scorer(self) -> _ScoreCollector:
        return _ScoreCollector(self.kind, self.task.names)


class _ScoreCollector:
    def __init__(self, kind: str, names: list[str]) -> None:
        self.kind, self.names = kind, names
        self.scores: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, out: Tensor, y: Tensor) -> None:
        self.scores.append(out.detach().float().cpu())
        self.targets.append(y.detach().cpu())

    def compute(self) -> dict[str, float]:
        return classification_metrics(
            self.kind, torch.cat(self.scores), torch.cat(self.targets), self.names
        )


@dataclass
class FitResult:
    """What :func:`fit` did and measured.

    Attributes:
        test: test metrics of the tested weights (names as radengine.eval.scoring).
        val: validation metrics of the tested weights.
        tested: "last@<epoch>" or "best@<epoch>".
        epochs: epochs run (fewer than configured after early stopping / max_steps).
        stopped: why training ended early, or None.
        history: per epoch: train loss, lr, val loss, val primary metric.
        seconds: wall time of training and testing.
    """

    test: dict[str, float]
    val: dict[str, float]
    tested: str
    epochs: int
    stopped: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def build_optimizer(loop: TrainLoopConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The loop's optimiser; biases and norm layers without weight decay (and without
    LARS' trust ratio), frozen parameters left out."""
    from radengine.engine.optim import LARS, param_groups

    groups = param_groups(model, loop.weight_decay, exclude_bias_and_norm=True)
    if not groups:
        raise EvalError("nothing to train: every parameter is frozen")
    if loop.optimizer == "lars":
        return LARS(groups, lr=loop.lr, momentum=loop.momentum)
    if loop.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=loop.lr, momentum=loop.momentum)
    if loop.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=loop.lr)
    return torch.optim.Adam(groups, lr=loop.lr)


def _step_schedule(
    loop: TrainLoopConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step schedule (warmup, then cosine / exponential per epoch / constant); None
    for plateau, which is stepped per epoch on the monitor."""
    if loop.schedule == "plateau":
        return None
    total = loop.epochs * steps_per_epoch
    warmup = min(total, round(loop.warmup_epochs * steps_per_epoch))
    if loop.schedule == "cosine":
        from radengine.engine.optim import WarmupCosine

        return WarmupCosine(opt, total, warmup)

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if loop.schedule == "exponential":
            return ramp * loop.gamma ** (step // steps_per_epoch)
        return ramp

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    problem: Any,
    rows: np.ndarray,
    split: str,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    batch_size: int,
) -> tuple[float, dict[str, float]]:
    """Mean loss and metrics of ``model`` (eval mode) on store ``rows`` of ``split``."""
    was = model.training
    model.eval()
    dtype = amp if amp is not None else torch.float32
    scorer = problem.new_scorer()
    total, count = 0.0, 0
    try:
        for idx, arrays in batches_ahead(problem.task.store, rows, batch_size, problem.arrays):
            data = {k: torch.from_numpy(v) for k, v in arrays.items()}
            x, y = problem.inputs(
                data, idx, split, train=False, seed=0, device=device, dtype=dtype,
                channels_last=channels_last,
            )  # fmt: skip
            with autocast(device, amp):
                out = model(x)
            total += float(problem.loss(out, y)) * len(idx)
            count += len(idx)
            scorer.update(out, y)
    finally:
        model.train(was)
    return total / max(count, 1), scorer.compute()


def fit(
    model: nn.Module,
    problem: Any,
    loop: TrainLoopConfig,
    *,
    seed: int,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    workers: int = 0,
    eval_batch_size: int = 256,
    log: Callable[[dict[str, float], int], None] | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool = False,
) -> FitResult:
    """Train ``model`` on the task's training rows, validate each epoch, test one checkpoint.

    Args:
        model: the network (moved to ``device`` here).
        problem: a :class:`ClassificationProblem` or a segmentation problem.
        loop: optimiser, schedule, epochs, batch, augmentation, early stopping, selection.
        seed: batch order, head initialisation (by the caller) and augmentation draws.
        device, amp, channels_last: how to compute.
        workers: loader processes.
        eval_batch_size: images per forward pass in validation and test.
        log: called with (metrics, epoch) after every epoch.
        echo: progress messages.
        progress: a progress bar per epoch.
    """
    t0 = time.perf_counter()
    task: TaskData = problem.task
    primary = task.spec.primary_metric
    train_rows = task.splits["train"]
    if len(train_rows) < 2:
        raise EvalError(
            f"finetuning needs at least 2 training samples; the label fraction leaves "
            f"{len(train_rows)}"
        )
    batch = min(loop.batch_size, len(train_rows))
    loader = StoreLoader(
        task.store,
        train_rows,
        batch_size=batch,
        seed=seed,
        rank=0,
        world_size=1,
        shuffle=True,
        drop_last=True,
        workers=workers,
        pin_memory=device.type == "cuda",
        arrays=problem.arrays,
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(loop, model)
    sched = _step_schedule(loop, opt, len(loader))
    plateau = None
    if loop.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min" if loop.monitor == "loss" else "max",
            factor=loop.plateau_factor,
            patience=loop.plateau_patience,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    dtype = amp if amp is not None else torch.float32
    sign = -1.0 if loop.monitor == "loss" else 1.0
    best_value, best_epoch, best_state = -math.inf, 0, None
    history: list[dict[str, float]] = []
    stopped: str | None = None
    step = 0
    epoch = 0
    ev = dict(device=device, amp=amp, channels_last=channels_last, batch_size=eval_batch_size)
    for epoch in range(1, loop.epochs + 1):
        model.train()
        losses = []
        bar = _bar(progress, len(loader), f"epoch {epoch}/{loop.epochs}")
        for data in loader.epoch(epoch - 1):
            rows = data["index"].numpy()
            x, y = problem.inputs(
                data, rows, "train", train=True, seed=sub_seed(seed, "augment", step),
                device=device, dtype=dtype, channels_last=channels_last,
            )  # fmt: skip
            with autocast(device, amp):
                out = model(x)
            loss = problem.loss(out, y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EvalError(
                    f"the training loss is {value} at epoch {epoch}, step {step}; lower the "
                    "learning rate"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            losses.append(value)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            if loop.max_steps is not None and step >= loop.max_steps:
                stopped = f"max_steps={loop.max_steps} reached"
                break
        if bar is not None:
            bar.close()
        val_loss, val = evaluate(model, problem, task.splits["val"], "val", **ev)
        record = {
            "train/loss": float(np.mean(losses)) if losses else math.nan,
            "train/lr": opt.param_groups[0]["lr"],
            "val/loss": val_loss,
            f"val/{primary}": val.get(primary, math.nan),
        }
        history.append(record)
        if log is not None:
            log(record, epoch)
        if echo is not None:
            echo(
                f"epoch {epoch}: train loss {record['train/loss']:.4f}, val loss {val_loss:.4f}, "
                f"val {primary} {percent(record[f'val/{primary}'])}"
            )
        monitored = val_loss if loop.monitor == "loss" else val.get(primary, math.nan)
        value = sign * monitored if math.isfinite(monitored) else -math.inf
        if value > best_value:
            best_value, best_epoch = value, epoch
            if loop.test_checkpoint == "best":
                best_state = copy.deepcopy(
                    {k: v.detach().cpu() for k, v in model.state_dict().items()}
                )
        if plateau is not None and math.isfinite(monitored):
            plateau.step(monitored)
        if stopped:
            break
        if loop.early_stopping and epoch - best_epoch >= loop.early_stopping:
            stopped = (
                f"early stopping: no better val {loop.monitor} for {loop.early_stopping} epochs"
            )
            break
    if loop.test_checkpoint == "best" and best_state is not None:
        model.load_state_dict(best_state)
        tested = f"best@{best_epoch}"
    else:
        tested = f"last@{epoch}"
    _, val = evaluate(model, problem, task.splits["val"], "val", **ev)
    _, test = evaluate(model, problem, task.splits["test"], "test", **ev)
    return FitResult(
        test=test,
        val=val,
        tested=tested,
        epochs=epoch,
        stopped=stopped,
        history=history,
        seconds=time.perf_counter() - t0,
    )


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def make_problem(task: TaskData, view: ViewSpec, loop: TrainLoopConfig) -> ClassificationProblem:
    return ClassificationProblem(task, view, augment_spec(loop.augment))
