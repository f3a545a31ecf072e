"""Training engine: optimisers and schedules (optim.py); the trainer, distributed setup and
checkpoints join here (DESIGN.md's layout)."""

from radengine.engine.optim import LARS, WarmupCosine, lr_at, param_groups, scaled_lr

__all__ = ["LARS", "WarmupCosine", "lr_at", "param_groups", "scaled_lr"]
