"""BYOL (Grill et al., NeurIPS 2020): an online network predicts a slowly moving average of
itself (the target) on another view of the same image; no negatives.

Recipe (paper, section 3.3 and appendix C): projector Linear(width, 4096)-BN-ReLU-Linear(256),
predictor of the same shape (256 -> 4096 -> 256); target = EMA of the online backbone and
projector with momentum ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` rising from
``tau_base = 0.996`` to 1 over the K steps of the run; loss ``2 - 2 cos(q, z')`` summed over
both orderings of the views (eq. 2, symmetrised); asymmetric views (blur 1.0 / 0.1,
solarize 0 / 0.2); LARS, lr 0.2 batch/256, weight decay 1.5e-6 without biases and norms.
No cross-rank statistics: each rank's loss is the mean over its rows, DDP's average is the
global-batch gradient (BatchNorm per rank unless ``model.sync_bn``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from radengine.models import PredictionHead, ProjectionHead
from radengine.ssl.base import (
    ASYMMETRIC_VIEWS,
    Method,
    check_views,
    cosine_schedule,
    ema_update,
    frozen_copy,
)
from radengine.ssl.losses import byol_loss

__all__ = ["BYOL"]


@dataclasses.dataclass
class BYOLOptions:
    """``ssl.*`` keys of BYOL."""

    momentum: float = 0.996  # tau_base
    momentum_end: float = 1.0  # tau at the last step
    pred_hidden: int = 4096
    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in ASYMMETRIC_VIEWS]
    )

    def __post_init__(self) -> None:
        for key in ("momentum", "momentum_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"ssl.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.pred_hidden < 1:
            raise ValueError(f"ssl.pred_hidden must be >= 1, got {self.pred_hidden}")
        if len(self.view_augment) != 2:
            raise ValueError("ssl.view_augment must hold one mapping per view (2)")


class BYOL(Method):
    """Online backbone + projector + predictor, and their EMA target (no predictor)."""

    name = "byol"
    summary = "BYOL: predict an EMA target network's projection; no negatives"
    Options = BYOLOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 256, "proj_hidden": 4096, "proj_layers": 2, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2,
                  "weight_decay": 1.5e-6},
    }  # fmt: skip

    def __init__(self, backbone: nn.Module, opts: BYOLOptions, proj_dim: int, proj_hidden: int,
                 proj_layers: int, proj_bn: bool) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts
        self.backbone = backbone
        self.projector = ProjectionHead(
            backbone.feature_dim, proj_hidden, proj_dim, num_layers=proj_layers, bn=proj_bn
        )
        self.predictor = PredictionHead(proj_dim, opts.pred_hidden, proj_dim, bn=proj_bn)
        self.target = frozen_copy(
            nn.ModuleDict({"backbone": backbone, "projector": self.projector})
        )
        self.momentum = opts.momentum

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> BYOL:
        m = cfg.model
        return cls(backbone, BYOLOptions(**cfg.ssl), m.proj_dim, m.proj_hidden, m.proj_layers,
                   m.proj_bn)  # fmt: skip

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.momentum = cosine_schedule(self.opts.momentum, self.opts.momentum_end, step,
                                        total_steps)  # fmt: skip

    def after_update(self) -> None:
        ema_update(self.target, [self.backbone, self.projector], self.momentum)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () l(q1, z2') + l(q2, z1'), means over the n rows.

        Each view is its own forward pass (its own BatchNorm statistics), as in the paper's
        code."""
        check_views(views, 2, "BYOL")
        q = [self.predictor(self.projector(self.backbone.forward_features(v))) for v in views]
        with torch.no_grad():
            t = self.target
            z = [t["projector"](t["backbone"].forward_features(v)) for v in views]
        return byol_loss(q[0], z[1]) + byol_loss(q[1], z[0])
