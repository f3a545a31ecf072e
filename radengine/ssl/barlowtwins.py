"""Barlow Twins (Zbontar et al., ICML 2021): make the cross-correlation matrix of the two
views' embeddings, standardised over the batch, close to the identity.

Recipe (paper, section 2 and appendix; the authors' code): projector of 3 Linear layers of
8192 (BN + ReLU between them), loss ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``
with lambda 0.0051 (``ssl.lambd``) over the GLOBAL batch (the standardisation is a
SyncBatchNorm without affine parameters and C is all-reduced: here
:func:`radengine.ssl.losses.barlow_twins_loss`); BYOL's asymmetric views; LARS, lr 0.2 for
weights and 0.0048 for biases and norms at batch 2048, weight decay 1.5e-6. (radengine uses
one lr for every group.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from radengine.models import ProjectionHead
from radengine.ssl.base import ASYMMETRIC_VIEWS, Method, check_views, small_backbone
from radengine.ssl.losses import barlow_twins_loss

__all__ = ["BarlowTwins"]


@dataclasses.dataclass
class BarlowTwinsOptions:
    """``ssl.*`` keys of Barlow Twins."""

    lambd: float = 0.0051
    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in ASYMMETRIC_VIEWS]
    )

    def __post_init__(self) -> None:
        if self.lambd < 0:
            raise ValueError(f"ssl.lambd must be >= 0, got {self.lambd}")
        if len(self.view_augment) != 2:
            raise ValueError("ssl.view_augment must hold one mapping per view (2)")


class BarlowTwins(Method):
    """Backbone + projector; the cross-correlation loss over the global batch."""

    name = "barlowtwins"
    summary = "Barlow Twins: cross-correlation of the two views' embeddings to the identity"
    Options = BarlowTwinsOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 8192, "proj_hidden": 8192, "proj_layers": 3, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2,
                  "weight_decay": 1.5e-6},
    }  # fmt: skip

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's recipe; on ResNet-18/34 a 2048-wide projector (solo-learn's)."""
        out = super().recipe(data)
        if small_backbone(data):
            out["model"] = {**out["model"], "proj_dim": 2048, "proj_hidden": 2048}
        return out

    def __init__(self, backbone: nn.Module, opts: BarlowTwinsOptions, proj_dim: int,
                 proj_hidden: int, proj_layers: int, proj_bn: bool) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts
        self.backbone = backbone
        self.projector = ProjectionHead(
            backbone.feature_dim, proj_hidden, proj_dim, num_layers=proj_layers, bn=proj_bn
        )

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> BarlowTwins:
        m = cfg.model
        return cls(backbone, BarlowTwinsOptions(**cfg.ssl), m.proj_dim, m.proj_hidden,
                   m.proj_layers, m.proj_bn)  # fmt: skip

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () the global loss (one forward pass per view)."""
        check_views(views, 2, "Barlow Twins")
        z1, z2 = (self.projector(self.backbone.forward_features(v)) for v in views)
        return barlow_twins_loss(z1, z2, self.opts.lambd)
