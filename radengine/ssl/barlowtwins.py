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

from torch import Tensor

from radengine.ssl.base import (
    QUICK_LARS,
    ProjectorMethod,
    TwoViewOptions,
    check_views,
    small_backbone,
)
from radengine.ssl.losses import barlow_twins_loss

__all__ = ["BarlowTwins"]


@dataclasses.dataclass
class BarlowTwinsOptions(TwoViewOptions):
    """``ssl.*`` keys of Barlow Twins (BYOL's asymmetric views by default)."""

    lambd: float = 0.0051

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambd < 0:
            raise ValueError(f"ssl.lambd must be >= 0, got {self.lambd}")


def wide_projector_recipe(out: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Barlow Twins' and VICReg's 8192-wide projector, 2048 on ResNet-18/34 (solo-learn's)."""
    if small_backbone(data):
        out["model"] = {**out["model"], "proj_dim": 2048, "proj_hidden": 2048}
    return out


class BarlowTwins(ProjectorMethod):
    """Backbone + projector; the cross-correlation loss over the global batch."""

    name = "barlowtwins"
    summary = "Barlow Twins: cross-correlation of the two views' embeddings to the identity"
    Options = BarlowTwinsOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 8192, "proj_hidden": 8192, "proj_layers": 3, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2,
                  "weight_decay": 1.5e-6},
    }  # fmt: skip
    # the quick run: the LARS step of SimCLR's small-batch rule, 3 epochs (a step costs ~1.6x
    # SimCLR's: one forward pass per view, a 3-layer 2048-wide projector)
    QUICK: ClassVar[dict[str, Any]] = {"optim": {**QUICK_LARS, "epochs": 3}}

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The paper's recipe; on ResNet-18/34 a 2048-wide projector (solo-learn's)."""
        return wide_projector_recipe(super().recipe(data), data)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () the global loss (one forward pass per view)."""
        check_views(views, 2, "Barlow Twins")
        z1, z2 = (self.project(v) for v in views)
        return barlow_twins_loss(z1, z2, self.opts.lambd)
