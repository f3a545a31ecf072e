"""Backbones by name: ``create_model("resnet50", num_classes=0)``.

Every model here has the interface the SSL and eval code relies on: ``forward(x)``,
``forward_features(x) -> (B, feature_dim)``, ``forward_intermediates(x) -> dict``, and the
attributes ``feature_dim``, ``num_classes`` and ``in_chans``. ``"timm:<name>"`` wraps a timm
model in :class:`TimmBackbone`, which gives it the same interface; timm is optional and
imported only then.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from radengine.models import resnet, vit

__all__ = [
    "TimmBackbone",
    "adapt_input_conv",
    "create_model",
    "list_models",
    "register_model",
]

TIMM_PREFIX = "timm:"

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "vit_small_patch16": vit.vit_small_patch16,
    "vit_base_patch16": vit.vit_base_patch16,
}


def register_model(
    name: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory to the registry under ``name``.

    Args:
        name: registry name; must be new and must not start with ``"timm:"``.

    Returns:
        A decorator that registers the factory and returns it unchanged.
    """
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"names starting with {TIMM_PREFIX!r} are reserved for timm models")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted (timm models, if installed, come on top of these)."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registry name.

    Args:
        name: one of :func:`list_models`, or ``"timm:<timm name>"`` (needs timm).
        **kwargs: passed to the factory, e.g. ``in_chans``, ``num_classes``,
            ``zero_init_residual`` (ResNet), ``img_size`` (ViT); for timm, anything
            ``timm.create_model`` takes (``pretrained``, ``num_classes``, ...).

    Returns:
        The model, in train mode, on the CPU (or the current default device).

    Raises:
        ValueError: unknown name (the message lists the known ones).
        ImportError: a ``timm:`` name without timm installed.
    """
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], **kwargs)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}; "
            f"or {TIMM_PREFIX}<name> for a timm model (needs timm installed)."
        )
    return _MODELS[name](**kwargs)


def _create_timm(timm_name: str, **kwargs: Any) -> TimmBackbone:
    if not timm_name:
        raise ValueError(f"empty timm model name; use {TIMM_PREFIX}<name>, e.g. timm:resnet50")
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"model {TIMM_PREFIX}{timm_name} needs timm, which is not installed: pip install timm"
        ) from e
    return TimmBackbone(timm.create_model(timm_name, **kwargs), kwargs.get("in_chans", 3))


class TimmBackbone(nn.Module):
    """A timm model with radengine's backbone interface.

    timm's own ``forward_features`` returns unpooled tokens or maps; here it returns the
    pooled pre-logits features, as the radengine models do. The timm model is ``.model``,
    so its ``state_dict()`` keys carry a ``model.`` prefix: load timm checkpoints through
    timm (``pretrained=True``, or ``pretrained_cfg_overlay={"file": path}``) or into
    ``.model``.

    Args:
        model: a model from ``timm.create_model``.
        in_chans: the input channels it was created with.

    Attributes:
        feature_dim: width of :meth:`forward_features`.
        num_classes: classifier outputs (0 for none).
        in_chans: as given.
    """

    def __init__(self, model: nn.Module, in_chans: int = 3) -> None:
        super().__init__()
        self.model = model
        # head_hidden_size is the pre-logits width where it differs from num_features
        # (models with a hidden pre-logits layer); older timm only has num_features.
        self.feature_dim: int = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.num_classes: int = int(getattr(model, "num_classes", 0))
        self.in_chans = in_chans

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled pre-logits features ``(B, feature_dim)``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_intermediates(self, x: Tensor) -> dict[str, Tensor]:
        """Per-stage (CNN) or per-block (ViT) outputs, keyed ``"stage{i}"``.

        Needs a timm version and model with ``forward_intermediates`` (timm >= 1.0).
        """
        fn = getattr(self.model, "forward_intermediates", None)
        if fn is None:
            raise RuntimeError(
                f"timm's {type(self.model).__name__} has no forward_intermediates in this timm "
                "version; upgrade timm (pip install 'timm>=1.0')"
            )
        feats = fn(x, intermediates_only=True)
        return {f"stage{i}": f for i, f in enumerate(feats)}

    def forward(self, x: Tensor) -> Tensor:
        """The timm model's own forward (logits, or pooled features with no classifier)."""
        return self.model(x)


@torch.no_grad()
def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a first-layer conv weight (e.g. ImageNet RGB) to another number of channels.

    For ``in_chans == 1`` the RGB filters are summed: on a grey image ``x`` this gives
    exactly the network's output on ``x`` repeated to three channels, so 1-channel CT
    models start from ImageNet or SSL checkpoints without a change in function. Otherwise
    the filters are tiled over the new channels and scaled by ``in / in_chans``, which keeps
    the response to a constant image when ``in_chans`` is a multiple of ``in`` and roughly
    keeps the activation scale otherwise.

    Args:
        weight: ``(out, in, kh, kw)`` (``conv1.weight`` or ``patch_embed.proj.weight``).
        in_chans: channels wanted.

    Returns:
        ``(out, in_chans, kh, kw)``, same dtype and device; ``weight`` itself if unchanged.
    """
    have = weight.shape[1]
    if in_chans == have:
        return weight
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // have)  # ceil
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (have / in_chans)
