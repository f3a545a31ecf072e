"""MoCo v3 (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised
Vision Transformers"): query encoder + projector + predictor against a momentum encoder,
symmetrised InfoNCE over the keys of the whole global batch; no queue.

Recipe (paper, section 3 and appendix; the authors' code): projector MLP with hidden 4096
and output 256, BN on the hidden layers and a BN without affine parameters on the output
(2 Linear layers for ResNets, 3 for ViTs); predictor 256 -> 4096 -> 256; loss
``ctr(q1, k2) + ctr(q2, k1)``, ``ctr = 2 T CE`` (:func:`radengine.ssl.losses.moco_v3_loss`),
T = 1.0 for ResNets and 0.2 for ViTs; momentum ``m`` from 0.99 rising to 1 on a half
cosine; BYOL's asymmetric views; ResNet: LARS, lr 0.6 batch/256 (100 epochs; 0.3 at 300),
weight decay 1e-6; ViT: AdamW, lr 1.5e-4 batch/256, weight decay 0.1, and the patch
embedding frozen at its random init (``ssl.freeze_patch_embed``: the paper's fix for
training instability). The EMA is applied after each optimizer step with that step's
momentum (the paper applies it before the next forward pass with the next step's: a
difference of one step in a schedule that moves by ~1e-6 per step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

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
from radengine.ssl.losses import moco_v3_loss

__all__ = ["MoCoV3"]


@dataclasses.dataclass
class MoCoV3Options:
    """``ssl.*`` keys of MoCo v3."""

    momentum: float = 0.99
    momentum_end: float = 1.0
    pred_hidden: int = 4096
    freeze_patch_embed: bool = True  # ViT backbones only
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


class MoCoV3(Method):
    """Backbone + projector + predictor, and the momentum backbone + projector."""

    name = "mocov3"
    summary = "MoCo v3: symmetrised InfoNCE against a momentum encoder's in-batch keys"
    Options = MoCoV3Options

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's ResNet recipe, or its ViT recipe for ``vit*`` backbones."""
        vit = str(data.get("model", {}).get("arch", "")).startswith("vit")
        model = {"proj_dim": 256, "proj_hidden": 4096, "proj_layers": 3 if vit else 2,
                 "proj_bn": True}  # fmt: skip
        if vit:
            optim = {"name": "adamw", "lr_scaling": "linear", "lr_base": 1.5e-4,
                     "weight_decay": 0.1}  # fmt: skip
        else:
            optim = {"name": "lars", "lr_scaling": "linear", "lr_base": 0.6,
                     "weight_decay": 1e-6}  # fmt: skip
        return {**super().recipe(data), "model": model, "optim": optim,
                "loss": {"temperature": 0.2 if vit else 1.0}}  # fmt: skip

    def __init__(self, backbone: nn.Module, opts: MoCoV3Options, proj_dim: int,
                 proj_hidden: int, proj_layers: int, proj_bn: bool,
                 temperature: float) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts
        self.temperature = temperature
        self.backbone = backbone
        if opts.freeze_patch_embed and hasattr(backbone, "patch_embed"):
            for p in backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.projector = ProjectionHead(
            backbone.feature_dim, proj_hidden, proj_dim, num_layers=proj_layers, bn=proj_bn,
            last_bn=proj_bn,
        )  # fmt: skip
        self.predictor = PredictionHead(proj_dim, opts.pred_hidden, proj_dim, bn=proj_bn)
        self.momentum_encoder = frozen_copy(nn.ModuleDict({"backbone": backbone,
                                                           "projector": self.projector}))  # fmt: skip
        self.momentum = opts.momentum

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> MoCoV3:
        m = cfg.model
        return cls(backbone, MoCoV3Options(**cfg.ssl), m.proj_dim, m.proj_hidden, m.proj_layers,
                   m.proj_bn, cfg.loss.temperature)  # fmt: skip

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.momentum = cosine_schedule(self.opts.momentum, self.opts.momentum_end, step,
                                        total_steps)  # fmt: skip

    def after_update(self) -> None:
        ema_update(self.momentum_encoder, [self.backbone, self.projector], self.momentum)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () ctr(q1, k2) + ctr(q2, k1), each the mean over this
        rank's queries against the keys of every rank (one forward pass per view)."""
        check_views(views, 2, "MoCo v3")
        q = [self.predictor(self.projector(self.backbone.forward_features(v))) for v in views]
        with torch.no_grad():
            e = self.momentum_encoder
            k = [e["projector"](e["backbone"].forward_features(v)) for v in views]
        t = self.temperature
        return moco_v3_loss(q[0], k[1], t) + moco_v3_loss(q[1], k[0], t)
