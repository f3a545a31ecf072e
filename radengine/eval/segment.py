"""Segmentation: a U-Net decoder (radengine.models.unet) on the encoder's stage outputs,
trained with :func:`radengine.eval.finetune.fit` (encoder finetuned, or frozen with
``segment.freeze_encoder``), Dice per class on the test set.

Inputs and targets: the image through ``augment_views`` at the eval size (the ``"none"``
geometry, so pixels stay aligned; intensity augmentation only), the organ mask resized to
the same grid with nearest-neighbour sampling at pixel centres (the mapping
``augment_views`` uses), and one horizontal flip drawn per sample and applied to both.
Loss: cross-entropy, soft Dice over the foreground classes (smoothed by 1, so a class absent
from both prediction and target costs nothing), or their sum. Metrics:
:class:`~radengine.eval.metrics.SegmentationAccumulator` with the background excluded
(``dice_mean``, ``dice/<class>``, ``dice_global_mean``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radengine.eval.config import SegmentEvalConfig, augment_spec
from radengine.eval.features import ViewSpec
from radengine.eval.metrics import SegmentationAccumulator
from radengine.eval.scoring import segmentation_metrics
from radengine.eval.tasks import TaskData

__all__ = ["SegmentationProblem", "build_unet", "resize_masks", "soft_dice_loss"]


def resize_masks(masks: Tensor, size: int) -> Tensor:
    """``(B, H, W)`` integer masks -> ``(B, size, size)`` int64, nearest pixel centre."""
    m = masks.unsqueeze(1).float()
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest-exact")
    return m.squeeze(1).long()


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - mean over foreground classes of the batch soft Dice of softmax(logits).

    Args:
        logits: ``(B, C, H, W)``.
        target: ``(B, H, W)`` int64 in [0, C).
    """
    c = logits.shape[1]
    p = logits.float().softmax(1)
    t = F.one_hot(target, c).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1.0 - dice[1:].mean() if c > 1 else 1.0 - dice.mean()


class SegmentationProblem:
    arrays = ("image", "mask")

    def __init__(self, task: TaskData, view: ViewSpec, cfg: SegmentEvalConfig) -> None:
        self.task = task
        self.view = view
        self.cfg = cfg
        self.spec = augment_spec(cfg.augment)
        if self.spec.crop or self.spec.rotate_p > 0 or self.spec.hflip_p or self.spec.vflip_p:
            from radengine.eval.common import EvalError

            raise EvalError(
                "segment.augment must not move pixels (crop, flips, rotation): the mask would "
                "no longer match; use segment.hflip_p for flips"
            )
        self.num_classes = task.num_outputs

    def inputs(
        self, data: dict[str, Tensor], rows: np.ndarray, split: str, *, train: bool,
        seed: int, device: torch.device, dtype: torch.dtype, channels_last: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        x = data["image"].to(device, non_blocking=True)
        v = self.view.make(
            x, self.spec if train else "none", seed=seed, dtype=dtype, channels_last=channels_last
        )
        y = resize_masks(data["mask"].to(device), self.view.size)
        if int(y.max()) >= self.num_classes:
            from radengine.eval.common import EvalError

            raise EvalError(
                f"mask value {int(y.max())} is outside the {self.num_classes} mask classes"
            )
        if train and self.cfg.hflip_p > 0:
            gen = torch.Generator().manual_seed(seed)
            flip = (torch.rand(x.shape[0], generator=gen) < self.cfg.hflip_p).to(device)
            if bool(flip.any()):
                v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
                y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
        return v, y

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        kind = self.cfg.loss
        total = out.new_zeros((), dtype=torch.float32)
        if kind in ("ce", "ce+dice"):
            total = total + F.cross_entropy(out.float(), y)
        if kind in ("dice", "ce+dice"):
            total = total + soft_dice_loss(out, y)
        return total

    def new_scorer(self) -> _DiceCollector:
        return _DiceCollector(self.num_classes, self.task.names)


class _DiceCollector:
    def __init__(self, num_classes: int, names: list[str]) -> None:
        self.acc = SegmentationAccumulator(num_classes, include_background=False)
        self.names = names

    def update(self, out: Tensor, y: Tensor) -> None:
        self.acc.update(out.argmax(1), y)

    def compute(self) -> dict[str, float]:
        return segmentation_metrics(self.acc, self.names)


def build_unet(encoder: nn.Module, num_classes: int, cfg: SegmentEvalConfig) -> Any:
    from radengine.eval.common import EvalError
    from radengine.models.unet import UNet

    try:
        return UNet(
            encoder,
            num_classes,
            decoder_channels=tuple(cfg.decoder_channels),
            freeze_encoder=cfg.freeze_encoder,
        )
    except ValueError as exc:
        raise EvalError(f"segmentation: {exc}") from None
