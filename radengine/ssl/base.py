"""What a self-supervised method is to the trainer: one class per method, one file each.

A method (a :class:`Method`, an ``nn.Module``) declares

* its **recipe**: a dataclass ``Options`` of its own keys (``ssl.*`` in the config) with the
  paper's values as defaults, and ``RECIPE``, the paper's values for the shared keys (the
  projector's shape, the temperature, the optimizer, its lr rule and weight decay), as
  nested config dicts. Loading a config layers them under the user's YAML and overrides
  (defaults <- recipe <- YAML <- ``key=value``), so ``method=byol`` alone is BYOL as
  published and a run's config.yaml and MLflow params record the whole recipe. The scale of
  a run (epochs, batch, image size, warmup) is not part of it: that is the run's, and the
  shipped ``experiments/pretrain/<method>_*.yaml`` give the papers' full schedules;
* its **views** (:meth:`Method.view_plan`): how many, their sizes and the augmentation of
  each on top of the run's spec (BYOL's asymmetric blur and solarize, DINO's global and
  local crops);
* its **networks**: the online backbone and heads, and any momentum (EMA) teacher, queue or
  center as submodules and buffers, so that the state dict, and with it every checkpoint,
  holds the whole training state (exact resume for free);
* its **loss** (:meth:`Method.forward`: the views in, this rank's loss out; the pure loss
  functions are in :mod:`radengine.ssl.losses`);
* its **per-step updates**: :meth:`set_step` before the forward pass (schedules that are
  functions of the step: EMA momentum, DINO's teacher temperature), :meth:`before_update`
  between backward and the optimizer step (DINO freezes its last layer in the first epoch),
  :meth:`after_update` after it (EMA teachers);
* what **transfers** (:attr:`Method.encoder`: the online backbone, DINO's teacher).

Distributed training. The trainer wraps the method in DDP, which averages parameter
gradients over ranks. Each rank's loss is therefore the mean over its own rows of the
global-batch loss (or, where the loss is a function of global statistics, computed from
embeddings gathered with a gradient so that DDP's average gives the single-process
gradient); the method files say which. Buffers a method updates from data (queues, centers)
are updated from all ranks' rows, so they are identical on every rank.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["QUICK_LARS", "QUICK_MOMENTUM", "Method", "MomentumMethod", "MomentumOptions", "ProjectorMethod",
           "TwoViewOptions", "View", "check_views",
           "cosine_schedule", "ema_update", "frozen_copy", "project_with"]  # fmt: skip

# BYOL's asymmetric views (Grill et al. 2020, table 6), also MoCo v3's, Barlow Twins', VICReg's
# and DINO's global views: Gaussian blur always on the first view and with p 0.1 on the second,
# solarization only on the second (p 0.2). Colour jitter and grayscale come from the run's
# preset (augment.preset / augment.params), which is the same for every method of a study.
ASYMMETRIC_VIEWS = [{"blur_p": 1.0, "solarize_p": 0.0}, {"blur_p": 0.1, "solarize_p": 0.2}]
# MoCo v2's (and SimSiam's): blur with p 0.5 on both views, no solarization.
BLUR_HALF_VIEWS = [{"blur_p": 0.5}, {"blur_p": 0.5}]


# The quick run's optimizer for the LARS methods: SimCLR's small-batch rule (Chen et al.
# 2020, appendix B.1: lr 0.075 sqrt(batch), better than linear scaling at small batches and
# short schedules), the quick run's SimCLR lr (0.85 at batch 128), where linear scaling from
# the papers' batch of 4096 gives 0.1 (BYOL, Barlow Twins, VICReg) for a run of ~50 steps.
QUICK_LARS = {"name": "lars", "lr_scaling": "sqrt", "lr_base": 0.075}
# A step of a method with a momentum teacher costs ~1.6x SimCLR's (a teacher forward pass per
# view, one forward pass per view): 2 epochs (42 steps on the built-in CT) keep its quick run
# near 2.5 minutes on 2 CPU cores; and the teacher's EMA horizon must be inside the run
# (1 / (1 - 0.99) = 100 steps; BYOL's and DINO's 0.996 is 250 steps, longer than the run).
QUICK_MOMENTUM: dict[str, Any] = {"optim": {**QUICK_LARS, "epochs": 2}, "ssl": {"momentum": 0.99}}


@dataclasses.dataclass(frozen=True)
class View:
    """One view of every image: its output size (pixels, square) and the augmentation keys
    it overrides on top of the run's spec (``augment.preset`` + ``augment.params``)."""

    size: int
    augment: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NoOptions:
    """A method without keys of its own."""


@dataclasses.dataclass
class TwoViewOptions:
    """``ssl.view_augment``: one mapping of augmentation keys per view, over the run's."""

    view_augment: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [dict(v) for v in ASYMMETRIC_VIEWS]
    )

    def __post_init__(self) -> None:
        if len(self.view_augment) != 2:
            raise ValueError("ssl.view_augment must hold one mapping per view (2)")


@dataclasses.dataclass
class MomentumOptions(TwoViewOptions):
    """A momentum (EMA) teacher whose momentum rises from ``momentum`` to ``momentum_end``
    on a half cosine, and a predictor of hidden width ``pred_hidden`` (BYOL, MoCo v3)."""

    momentum: float = 0.996
    momentum_end: float = 1.0
    pred_hidden: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("momentum", "momentum_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"ssl.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.pred_hidden < 1:
            raise ValueError(f"ssl.pred_hidden must be >= 1, got {self.pred_hidden}")


class Method(nn.Module):
    """Base class of the SSL methods (see the module docstring for the protocol).

    Subclasses set ``name``, ``Options``, ``RECIPE`` and ``summary``, implement
    :meth:`from_config`, :meth:`forward` and :attr:`encoder`, and override the hooks they
    need. The online backbone is ``self.backbone`` by convention.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for ``radengine list methods``
    Options: ClassVar[type] = NoOptions
    # The paper's values of shared config keys, as nested dicts ({"optim": {"name": ...}}).
    RECIPE: ClassVar[dict[str, Any]] = {}
    # The quick run's settings (config ``recipe: quick``, the default), over the recipe: what
    # the defaults' run (ResNet-18, 96 px, batch 128 on the built-in CT, 2 CPU cores) changes
    # to finish in under 5 minutes and give the method its best chance to learn in a few
    # dozen steps, where the paper's values are bound to its schedule and batch (an EMA
    # horizon longer than the whole run, 8 local crops). Empty: the paper's recipe.
    QUICK: ClassVar[dict[str, Any]] = {}

    backbone: nn.Module

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> Method:
        """The method on ``backbone`` from a resolved ``PretrainConfig``."""
        raise NotImplementedError(f"{cls.__name__} must implement from_config")

    @classmethod
    def recipe(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The config layered under the user's for this method: ``RECIPE`` and every
        ``ssl`` option at its default. ``data`` is the config as given (a method whose paper
        gives different values per backbone reads ``data["model"]["arch"]``)."""
        return {"ssl": dataclasses.asdict(cls.Options()), **copy.deepcopy(cls.RECIPE)}

    @classmethod
    def quick(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The quick-run settings layered over the recipe when the config's ``recipe`` is
        ``quick``: ``QUICK`` on the quick run's backbones (ResNet-18/34); a ResNet-50 or a
        ViT takes its paper's recipe (``QUICK``'s LARS is no ViT optimizer)."""
        return copy.deepcopy(cls.QUICK) if small_backbone(data) else {}

    # -- views

    def view_plan(self, size: int) -> list[View]:
        """The views of one step, global views first: by default two at ``size`` with the
        method's ``view_augment`` options (one mapping per view) when it has them."""
        augment = getattr(getattr(self, "opts", None), "view_augment", None) or [{}, {}]
        return [View(size, dict(a)) for a in augment]

    # -- the step

    def forward(self, views: Sequence[Tensor]) -> Tensor:  # pragma: no cover - abstract
        """The views of this rank's images (``view_plan`` order) -> () this rank's loss."""
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The part that transfers (evaluated by kNN, linear probes and finetuning)."""
        return self.backbone

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Before step ``step`` (0-based) of ``total_steps``: set the schedules."""

    def before_update(self) -> None:
        """After backward, before the optimizer step (edit gradients)."""

    def after_update(self) -> None:
        """After the optimizer step (momentum teachers)."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (leaf names) kept out of weight decay: the backbone's own list
        (timm convention: ViT position embeddings and class token)."""
        names = getattr(self.backbone, "no_weight_decay", None)
        return set(names()) if callable(names) else set()


class ProjectorMethod(Method):
    """A method on ``backbone`` + ``projector`` (a :class:`ProjectionHead` shaped by the
    ``model.proj_*`` keys), built from the config: the shared part of the two-view methods.
    ``LAST_BN``: a BatchNorm without affine parameters on the projector's output (SimSiam,
    MoCo v3), when ``model.proj_bn`` is on."""

    LAST_BN: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        from radengine.models import ProjectionHead

        super().__init__()
        m = cfg.model
        self.opts = self.Options(**cfg.ssl)
        self.backbone = backbone
        width = backbone.feature_dim
        self.projector = ProjectionHead(
            width, m.proj_hidden or width, m.proj_dim, num_layers=m.proj_layers, bn=m.proj_bn,
            last_bn=m.proj_bn and self.LAST_BN,
        )  # fmt: skip

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: Any) -> Method:
        return cls(backbone, cfg)

    def project(self, view: Tensor) -> Tensor:
        """(n, C, H, W) -> (n, proj_dim): one forward pass of a view (its own BatchNorm
        statistics, as the papers' code runs each view)."""
        return self.projector(self.backbone.forward_features(view))

    def momentum_teacher(self) -> nn.Module:
        """A frozen copy of the backbone and projector (``backbone``, ``projector``) for
        :func:`ema_update` with ``[self.backbone, self.projector]``."""
        return frozen_copy(nn.ModuleDict({"backbone": self.backbone, "projector": self.projector}))


class MomentumMethod(ProjectorMethod):
    """A :class:`ProjectorMethod` with a predictor on the projector and a momentum (EMA)
    copy of backbone + projector whose momentum follows :func:`cosine_schedule` from
    ``ssl.momentum`` to ``ssl.momentum_end`` over the run (BYOL's target, MoCo v3's momentum
    encoder: the attribute ``TEACHER`` names it), updated after each optimizer step."""

    TEACHER: ClassVar[str] = "target"

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        from radengine.models import PredictionHead

        super().__init__(backbone, cfg)
        m = cfg.model
        self.predictor = PredictionHead(m.proj_dim, self.opts.pred_hidden, m.proj_dim, bn=m.proj_bn)
        setattr(self, self.TEACHER, self.momentum_teacher())
        self.momentum = self.opts.momentum

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        o = self.opts
        self.momentum = cosine_schedule(o.momentum, o.momentum_end, step, total_steps)

    def after_update(self) -> None:
        ema_update(getattr(self, self.TEACHER), [self.backbone, self.projector], self.momentum)

    def predictions_and_targets(self, views: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per view (one forward pass each): the online prediction and the teacher's
        projection (no gradient)."""
        teacher = getattr(self, self.TEACHER)
        return [self.predictor(self.project(v)) for v in views], [
            project_with(teacher, v) for v in views
        ]


def project_with(teacher: nn.Module, view: Tensor) -> Tensor:
    """A view through a :meth:`ProjectorMethod.momentum_teacher` (no gradient)."""
    with torch.no_grad():
        return teacher["projector"](teacher["backbone"].forward_features(view))


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """``start`` at step 0 rising (or falling) to ``end`` at ``total`` along a half cosine:
    BYOL's and DINO's EMA momentum ``1 - (1 - start)(cos(pi k / K) + 1) / 2``."""
    if total <= 0:
        return end
    k = min(max(step, 0), total)
    return end - (end - start) * (math.cos(math.pi * k / total) + 1) / 2


# Backbones with 512 features (ResNet-18/34): the papers' heads are sized for ResNet-50's
# 2048, and where a method's head is wide (Barlow Twins', VICReg's 8192, DINO's 65536
# prototypes) radengine follows solo-learn's ResNet-18 recipes instead (2048 and 4096).
SMALL_BACKBONES = ("resnet18", "resnet34")


def small_backbone(data: Mapping[str, Any]) -> bool:
    """Whether the config ``data`` (nested dicts) names a 512-feature ResNet."""
    return str(data.get("model", {}).get("arch", "")) in SMALL_BACKBONES


def check_views(views: Sequence[Tensor], count: int, name: str) -> None:
    """Raise a ValueError unless ``views`` holds ``count`` tensors."""
    if len(views) != count:
        raise ValueError(f"{name} takes {count} views, got {len(views)}")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters take no gradient (a momentum teacher)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, students: Sequence[nn.Module], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter,
    the student's parameters being those of ``students`` in order (the teacher was made by
    :func:`frozen_copy` of a container of them). Buffers (BatchNorm statistics) are the
    teacher's own."""
    t = list(teacher.parameters())
    s = [p.detach() for m in students for p in m.parameters()]
    if len(t) != len(s):
        raise RuntimeError("teacher and student have different parameters")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1 - momentum)
