"""What a run trains and how: the input channels, the SSL method on a fresh backbone, the
resolved learning rate, the optimizer and the autocast precision."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radengine.config import PretrainConfig
from radengine.engine.errors import PretrainError
from radengine.engine.optim import LARS, param_groups, scaled_lr

__all__ = [
    "amp_dtype",
    "build_model",
    "build_optimizer",
    "channels",
    "cpu_has_native_bf16",
    "resolved_lr",
]


def channels(cfg: PretrainConfig, domain: str) -> int:
    """The input channels of ``domain``'s views: 3 for natural images, the HU windows'
    (``augment.intensity``, ``augment.repeat``) for CT."""
    if domain == "natural":
        return 3
    from radengine.ops.hu_window import WindowSpec

    return WindowSpec.parse(cfg.augment.intensity, repeat=cfg.augment.repeat).channels


def build_model(cfg: PretrainConfig, in_chans: int) -> nn.Module:
    """The SSL method module (``radengine.ssl``) of ``cfg.method`` on a fresh
    ``cfg.model.arch`` backbone."""
    from radengine import ssl
    from radengine.models import create_model

    m = cfg.model
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if m.arch.startswith("resnet"):
        kwargs["zero_init_residual"] = m.zero_init_residual
    elif m.arch.startswith("vit"):
        kwargs["img_size"] = cfg.augment.size
    try:
        backbone = create_model(m.arch, **kwargs)
    except (ValueError, ImportError) as exc:
        raise PretrainError(f"model.arch: {exc}") from None
    try:
        return ssl.build(cfg, backbone)
    except ValueError as exc:
        raise PretrainError(f"{cfg.method}: {exc}") from None


def resolved_lr(cfg: PretrainConfig) -> float:
    """The peak learning rate: ``optim.lr``, or ``optim.lr_base`` scaled to the global batch
    by ``optim.lr_scaling``."""
    o = cfg.optim
    if o.lr is not None:
        return o.lr
    if o.lr_scaling == "none":
        return o.lr_base if o.lr_base is not None else 0.1
    return scaled_lr(o.batch_size, o.lr_scaling, o.lr_base)


def build_optimizer(cfg: PretrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The ``optim.name`` optimizer (LARS, SGD or AdamW) over ``model``'s parameter groups,
    at peak learning rate ``lr``."""
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.exclude_bias_and_norm)
    if o.name == "lars":
        return LARS(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN's bf16
    convolutions are about twice as fast as fp32 ones; elsewhere bf16 is emulated (slow)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32."""
    p = cfg.train.precision
    if p == "auto":
        native = device.type == "cuda" or cpu_has_native_bf16()
        p = "bf16" if native else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]
