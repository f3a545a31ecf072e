"""``radengine eval``: one evaluation (protocol x task x init x label fraction), one MLflow
run per seed.

Order of work: resolve the init (reading the weights), open the store, build the task's
splits per seed (the label-fraction subset depends on the seed), build the encoder, then
the protocol:

- ``knn``: cached frozen features; weighted kNN for every k; the k with the best
  validation metric is the result (every k's test metric is logged too);
- ``linear``: cached frozen features; the grid of linear heads trained as one batched
  computation; the head with the best validation metric is the result;
- ``finetune``: encoder + linear head trained end to end (radengine.eval.finetune);
- ``segment``: encoder + U-Net decoder (radengine.eval.segment).

Tracking (MLflow, through radengine.tracking; ``tracking.enabled=false`` for none): each
seed is a run in ``tracking.experiment`` (default ``radengine-eval``) tagged ``study,
stage=eval, protocol, task, init, init_kind, arch, domain, method, data_fraction,
pretrain_domain, label_fraction, seed, primary_metric`` and ``pretrain_run_id`` when the
init is a pretraining run (the link to it); params = the resolved config flattened plus
``resolved.*``; datasets = the store (train and test contexts, with its digest); artifacts
``config.yaml`` and ``init_report.json``; metrics per epoch (``train/*``, ``val/*``) and the
final ``test/<metric>`` and ``val/<metric>`` of the tested weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from radengine.data.store import Store, StoreError, atomic_write_bytes
from radengine.eval import config as eval_config
from radengine.eval.common import (
    EvalError,
    amp_dtype,
    module_digest,
    resolve_device,
    sub_seed,
)
from radengine.eval.config import EvalConfig
from radengine.eval.features import FeatureCache, ViewSpec, extract_features
from radengine.eval.init import Init, build_encoder, infer_arch, nested_keys, resolve_init
from radengine.eval.tasks import TaskData, build_task, default_task
from radengine.fmt import percent

__all__ = ["EvalResult", "SeedResult", "evaluate"]

DEFAULT_SIZE = 224


@dataclass
class SeedResult:
    """One seed's outcome: the final test and validation metrics of the tested model and
    what was selected (``details``: best lr/wd, best k, tested checkpoint, ...)."""

    seed: int
    run_id: str | None
    test: dict[str, float]
    val: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EvalResult:
    protocol: str
    task: str
    init: str
    primary: str
    out: Path
    seeds: list[SeedResult]
    pretrain_run_id: str | None = None
    tracking_uri: str | None = None

    def primary_values(self) -> list[float]:
        return [s.test.get(self.primary, math.nan) for s in self.seeds]


# ----------------------------------------------------------------------------- helpers


def _open_store(cfg: EvalConfig, progress: bool) -> Store:
    d = cfg.data
    if d.store is None:
        from radengine.data.builtin import builtin_store

        return builtin_store(d.domain, progress=progress)
    try:
        store = Store(d.store)
    except StoreError as exc:
        raise EvalError(f"data store: {exc}") from None
    if not store.finished:
        raise EvalError(f"store {d.store} is incomplete (an ingest did not finish); rerun it")
    return store


def _view(cfg: EvalConfig, init: Init) -> ViewSpec:
    """Input mapping: the config, else the pretraining run's augment settings, else defaults."""
    pre = ((init.pretrain_config or {}).get("augment")) or {}
    i = cfg.input

    def pick(value: Any, key: str, default: Any) -> Any:
        if value is not None:
            return value
        return pre.get(key, default) if pre.get(key) is not None else default

    mean, std = pick(i.mean, "mean", None), pick(i.std, "std", None)
    return ViewSpec(
        size=int(pick(i.size, "size", DEFAULT_SIZE)),
        intensity=_hashable(pick(i.intensity, "intensity", "minmax")),
        repeat=int(pick(i.repeat, "repeat", 3)),
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _arch(cfg: EvalConfig, init: Init) -> str:
    if cfg.model.arch:
        return cfg.model.arch
    if init.arch:
        return init.arch
    if init.state is not None:
        found = infer_arch(nested_keys(init.state))
        if found:
            return found
        raise EvalError(
            f"--init {init.source}: cannot tell the architecture from the weights; set "
            "model.arch (e.g. model.arch=resnet50)"
        )
    return "resnet18"


class _Echo:
    def __init__(self, echo: Callable[[str], None] | None) -> None:
        self.fn = echo or (lambda s: print(s, file=sys.stderr, flush=True))

    def __call__(self, msg: str) -> None:
        self.fn(msg)


def _fmt(v: float) -> str:
    """A metric (a fraction: accuracy, AUC, Dice) for the progress lines, in percent."""
    return percent(v)


# ----------------------------------------------------------------------------- features


class _Features:
    """Frozen features of whole splits, through the cache, sliced to a task's rows."""

    def __init__(
        self,
        cfg: EvalConfig,
        store: Store,
        view: ViewSpec,
        device: torch.device,
        amp: torch.dtype | None,
        channels_last: bool,
        echo: _Echo,
    ) -> None:
        from radengine.data.builtin import cache_dir

        self.cfg, self.store, self.view = cfg, store, view
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.echo = echo
        folder = Path(cfg.cache.dir) if cfg.cache.dir else cache_dir() / "features"
        self.cache = FeatureCache(folder, enabled=cfg.cache.enabled, dtype=cfg.cache.dtype)
        self.store_digest = store.digest()
        self._memo: dict[tuple[str, str], tuple[np.ndarray, Tensor]] = {}

    def split(self, encoder: nn.Module, digest: str, split: str) -> tuple[np.ndarray, Tensor]:
        memo = self._memo.get((digest, split))
        if memo is not None:
            return memo
        rows = self.store.select(split, seed=self.cfg.data.split_seed)
        precision = str(self.amp).replace("torch.", "") if self.amp else "fp32"
        key = FeatureCache.key(
            encoder_digest=digest,
            store_digest=self.store_digest,
            split=split,
            rows=rows,
            view=self.view,
            precision=precision,
        )

        def compute() -> Tensor:
            self.echo(
                f"extracting features of {len(rows)} {split} images at {self.view.size} px "
                f"({self.device}, {precision})"
            )
            bar = None
            if self.cfg.progress:
                from tqdm import tqdm

                bar = tqdm(total=len(rows), desc=f"features {split}", unit="img", leave=False)
            t0 = time.perf_counter()
            try:
                feats = extract_features(
                    encoder, self.store, rows, self.view, device=self.device, amp=self.amp,
                    channels_last=self.channels_last, batch_size=self.cfg.data.batch_size,
                    progress=bar.update if bar is not None else None,
                )  # fmt: skip
            finally:
                if bar is not None:
                    bar.close()
            dt = time.perf_counter() - t0
            self.echo(f"  {len(rows) / max(dt, 1e-9):.0f} img/s")
            return feats

        meta = {"store": str(self.store.path), "split": split, "encoder": digest}
        feats = self.cache.get_or_compute(key, rows, compute, meta)
        self._memo[(digest, split)] = (rows, feats)
        return rows, feats

    def task_split(
        self, encoder: nn.Module, digest: str, task: TaskData, split: str
    ) -> tuple[Tensor, Tensor]:
        rows, feats = self.split(encoder, digest, split)
        want = task.splits[split]
        pos = np.searchsorted(rows, want)
        x = feats[torch.from_numpy(pos)]
        return x, torch.from_numpy(task.targets[split])


# ----------------------------------------------------------------------------- protocols


def _run_knn(ctx: _Context, task: TaskData, encoder: nn.Module, digest: str) -> SeedResult:
    from radengine.eval.knn import knn_scores
    from radengine.eval.scoring import classification_metrics

    cfg = ctx.cfg
    primary = task.spec.primary_metric
    kind = task.spec.kind
    bank, bank_y = ctx.features.task_split(encoder, digest, task, "train")
    out: dict[str, dict[int, dict[str, float]]] = {}
    for split in ("val", "test"):
        q, qy = ctx.features.task_split(encoder, digest, task, split)
        dev = ctx.device
        scores = knn_scores(
            q.to(dev), bank.to(dev), bank_y.to(dev), list(cfg.knn.k), cfg.knn.temperature,
            num_classes=task.num_outputs if kind == "multiclass" else None,
        )  # fmt: skip
        out[split] = {
            k: classification_metrics(kind, s.cpu(), qy, task.names, logits=False)
            for k, s in scores.items()
        }
    best_k = max(cfg.knn.k, key=lambda k: _finite(out["val"][k].get(primary)))
    if all(_finite(out["val"][k].get(primary)) == -math.inf for k in cfg.knn.k):
        _undefined(ctx, primary, f"k = {best_k}")
    extra = {}
    for k in cfg.knn.k:
        extra[f"test/k{k}/{primary}"] = out["test"][k][primary]
        extra[f"val/k{k}/{primary}"] = out["val"][k][primary]
    ctx.tracker.log_metrics(extra, step=0)
    return SeedResult(
        seed=ctx.seed,
        run_id=None,
        test=out["test"][best_k],
        val=out["val"][best_k],
        details={"best_k": best_k, "temperature": cfg.knn.temperature},
    )


def _undefined(ctx: _Context, primary: str, fallback: str) -> None:
    ctx.echo(
        f"warning: the validation {primary} is undefined (the validation split holds one "
        f"class only?); nothing to select by, taking the first setting ({fallback})"
    )


def _finite(v: float | None) -> float:
    return v if v is not None and math.isfinite(v) else -math.inf


def _run_linear(ctx: _Context, task: TaskData, encoder: nn.Module, digest: str) -> SeedResult:
    from radengine.eval.linear import train_linear_grid
    from radengine.eval.scoring import classification_metrics

    li = ctx.cfg.linear
    primary = task.spec.primary_metric
    kind = task.spec.kind
    dev = ctx.device
    x, y = ctx.features.task_split(encoder, digest, task, "train")
    vx, vy = ctx.features.task_split(encoder, digest, task, "val")
    tx, ty = ctx.features.task_split(encoder, digest, task, "test")

    def on_epoch(epoch: int, record: dict) -> None:
        m = {"train/loss_mean": float(record["train_loss"].mean())}
        if "val_metric" in record:
            m[f"val/{primary}_best"] = float(torch.nan_to_num(record["val_metric"], -1.0).max())
        ctx.tracker.log_metrics(m, step=epoch)

    t0 = time.perf_counter()
    res = train_linear_grid(
        x.to(dev), y.to(dev), kind=kind, num_outputs=task.num_outputs, lrs=list(li.lrs),
        weight_decays=list(li.weight_decays), optimizer=li.optimizer, momentum=li.momentum,
        epochs=li.epochs, batch_size=li.batch_size, seed=sub_seed(ctx.seed, "linear"),
        normalize=li.normalize, val_x=vx.to(dev), val_y=vy.to(dev), eval_every=li.eval_every,
        on_epoch=on_epoch,
    )  # fmt: skip
    grid_seconds = time.perf_counter() - t0
    lr, wd = res.configs[res.best]
    if not torch.isfinite(res.val_metric).any():
        _undefined(ctx, primary, f"lr {lr:g}, weight decay {wd:g}")
    grid = {
        f"grid/lr{c_lr:g}_wd{c_wd:g}/val_{primary}": float(v)
        for (c_lr, c_wd), v in zip(res.configs, res.val_metric.tolist(), strict=True)
        if math.isfinite(v)
    }
    ctx.tracker.log_metrics(grid, step=li.epochs)
    with torch.no_grad():
        val = classification_metrics(kind, res.logits(vx.to(dev)).cpu(), vy, task.names)
        test = classification_metrics(kind, res.logits(tx.to(dev)).cpu(), ty, task.names)
    return SeedResult(
        seed=ctx.seed,
        run_id=None,
        test=test,
        val=val,
        details={
            "best_lr": lr,
            "best_weight_decay": wd,
            "grid_heads": len(res.configs),
            "grid_seconds": round(grid_seconds, 3),
        },
    )


def _run_finetune(ctx: _Context, task: TaskData, encoder: nn.Module) -> SeedResult:
    from radengine.eval.finetune import Classifier, fit, make_problem

    cfg = ctx.cfg
    torch.manual_seed(sub_seed(ctx.seed, "head"))
    model = Classifier(encoder, task.num_outputs)
    problem = make_problem(task, ctx.view, cfg.finetune)
    res = fit(
        model, problem, cfg.finetune, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
        channels_last=ctx.channels_last, workers=cfg.data.workers,
        eval_batch_size=cfg.data.batch_size, log=ctx.tracker.log_metrics, echo=ctx.echo,
        progress=cfg.progress,
    )  # fmt: skip
    return SeedResult(
        seed=ctx.seed,
        run_id=None,
        test=res.test,
        val=res.val,
        details={"tested_checkpoint": res.tested, "epochs_run": res.epochs, "stopped": res.stopped},
    )


def _run_segment(ctx: _Context, task: TaskData, encoder: nn.Module) -> SeedResult:
    from radengine.eval.finetune import fit
    from radengine.eval.segment import SegmentationProblem, build_unet

    cfg = ctx.cfg
    torch.manual_seed(sub_seed(ctx.seed, "decoder"))
    model = build_unet(encoder, task.num_outputs, cfg.segment)
    problem = SegmentationProblem(task, ctx.view, cfg.segment)
    res = fit(
        model, problem, cfg.segment, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
        channels_last=ctx.channels_last, workers=cfg.data.workers,
        eval_batch_size=cfg.data.batch_size, log=ctx.tracker.log_metrics, echo=ctx.echo,
        progress=cfg.progress,
    )  # fmt: skip
    return SeedResult(
        seed=ctx.seed,
        run_id=None,
        test=res.test,
        val=res.val,
        details={
            "tested_checkpoint": res.tested,
            "epochs_run": res.epochs,
            "stopped": res.stopped,
            "freeze_encoder": cfg.segment.freeze_encoder,
        },
    )


# ----------------------------------------------------------------------------- the run


@dataclass
class _Context:
    cfg: EvalConfig
    seed: int
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    view: ViewSpec
    features: _Features
    tracker: Any
    echo: _Echo


def _out_dir(cfg: EvalConfig, task: str, init: Init) -> Path:
    if cfg.out:
        return Path(cfg.out)
    base = (
        Path("runs") / "eval" / f"{cfg.protocol}-{task}-{init.label}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _resolved(
    cfg: EvalConfig, init: Init, task: str, arch: str, channels_last: bool, view: ViewSpec
) -> EvalConfig:
    """``cfg`` with every "decide later" value decided (the init found, the task, the
    architecture, the input mapping), so the saved config repeats this evaluation exactly."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    r = dataclasses.replace
    return r(
        cfg,
        task=task,
        init=r(cfg.init, source=init.source),
        model=r(cfg.model, arch=arch, channels_last=channels_last),
        input=r(
            cfg.input,
            size=view.size,
            intensity=plain(view.intensity),
            repeat=view.repeat,
            mean=plain(view.mean),
            std=plain(view.std),
        ),
    )


def _report_dict(report: Any) -> dict[str, Any] | None:
    return dataclasses.asdict(report) if report is not None else None


def evaluate(cfg: EvalConfig, *, echo: Callable[[str], None] | None = None) -> EvalResult:
    """Run the evaluation ``cfg`` describes, one MLflow run per seed.

    Raises:
        EvalError: bad input (unknown task, empty split, missing labels or masks, weights
            of another architecture, no pretraining run to evaluate, ...), with what to do.
        ConfigError: a bad config value.
    """
    cfg.validate()
    say = _Echo(echo)
    from radengine import tracking

    if cfg.tracking.enabled and not tracking.mlflow_available():
        raise EvalError(
            "MLflow is not installed: pip install 'radengine[tracking]', or run with "
            "--tracking none"
        )
    uri = tracking.tracking_uri(cfg.tracking.uri)
    device = resolve_device(cfg.device)
    amp = amp_dtype(cfg.precision, device)
    init = resolve_init(cfg.init.source, fmt=cfg.init.format, uri=uri, echo=say)
    store = _open_store(cfg, cfg.progress)
    task_name = cfg.task or default_task(cfg.protocol, store)
    # The task is checked (name, protocol, labels, splits) before any model is built; its
    # targets (organ presence reads every mask) are computed once, subsets per seed.
    full_task = build_task(store, task_name, cfg.protocol, split_seed=cfg.data.split_seed)
    for seed in cfg.seeds:
        full_task.with_label_fraction(cfg.data.label_fraction, seed)  # empty subsets fail here
    view = _view(cfg, init)
    try:
        in_chans = view.channels(store.kind)
    except ValueError as exc:
        raise EvalError(f"input.intensity: {exc}") from None
    arch = _arch(cfg, init)
    if cfg.protocol == "segment" and not arch.startswith("resnet"):
        raise EvalError(f"eval segment needs a ResNet encoder (U-Net skips); got {arch}")
    channels_last = (
        cfg.model.channels_last
        if cfg.model.channels_last is not None
        else not arch.startswith("vit")
    )
    cfg = _resolved(cfg, init, task_name, arch, channels_last, view)
    out = _out_dir(cfg, task_name, init)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", eval_config.dump_yaml(cfg).encode())
    features = _Features(cfg, store, view, device, amp, channels_last, say)
    precision = str(amp).replace("torch.", "") if amp else "fp32"
    say(
        f"eval {cfg.protocol}: task {task_name} on {store.path} ({len(store)} samples), init "
        f"{init.source} ({init.kind}), {arch} at {view.size} px, {device} {precision}, "
        f"label fraction {cfg.data.label_fraction}, seeds {cfg.seeds}"
    )
    frozen = cfg.protocol in ("knn", "linear")
    built: tuple[nn.Module, Any, str] | None = None
    results: list[SeedResult] = []
    run_tags: dict[str, Any] = {}
    primary = ""
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        task = full_task.with_label_fraction(cfg.data.label_fraction, seed)
        primary = task.spec.primary_metric
        if built is None or not frozen or init.state is None:
            torch.manual_seed(sub_seed(seed, "init"))
            encoder, report = build_encoder(
                init, arch, in_chans, img_size=view.size, key=cfg.init.key,
                strict=cfg.init.strict,
            )  # fmt: skip
            if report is not None and seed == cfg.seeds[0]:
                say(f"loaded the init: {report.summary()}")
            encoder = encoder.to(device)
            if channels_last:
                encoder = encoder.to(memory_format=torch.channels_last)
            digest = module_digest(encoder) if frozen else ""
            built = (encoder, report, digest)
        encoder, report, digest = built
        tracker = tracking.Tracker(uri, cfg.tracking.experiment, enabled=cfg.tracking.enabled)
        ctx = _Context(cfg, seed, device, amp, channels_last, view, features, tracker, say)
        run_name = cfg.tracking.run_name or f"{cfg.protocol}-{task_name}-{init.label}"
        eval_domain = "ct" if store.kind == "ct" else "natural"
        tags = {
            **cfg.tracking.tags,
            "study": cfg.study,
            "stage": "eval",
            "protocol": cfg.protocol,
            "task": task_name,
            "init": init.source,
            "init_kind": init.kind,
            "arch": arch,
            "domain": eval_domain,
            "label_fraction": cfg.data.label_fraction,
            "seed": seed,
            "primary_metric": f"test/{primary}",
            "pretrain_run_id": init.pretrain_run_id,
            **init.tags,
            "out": str(out),
        }
        if init.kind == "file" and report is not None:  # the layout detected, not "auto"
            tags["method"] = f"import:{report.format}"
        tags.setdefault("method", "none")
        run_tags = {k: v for k, v in tags.items() if k not in ("seed", "out")}
        resolved = {
            "arch": arch,
            "in_chans": in_chans,
            "size": view.size,
            "intensity": view.intensity,
            "repeat": view.repeat,
            "device": device.type,
            "precision": precision,
            "train_samples": len(task.splits["train"]),
            "val_samples": len(task.splits["val"]),
            "test_samples": len(task.splits["test"]),
            "train_patients": task.train_patients[1],
            "train_patients_all": task.train_patients[0],
            "num_outputs": task.num_outputs,
            "init_kind": init.kind,
            "feature_dim": getattr(encoder, "feature_dim", None),
        }
        params = {**eval_config.base_config.to_dict(cfg), "resolved": resolved}
        params["seeds"] = [seed]
        run_id = tracker.start(
            run_name=f"{run_name}-s{seed}",
            tags=tags,
            params=params,
            system_metrics=cfg.tracking.system_metrics,
        )
        try:
            tracker.log_dict(eval_config.base_config.to_dict(cfg), "config.yaml")
            if report is not None:
                tracker.log_dict(_report_dict(report), "init_report.json")
            for context, split in (("train", "train"), ("test", "test")):
                tracker.log_dataset(
                    name=f"{eval_domain}:{store.path.name}:{split}",
                    path=str(store.path),
                    digest=features.store_digest,
                    num_samples=len(task.splits[split]),
                    fraction=cfg.data.label_fraction if split == "train" else 1.0,
                    domain=eval_domain,
                    context=context,
                    extra={"task": task_name, "split": split},
                )
            if cfg.protocol == "knn":
                res = _run_knn(ctx, task, encoder, digest)
            elif cfg.protocol == "linear":
                res = _run_linear(ctx, task, encoder, digest)
            elif cfg.protocol == "finetune":
                res = _run_finetune(ctx, task, encoder)
            else:
                res = _run_segment(ctx, task, encoder)
            res.run_id = run_id
            res.seconds = time.perf_counter() - t0
            final = {f"test/{k}": v for k, v in res.test.items()}
            final.update({f"val/{k}": v for k, v in res.val.items()})
            final["time/seconds"] = res.seconds
            step = res.details.get("epochs_run") or (
                cfg.linear.epochs if cfg.protocol == "linear" else 0
            )
            tracker.log_metrics(final, step=step)
            tracker.set_tags({k: v for k, v in res.details.items() if v is not None})
        except BaseException as exc:
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        tracker.finish("FINISHED")
        results.append(res)
        detail = ", ".join(f"{k} {v}" for k, v in res.details.items() if v is not None)
        say(
            f"seed {seed}: test {primary} {_fmt(res.test.get(primary, math.nan))}, val "
            f"{_fmt(res.val.get(primary, math.nan))} ({detail}) in {res.seconds:.1f} s"
            + (f"; MLflow run {run_id}" if run_id else "")
        )
    result = EvalResult(
        protocol=cfg.protocol,
        task=task_name,
        init=init.source,
        primary=primary,
        out=out,
        seeds=results,
        pretrain_run_id=init.pretrain_run_id,
        tracking_uri=uri if cfg.tracking.enabled else None,
    )
    summary = {
        "protocol": cfg.protocol,
        "task": task_name,
        "init": init.source,
        "pretrain_run_id": init.pretrain_run_id,
        "primary_metric": f"test/{primary}",
        "data_digest": features.store_digest,  # the eval store's content (radengine report)
        "tags": {k: str(v) for k, v in run_tags.items() if v is not None},
        "seeds": [dataclasses.asdict(s) for s in results],
    }
    atomic_write_bytes(out / "results.json", (json.dumps(summary, indent=2) + "\n").encode())
    return result
