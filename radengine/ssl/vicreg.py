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

from torch import Tensor

from radengine.ssl.barlowtwins import wide_projector_recipe
from radengine.ssl.base import QUICK_LARS, ProjectorMethod, TwoViewOptions, check_views
from radengine.ssl.losses import vicreg_loss

__all__ = ["VICReg"]


@dataclasses.dataclass
class VICRegOptions(TwoViewOptions):
    """``ssl.*`` keys of VICReg (BYOL's asymmetric views by default)."""

    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(self, key) < 0:
                raise ValueError(f"ssl.{key} must be >= 0, got {getattr(self, key)}")


class VICReg(ProjectorMethod):
    """Backbone + expander; invariance, variance and covariance terms."""

    name = "vicreg"
    summary = "VICReg: invariance + variance + covariance terms on the two views' embeddings"
    Options = VICRegOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 8192, "proj_hidden": 8192, "proj_layers": 3, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2, "weight_decay": 1e-6},
    }  # fmt: skip
    # the quick run: as Barlow Twins'
    QUICK: ClassVar[dict[str, Any]] = {"optim": {**QUICK_LARS, "epochs": 3}}

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's recipe; on ResNet-18/34 a 2048-wide expander (solo-learn's)."""
        return wide_projector_recipe(super().recipe(data), data)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () this rank's loss (one forward pass per view)."""
        check_views(views, 2, "VICReg")
        z1, z2 = (self.project(v) for v in views)
        o = self.opts
        return vicreg_loss(z1, z2, o.sim_coeff, o.std_coeff, o.cov_coeff)
