"""SimCLR (Chen et al., ICML 2020): two augmented views of every image, a backbone and a
projection MLP, and the NT-Xent loss over the 2N embeddings with negatives from every rank.

Recipe (paper, section 4 and appendix B): projector Linear-BN-ReLU-Linear to 128
(``model.proj_dim``; study A: 256), hidden width the backbone's, temperature 0.5 as study A
used (the paper's best at batch 4096 is 0.1), LARS with lr 0.075 sqrt(batch) and weight
decay 1e-6, no decay on biases and norms. No keys of its own (``ssl``).

Both views go through the network as one batch of 2N, so BatchNorm sees both (as the
SimCLR reference code does per device; ``model.sync_bn`` extends the statistics over
ranks). The loss is ``radengine.ops.nt_xent``: its module docstring explains the row layout
each rank holds, why the per-rank loss is the mean over local rows, and why DDP's gradient
averaging then gives exactly the single-process gradient of the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from radengine.models import ProjectionHead
from radengine.ops import nt_xent
from radengine.ssl.base import Method

__all__ = ["SimCLR"]


class SimCLR(Method):
    """Backbone + projector; ``forward([view1, view2])`` returns the NT-Xent loss.

    Args:
        backbone: a model with ``forward_features(x) -> (B, feature_dim)`` and
            ``feature_dim`` (every radengine backbone, timm ones included).
        proj_dim: embedding width (SimCLR 128; study A 256).
        proj_hidden: hidden width (None: the backbone's ``feature_dim``, as SimCLR).
        proj_layers: Linear layers in the projector (2 in SimCLR v1, 3 in v2).
        proj_bn: BatchNorm in the projector's hidden layers (off only for tests that need a
            model without cross-sample statistics).
        temperature: NT-Xent temperature (study A: 0.5).
        gather: negatives from every rank (the correct SimCLR; study A used local ones).
    """

    name = "simclr"
    summary = "SimCLR: NT-Xent over two views with negatives from the whole global batch"
    # SimCLR is the config's defaults (study A's recipe): nothing to layer.
    RECIPE: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        backbone: nn.Module,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        proj_layers: int = 2,
        proj_bn: bool = True,
        temperature: float = 0.5,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.feature_dim
        self.projector = ProjectionHead(
            width, proj_hidden or width, proj_dim, num_layers=proj_layers, bn=proj_bn
        )
        self.temperature = temperature
        self.gather = gather

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> SimCLR:
        m = cfg.model
        return cls(
            backbone,
            proj_dim=m.proj_dim,
            proj_hidden=m.proj_hidden,
            proj_layers=m.proj_layers,
            proj_bn=m.proj_bn,
            temperature=cfg.loss.temperature,
            gather=cfg.loss.gather,
        )

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, proj_dim) projector outputs."""
        return self.projector(self.backbone.forward_features(x))

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Two (N, C, H, W) views of the same N images -> () this rank's NT-Xent loss."""
        view1, view2 = views
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have one shape, got {tuple(view1.shape)} and "
                f"{tuple(view2.shape)}"
            )
        z = self.embed(torch.cat([view1, view2]))
        return nt_xent(z.float(), self.temperature, gather=self.gather)
