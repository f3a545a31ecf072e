"""A U-Net decoder on a backbone's stage outputs (``forward_intermediates``).

For a ResNet the encoder gives five maps: ``stem`` (H/2), ``layer1`` (H/4), ``layer2``
(H/8), ``layer3`` (H/16) and ``layer4`` (H/32). The decoder climbs back with five blocks,
each: upsample x2 (bilinear) to the next skip's size, concatenate that skip (none for the
last block, which reaches H), then two 3x3 conv-BN-ReLU; a 1x1 conv gives the class
logits at the input resolution. This is the decoder of segmentation_models.pytorch's
``Unet`` (decoder channels 256, 128, 64, 32, 16), the layout study A (LiTS, BraTS) and study B
(SIIM-ACR, DRIVE, Montgomery) put on their ResNet-50 encoders.

Shapes: ``forward(x (B, C_in, H, W)) -> (B, num_classes, H, W)`` for any H, W (skips are
matched by size, so sizes that are not multiples of 32 work too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "UNetDecoder"]

SKIPS = ("layer3", "layer2", "layer1", "stem")
DEEPEST = "layer4"


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: Tensor, skip: Tensor | None, size: Sequence[int]) -> Tensor:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """The decoder alone: stage maps -> class logits at ``out_size``.

    Args:
        encoder_channels: channels of (stem, layer1, layer2, layer3, layer4).
        num_classes: output channels.
        decoder_channels: widths of the five decoder blocks, deepest first.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError("need 5 encoder channels (stem, layer1..4) and 5 decoder widths")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        stem, l1, l2, l3, l4 = encoder_channels
        skips = (l3, l2, l1, stem, 0)
        blocks = []
        cin = l4
        for skip, cout in zip(skips, decoder_channels, strict=True):
            blocks.append(_Block(cin, skip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, feats: dict[str, Tensor], out_size: Sequence[int]) -> Tensor:
        x = feats[DEEPEST]
        for block, name in zip(self.blocks, (*SKIPS, None), strict=True):
            skip = feats[name] if name is not None else None
            x = block(x, skip, skip.shape[-2:] if skip is not None else out_size)
        return self.head(x)


class UNet(nn.Module):
    """Encoder (a backbone with ``forward_intermediates``) + :class:`UNetDecoder`.

    Args:
        encoder: e.g. a radengine ResNet (its ``fc``, if any, is unused).
        num_classes: segmentation classes (background included).
        decoder_channels: the decoder widths, deepest first.
        freeze_encoder: no gradients into the encoder, which then stays in eval mode
            (frozen BatchNorm statistics) whatever ``train()`` is called with.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if not hasattr(encoder, "forward_intermediates"):
            raise ValueError(f"{type(encoder).__name__} has no forward_intermediates")
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.encoder_channels = self._probe_channels(encoder)
        self.decoder = UNetDecoder(self.encoder_channels, num_classes, decoder_channels)
        if freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
            encoder.eval()

    @staticmethod
    @torch.no_grad()
    def _probe_channels(encoder: nn.Module) -> tuple[int, ...]:
        was = encoder.training
        encoder.eval()
        try:
            p = next(encoder.parameters())
            x = torch.zeros(1, getattr(encoder, "in_chans", 3), 64, 64, device=p.device)
            feats = encoder.forward_intermediates(x)
        finally:
            encoder.train(was)
        names = ("stem", "layer1", "layer2", "layer3", "layer4")
        missing = [n for n in names if n not in feats]
        if missing:
            raise ValueError(
                f"the encoder's forward_intermediates lacks {missing}: the U-Net needs a "
                "ResNet-style encoder"
            )
        return tuple(int(feats[n].shape[1]) for n in names)

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        feats = self.encoder.forward_intermediates(x)
        return self.decoder(feats, x.shape[-2:])
