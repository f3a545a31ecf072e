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
from typing import Any, ClassVar

from torch import Tensor, nn

from radengine.ssl.base import QUICK_MOMENTUM, MomentumMethod, MomentumOptions, check_views
from radengine.ssl.losses import moco_v3_loss

__all__ = ["MoCoV3"]


@dataclasses.dataclass
class MoCoV3Options(MomentumOptions):
    """``ssl.*`` keys of MoCo v3: momentum 0.99 -> 1, predictor width 4096, the asymmetric
    views, and a ViT's patch embedding frozen at its random init."""

    momentum: float = 0.99
    freeze_patch_embed: bool = True  # ViT backbones only


class MoCoV3(MomentumMethod):
    """Backbone + projector + predictor, and the momentum backbone + projector."""

    name = "mocov3"
    summary = "MoCo v3: symmetrised InfoNCE against a momentum encoder's in-batch keys"
    Options = MoCoV3Options
    LAST_BN = True
    TEACHER = "momentum_encoder"
    # + the ViT temperature (solo-learn's for ResNet-18 too): T 1.0 is too soft a contrast
    # for a batch of 128 in 63 steps
    QUICK: ClassVar[dict[str, Any]] = {**QUICK_MOMENTUM, "loss": {"temperature": 0.2}}

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

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        super().__init__(backbone, cfg)
        if self.opts.freeze_patch_embed and hasattr(backbone, "patch_embed"):
            for p in backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.temperature = cfg.loss.temperature

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () ctr(q1, k2) + ctr(q2, k1), each the mean over this
        rank's queries against the keys of every rank (one forward pass per view)."""
        check_views(views, 2, "MoCo v3")
        q, k = self.predictions_and_targets(views)
        t = self.temperature
        return moco_v3_loss(q[0], k[1], t) + moco_v3_loss(q[1], k[0], t)
