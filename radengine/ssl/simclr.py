"""SimCLR (Chen et al., ICML 2020): two augmented views of every image, a backbone and a
projection MLP, and the NT-Xent loss over the 2N embeddings with negatives from every rank.

Both views go through the network as one batch of 2N, so BatchNorm sees both (as the
SimCLR reference code does per device; ``model.sync_bn`` extends the statistics over
ranks). The loss is ``radengine.ops.nt_xent``: its module docstring explains the row layout
each rank holds, why the per-rank loss is the mean over local rows, and why DDP's gradient
averaging then gives exactly the single-process gradient of the global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radengine.models import ProjectionHead
from radengine.ops import nt_xent

__all__ = ["SimCLR"]


class SimCLR(nn.Module):
    """Backbone + projector; ``forward(view1, view2)`` returns the NT-Xent loss.

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

    @property
    def encoder(self) -> nn.Module:
        """The part that transfers: the backbone (the projector is discarded)."""
        return self.backbone

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, proj_dim) projector outputs."""
        return self.projector(self.backbone.forward_features(x))

    def forward(self, view1: Tensor, view2: Tensor) -> Tensor:
        """Two (N, C, H, W) views of the same N images -> () this rank's NT-Xent loss."""
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have one shape, got {tuple(view1.shape)} and "
                f"{tuple(view2.shape)}"
            )
        z = self.embed(torch.cat([view1, view2]))
        return nt_xent(z.float(), self.temperature, gather=self.gather)
