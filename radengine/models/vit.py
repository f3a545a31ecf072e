"""Vision Transformer (Dosovitskiy et al. 2021): ViT-S/16 and ViT-B/16.

Pre-norm blocks, a class token, learned absolute position embeddings and LayerNorm with
eps 1e-6, as in the original ViT and in DeiT, DINO, MoCo-v3 and MAE. Parameter names follow
timm (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``,
``blocks.N.mlp.fc1``, ``norm``, ``head``), the layout those SSL checkpoints are published in.

Any input size divisible by the patch size works: when the patch grid differs from the one
the model was built for (``img_size``), the position embeddings are resampled bicubically
on their 2-D grid for that forward pass (the class token's embedding is kept as is). This is
what lets a model pretrained at 224 px run on 96 px CT crops, and vice versa.

Shapes: input ``(B, in_chans, H, W)``; tokens ``(B, 1 + N, D)`` with ``N = (H/16)(W/16)``;
``forward_features`` -> the normalised class token ``(B, D)``, ``D = feature_dim`` 384 (S)
or 768 (B); ``forward`` -> logits ``(B, num_classes)``, or the features when it is 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "resample_pos_embed",
    "vit_base_patch16",
    "vit_small_patch16",
]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Resample absolute position embeddings to another patch grid.

    Also the tool for loading a checkpoint trained at another resolution: resample its
    ``pos_embed`` to the model's ``grid_size`` before ``load_state_dict``.

    Args:
        pos_embed: ``(1, num_prefix_tokens + old_h * old_w, D)``.
        new_grid: ``(new_h, new_w)`` patches.
        old_grid: ``(old_h, old_w)``; inferred as square when ``None``.
        num_prefix_tokens: leading tokens (the class token) that have no grid position and
            are copied unchanged.

    Returns:
        ``(1, num_prefix_tokens + new_h * new_w, D)`` in the dtype of ``pos_embed``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not match {n} position tokens")
    new_grid = _pair(new_grid)
    if tuple(old_grid) == new_grid:
        return pos_embed
    # (1, N, D) -> (1, D, h, w): interpolate treats the embedding dims as channels.
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    # fp32: bicubic has no half-precision CPU kernel, and the grid is tiny anyway.
    # antialias: when shrinking (224 -> 96 px), low-pass first instead of skipping rows.
    grid = F.interpolate(
        grid.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=True
    )
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> linear embeddings (a strided conv).

    Args:
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: embedding width ``D``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(B, C, H, W)`` -> tokens ``(B, (H/p)(W/p), D)`` and the grid ``(H/p, W/p)``."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            # A strided conv would silently drop the border; refuse instead.
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {p}")
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        # flatten(2) copies when x is channels_last, so no .view on a non-contiguous tensor.
        return x.flatten(2).transpose(1, 2), grid


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    SDPA picks the fused (flash / memory-efficient) kernel where the device has one and
    never materialises the ``(N, N)`` attention matrix there.

    Args:
        dim: token width ``D``.
        num_heads: heads; ``D`` must be divisible by it.
        qkv_bias: bias on the q, k, v projection (on in ViT, DeiT, DINO, MAE).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # One fused projection (one GEMM) rather than three; the key name matches timm's.
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        b, n, d = x.shape
        # (B, N, 3D) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``, the transformer's position-wise feed-forward layer.

    Args:
        dim: token width ``D``.
        hidden_dim: inner width (``mlp_ratio * D``).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as the published checkpoints were trained
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample (Huang et al. 2016).

    Used when finetuning ViTs (DeiT, MAE, DINO recipes); the identity in eval mode and at
    ``p == 0``.

    Args:
        p: probability of dropping the branch for a sample.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...) -> (B, ...)``, each sample's branch kept with probability ``1 - p``."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        # Rescale so the expected branch output matches eval mode.
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Pre-norm keeps an un-normalised residual stream, which is what lets deep ViTs train
    without warmup tricks.

    Args:
        dim: token width ``D``.
        num_heads: attention heads.
        mlp_ratio: MLP inner width as a multiple of ``D``.
        qkv_bias: bias on the q, k, v projection.
        drop_path: stochastic depth probability of both branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a class token, learned position embeddings and an optional linear head.

    Args:
        img_size: image size the position embeddings are laid out for (int or (H, W));
            other sizes divisible by ``patch_size`` still work (see the module docstring).
        patch_size: patch side in pixels.
        in_chans: input channels (3, or 1 for single-channel CT).
        num_classes: head outputs; 0 builds no ``head``, so ``state_dict()`` holds only the
            encoder.
        embed_dim: token width ``D``.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP inner width as a multiple of ``D``.
        qkv_bias: bias on the q, k, v projections.
        drop_path_rate: stochastic depth of the last block, linearly increasing from 0 at
            the first (the DeiT rule).

    Attributes:
        feature_dim: width of :meth:`forward_features` (``embed_dim``).
        grid_size: patch grid ``(H/p, W/p)`` of ``img_size``.
        num_classes: as given.
        in_chans: as given.
    """

    num_prefix_tokens = 1  # the class token

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        img_size = _pair(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.feature_dim = embed_dim
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_pos = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head: nn.Linear | None = nn.Linear(embed_dim, num_classes) if num_classes else None

        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init: truncated normal (std 0.02) for the embeddings and every linear
        # layer, zero biases; the patch projection is a linear layer on flattened patches and
        # is initialised as one. A near-zero class token starts it as "no information".
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer should not decay (embeddings; the timm convention)."""
        return {"pos_embed", "cls_token"}

    def _tokens(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> embedded tokens with positions ``(B, 1 + N, D)``."""
        x, grid = self.patch_embed(x)
        pos = self.pos_embed
        if grid != self.grid_size:
            pos = resample_pos_embed(pos, grid, self.grid_size, self.num_prefix_tokens)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + pos

    def forward_intermediates(self, x: Tensor) -> dict[str, Tensor]:
        """Every block's output, for feature analysis (CKA).

        Args:
            x: images ``(B, in_chans, H, W)``, ``H`` and ``W`` divisible by the patch size.

        Returns:
            ``{"blocks.0": ..., "blocks.{depth-1}": ...}``, each ``(B, 1 + N, D)`` with the
            class token first and the patches in row-major order, before the final norm.
        """
        x = self._tokens(x)
        out: dict[str, Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            out[f"blocks.{i}"] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The normalised class token.

        Args:
            x: images ``(B, in_chans, H, W)``, ``H`` and ``W`` divisible by the patch size.

        Returns:
            ``(B, feature_dim)``.
        """
        x = self._tokens(x)
        for blk in self.blocks:
            x = blk(x)
        # LayerNorm is per token, so normalising only the class token gives the same result.
        return self.norm(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``, or features if no head."""
        x = self.forward_features(x)
        return x if self.head is None else self.head(x)


def vit_small_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16: D 384, 12 blocks, 6 heads; 22,050,664 parameters at 224 px, 1000 classes."""
    return VisionTransformer(patch_size=16, embed_dim=384, depth=12, num_heads=6, **kwargs)


def vit_base_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16: D 768, 12 blocks, 12 heads; 86,567,656 parameters at 224 px, 1000 classes."""
    return VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12, **kwargs)
