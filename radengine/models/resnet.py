"""ResNet-18/34/50/101 (He et al. 2016), the "v1.5" variant that torchvision ships.

v1.5 puts the stride of a downsampling Bottleneck on its 3x3 conv instead of the first 1x1
conv: slightly more accurate, and it is what every published ImageNet and SSL ResNet-50
checkpoint the transfer studies compare was trained with (torchvision, MoCo, SimCLR ports,
BYOL, SwAV, Barlow Twins, ...).

Module and parameter names mirror torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layerN.M.downsample.0/1``, ``fc``), so ``state_dict()`` keys and shapes are identical and
those checkpoints load with ``load_state_dict``; forward hooks by torchvision module name
(study A's CKA on ``conv1``, ``layer1.0.conv1``, ``layer1.0.conv2``) work unchanged.

Shapes: input ``(B, in_chans, H, W)``; ``forward_features`` -> ``(B, feature_dim)`` with
``feature_dim`` 512 (ResNet-18/34) or 2048 (ResNet-50/101); ``forward`` -> logits
``(B, num_classes)``, or the features when ``num_classes == 0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by a BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Args:
        in_planes: input channels.
        planes: output channels (``expansion == 1``).
        stride: stride of the first conv; 2 halves the resolution.
        downsample: projection of the identity path when shape changes, else ``None``.
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the gamma of the last BN so the block starts as the identity (Goyal et al.)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_planes, H, W) -> (B, planes, H / stride, W / stride)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In-place add then ReLU: `out` is a fresh tensor, so this saves one activation buffer.
        out += shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4 (ResNet-50/101).

    Args:
        in_planes: input channels.
        planes: bottleneck width; the output has ``planes * 4`` channels.
        stride: stride of the 3x3 conv.
        downsample: projection of the identity path when shape changes, else ``None``.
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the gamma of the last BN so the block starts as the identity (Goyal et al.)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_planes, H, W) -> (B, 4 * planes, H / stride, W / stride)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet backbone with an optional linear classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        in_chans: input channels (3 for RGB or CT repeated to 3, 1 for single-channel CT).
        num_classes: classifier outputs; 0 builds no ``fc`` at all, so ``state_dict()`` holds
            only the encoder (load a torchvision checkpoint with its ``fc.*`` keys dropped).
        zero_init_residual: zero the last BN gamma of every block, so each residual branch
            starts at zero and the network at init is a shallow stem + identities. The SSL
            recipes (SimCLR, BYOL, SimSiam) and large-batch training use it.

    Attributes:
        feature_dim: width of :meth:`forward_features` (512 or 2048).
        num_classes: as given.
        in_chans: as given.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        in_chans: int = 3,
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {list(layers)}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes

        # Stem: stride 2 conv + stride 2 max-pool, so layer1 runs at 1/4 resolution.
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self._in_planes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.feature_dim = 512 * block.expansion

        # A module rather than .mean((2, 3)) only so hooks by torchvision name keep working.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # No fc when num_classes == 0 (rather than nn.Identity) keeps the keys an exact
        # subset of torchvision's; the SSL engine puts its projector on forward_features.
        self.fc: nn.Linear | None = (
            nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else None
        )

        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._in_planes != out_planes:
            # Projection shortcut ("option B"): 1x1 conv + BN, only where the shape changes.
            downsample = nn.Sequential(
                _conv1x1(self._in_planes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )
        stage = [block(self._in_planes, planes, stride, downsample)]
        self._in_planes = out_planes
        stage += [block(out_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # As torchvision, so a from-scratch baseline here matches a scratch torchvision one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_out: preserves gradient variance through the ReLU convs (He et al. 2015).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # fc keeps nn.Linear's default init, as torchvision does.
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    m.zero_init_last()

    def forward_intermediates(self, x: Tensor) -> dict[str, Tensor]:
        """Feature maps of every stage, for feature analysis (CKA) and U-Net encoders.

        Args:
            x: images ``(B, in_chans, H, W)``.

        Returns:
            ``{"stem": (B, 64, H/2, W/2), "layer1": (B, C1, H/4, W/4),
            "layer2": (B, C2, H/8, W/8), "layer3": (B, C3, H/16, W/16),
            "layer4": (B, feature_dim, H/32, W/32)}`` (sizes rounded up), with
            ``C1..C3`` = 64, 128, 256 (BasicBlock) or 256, 512, 1024 (Bottleneck). ``stem``
            is taken after conv1-bn1-relu and *before* the max-pool: that stride-2 map is
            the one a U-Net decoder uses as its highest-resolution skip.
        """
        out: dict[str, Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        out["stem"] = x
        x = self.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled encoder features.

        Args:
            x: images ``(B, in_chans, H, W)``; any size >= 1 pixel, any memory format.

        Returns:
            ``(B, feature_dim)``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # flatten reshapes (copying only if it must), so channels_last input is fine here.
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``, or features if no fc."""
        x = self.forward_features(x)
        return x if self.fc is None else self.fc(x)


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlock, (2, 2, 2, 2); 11,689,512 parameters with 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlock, (3, 4, 6, 3); 21,797,672 parameters with 1000 classes."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottleneck, (3, 4, 6, 3); 25,557,032 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: Bottleneck, (3, 4, 23, 3); 44,549,160 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)
