"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): variance-invariance-covariance
regularisation of the two views' embeddings; no negatives, no momentum encoder, no
predictor.

Recipe (paper, section 4.1 and appendix C; the authors' code): expander of 3 Linear layers
of 8192 (BN + ReLU between them), loss ``25 invariance + 25 variance + 1 covariance``
(``ssl.sim_coeff``, ``ssl.std_coeff``, ``ssl.cov_coeff``), variance and covariance over the
global batch (embeddings gathered from every rank with a gradient, as the authors'
FullGatherLayer); BYOL's asymmetric views; LARS, lr 0.2 batch/256, weight decay 1e-6.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from radengine.models import ProjectionHead
from radengine.ssl.base import ASYMMETRIC_VIEWS, Method, check_views, small_backbone
from radengine.ssl.losses import vicreg_loss

__all__ = ["VICReg"]


@dataclasses.dataclass
class VICRegOptions:
    """``ssl.*`` keys of VICReg."""

    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in ASYMMETRIC_VIEWS]
    )

    def __post_init__(self) -> None:
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(self, key) < 0:
                raise ValueError(f"ssl.{key} must be >= 0, got {getattr(self, key)}")
        if len(self.view_augment) != 2:
            raise ValueError("ssl.view_augment must hold one mapping per view (2)")


class VICReg(Method):
    """Backbone + expander; invariance, variance and covariance terms."""

    name = "vicreg"
    summary = "VICReg: invariance + variance + covariance terms on the two views' embeddings"
    Options = VICRegOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 8192, "proj_hidden": 8192, "proj_layers": 3, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2, "weight_decay": 1e-6},
    }  # fmt: skip

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's recipe; on ResNet-18/34 a 2048-wide projector (solo-learn's)."""
        out = super().recipe(data)
        if small_backbone(data):
            out["model"] = {**out["model"], "proj_dim": 2048, "proj_hidden": 2048}
        return out

    def __init__(self, backbone: nn.Module, opts: VICRegOptions, proj_dim: int,
                 proj_hidden: int, proj_layers: int, proj_bn: bool) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts
        self.backbone = backbone
        self.projector = ProjectionHead(
            backbone.feature_dim, proj_hidden, proj_dim, num_layers=proj_layers, bn=proj_bn
        )

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> VICReg:
        m = cfg.model
        return cls(backbone, VICRegOptions(**cfg.ssl), m.proj_dim, m.proj_hidden,
                   m.proj_layers, m.proj_bn)  # fmt: skip

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () this rank's loss (one forward pass per view)."""
        check_views(views, 2, "VICReg")
        z1, z2 = (self.projector(self.backbone.forward_features(v)) for v in views)
        o = self.opts
        return vicreg_loss(z1, z2, o.sim_coeff, o.std_coeff, o.cov_coeff)
