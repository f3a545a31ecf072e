"""What the ``radengine analyze`` commands share: an encoder from ``--init`` (as ``radengine
eval`` resolves it), a seeded sample of a store's images as network input, per-layer pooled
features, and the MLflow run of an analysis (``stage=analysis``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from radengine.data.store import Store, StoreError
from radengine.errors import UserError
from radengine.eval.features import ViewSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AnalysisError",
    "Encoder",
    "layer_features",
    "load_encoder",
    "open_store",
    "out_dir",
    "sample_rows",
    "store_domain",
    "view_for",
]

DEFAULT_SIZE = 224
EXPERIMENT = "radengine-analysis"


class AnalysisError(UserError, RuntimeError):
    """Bad input to an analysis, with what to do."""


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def open_store(path: str | None, domain: str) -> Store:
    """``path``, or the built-in synthetic store of ``domain`` ("ct" or "natural")."""
    if path is None:
        from radengine.data.builtin import builtin_store

        return builtin_store(domain, progress=False)
    try:
        store = Store(path)
    except StoreError as exc:
        raise AnalysisError(f"data store: {exc}") from None
    if not store.finished:
        raise AnalysisError(f"store {path} is incomplete (an ingest did not finish); rerun it")
    if len(store) == 0:
        raise AnalysisError(f"store {path} is empty")
    return store


def store_domain(store: Store) -> str:
    return "ct" if store.kind == "ct" else "natural"


def view_for(pretrain_config: dict[str, Any] | None, size: int | None) -> ViewSpec:
    """The input mapping of the pretraining (its ``augment`` size, intensity, repeat,
    mean/std), else radengine eval's defaults (224 px, min-max x 3); ``size`` overrides."""
    pre = ((pretrain_config or {}).get("augment")) or {}

    def tup(v: Any) -> tuple[float, ...] | None:
        return tuple(float(x) for x in v) if v is not None else None

    intensity = pre.get("intensity") or "minmax"
    if isinstance(intensity, list):
        intensity = tuple(intensity)
    return ViewSpec(
        size=int(size or pre.get("size") or DEFAULT_SIZE),
        intensity=intensity,
        repeat=int(pre.get("repeat") or 3),
        mean=tup(pre.get("mean")),
        std=tup(pre.get("std")),
    )


@dataclass
class Encoder:
    """An encoder built from ``--init``: the module (eval mode, CPU), its architecture, the
    resolved init (for tags) and its input mapping."""

    model: nn.Module
    arch: str
    source: str
    kind: str
    label: str
    tags: dict[str, str]
    pretrain_config: dict[str, Any] | None
    pretrain_run_id: str | None


def load_encoder(
    source: str | None,
    *,
    uri: str,
    arch: str | None = None,
    in_chans: int = 3,
    img_size: int = DEFAULT_SIZE,
    seed: int = 0,
    echo: Callable[[str], None] = _echo,
) -> Encoder:
    """Resolve ``--init`` like ``radengine eval`` (scratch, a run id, ``models:/``, a folder,
    a checkpoint or a published weights file) and build the backbone.

    Args:
        source: the ``--init`` value (None: the newest finished pretraining run).
        uri: tracking URI for run and model look-ups.
        arch: the architecture (default: the weights' own, else resnet18 for scratch).
        in_chans: input channels.
        img_size: input size (ViTs only).
        seed: seeds torch before building (scratch weights are a function of it).
    """
    from radengine.eval.common import EvalError
    from radengine.eval.init import build_encoder, infer_arch, nested_keys, resolve_init

    try:
        init = resolve_init(source, uri=uri, echo=echo)
        name = arch or init.arch
        if name is None and init.state is not None:
            name = infer_arch(nested_keys(init.state))
            if name is None:
                raise AnalysisError(
                    f"--init {source}: cannot tell the architecture from the weights; pass "
                    "--arch (e.g. --arch resnet50)"
                )
        name = name or "resnet18"
        torch.manual_seed(seed)
        model, _ = build_encoder(init, name, in_chans, img_size=img_size)
    except EvalError as exc:
        raise AnalysisError(str(exc)) from None
    model.eval()
    return Encoder(
        model=model,
        arch=name,
        source=init.source,
        kind=init.kind,
        label=init.label,
        tags=dict(init.tags),
        pretrain_config=init.pretrain_config,
        pretrain_run_id=init.pretrain_run_id,
    )


def sample_rows(store: Store, n: int, seed: int) -> np.ndarray:
    """``min(n, len(store))`` distinct rows, seeded, in store order (sequential reads)."""
    if n < 1:
        raise AnalysisError(f"--samples must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    k = min(n, len(store))
    return np.sort(rng.choice(len(store), size=k, replace=False))


def images(store: Store, rows: np.ndarray, view: ViewSpec) -> Tensor:
    """Network input ``(len(rows), C, size, size)`` float32 for store ``rows``."""
    try:
        return view.make(torch.from_numpy(store.images(rows)))
    except ValueError as exc:
        raise AnalysisError(f"input mapping: {exc}") from None


def _pool(t: Tensor) -> Tensor:
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.reshape(t.shape[0], -1)


@torch.no_grad()
def layer_features(
    model: nn.Module, x: Tensor, *, batch_size: int = 64, layers: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Average-pooled ``forward_intermediates`` outputs ``{layer: (N, C)}`` float32, plus
    ``"pooled"``: ``forward_features`` (the representation the eval protocols use)."""
    if not callable(getattr(model, "forward_intermediates", None)):
        raise AnalysisError(f"{type(model).__name__} has no forward_intermediates")
    parts: dict[str, list[Tensor]] = {}
    training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            inter = model.forward_intermediates(xb)
            for name, t in inter.items():
                if layers is None or name in layers:
                    parts.setdefault(name, []).append(_pool(t).float())
            if layers is None or "pooled" in layers:
                parts.setdefault("pooled", []).append(model.forward_features(xb).float())
    finally:
        model.train(training)
    return {k: torch.cat(v) for k, v in parts.items()}


def out_dir(out: str | None, what: str) -> Path:
    folder = (
        Path(out) if out else Path("runs") / "analysis" / f"{what}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_run(
    *,
    uri: str | None,
    enabled: bool,
    experiment: str,
    analysis: str,
    run_name: str,
    tags: dict[str, object],
    params: dict[str, object],
    metrics: dict[str, float],
    folder: Path,
    figures: Mapping[str, Figure] | None = None,
) -> str | None:
    """One MLflow run tagged ``stage=analysis, analysis=<name>`` with the folder's files as
    artifacts, the ``figures`` (``{stem: figure}``, saved in the folder as ``<stem>.png``
    and ``<stem>.svg``) logged as figures under the same names; returns its id (None with
    tracking off)."""
    if not enabled:
        return None
    from radengine import tracking
    from radengine.analysis import plots

    if not tracking.mlflow_available():
        raise AnalysisError(
            f"MLflow is not installed ({tracking.INSTALL_HINT}); or pass --tracking none"
        )
    tracker = tracking.Tracker(uri, experiment)
    run_id = tracker.start(
        run_name=run_name,
        tags={"stage": "analysis", "analysis": analysis, **tags},
        params=params,
        system_metrics=False,
    )
    try:
        tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=0)
        figures = dict(figures or {})
        drawn = {f"{stem}.{fmt}" for stem in figures for fmt in plots.FORMATS}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in drawn:
                tracker.log_artifact(path, analysis)
        for stem, fig in figures.items():
            for fmt in plots.FORMATS:
                kwargs = plots.save_kwargs(fig, fmt)
                tracker.log_figure(fig, f"{analysis}/{stem}.{fmt}", save_kwargs=kwargs)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return run_id
