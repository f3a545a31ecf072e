"""DINO (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision
Transformers"): self-distillation with no labels. A student matches the centred, sharpened
output distribution of its momentum teacher across views; multi-crop: the teacher sees the
two global crops, the student every crop.

Recipe (paper, section 3 and appendix; the authors' main_dino.py defaults): head MLP
width -> 2048 -> 2048 -> 256 (GELU, no BatchNorm), L2-normalised, then a weight-normalised
Linear(256, 65536) without bias whose norm is fixed to 1 (``ssl.norm_last_layer``) and whose
gradient is dropped in the first epoch (``ssl.freeze_last_layer``); student temperature 0.1
(``loss.temperature``); teacher temperature 0.04 (``ssl.teacher_temp``, optionally warmed up
linearly per epoch from ``ssl.warmup_teacher_temp``: ViT-S/16's 300-epoch recipe is
0.04 -> 0.07 over 30 epochs); center = EMA of the teacher's batch mean with momentum 0.9
over the global batch (all ranks); teacher = EMA of the student with momentum 0.996 rising
to 1 on a half cosine; 2 global crops (scale 0.4-1) with BYOL's asymmetric blur and
solarize, 8 local crops (scale 0.05-0.4, blur p 0.5) at 96/224 of the global size; AdamW,
lr 5e-4 batch/256, weight decay 0.04 -> 0.4 on a cosine (``optim.weight_decay_end``),
gradient clipping 3.0. What transfers is the TEACHER's backbone, as evaluated in the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radengine.ssl.base import (
    ASYMMETRIC_VIEWS,
    QUICK_LARS,
    Method,
    View,
    cosine_schedule,
    ema_update,
    frozen_copy,
    small_backbone,
)
from radengine.ssl.losses import all_reduce_sum, dino_loss, rank_and_world

__all__ = ["DINO", "DINOHead"]


@dataclasses.dataclass
class DINOOptions:
    """``ssl.*`` keys of DINO."""

    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    momentum: float = 0.996
    momentum_end: float = 1.0
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    freeze_last_layer: int = 1  # epochs
    global_crops_scale: list[float] = dataclasses.field(default_factory=lambda: [0.4, 1.0])
    local_crops_number: int = 8
    local_crops_scale: list[float] = dataclasses.field(default_factory=lambda: [0.05, 0.4])
    local_crops_size: int | None = None  # None: round(augment.size * 96 / 224)
    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in ASYMMETRIC_VIEWS]
    )
    local_augment: dict[str, Any] = dataclasses.field(default_factory=lambda: {"blur_p": 0.5})

    def __post_init__(self) -> None:
        for key in ("momentum", "momentum_end", "center_momentum"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"ssl.{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("teacher_temp", "warmup_teacher_temp"):
            if not getattr(self, key) > 0:
                raise ValueError(f"ssl.{key} must be > 0, got {getattr(self, key)}")
        for key in ("bottleneck_dim",):
            if getattr(self, key) < 1:
                raise ValueError(f"ssl.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_teacher_temp_epochs", "freeze_last_layer", "local_crops_number"):
            if getattr(self, key) < 0:
                raise ValueError(f"ssl.{key} must be >= 0, got {getattr(self, key)}")
        if self.local_crops_size is not None and self.local_crops_size < 8:
            raise ValueError("ssl.local_crops_size must be >= 8 pixels or null")
        for key in ("global_crops_scale", "local_crops_scale"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
                raise ValueError(f"ssl.{key} must be [min, max] within (0, 1], got {lo_hi}")
        if len(self.view_augment) != 2:
            raise ValueError("ssl.view_augment must hold one mapping per global view (2)")


class _NormedLinear(nn.Module):
    """Linear without bias whose weight rows are divided by their norms: weight
    normalisation with the gain fixed to 1 (``norm_last_layer``); with ``fixed_norm`` off,
    a plain learnable gain per row as well."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = None if fixed_norm else nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        w = F.normalize(self.weight, dim=1)
        return F.linear(x, w if self.gain is None else w * self.gain)


class DINOHead(nn.Module):
    """MLP (``layers`` Linear layers, GELU, optional BN) -> L2 norm -> normalised Linear.

    Args:
        in_dim: the backbone's feature width.
        out_dim: K, the number of prototypes (65536).
        hidden_dim: 2048.
        bottleneck_dim: 256.
        layers: Linear layers of the MLP (3).
        bn: BatchNorm1d after the hidden Linear layers (off in DINO).
        norm_last_layer: fix the last layer's weight norm to 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 layers: int = 3, bn: bool = False, norm_last_layer: bool = True) -> None:  # fmt: skip
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(layers, 1) - 1):
            mods.append(nn.Linear(dim, hidden_dim))
            if bn:
                mods.append(nn.BatchNorm1d(hidden_dim))
            mods.append(nn.GELU())
            dim = hidden_dim
        mods.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = _NormedLinear(bottleneck_dim, out_dim, norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim) logits."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINO(Method):
    """Student backbone + head, their EMA teacher, and the center (a buffer)."""

    name = "dino"
    summary = "DINO: self-distillation from a momentum teacher, multi-crop"
    Options = DINOOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 65536, "proj_hidden": 2048, "proj_layers": 3, "proj_bn": False},
        "loss": {"temperature": 0.1},
        "optim": {"name": "adamw", "lr_scaling": "linear", "lr_base": 0.0005,
                  "weight_decay": 0.04, "weight_decay_end": 0.4, "grad_clip": 3.0},
    }  # fmt: skip
    # the quick run: solo-learn's ResNet-18 optimizer (LARS, weight decay 1e-6) at SimCLR's
    # small-batch LARS step, a teacher horizon inside the run, 2 local crops, 2 epochs
    QUICK: ClassVar[dict[str, Any]] = {
        "optim": {**QUICK_LARS, "epochs": 2, "weight_decay": 1e-6, "weight_decay_end": None},
        "ssl": {"momentum": 0.99, "local_crops_number": 2},
    }

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's recipe; on ResNet-18/34 4096 prototypes (solo-learn's)."""
        out = super().recipe(data)
        if small_backbone(data):
            out["model"] = {**out["model"], "proj_dim": 4096}
        return out

    def __init__(self, backbone: nn.Module, opts: DINOOptions, proj_dim: int, proj_hidden: int,
                 proj_layers: int, proj_bn: bool, student_temp: float) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts
        self.student_temp = student_temp
        self.backbone = backbone
        self.head = DINOHead(backbone.feature_dim, proj_dim, proj_hidden, opts.bottleneck_dim,
                             proj_layers, proj_bn, opts.norm_last_layer)  # fmt: skip
        self.teacher = frozen_copy(nn.ModuleDict({"backbone": backbone, "head": self.head}))
        self.register_buffer("center", torch.zeros(1, proj_dim))
        self.register_buffer("teacher_temp", torch.tensor(float(opts.warmup_teacher_temp)))
        self.momentum = opts.momentum
        self._freeze_last = False

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> DINO:
        m = cfg.model
        return cls(backbone, DINOOptions(**cfg.ssl), m.proj_dim, m.proj_hidden, m.proj_layers,
                   m.proj_bn, cfg.loss.temperature)  # fmt: skip

    @property
    def encoder(self) -> nn.Module:
        """The teacher's backbone (the paper evaluates the teacher)."""
        return self.teacher["backbone"]

    def view_plan(self, size: int) -> list[View]:
        o = self.opts
        local = o.local_crops_size or max(8, round(size * 96 / 224))
        globals_ = [
            View(size, {"crop_scale": list(o.global_crops_scale), **a}) for a in o.view_augment
        ]
        locals_ = [
            View(local, {"crop_scale": list(o.local_crops_scale), **o.local_augment})
        ] * o.local_crops_number
        return globals_ + locals_

    def teacher_temperature(self, epoch: int) -> float:
        """The per-epoch schedule: linear from ``warmup_teacher_temp`` at epoch 0 to
        ``teacher_temp`` at epoch ``warmup_teacher_temp_epochs - 1`` (numpy's linspace, as
        the authors' code), then ``teacher_temp``."""
        o = self.opts
        n = o.warmup_teacher_temp_epochs
        if epoch >= n:
            return o.teacher_temp
        if n == 1:
            return o.warmup_teacher_temp
        return o.warmup_teacher_temp + (o.teacher_temp - o.warmup_teacher_temp) * epoch / (n - 1)

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        epoch = step // max(1, steps_per_epoch)
        self.teacher_temp.fill_(self.teacher_temperature(epoch))
        self.momentum = cosine_schedule(self.opts.momentum, self.opts.momentum_end, step,
                                        total_steps)  # fmt: skip
        self._freeze_last = epoch < self.opts.freeze_last_layer

    def before_update(self) -> None:
        if self._freeze_last:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def after_update(self) -> None:
        ema_update(self.teacher, [self.backbone, self.head], self.momentum)

    def _run(self, backbone: nn.Module, head: nn.Module, views: Sequence[Tensor]) -> list[Tensor]:
        """Head outputs of each view; views of one size go through the backbone together."""
        feats, start = [], 0
        while start < len(views):
            stop = start
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            feats.append(backbone.forward_features(torch.cat(list(views[start:stop]))))
            start = stop
        out = head(torch.cat(feats))
        return list(out.chunk(len(views)))

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """2 global then N local (n, C, h, w) views -> () this rank's loss; then the center
        moves toward the teacher's mean output over the global batch."""
        if len(views) < 2:
            raise ValueError(f"DINO takes 2 global views and any local ones, got {len(views)}")
        student = self._run(self.backbone, self.head, views)
        with torch.no_grad():
            teacher = self._run(self.teacher["backbone"], self.teacher["head"], views[:2])
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        self._update_center(torch.cat(teacher))
        return loss

    @torch.no_grad()
    def _update_center(self, teacher_out: Tensor) -> None:
        _, world = rank_and_world()
        batch_center = all_reduce_sum(teacher_out.float().sum(0, keepdim=True))
        batch_center = batch_center / (teacher_out.shape[0] * world)
        m = self.opts.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1 - m)
