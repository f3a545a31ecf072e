"""SimSiam (Chen & He, CVPR 2021): a Siamese network whose predictor output on one view
regresses the other view's projection under a stop-gradient; no negatives, no momentum
encoder.

Recipe (paper, section 4 and appendix A): projector of 3 Linear layers of 2048 with BN on
each, the last BN without affine parameters; predictor 2048 -> 512 -> 2048 (BN on the
hidden layer); loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` with D the negative cosine similarity
and a stop-gradient on z (eq. 1-2); MoCo v2's augmentation (blur p 0.5 on both views); SGD,
lr 0.05 batch/256, momentum 0.9, weight decay 1e-4. (The paper keeps the predictor's lr
fixed instead of cosine-decayed; radengine decays every group on one schedule.) No
cross-rank statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from radengine.models import PredictionHead
from radengine.ssl.base import BLUR_HALF_VIEWS, ProjectorMethod, TwoViewOptions, check_views
from radengine.ssl.losses import simsiam_loss

__all__ = ["SimSiam"]


@dataclasses.dataclass
class SimSiamOptions(TwoViewOptions):
    """``ssl.*`` keys of SimSiam (MoCo v2's views: blur p 0.5 on both)."""

    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in BLUR_HALF_VIEWS]
    )
    pred_hidden: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pred_hidden < 1:
            raise ValueError(f"ssl.pred_hidden must be >= 1, got {self.pred_hidden}")


class SimSiam(ProjectorMethod):
    """Backbone + projector (last BN) + predictor; symmetrised negative cosine."""

    name = "simsiam"
    summary = "SimSiam: predictor + stop-gradient Siamese network; no negatives, no EMA"
    Options = SimSiamOptions
    LAST_BN = True
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 2048, "proj_hidden": 2048, "proj_layers": 3, "proj_bn": True},
        "optim": {"name": "sgd", "lr_scaling": "linear", "lr_base": 0.05, "momentum": 0.9,
                  "weight_decay": 1e-4},
    }  # fmt: skip
    # the quick run: 4 epochs (one forward pass per view, a step costs ~1.2x SimCLR's)
    QUICK: ClassVar[dict[str, Any]] = {"optim": {"epochs": 4}}

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        super().__init__(backbone, cfg)
        m = cfg.model
        self.predictor = PredictionHead(m.proj_dim, self.opts.pred_hidden, m.proj_dim, bn=m.proj_bn)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (n, C, H, W) views -> () D(p1, z2) / 2 + D(p2, z1) / 2 (one forward pass per
        view, as the paper's code)."""
        check_views(views, 2, "SimSiam")
        z = [self.project(v) for v in views]
        p = [self.predictor(zi) for zi in z]
        return simsiam_loss(p[0], z[1]) / 2 + simsiam_loss(p[1], z[0]) / 2
