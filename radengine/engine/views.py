"""Each step's views: the method's view plan resolved against the run's augmentation, and
the views of this rank's rows made on the device from parameters drawn for the global
batch, seeded by (seed, step, source)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from radengine.config import PretrainConfig
from radengine.engine import distributed
from radengine.engine.errors import PretrainError
from radengine.engine.stages import Stage

__all__ = ["ViewPlan", "step_seed", "step_views", "window_spec"]


@dataclass(frozen=True)
class ViewPlan:
    """The method's views resolved against the run's augmentation: a parsed spec and an
    output size per view (``Method.view_plan``)."""

    specs: tuple[Any, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, cfg: PretrainConfig, method: Any) -> ViewPlan:
        from radengine.ops.augment import AugmentSpec

        base = {"preset": cfg.augment.preset, **cfg.augment.params}
        try:
            AugmentSpec.parse(base)
        except ValueError as exc:
            raise PretrainError(f"augment: {exc}") from None
        specs, sizes = [], []
        for i, view in enumerate(method.view_plan(cfg.augment.size)):
            try:
                specs.append(AugmentSpec.parse({**base, **view.augment}))
            except ValueError as exc:
                raise PretrainError(
                    f"view {i} of {cfg.method} (its ssl.* view keys over augment.*): {exc}"
                ) from None
            sizes.append(view.size)
        return cls(tuple(specs), tuple(sizes))


def step_views(
    cfg: PretrainConfig,
    plan: ViewPlan,
    stage: Stage,
    batches: list[dict[str, Tensor]],
    step: int,
    dist_info: distributed.DistInfo,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    window: Any,
) -> list[Tensor]:
    """The method's views of this rank's rows of the step's global batch, made on the
    device (one tensor per view: rows of every source, in source order).

    Parameters are sampled for the global batch of each source (seeded by step and source)
    and sliced, so the views do not depend on the number of ranks."""
    from radengine.ops.augment import augment_views, sample_params

    a = cfg.augment
    V = len(plan.specs)
    per_view: list[list[Tensor]] = [[] for _ in range(V)]
    for k, (src, batch) in enumerate(zip(stage.sources, batches, strict=True)):
        x = batch["image"].to(device, non_blocking=True)
        n = src.rows
        is_ct = src.domain == "ct"
        params = sample_params(
            list(plan.specs),
            V,
            n * dist_info.world_size,
            tuple(x.shape[1:3]),
            window if is_ct else None,
            seed=step_seed(cfg.seed, step, k),
        )
        params = _rows(params, dist_info.rank * n, (dist_info.rank + 1) * n)
        views, _ = augment_views(
            x,
            list(plan.specs),
            views=V,
            sizes=list(plan.sizes),
            intensity=a.intensity,
            repeat=a.repeat,
            mean=a.mean,
            std=a.std,
            params=params,
            dtype=dtype,
            channels_last=channels_last,
        )
        for v in range(V):
            per_view[v].append(views[v])
    return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in per_view]


def _rows(params: Any, lo: int, hi: int) -> Any:
    """This rank's samples [lo, hi) of parameters drawn for the global batch."""
    if lo == 0 and hi == params.batch:
        return params
    fields = {}
    for name, t in params.items():
        keep = t is not None and t.dim() >= 2 and t.shape[1] == params.batch
        fields[name] = t[:, lo:hi].contiguous() if keep else t
    return type(params)(**fields)


def window_spec(cfg: PretrainConfig) -> Any:
    """The intensity windows of ``augment.*`` (a ``radengine.ops.hu_window.WindowSpec``)."""
    from radengine.ops.hu_window import WindowSpec

    a = cfg.augment
    return WindowSpec.parse(a.intensity, repeat=a.repeat, mean=a.mean, std=a.std)


def step_seed(seed: int, step: int, source: int) -> int:
    """The seed of the augmentation parameters of ``step`` for source ``source``."""
    # splitmix-style mixing so neighbouring steps get unrelated streams
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + source * 0x94D049BB133111EB) & (
        2**63 - 1
    )
    z ^= z >> 31
    return int(z % (2**62))
