"""MLP heads that SSL methods put on a backbone's pooled features.

One builder covers the published variants:

=========================  ===========================================================
SimCLR (Chen et al. 2020)  ``ProjectionHead(2048, 2048, 128)``: Linear-BN-ReLU-Linear
                           (study A: ``out_dim=256``)
BYOL (Grill et al. 2020)   ``ProjectionHead(2048, 4096, 256)`` and
                           ``PredictionHead(256, 4096, 256)``
SimSiam (Chen & He 2021)   ``ProjectionHead(2048, 2048, 2048, num_layers=3,
                           last_bn=True)`` and ``PredictionHead(2048, 512, 2048)``
MoCo v3 (Chen et al.)      ``ProjectionHead(2048, 4096, 256, num_layers=3, last_bn=True)``
=========================  ===========================================================

Linear layers that feed a BatchNorm have no bias: the BN's shift makes it redundant.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PredictionHead", "ProjectionHead"]


def _mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int,
    bn: bool,
    last_bn: bool,
    last_bn_affine: bool,
) -> nn.Sequential:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """Projector MLP: ``num_layers`` Linear layers, BN + ReLU between them.

    Args:
        in_dim: input width (the backbone's ``feature_dim``).
        hidden_dim: width of the hidden layers (unused when ``num_layers == 1``).
        out_dim: output (embedding) width.
        num_layers: number of Linear layers; 2 for SimCLR/BYOL, 3 for SimSiam/MoCo v3.
        bn: BatchNorm1d after each hidden Linear.
        last_bn: BatchNorm1d after the last Linear too (SimSiam, MoCo v3). It normalises the
            embedding per dimension over the batch, which those methods need to avoid
            collapse.
        last_bn_affine: learnable scale and shift on that last BN; off by default, as in
            SimSiam and MoCo v3, since a learned scale could undo the normalisation.

    Attributes:
        out_dim: as given.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
        last_bn_affine: bool = False,
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.layers = _mlp(in_dim, hidden_dim, out_dim, num_layers, bn, last_bn, last_bn_affine)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.layers(x)


class PredictionHead(nn.Module):
    """Predictor MLP of BYOL and SimSiam: Linear-BN-ReLU-Linear, no BN on the output.

    The predictor maps one view's projection onto the other's; its bottleneck
    (``hidden_dim < in_dim`` in SimSiam) is part of what keeps those methods from
    collapsing.

    Args:
        in_dim: input width (the projector's ``out_dim``).
        hidden_dim: hidden width (4096 BYOL, 512 SimSiam).
        out_dim: output width (equal to ``in_dim`` in both methods).
        bn: BatchNorm1d on the hidden layer.

    Attributes:
        out_dim: as given.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bn: bool = True) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.layers = _mlp(in_dim, hidden_dim, out_dim, 2, bn, last_bn=False, last_bn_affine=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.layers(x)
