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

from torch import Tensor

from radengine.ssl.base import QUICK_MOMENTUM, MomentumMethod, MomentumOptions, check_views
from radengine.ssl.losses import byol_loss

__all__ = ["BYOL"]


@dataclasses.dataclass
class BYOLOptions(MomentumOptions):
    """``ssl.*`` keys of BYOL: the EMA momentum 0.996 -> 1, predictor width 4096, the
    asymmetric views."""


class BYOL(MomentumMethod):
    """Online backbone + projector + predictor, and their EMA target (no predictor)."""

    name = "byol"
    summary = "BYOL: predict an EMA target network's projection; no negatives"
    Options = BYOLOptions
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 256, "proj_hidden": 4096, "proj_layers": 2, "proj_bn": True},
        "optim": {"name": "lars", "lr_scaling": "linear", "lr_base": 0.2,
                  "weight_decay": 1.5e-6},
    }  # fmt: skip
    QUICK = QUICK_MOMENTUM

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () l(q1, z2') + l(q2, z1'), means over the n rows.

        Each view is its own forward pass (its own BatchNorm statistics), as in the paper's
        code."""
        check_views(views, 2, "BYOL")
        q, z = self.predictions_and_targets(views)
        return byol_loss(q[0], z[1]) + byol_loss(q[1], z[0])
