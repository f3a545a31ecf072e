"""The `radengine` command. Subcommands are verbs; each is a function taking the parsed
arguments and returning an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from radengine import info

    data = info.collect()
    print(json.dumps(data, indent=2) if args.json else info.format_text(data))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from radengine.data import builtin

    if args.domain == "ct":
        store = builtin.write_synthetic_ct_store(
            args.out,
            patients=args.patients,
            slices=args.slices,
            size=args.size,
            seed=args.seed,
            progress=True,
        )
    else:
        store = builtin.write_synthetic_natural_store(
            args.out,
            images=args.images,
            classes=args.classes,
            size=args.size,
            seed=args.seed,
            progress=True,
        )
    info = store.info()
    print(
        f"wrote {info['slices']} synthetic {args.domain} images "
        f"({info['patients']} patients, {info['bytes'] / 1e6:.1f} MB) to {store.path}"
    )
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    from radengine.data.store import Store, StoreError

    try:
        store = Store(args.store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.action == "info":
        info = store.info()
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        arrays = ", ".join(
            f"{k} {v['dtype']} {tuple(v['shape'])}" for k, v in info["arrays"].items()
        )
        print(
            f"store     {info['path']} ({info['kind']}{', synthetic' if info['synthetic'] else ''})"
        )
        print(
            f"status    {'finished' if info['finished'] else 'UNFINISHED (rerun ingest to resume)'}"
        )
        print(
            f"slices    {info['slices']} in {info['shards']} shards, {info['bytes'] / 1e6:.1f} MB"
        )
        print(f"patients  {info['patients']}, series {info['series']}")
        print(f"arrays    {arrays}")
        print("classes   " + ", ".join(f"{k} {v}" for k, v in info["classes"].items()))
        return 0
    problems = store.verify()
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"{len(problems)} problem(s) in {store.path}", file=sys.stderr)
        return 1
    print(f"ok: {len(store)} slices in {len(store.manifests)} shards, every checksum matches")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radengine",
        description="Self-supervised pretraining and transfer evaluation for CT and natural images.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "info",
        help="versions, native modules, devices, op backends (and why any is missing), tracking URI",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    from radengine.data.builtin import CT_DEFAULTS, NATURAL_DEFAULTS

    p = sub.add_parser(
        "synth", help="write a built-in synthetic dataset (CT or natural) as a store"
    )
    synth = p.add_subparsers(dest="domain", metavar="DOMAIN", required=True)
    ct = synth.add_parser(
        "ct", help="procedural CT slices with body region, lesion and organ labels"
    )
    ct.add_argument("--out", required=True, help="store directory to write (resumable)")
    ct.add_argument("--patients", type=int, default=CT_DEFAULTS["patients"])
    ct.add_argument("--slices", type=int, default=CT_DEFAULTS["slices"], help="per series")
    ct.add_argument("--size", type=int, default=CT_DEFAULTS["size"], help="pixels per side")
    ct.add_argument("--seed", type=int, default=CT_DEFAULTS["seed"])
    nat = synth.add_parser("natural", help="synthetic natural-image proxy (NOT ImageNet)")
    nat.add_argument("--out", required=True, help="store directory to write (resumable)")
    nat.add_argument("--images", type=int, default=NATURAL_DEFAULTS["images"])
    nat.add_argument("--classes", type=int, default=NATURAL_DEFAULTS["classes"])
    nat.add_argument("--size", type=int, default=NATURAL_DEFAULTS["size"], help="pixels per side")
    nat.add_argument("--seed", type=int, default=NATURAL_DEFAULTS["seed"])
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("store", help="inspect or verify a store")
    store = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    si = store.add_parser("info", help="counts, classes, patients, bytes")
    si.add_argument("store")
    si.add_argument("--json", action="store_true")
    sv = store.add_parser("verify", help="check every checksum; exit 1 on any problem")
    sv.add_argument("store")
    p.set_defaults(func=_cmd_store)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from radengine import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
