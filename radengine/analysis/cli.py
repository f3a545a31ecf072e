"""The ``radengine report`` and ``radengine analyze cka|domain|embed`` commands (registered
by radengine.cli). Building the parsers imports neither torch nor mlflow."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_parsers"]


def _tracking(value: str | None) -> tuple[str | None, bool]:
    """``--tracking`` -> (uri, enabled)."""
    if value == "none":
        return None, False
    return value, True


def _cmd_report(args: argparse.Namespace) -> int:
    from radengine.eval.report import make_report

    uri, enabled = _tracking(args.tracking)
    res = make_report(
        uri=uri,
        tracking_enabled=enabled,
        study=args.study,
        experiments=args.experiment,
        baseline=args.baseline,
        metrics=args.metric,
        out=args.out,
        results_dir=args.results,
        report_experiment=args.report_experiment,
    )
    print(res.text, end="")
    print(f"\nwrote {', '.join(p.name for p in res.files.values())} to {res.out}")
    if res.run_id:
        print(f"MLflow report run {res.run_id} (experiment {args.report_experiment})")
    return 0


def _common(args: argparse.Namespace) -> dict:
    uri, enabled = _tracking(args.tracking)
    return dict(
        size=args.size,
        arch=args.arch,
        seed=args.seed,
        uri=uri,
        tracking=enabled,
        experiment=args.experiment,
        out=args.out,
    )


def _run_analysis(fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run one analysis (its errors go through radengine.cli.run_command) and say where its
    outputs are."""
    res = fn(args)
    print(f"wrote {res.out}" + (f"; MLflow run {res.run_id}" if res.run_id else ""))
    return 0


def _cmd_cka(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace):
        from radengine.analysis.run import run_cka

        layers = [s for s in args.layers.split(",") if s] if args.layers else None
        res = run_cka(
            args.a,
            args.b,
            data=args.data,
            domain=args.domain,
            samples=args.samples,
            kernel=args.kernel,
            preset=args.preset,
            layers=layers,
            pooling=args.pooling,
            **_common(args),
        )
        width = max(len(n) for n in res.layers_a)
        print(f"{res.kernel} CKA on {res.num_samples} images (rows A, columns B)")
        print(" " * width + "  " + "  ".join(f"{n[:10]:>10}" for n in res.layers_b))
        for name, row in zip(res.layers_a, res.matrix.tolist(), strict=True):
            print(f"{name:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in row))
        return res

    return _run_analysis(go, args)


def _cmd_domain(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace):
        from radengine.analysis.run import run_domain
        from radengine.fmt import percent

        res = run_domain(
            args.init,
            ct=args.ct,
            natural=args.natural,
            samples=args.samples,
            test_fraction=args.test_fraction,
            **_common(args),
        )
        print(f"CT vs natural linear probe, held-out accuracy (chance {percent(res.chance)}):")
        for name in res.layers:
            r = res.results[name]
            print(
                f"  {name:<8} test {percent(r.test_accuracy):>7}  "
                f"train {percent(r.train_accuracy):>7}  "
                f"({r.num_train} train, {r.num_test} held out)"
            )
        return res

    return _run_analysis(go, args)


def _cmd_embed(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace):
        from radengine.analysis.run import run_embed

        res = run_embed(
            args.init, data=args.data, samples=args.samples, method=args.method, **_common(args)
        )
        for note in res.notes:
            print(f"note: {note}")
        stems = dict.fromkeys(p.stem for p in res.figures)
        print(f"{len(res.domains)} points; figures (.png, .svg): {', '.join(stems)}")
        return res

    return _run_analysis(go, args)


def _add_common(q: argparse.ArgumentParser, samples: int) -> None:
    q.add_argument(
        "--samples", type=int, default=samples, metavar="N", help=f"images (default {samples})"
    )
    q.add_argument("--size", type=int, help="input size (default: the pretraining's, else 224)")
    q.add_argument("--arch", help="architecture (default: the weights', resnet18 for scratch)")
    q.add_argument("--seed", type=int, default=0, help="sampling and scratch-init seed")
    q.add_argument("--out", metavar="DIR", help="output folder (default runs/analysis/<name>)")
    q.add_argument(
        "--tracking", metavar="URI|none", help="MLflow tracking URI, or none to log nothing"
    )
    q.add_argument(
        "--experiment",
        default="radengine-analysis",
        help="MLflow experiment of the analysis run (default radengine-analysis)",
    )


INIT_HELP = "scratch | MLflow run id or runs:/ID | models:/... | run folder | checkpoint file"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``analyze`` to radengine's subcommands."""
    p = sub.add_parser(
        "report",
        help="the transfer table (mean +- std over seeds, delta with 95%% CI, Welch p and "
        "Holm-adjusted p vs a baseline) from the eval runs in MLflow",
        description="Collect the finished eval runs (tag stage=eval) into the transfer table: "
        "rows = initialisations, columns = comparable runs (same task, protocol and its "
        "settings, label fraction, eval data digest and split, input size, intensity and "
        "normalisation; runs that differ get separate columns, labelled with the difference, "
        "and a warning), cells = mean +- std over seeds with the delta of means, its 95% "
        "confidence interval, Welch's t-test p-value and the Holm-adjusted p-value against "
        "the baseline row. Prints it and writes report.{txt,md,csv,html} and the figure "
        "report.{png,svg}; logs them as a run tagged stage=report.",
    )
    p.add_argument(
        "--study", help="keep runs whose `study` tag (or experiment name) is NAME", metavar="NAME"
    )
    p.add_argument(
        "--baseline",
        metavar="INIT",
        help="baseline row: its name, --init value or pretraining run id (default scratch)",
    )
    p.add_argument("--tracking", metavar="URI|none", help="MLflow tracking URI; none: --results")
    p.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="only this MLflow experiment (repeatable; default all)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default runs/report/<study>-<time>)"
    )
    p.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="metric, e.g. accuracy or test/auc_mean (repeatable; default each run's primary)",
    )
    p.add_argument(
        "--results",
        default="runs/eval",
        metavar="DIR",
        help="with --tracking none: where eval wrote its results.json folders (runs/eval)",
    )
    p.add_argument(
        "--report-experiment",
        default="radengine-report",
        metavar="NAME",
        help="MLflow experiment of the report run (default radengine-report)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "analyze",
        help="feature analysis: cka | domain | embed",
        description="Feature-space analysis of encoders (CKA between layers, CT-vs-natural "
        "separability, 2-D embeddings). With no data options: the built-in synthetic stores.",
    )
    what = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    q = what.add_parser(
        "cka",
        help="CKA between the layers of two encoders (heatmap + matrix)",
        description="CKA between the same layers of encoders A and B on a store's images: "
        "heatmap (PNG, SVG), matrix (CSV, JSON), diagonal as MLflow metrics.",
    )
    q.add_argument("--a", required=True, metavar="INIT", help=f"encoder A: {INIT_HELP}")
    q.add_argument("--b", required=True, metavar="INIT", help="encoder B (same forms)")
    q.add_argument("--data", metavar="STORE", help="store (default: built-in synthetic CT)")
    q.add_argument("--domain", choices=["ct", "natural"], default="ct", help="built-in store")
    q.add_argument("--kernel", choices=["linear", "rbf"], help="default linear (preset: rbf)")
    q.add_argument(
        "--preset",
        choices=["early-layers"],
        help="study A: RBF CKA of conv1, layer1.0.conv1, layer1.0.conv2",
    )
    q.add_argument("--layers", metavar="L,L,...", help="layers (default: stem, layer1..layer4)")
    q.add_argument("--pooling", choices=["avg", "flatten"], default="avg", help="default avg")
    _add_common(q, 256)
    q.set_defaults(func=_cmd_cka)

    q = what.add_parser(
        "domain",
        help="linear probe telling CT from natural-image features, per layer",
        description="A logistic-regression probe per layer (stem, layer1..4, pooled) telling "
        "CT slices from natural images; held-out accuracy (patient-level split).",
    )
    q.add_argument(
        "--init", metavar="INIT", help=f"{INIT_HELP} (default: the newest pretraining run)"
    )
    q.add_argument("--ct", metavar="STORE", help="CT store (default: built-in synthetic CT)")
    q.add_argument(
        "--natural", metavar="STORE", help="natural-image store (default: built-in synthetic)"
    )
    q.add_argument(
        "--test-fraction", type=float, default=0.3, help="held-out share of patients (0.3)"
    )
    _add_common(q, 256)
    q.set_defaults(func=_cmd_domain)

    q = what.add_parser(
        "embed",
        help="2-D embedding (PCA; t-SNE with scikit-learn) coloured by domain and label",
        description="PCA (and t-SNE when scikit-learn is installed) of the pooled features "
        "of images from each store, as scatter plots coloured by domain and by label.",
    )
    q.add_argument(
        "--init", metavar="INIT", help=f"{INIT_HELP} (default: the newest pretraining run)"
    )
    q.add_argument(
        "--data",
        action="append",
        metavar="STORE",
        help="store (repeatable; default: built-in synthetic CT and natural)",
    )
    q.add_argument("--method", choices=["auto", "pca", "tsne"], default="auto", help="default auto")
    _add_common(q, 200)
    q.set_defaults(func=_cmd_embed)
