"""MoCo v2 (Chen, Fan, Girshick & He, 2020, "Improved Baselines with Momentum Contrastive
Learning"; MoCo: He et al., CVPR 2020): a query encoder, a momentum key encoder, and
InfoNCE of each query against its key and a queue of earlier keys.

Recipe (MoCo v2, section 2, and the authors' code): MLP head Linear(width, width)-ReLU-
Linear(128) without BatchNorm; temperature 0.2; queue of 65536 keys (``ssl.queue_size``);
key encoder = EMA of the query encoder with momentum 0.999 (``ssl.momentum``); blur with p 0.5
on both views; SGD, lr 0.03 batch/256, weight decay 1e-4, cosine schedule. The loss is
``radengine.ops.info_nce`` (a kernel on CPU and GPU: at 65536 keys the logits are the hot
path). Keys of every rank are gathered into the queue, so the queue is the same on every
rank and the same as one process's on the global batch. MoCo's shuffling BatchNorm is not
done (as in solo-learn's MoCo v2+; use ``model.sync_bn`` on GPUs): per-rank BN statistics
are what the key encoder sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radengine.ops import info_nce
from radengine.ssl.base import (
    BLUR_HALF_VIEWS,
    ProjectorMethod,
    TwoViewOptions,
    check_views,
    ema_update,
    project_with,
)
from radengine.ssl.losses import all_gather

__all__ = ["MoCoV2"]


@dataclasses.dataclass
class MoCoV2Options(TwoViewOptions):
    """``ssl.*`` keys of MoCo v2 (its views: blur p 0.5 on both)."""

    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in BLUR_HALF_VIEWS]
    )
    queue_size: int = 65536
    momentum: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queue_size < 1:
            raise ValueError(f"ssl.queue_size must be >= 1, got {self.queue_size}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"ssl.momentum must be in [0, 1], got {self.momentum}")


class MoCoV2(ProjectorMethod):
    """Query encoder + head, their momentum copy (keys), and the queue (a buffer)."""

    name = "mocov2"
    summary = "MoCo v2: InfoNCE against a queue of momentum-encoded keys"
    Options = MoCoV2Options
    RECIPE: ClassVar[dict[str, Any]] = {
        "model": {"proj_dim": 128, "proj_hidden": None, "proj_layers": 2, "proj_bn": False},
        "loss": {"temperature": 0.2},
        "optim": {"name": "sgd", "lr_scaling": "linear", "lr_base": 0.03, "momentum": 0.9,
                  "weight_decay": 1e-4},
    }  # fmt: skip
    # the quick run: a queue smaller than the built-in CT's 2,766 training slices (65536
    # keys would hold each image ~24 times, most of them from long-gone encoders)
    QUICK: ClassVar[dict[str, Any]] = {"ssl": {"queue_size": 1024}}

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        super().__init__(backbone, cfg)
        size, batch = self.opts.queue_size, cfg.optim.batch_size
        if size % batch:
            raise ValueError(
                f"ssl.queue_size={size} must be a multiple of the global batch "
                f"optim.batch_size={batch} (each step replaces one batch of keys)"
            )
        self.temperature = cfg.loss.temperature
        self.key_encoder = self.momentum_teacher()
        dim = cfg.model.proj_dim
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def after_update(self) -> None:
        ema_update(self.key_encoder, [self.backbone, self.projector], self.opts.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        keys = all_gather(keys)
        ptr, size = int(self.queue_ptr), self.queue.shape[0]
        self.queue[ptr : ptr + keys.shape[0]] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """(query view, key view), each (n, C, H, W) -> () InfoNCE of the n queries; then
        the global batch's keys replace the oldest ones in the queue."""
        check_views(views, 2, "MoCo v2")
        q = self.project(views[0])
        k = F.normalize(project_with(self.key_encoder, views[1]).float(), dim=1)
        loss = info_nce(q.float(), k, self.queue.clone(), self.temperature)
        self._enqueue(k)
        return loss
