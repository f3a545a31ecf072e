"""The ``radengine eval`` and ``radengine weights`` commands (registered by radengine.cli)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radengine.eval.config import EvalConfig

__all__ = ["add_parsers"]

# radengine.eval.weights.FORMATS, spelled out so that building the parser imports no torch
# (a test checks they agree).
FORMATS = ("auto", "torchvision", "moco", "simclr", "byol", "barlow", "swav", "dino")

PROTOCOL_HELP = {
    "knn": "weighted kNN on frozen features (k 10, 20, 100, 200; T 0.07)",
    "linear": "a grid of linear heads on cached frozen features, trained together",
    "finetune": "the whole encoder + a linear head (study A / study B recipes)",
    "segment": "a U-Net decoder on the encoder (finetuned or frozen); Dice per class",
}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds wants integers like 42,1,2,3, got {text!r}"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds is empty")
    return seeds


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    """The resolved EvalConfig of an ``eval PROTOCOL`` command line (defaults, --config,
    flags, overrides); reads only YAML.

    Raises:
        radengine.config.ConfigError: a bad key or value, or a config for another protocol.
    """
    from radengine.config import ConfigError
    from radengine.eval.config import load_eval_config

    base: dict = {"protocol": args.protocol}
    if args.init is not None:
        base.setdefault("init", {})["source"] = args.init
    if args.init_format is not None:
        base.setdefault("init", {})["format"] = args.init_format
    if args.task is not None:
        base["task"] = args.task
    data: dict = {}
    if args.data is not None:
        data["store"] = args.data
    if args.domain is not None:
        data["domain"] = args.domain
    if args.label_fraction is not None:
        data["label_fraction"] = args.label_fraction
    if data:
        base["data"] = data
    if args.seeds is not None:
        base["seeds"] = args.seeds
    elif args.seed is not None:
        base["seeds"] = [args.seed]
    if args.device is not None:
        base["device"] = args.device
    if args.out is not None:
        base["out"] = args.out
    if args.tracking == "none":
        base["tracking"] = {"enabled": False}
    elif args.tracking:
        base["tracking"] = {"uri": args.tracking}
    if args.config:  # a YAML for another protocol is a mistake, not something to override
        from radengine.config import _read_with_bases

        wanted = _read_with_bases(Path(args.config), set()).get("protocol")
        if wanted not in (None, args.protocol):
            raise ConfigError(
                f"{args.config} is a config for `eval {wanted}`, but the command is "
                f"`eval {args.protocol}`"
            )
    cfg = load_eval_config(args.config, args.overrides, base=base)
    if args.protocol != cfg.protocol:
        raise ConfigError(
            f"config key 'protocol' is {cfg.protocol!r} but the command is `eval {args.protocol}`"
        )
    return cfg


def _cmd_eval(args: argparse.Namespace) -> int:
    cfg = _eval_config(args)
    if args.print_config:
        from radengine.cli import print_output
        from radengine.eval.config import dump_yaml

        print_output(dump_yaml(cfg))
        return 0
    from radengine.eval.run import evaluate
    from radengine.fmt import percent

    result = evaluate(cfg)
    primary = result.primary
    values = result.primary_values()
    lines = ["", f"eval {result.protocol} {result.task} (init {result.init}):"]
    for s in result.seeds:
        extra = ", ".join(f"{k} {v}" for k, v in s.details.items() if v is not None)
        lines.append(
            f"  seed {s.seed:<5} test/{primary} {percent(s.test.get(primary))}"
            + (f"  ({extra})" if extra else "")
            + (f"  run {s.run_id}" if s.run_id else "")
        )
    if len(values) > 1 and all(math.isfinite(v) for v in values):
        from radengine.eval.stats import summarize

        sm = summarize(values)
        lines.append(f"  mean +- std over {sm.n} seeds: {percent(sm.mean)} +- {percent(sm.std)}")
    lines.append(f"  results        {result.out / 'results.json'}")
    if result.tracking_uri:
        lines.append(f"  MLflow         {result.tracking_uri} (radengine ui)")
    if result.pretrain_run_id:
        lines.append(f"  pretraining    run {result.pretrain_run_id}")
    print("\n".join(lines))
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from radengine.eval.importer import import_weights

    res = import_weights(
        args.file,
        fmt=args.format,
        name=args.name,
        arch=args.arch,
        key=args.key,
        in_chans=args.in_chans,
        strict=not args.no_strict,
        uri=args.tracking,
        experiment=args.experiment,
    )
    print(
        "\n".join(
            [
                f"imported {args.file} as {res.arch} ({res.report.summary()})",
                f"  MLflow run     {res.run_id}",
                f"  model          {res.model_uri}",
                *([f"  registered     {res.registered_uri}"] if res.registered_uri else []),
                f"  evaluate it    radengine eval linear --init {res.model_uri}",
            ]
        )
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``weights`` to radengine's subcommands."""
    p = sub.add_parser(
        "eval",
        help="evaluate an encoder: knn | linear | finetune | segment on a store's task",
        description="Evaluate an encoder on a downstream task, one MLflow run per seed. "
        "Config: defaults, then --config YAML, then these flags, then key=value overrides "
        "(e.g. linear.epochs=50 knn.k=[20]). With no --init: the newest finished "
        "pretraining run in the tracking store; with no --data: the built-in synthetic CT "
        "store (body-region task).",
    )
    proto = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name, text in PROTOCOL_HELP.items():
        q = proto.add_parser(name, help=text, description=text)
        q.add_argument(
            "--init",
            metavar="INIT",
            help="scratch | MLflow run id or runs:/ID | models:/... | run folder | checkpoint "
            "or published weights file (default: the newest pretraining run)",
        )
        q.add_argument(
            "--init-format",
            choices=FORMATS,
            help="layout of a published checkpoint file (default auto)",
        )
        q.add_argument(
            "--task",
            help="body_region | class | organs | lesion | contrast | segmentation (default: body_region "
            "on CT, class on images, segmentation for `segment`)",
        )
        q.add_argument(
            "--data", metavar="STORE", help="store to evaluate on (default: built-in synthetic)"
        )
        q.add_argument("--domain", choices=["ct", "natural"], help="built-in store's domain")
        q.add_argument(
            "--label-fraction",
            type=float,
            metavar="F",
            help="share of training patients with labels, in (0, 1] (default 1)",
        )
        seeds = q.add_mutually_exclusive_group()
        seeds.add_argument("--seed", type=int, help="one seed (default 0)")
        seeds.add_argument(
            "--seeds", type=_seeds, metavar="S,S,...", help="several seeds, one run each"
        )
        q.add_argument("--config", metavar="YAML", help="experiment config, e.g. experiments/eval/")
        q.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
        q.add_argument("--out", metavar="DIR", help="results folder (default runs/eval/<name>)")
        q.add_argument(
            "--tracking", metavar="URI|none", help="MLflow tracking URI, or none to log nothing"
        )
        q.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config as YAML and exit: nothing runs, no file or "
            "MLflow run is made",
        )
        q.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        q.set_defaults(func=_cmd_eval, protocol=name)

    p = sub.add_parser(
        "weights",
        help="bring published checkpoints in: `weights import FILE --format F` -> models:/ URI",
    )
    wsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    w = wsub.add_parser(
        "import",
        help="convert a published ResNet checkpoint and log it as an MLflow model",
        description="Convert a checkpoint file you have (torchvision, MoCo, SimCLR, BYOL, "
        "Barlow Twins, SwAV, DINO layouts) to radengine's ResNet and log it as an MLflow "
        "model; prints the models:/ URI to pass to `radengine eval --init`. Nothing is "
        "downloaded.",
    )
    w.add_argument("file", type=Path, help="the checkpoint file")
    w.add_argument("--format", choices=FORMATS, default="auto", help="its layout (default auto)")
    w.add_argument("--name", help="registered model name (default: the file's stem)")
    w.add_argument("--arch", help="resnet18 | resnet34 | resnet50 | resnet101 (default: detected)")
    w.add_argument("--key", help="path to the state dict inside the file, e.g. student")
    w.add_argument("--in-chans", type=int, default=3, help="input channels of the model (3)")
    w.add_argument("--no-strict", action="store_true", help="load despite missing/unexpected keys")
    w.add_argument("--tracking", metavar="URI", help="MLflow tracking URI (default ./mlflow.db)")
    w.add_argument(
        "--experiment", default="radengine-weights", help="MLflow experiment (radengine-weights)"
    )
    w.set_defaults(func=_cmd_weights)
