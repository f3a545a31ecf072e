"""Backbones (ResNet, ViT), SSL heads and a small name registry.

>>> from radengine.models import create_model
>>> encoder = create_model("resnet50", num_classes=0, zero_init_residual=True)
>>> encoder.feature_dim
2048
"""

from radengine.models.heads import PredictionHead, ProjectionHead
from radengine.models.registry import (
    TimmBackbone,
    adapt_input_conv,
    create_model,
    list_models,
    register_model,
)
from radengine.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from radengine.models.vit import (
    VisionTransformer,
    resample_pos_embed,
    vit_base_patch16,
    vit_small_patch16,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PredictionHead",
    "ProjectionHead",
    "ResNet",
    "TimmBackbone",
    "VisionTransformer",
    "adapt_input_conv",
    "create_model",
    "list_models",
    "register_model",
    "resample_pos_embed",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vit_base_patch16",
    "vit_small_patch16",
]
