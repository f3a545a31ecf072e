"""The ``radengine analyze`` commands as functions: ``run_cka``, ``run_domain``, ``run_embed``.

Each resolves its encoders like ``radengine eval --init``, samples a store (default: the
built-in synthetic CT and natural stores), writes its files (CSV/JSON, and matplotlib
figures as PNG + SVG) to an output folder (default ``runs/analysis/<what>-<time>/``) and,
unless tracking is off, logs one MLflow run tagged ``stage=analysis, analysis=<what>`` in
``radengine-analysis`` with the files as artifacts (the figures with ``log_figure``) and the
headline numbers as metrics.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radengine.analysis import plots
from radengine.analysis.common import (
    EXPERIMENT,
    AnalysisError,
    _echo,
    images,
    layer_features,
    load_encoder,
    log_run,
    open_store,
    out_dir,
    sample_rows,
    store_domain,
    view_for,
)

__all__ = ["CKA_PRESETS", "run_cka", "run_domain", "run_embed"]

# Study A's feature-reuse analysis: RBF CKA of the first conv and the first residual
# block's convolutions (pretrained vs finetuned, CT vs ImageNet).
CKA_PRESETS: dict[str, dict[str, Any]] = {
    "early-layers": {"layers": ["conv1", "layer1.0.conv1", "layer1.0.conv2"], "kernel": "rbf"},
}


def _uri(uri: str | None, enabled: bool) -> str:
    from radengine import tracking

    return tracking.tracking_uri(uri if enabled else None)


def _key(name: str) -> str:
    return name.replace("|", "_")


@dataclass
class CKAResult:
    matrix: torch.Tensor
    layers_a: list[str]
    layers_b: list[str]
    num_samples: int
    kernel: str
    out: Path
    metrics: dict[str, float]
    run_id: str | None = None


def run_cka(
    a: str,
    b: str,
    *,
    data: str | None = None,
    domain: str = "ct",
    samples: int = 256,
    kernel: str | None = None,
    preset: str | None = None,
    layers: Sequence[str] | None = None,
    pooling: str = "avg",
    size: int | None = None,
    arch: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    uri: str | None = None,
    tracking: bool = True,
    experiment: str = EXPERIMENT,
    out: str | None = None,
    echo: Callable[[str], None] = _echo,
) -> CKAResult:
    """CKA between the layers of encoders ``a`` and ``b`` on ``samples`` images of a store.

    The same layers are compared on both (``layers``, else the preset's, else every
    ``forward_intermediates`` stage). Input mapping: encoder A's pretraining one (size,
    intensity, normalisation), else min-max x 3 at 224 px; ``size`` overrides. With
    ``a == b`` the one encoder is compared with itself (ones on the diagonal).
    """
    from radengine.analysis.cka import layer_cka

    if preset is not None:
        if preset not in CKA_PRESETS:
            raise AnalysisError(f"unknown preset {preset!r}; known: {', '.join(CKA_PRESETS)}")
        layers = layers or CKA_PRESETS[preset]["layers"]
        kernel = kernel or CKA_PRESETS[preset]["kernel"]
    kernel = kernel or "linear"
    if kernel not in ("linear", "rbf"):
        raise AnalysisError(f"--kernel must be linear or rbf, got {kernel!r}")
    if samples < 4:
        raise AnalysisError(f"--samples must be at least 4 for CKA, got {samples}")
    turi = _uri(uri, tracking)
    store = open_store(data, domain)
    enc_a = load_encoder(a, uri=turi, arch=arch, seed=seed, echo=echo)
    view = view_for(enc_a.pretrain_config, size)
    in_chans = view.channels(store.kind)
    if in_chans != 3:
        enc_a = load_encoder(a, uri=turi, arch=arch, in_chans=in_chans, seed=seed, echo=echo)
    enc_b = (
        enc_a
        if b == a
        else load_encoder(b, uri=turi, arch=arch, in_chans=in_chans, seed=seed, echo=echo)
    )
    rows = sample_rows(store, samples, seed)
    x = images(store, rows, view)
    echo(
        f"analyze cka: {enc_a.label} ({enc_a.arch}) vs {enc_b.label} ({enc_b.arch}) on "
        f"{len(rows)} images of {store.path} at {view.size} px, {kernel} kernel"
    )
    try:
        res = layer_cka(
            enc_a.model,
            enc_b.model,
            x,
            layers_a=layers,
            layers_b=layers,
            kernel=kernel,  # type: ignore[arg-type]
            pooling=pooling,  # type: ignore[arg-type]
            batch_size=batch_size,
        )
    except ValueError as exc:
        raise AnalysisError(f"CKA: {exc}") from None
    folder = out_dir(out, "cka")
    m = res.matrix.tolist()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f"A \\ B ({kernel} CKA)", *res.layers_b])
    for name, row in zip(res.layers_a, m, strict=True):
        w.writerow([name, *(repr(v) for v in row)])
    (folder / "cka.csv").write_text(buf.getvalue())
    title = f"{kernel} CKA: {enc_a.label} vs {enc_b.label} ({res.num_samples} images)"
    fig = plots.heatmap(
        m,
        res.layers_a,
        res.layers_b,
        title=title,
        xlabel=f"B: {enc_b.label}",
        ylabel=f"A: {enc_a.label}",
        colorbar_label=f"{kernel} CKA",
    )
    plots.save_figure(fig, folder / "cka")
    metrics: dict[str, float] = {}
    if res.layers_a == res.layers_b:
        diag = [m[i][i] for i in range(len(res.layers_a))]
        metrics = {f"cka/{_key(n)}": v for n, v in zip(res.layers_a, diag, strict=True)}
        finite = [v for v in diag if math.isfinite(v)]
        if finite:
            metrics["cka/diagonal_mean"] = sum(finite) / len(finite)
    else:
        for i, na in enumerate(res.layers_a):
            for j, nb in enumerate(res.layers_b):
                metrics[f"cka/{_key(na)}--{_key(nb)}"] = m[i][j]
    (folder / "cka.json").write_text(
        json.dumps(
            {
                "a": enc_a.source,
                "b": enc_b.source,
                "kernel": kernel,
                "pooling": pooling,
                "preset": preset,
                "num_samples": res.num_samples,
                "layers_a": res.layers_a,
                "layers_b": res.layers_b,
                "matrix": m,
                "store": str(store.path),
            },
            indent=2,
        )
        + "\n"
    )
    run_id = log_run(
        uri=turi,
        enabled=tracking,
        experiment=experiment,
        analysis="cka",
        run_name=f"cka-{enc_a.label}-vs-{enc_b.label}",
        tags={
            "init_a": enc_a.source,
            "init_b": enc_b.source,
            "init": enc_a.source,
            "arch": enc_a.arch,
            "domain": store_domain(store),
            "kernel": kernel,
            "preset": preset,
            "pretrain_run_id": enc_a.pretrain_run_id,
            "pretrain_run_id_b": enc_b.pretrain_run_id,
        },
        params={
            "a": enc_a.source,
            "b": enc_b.source,
            "kernel": kernel,
            "pooling": pooling,
            "layers": ",".join(res.layers_a),
            "samples": res.num_samples,
            "size": view.size,
            "store": str(store.path),
            "seed": seed,
        },
        metrics=metrics,
        folder=folder,
        figures={"cka": fig},
    )
    return CKAResult(
        res.matrix, res.layers_a, res.layers_b, res.num_samples, kernel, folder, metrics, run_id
    )


@dataclass
class DomainResult:
    layers: list[str]
    results: dict[str, Any]  # layer -> ProbeResult
    out: Path
    metrics: dict[str, float]
    chance: float
    run_id: str | None = None


def run_domain(
    init: str | None,
    *,
    ct: str | None = None,
    natural: str | None = None,
    samples: int = 256,
    test_fraction: float = 0.3,
    size: int | None = None,
    arch: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    uri: str | None = None,
    tracking: bool = True,
    experiment: str = EXPERIMENT,
    out: str | None = None,
    echo: Callable[[str], None] = _echo,
) -> DomainResult:
    """Per-layer linear probe telling CT (label 0) from natural images (label 1):
    ``samples`` images of each store, split by patient (``test_fraction`` held out)."""
    from radengine.analysis.domain import linear_probe, patient_split

    turi = _uri(uri, tracking)
    ct_store, nat_store = open_store(ct, "ct"), open_store(natural, "natural")
    if ct_store.kind != "ct":
        raise AnalysisError(f"--ct {ct}: a {ct_store.kind} store, not a CT store")
    if nat_store.kind == "ct":
        raise AnalysisError(f"--natural {natural}: a CT store, not natural images")
    enc = load_encoder(init, uri=turi, arch=arch, seed=seed, echo=echo)
    view = view_for(enc.pretrain_config, size)
    if view.channels("ct") != 3:
        raise AnalysisError(
            f"the encoder's CT input has {view.channels('ct')} channels (intensity "
            f"{view.intensity!r}), natural images 3: no common input for both domains"
        )
    feats: list[dict[str, torch.Tensor]] = []
    split: list[tuple[np.ndarray, np.ndarray]] = []
    for k, store in enumerate((ct_store, nat_store)):
        rows = sample_rows(store, samples, seed + k)
        try:
            split.append(patient_split(store, rows, test_fraction, seed))
        except ValueError as exc:
            raise AnalysisError(str(exc)) from None
        feats.append(layer_features(enc.model, images(store, rows, view), batch_size=batch_size))
    echo(
        f"analyze domain: {enc.label} ({enc.arch}), {len(split[0][0]) + len(split[0][1])} CT "
        f"and {len(split[1][0]) + len(split[1][1])} natural images at {view.size} px"
    )
    layers = list(feats[0])
    results = {}
    for name in layers:
        xtr = torch.cat([feats[0][name][split[0][0]], feats[1][name][split[1][0]]])
        xte = torch.cat([feats[0][name][split[0][1]], feats[1][name][split[1][1]]])
        ytr = torch.cat([torch.zeros(len(split[0][0])), torch.ones(len(split[1][0]))])
        yte = torch.cat([torch.zeros(len(split[0][1])), torch.ones(len(split[1][1]))])
        results[name] = linear_probe(xtr, ytr, xte, yte)
    n_test = [len(split[0][1]), len(split[1][1])]
    chance = max(n_test) / sum(n_test)
    folder = out_dir(out, "domain")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "test_accuracy", "train_accuracy", "num_train", "num_test"])
    for name, r in results.items():
        w.writerow([name, repr(r.test_accuracy), repr(r.train_accuracy), r.num_train, r.num_test])
    (folder / "domain.csv").write_text(buf.getvalue())
    fig = plots.bar_chart(
        layers,
        ["held-out accuracy", "train accuracy"],
        [
            [results[n].test_accuracy * 100 for n in layers],
            [results[n].train_accuracy * 100 for n in layers],
        ],
        title=f"CT vs natural linear probe: {enc.label}",
        ylabel="accuracy (%)",
        xlabel="layer",
        reference=chance * 100,
        reference_label=f"chance ({chance * 100:.0f}%)",
        value_format="{:.0f}",
    )
    plots.save_figure(fig, folder / "domain")
    metrics = {f"domain/{n}/test_accuracy": r.test_accuracy for n, r in results.items()}
    metrics.update({f"domain/{n}/train_accuracy": r.train_accuracy for n, r in results.items()})
    metrics["domain/chance"] = chance
    run_id = log_run(
        uri=turi,
        enabled=tracking,
        experiment=experiment,
        analysis="domain",
        run_name=f"domain-{enc.label}",
        tags={
            "init": enc.source,
            "arch": enc.arch,
            "domain": "ct+natural",
            "pretrain_run_id": enc.pretrain_run_id,
            **{k: v for k, v in enc.tags.items() if k in ("method", "pretrain_domain")},
        },
        params={
            "init": enc.source,
            "ct": str(ct_store.path),
            "natural": str(nat_store.path),
            "samples": samples,
            "test_fraction": test_fraction,
            "size": view.size,
            "seed": seed,
        },
        metrics=metrics,
        folder=folder,
        figures={"domain": fig},
    )
    return DomainResult(layers, results, folder, metrics, chance, run_id)


@dataclass
class EmbedResult:
    coords: dict[str, torch.Tensor]  # method -> (n, 2)
    domains: list[str]
    labels: list[str]
    out: Path
    figures: list[Path]  # the figure files, PNG and SVG
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None


def run_embed(
    init: str | None,
    *,
    data: Sequence[str] | None = None,
    samples: int = 200,
    method: str = "auto",
    size: int | None = None,
    arch: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    uri: str | None = None,
    tracking: bool = True,
    experiment: str = EXPERIMENT,
    out: str | None = None,
    echo: Callable[[str], None] = _echo,
) -> EmbedResult:
    """2-D embedding of the pooled features of ``samples`` images from each store
    (default: the built-in CT and natural stores): PCA, plus t-SNE when scikit-learn is
    installed (``method``: auto | pca | tsne). Figures coloured by domain and by label."""
    from radengine.analysis.embed import pca_2d, tsne_2d, tsne_available

    if method not in ("auto", "pca", "tsne"):
        raise AnalysisError(f"--method must be auto, pca or tsne, got {method!r}")
    if method == "tsne" and not tsne_available():
        raise AnalysisError("t-SNE needs scikit-learn (pip install scikit-learn); or --method pca")
    turi = _uri(uri, tracking)
    stores = [open_store(p, "ct") for p in data] if data else [
        open_store(None, "ct"),
        open_store(None, "natural"),
    ]  # fmt: skip
    enc = load_encoder(init, uri=turi, arch=arch, seed=seed, echo=echo)
    view = view_for(enc.pretrain_config, size)
    if any(view.channels(s.kind) != 3 for s in stores):
        raise AnalysisError(
            f"the encoder's CT input mapping {view.intensity!r} gives "
            f"{view.channels('ct')} channels; the embedding needs 3 for every store"
        )
    kinds = [store_domain(s) for s in stores]
    feats, domains, labels, store_rows = [], [], [], []
    for k, store in enumerate(stores):
        name = kinds[k] if kinds.count(kinds[k]) == 1 else f"{kinds[k]}:{store.path.name}"
        rows = sample_rows(store, samples, seed + k)
        f = layer_features(
            enc.model, images(store, rows, view), batch_size=batch_size, layers=["pooled"]
        )["pooled"]
        feats.append(f)
        classes = store.classes
        lab = store.index["label"][rows] if "label" in store.index else np.full(len(rows), -1)
        for r, v in zip(rows.tolist(), lab.tolist(), strict=True):
            domains.append(name)
            labels.append(classes[v] if 0 <= v < len(classes) else "unlabelled")
            store_rows.append((str(store.path), r))
    x = torch.cat(feats)
    if x.shape[0] < 2:
        raise AnalysisError("the embedding needs at least 2 images in all")
    echo(f"analyze embed: {enc.label} ({enc.arch}), {x.shape[0]} images from {len(stores)} stores")
    coords: dict[str, torch.Tensor] = {}
    notes = []
    pca, explained = pca_2d(x)
    coords["pca"] = pca
    if method in ("auto", "tsne"):
        if tsne_available() and x.shape[0] >= 4:
            coords["tsne"] = tsne_2d(x, seed)
        else:
            notes.append(
                "t-SNE skipped: "
                + ("scikit-learn is not installed" if not tsne_available() else "< 4 images")
                + "; PCA only"
            )
    if method == "tsne":
        coords.pop("pca")
    folder = out_dir(out, "embed")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(coords)
    w.writerow(["store", "row", "domain", "label", *(f"{m}_{i}" for m in names for i in (1, 2))])
    for i, ((store_path, r), d, lab) in enumerate(zip(store_rows, domains, labels, strict=True)):
        vals = [repr(float(coords[m][i, j])) for m in names for j in (0, 1)]
        w.writerow([store_path, r, d, lab, *vals])
    (folder / "embed.csv").write_text(buf.getvalue())
    figures: list[Path] = []
    drawn: dict[str, Any] = {}  # stem -> matplotlib Figure
    for m, c in coords.items():
        pts = c.tolist()
        if m == "pca":
            ax = [f"PC{i + 1} ({explained[i].item() * 100:.1f}%)" for i in range(2)]
        else:
            ax = ["t-SNE 1", "t-SNE 2"]
        for by, colour, marker in (("domain", domains, None), ("label", labels, domains)):
            stem = f"embed_{m}_{by}"
            drawn[stem] = plots.scatter(
                pts,
                colour,
                marker,
                title=f"{'t-SNE' if m == 'tsne' else 'PCA'} of {enc.label} features, by {by}",
                xlabel=ax[0],
                ylabel=ax[1],
                colour_title=by,
                marker_title="domain" if marker is not None else "",
            )
            figures += plots.save_figure(drawn[stem], folder / stem).values()
    metrics = {"embed/samples": float(x.shape[0])}
    if "pca" in coords:
        metrics["embed/pca_explained_1"] = explained[0].item()
        metrics["embed/pca_explained_2"] = explained[1].item()
    run_id = log_run(
        uri=turi,
        enabled=tracking,
        experiment=experiment,
        analysis="embed",
        run_name=f"embed-{enc.label}",
        tags={
            "init": enc.source,
            "arch": enc.arch,
            "domain": "+".join(dict.fromkeys(kinds)),
            "pretrain_run_id": enc.pretrain_run_id,
            "embedding": ",".join(coords),
        },
        params={
            "init": enc.source,
            "stores": ",".join(str(s.path) for s in stores),
            "samples": samples,
            "method": method,
            "size": view.size,
            "seed": seed,
        },
        metrics=metrics,
        folder=folder,
        figures=drawn,
    )
    return EmbedResult(coords, domains, labels, folder, figures, notes, run_id)
