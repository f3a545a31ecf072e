"""The `radengine` command. Subcommands are verbs; each is a function taking the parsed
arguments and returning an exit code, run through :func:`run_command`.

Exit codes, the same for every subcommand:

- 0: done.
- 1: the command ran and its result is negative: ``store verify`` found problems.
- 2: the command could not run: bad arguments or config, a missing or foreign store, a busy
  port, an unwritable or full disk, an ingest whose every file was unusable... One
  ``error: ...`` line on stderr names the file, key or option at fault and what to do; no
  traceback (a traceback means a bug in radengine).
- 3: ``pretrain`` was preempted: SIGTERM or SIGUSR1 (Slurm, Kubernetes; on any one rank)
  made every rank finish the same step, a checkpoint was written, and the run stopped
  unfinished (no encoder.pt); ``--resume RUN`` continues it exactly. Requeue on 3. It is
  not 143 (128 + SIGTERM) on purpose: 143 is also what a process killed by SIGTERM before
  it could checkpoint reports, and a wrapper (``scontrol requeue``, a Kubernetes
  podFailurePolicy on exit codes) must tell "checkpointed, resumable" apart from that.
  Under torchrun the launcher reports its own failure code (1) for any non-zero worker: a
  job script there decides from the signal it caught and the run folder (a checkpoint and
  no encoder.pt), as experiments/slurm/pretrain_multinode.sbatch does.
- 130: interrupted (Ctrl-C); ``ui`` returns 128 + the signal that stopped it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_PREEMPTED = 3  # see the module docs


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, plus an option's default at the end of its help text when the
    text does not already say it (``(default 64)``); flags, None and empty defaults are not
    shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            not text
            or "default" in text
            or f"({default})" in text  # "(3)": said already, the house style of some
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default in ("", [])
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that formats help with :class:`HelpFormatter`; its
    subcommands' parsers are of this class too (argparse makes them of the parent's)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as one, so that
    ``radengine X --help`` always says what X does (recursively)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    # a help line is %-formatted by argparse, a description is not
                    text = helps[name].replace("%%", "%").rstrip(".")
                    sub.description = text[:1].upper() + text[1:] + "."
                _describe_subcommands(sub)


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``); anything else is a
    usage error naming the option (exit 2).

    Args:
        minimum: The smallest value allowed.
        maximum: The largest value allowed (default: no limit).

    Returns:
        The type function for ``add_argument(type=...)``.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _cmd_info(args: argparse.Namespace) -> int:
    from radengine import info

    data = info.collect()
    print(json.dumps(data, indent=2) if args.json else info.format_text(data))
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from radengine import selftest

    return selftest.main(args)


def _cmd_synth(args: argparse.Namespace) -> int:
    from radengine.data import builtin

    if args.domain == "ct" and args.dicom:
        from radengine.data.dicom_synth import available_variants, write_synthetic_dicom
        from radengine.errors import UserError

        if args.slices < 4:  # the 'mixed' variant splits a series in two
            raise UserError(f"--slices {args.slices}: synthetic DICOM series need >= 4 slices")

        files = write_synthetic_dicom(
            Path(args.out), args.patients, args.slices, args.size, args.seed, available_variants()
        )
        print(
            f"wrote {len(files)} synthetic DICOM files ({', '.join(available_variants())}) "
            f"to {args.out}"
        )
        return 0
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


def _cmd_ingest(args: argparse.Namespace) -> int:
    from radengine.data import ingest

    common = dict(size=args.size, workers=args.workers, shard_slices=args.shard_slices)
    if args.kind == "ct":
        summary = ingest.ingest_ct(args.src, args.out, secret=args.secret, **common)
    else:
        summary = ingest.ingest_images(args.src[0], args.out, **common)
    if summary.slices == 0:  # bad input, not a result: the one error path's exit 2
        print(f"error: {summary.error}", file=sys.stderr)
        return 2
    print(
        f"ingested {summary.slices} {'slices' if args.kind == 'ct' else 'images'} "
        f"from {summary.series} {'series' if args.kind == 'ct' else 'files'} into {summary.store} "
        f"in {summary.seconds:.1f} s ({summary.slices_per_second:.0f}/s); "
        f"shards written {summary.shards_written}, reused {summary.shards_reused}"
    )
    if summary.skipped:
        print(f"skipped {summary.skipped} file(s):")
        for reason, n in summary.skipped_by_reason.items():
            hint = summary.hints.get(reason)
            print(f"  {n:6d}  {reason}" + (f" (to fix: {hint})" if hint else ""))
        print(f"every skipped file and its reason: {summary.errors_file}")
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    from radengine.data.store import Store

    # inspect: an unfinished or empty store is reported on, not refused; a missing or
    # foreign one is a StoreError (exit 2, run_command)
    if args.action == "upgrade":
        import time

        from radengine.data.store import upgrade

        t0 = time.perf_counter()
        done = upgrade(args.store)
        if not done.get("rebuilt"):
            print(f"{done['path']}: already format version {done['to']}, nothing to do")
        elif done["from"] == done["to"]:
            print(f"{done['path']}: its index could not be opened; rebuilt from the shards")
        else:
            print(
                f"{done['path']}: format version {done['from']} -> {done['to']} "
                f"({done['slices']} slices in {done['shards']} shards; the shards are "
                f"unchanged), {time.perf_counter() - t0:.1f} s"
            )
        return 0
    store = Store(args.store, inspect=True)
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
        print(f"format    version {info['version']}" + (
            f" (`radengine store upgrade {info['path']}` makes opening it fast)"
            if info["version"] != 2 else ""))  # fmt: skip
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


def print_output(text: str) -> None:
    """Write a command's whole output (a listing, a config) to stdout, flushed: a reader
    that stops early (``radengine list | head``) raises BrokenPipeError here, inside
    :func:`run_command`, which ends the command quietly."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _cmd_list(args: argparse.Namespace) -> int:
    import shutil

    from radengine import catalog

    sections = catalog.collect(list(dict.fromkeys(args.kinds)) or catalog.KINDS)
    if args.json:
        print_output(json.dumps(catalog.to_json(sections), indent=2) + "\n")
        return 0
    # on a terminal, descriptions are cut to its width; piped, lines stay whole (for grep)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print_output(catalog.format_text(sections, width))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from radengine.config import dump_yaml, load_pretrain_config

    flags = []
    if args.domain:
        flags.append(f"data.domain={args.domain}")
    if args.data:
        flags.append(f"data.store={args.data}")
    if args.out:
        flags.append(f"train.out={args.out}")
    if args.device:
        flags.append(f"train.device={args.device}")
    if args.tracking == "none":
        flags.append("tracking.enabled=false")
    elif args.tracking:
        flags.append(f"tracking.uri={args.tracking}")
    cfg = load_pretrain_config(args.config, [*flags, *args.overrides])
    if args.print_config:
        print_output(dump_yaml(cfg))
        return 0
    from radengine.engine.trainer import pretrain
    from radengine.fmt import percent

    result = pretrain(cfg, resume=args.resume)
    # every rank of a preempted job exits 3, so the job's status says "resumable"
    code = EXIT_PREEMPTED if result.preempted else 0
    if not _is_main_rank():  # under torchrun, rank 0 speaks for the job
        return code
    knn = result.knn
    if result.preempted:
        print(
            f"\npretraining preempted at step {result.steps} ({result.stopped}): checkpoint "
            f"{result.checkpoint} written; the run is not finished (no encoder.pt). Resume "
            f"with --resume {result.out}",
        )
        return code
    lines = [
        "",
        f"pretraining {'stopped (' + result.stopped + ')' if result.stopped else 'finished'}: "
        f"{result.steps} steps, {result.epochs:.2f} epochs in {result.seconds / 60:.1f} min, "
        f"{result.images_per_second:.1f} img/s, data wait {percent(result.data_wait, 1)}",
        f"  final loss     {result.loss:.4f} ({result.loss_label})"
        + (f" ({result.skipped_steps} non-finite steps skipped)" if result.skipped_steps else ""),
    ]
    if knn:
        lines.append(
            f"  kNN monitor    {percent(knn[0][1], 1)} at step {knn[0][0]} -> "
            f"{percent(knn[-1][1], 1)} at step {knn[-1][0]} ({_knn_noise(knn, result.knn_queries)})"
        )
    lines.append(f"  run folder     {result.out} (config.yaml, checkpoints/, encoder.pt)")
    if result.checkpoint:
        lines.append(f"  checkpoint     {result.checkpoint} (continue with --resume {result.out})")
    if result.run_id:
        from radengine.tracking import tracking_uri

        lines.append(f"  MLflow run     {result.run_id} at {tracking_uri(cfg.tracking.uri)}")
        if result.artifact_uri:
            lines.append(f"  MLflow files   {result.artifact_uri}")
        if result.model_uri:
            lines.append(f"  encoder model  {result.model_uri}")
        lines.append("  open it with   radengine ui   (it prints the URL to open)")
    print("\n".join(lines))
    return 0


def _knn_noise(knn: list[tuple[int, float]], queries: int | None) -> str:
    """The kNN monitor's resolution: its query count and the binomial standard error of the
    last accuracy, so that a change within it is read as noise."""
    if not queries:
        return "held-out labels"
    acc = knn[-1][1]
    se = 100 * math.sqrt(acc * (1 - acc) / queries)
    return f"{queries} held-out labels, standard error {se:.1f} points"


def _is_main_rank() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_ui(args: argparse.Namespace) -> int:
    from radengine import tracking

    return tracking.run_ui(
        args.uri, host=args.host, port=args.port, workers=args.workers, verbose=args.verbose
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from radengine.engine import pipeline_bench

    return pipeline_bench.run(args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="radengine",
        description="Self-supervised pretraining and transfer evaluation for CT and natural "
        "images. `radengine COMMAND --help` for a command's options; `radengine list` for the "
        "names configs take (methods, architectures, presets, windows, tasks, configs).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "info",
        help="versions, native modules, devices, op backends (and why any is missing), tracking URI",
        description="What this installation has: versions of radengine and its dependencies, "
        "the native modules built (and why one is missing), devices, each op's backends, the "
        "threads used and the MLflow tracking URI. Reads only the installation.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(func=_cmd_info)

    from radengine.catalog import KINDS

    p = sub.add_parser(
        "list",
        help="the names configs and options take: " + ", ".join(KINDS),
        description="List what radengine offers by name, one line each, read from the "
        "registries the code uses: self-supervised methods (method), backbones "
        "(model.arch), augmentation presets (augment.preset), CT windows "
        "(augment.intensity), evaluation tasks (--task) and the shipped configs "
        "(--config, study run). Defaults are marked. No KIND: everything, grouped.",
    )
    p.add_argument(
        "kinds",
        nargs="*",
        metavar="KIND",
        help=f"{' | '.join(KINDS)} (default: all of them)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: {kind: [{name, description, default_for, ...}]}",
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "selftest",
        help="check every op's backends on a device against the references, a few pretraining "
        "steps and (CUDA) stream use; the first thing to run on a new machine",
        description="Every op x every backend that runs on the device against its reference "
        "on random inputs of awkward and realistic shapes and every dtype (the tests' "
        "tolerances), a short pretraining run, and on CUDA the current-stream and error-state "
        "checks. One line per (op, backend, dtype); exit 0 all pass, 1 any failure, 2 bad "
        "usage. Triton on --device cpu only with TRITON_INTERPRET=1 (its interpreter).",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--quick", action="store_true", help="fewer shapes (under ~30 s on a CPU)")
    p.add_argument(
        "--only",
        metavar="NAMES",
        help="comma list of hu_window, resize, augment_views, nt_xent, info_nce, pretrain, "
        "cuda_stream (default: all)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), metavar="N", help="input seed (default: a fresh one)"
    )
    p.set_defaults(func=_cmd_selftest)

    from radengine.data.builtin import CT_DEFAULTS, NATURAL_DEFAULTS
    from radengine.data.synthetic import _MAX_SIZE, _MIN_SIZE, NATURAL_CLASSES

    count, size = _int_at_least(1), _int_at_least(_MIN_SIZE, _MAX_SIZE)

    p = sub.add_parser(
        "synth",
        help="write a built-in synthetic dataset (CT or natural) as a store",
        description="Write one of the built-in synthetic datasets as a store (the ones "
        "pretrain and eval use when given no --data), with other sizes or seeds; an "
        "interrupted write resumes.",
    )
    synth = p.add_subparsers(dest="domain", metavar="DOMAIN", required=True)
    ct = synth.add_parser(
        "ct",
        help="procedural CT slices with body region, lesion and organ labels",
        description="Procedural CT (int16 HU, not real patients) with organ masks and body "
        "region, lesion and contrast-phase labels: per patient, one series of --slices "
        "slices per body region. --dicom writes DICOM files instead, to try `radengine "
        "ingest ct` on.",
    )
    ct.add_argument(
        "--out", required=True, metavar="DIR", help="store directory to write (resumable)"
    )
    ct.add_argument(
        "--patients", type=count, default=CT_DEFAULTS["patients"], metavar="N", help="patients"
    )
    ct.add_argument(
        "--slices",
        type=count,
        default=CT_DEFAULTS["slices"],
        metavar="N",
        help="slices per series",
    )
    ct.add_argument(
        "--size",
        type=size,
        default=CT_DEFAULTS["size"],
        metavar="N",
        help=f"pixels per side, {_MIN_SIZE} to {_MAX_SIZE}",
    )
    ct.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=CT_DEFAULTS["seed"],
        metavar="N",
        help="random seed; the same seed writes the same data",
    )
    ct.add_argument(
        "--dicom",
        action="store_true",
        help="write DICOM series (every variant: rescale intercepts and slopes, padding, "
        "compressed syntaxes, enhanced multi-frame, plus MR and broken files) instead of a store",
    )
    nat = synth.add_parser(
        "natural",
        help="synthetic natural-image proxy (NOT ImageNet)",
        description="Procedural RGB images, each one coloured object (a shape or texture "
        "class) in front of a cluttered scene: a stand-in for a natural-image dataset, NOT "
        "ImageNet.",
    )
    nat.add_argument(
        "--out", required=True, metavar="DIR", help="store directory to write (resumable)"
    )
    nat.add_argument(
        "--images", type=count, default=NATURAL_DEFAULTS["images"], metavar="N", help="images"
    )
    nat.add_argument(
        "--classes",
        type=_int_at_least(2, len(NATURAL_CLASSES)),
        default=NATURAL_DEFAULTS["classes"],
        metavar="N",
        help=f"object classes, 2 to {len(NATURAL_CLASSES)}",
    )
    nat.add_argument(
        "--size",
        type=size,
        default=NATURAL_DEFAULTS["size"],
        metavar="N",
        help=f"pixels per side, {_MIN_SIZE} to {_MAX_SIZE}",
    )
    nat.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=NATURAL_DEFAULTS["seed"],
        metavar="N",
        help="random seed; the same seed writes the same data",
    )
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "ingest",
        help="turn a CT archive or an ImageFolder into a store",
        description="Read CT series (DICOM, NIfTI) or an ImageFolder once into a store: "
        "sharded, checksummed arrays that pretrain and eval read fast. Unusable files are "
        "skipped and listed with their reason; an interrupted ingest resumes.",
    )
    ing = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    ict = ing.add_parser(
        "ct",
        help="DICOM series and NIfTI volumes -> int16 HU store",
        description="DICOM series and NIfTI volumes -> an int16 HU store, one row per "
        "slice, resized to --size; patient, study and series identifiers become keyed "
        "hashes (the secret never goes into the store).",
    )
    ict.add_argument(
        "src",
        nargs="+",
        metavar="SRC",
        help="directories and/or files; @LIST reads paths from a text file",
    )
    ict.add_argument(
        "--secret",
        metavar="FILE",
        help="pseudonymisation secret file (default $RADENGINE_SECRET or "
        "~/.config/radengine/secret, created if missing; never inside the store)",
    )
    iim = ing.add_parser(
        "images",
        help="ImageFolder (ROOT/<class>/<image>) -> uint8 RGB store",
        description="An ImageFolder (ROOT/<class>/<image>, e.g. ImageNet's train folder) "
        "-> a uint8 RGB store with the class labels, resized to --size.",
    )
    iim.add_argument("src", nargs=1, metavar="ROOT", help="the ImageFolder root")
    for q, size in ((ict, 256), (iim, 224)):
        q.add_argument(
            "--out",
            required=True,
            metavar="DIR",
            help="store directory (an unfinished one resumes)",
        )
        q.add_argument(
            "--size",
            type=_int_at_least(8),
            default=size,
            metavar="N",
            help=f"pixels per side, >= 8 (default {size})",
        )
        q.add_argument(
            "--workers",
            type=_int_at_least(1),
            default=None,
            metavar="N",
            help="processes (default: all cores)",
        )
        q.add_argument(
            "--shard-slices",
            type=_int_at_least(1),
            default=None,
            metavar="N",
            help="slices per shard (default: 1/64 of the input, 64 to 1024)",
        )
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser(
        "store",
        help="inspect, verify or upgrade a store",
        description="Inspect a store (an unfinished one is reported on, not refused), "
        "verify every shard's checksum, or upgrade a version-1 store's index.",
    )
    store = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    si = store.add_parser(
        "info",
        help="counts, classes, patients, bytes",
        description="What a store holds: kind, finished or not, slices, shards, bytes, "
        "patients, series, arrays and classes.",
    )
    si.add_argument("store", metavar="STORE", help="the store directory")
    si.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    sv = store.add_parser(
        "verify",
        help="check every checksum; exit 1 on any problem",
        description="Read every shard and check its checksum against the manifest; one "
        "FAIL line per problem and exit 1 on any, exit 0 when all match.",
    )
    sv.add_argument("store", metavar="STORE", help="the store directory")
    su = store.add_parser(
        "upgrade",
        help="rewrite a version-1 store's index as version 2 (seconds; shards untouched)",
        description="Rewrite the index of a finished version-1 store in format version 2 "
        "(a consolidated manifest and memory-mapped index columns, so opening it reads a "
        "handful of files and shares its index between processes). The shards are not "
        "touched; a kill leaves the version-1 store readable and a rerun finishes the job. "
        "A version-2 store is left as it is.",
    )
    su.add_argument("store", metavar="STORE", help="the store directory")
    p.set_defaults(func=_cmd_store)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining (SimCLR, MoCo v2/v3, BYOL, SimSiam, Barlow Twins, "
        "VICReg, DINO: method=NAME) on a store; no --data: built-in synthetic set",
        description="Pretrain an encoder. Config: defaults, then --config YAML, then these "
        "flags, then key=value overrides (e.g. optim.epochs=10 model.arch=resnet50); "
        "--print-config shows the result. Run under torchrun for several GPUs or nodes.",
    )
    p.add_argument("--domain", choices=["ct", "natural"], help="data domain (default: ct)")
    p.add_argument(
        "--data", metavar="STORE", help="store to train on (default: built-in synthetic)"
    )
    p.add_argument("--config", metavar="YAML", help="experiment config, e.g. experiments/pretrain/")
    p.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue exactly")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<run name>)")
    p.add_argument("--device", metavar="DEVICE", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--tracking", metavar="URI|none", help="MLflow tracking URI, or none to log nothing"
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit: nothing runs, no file or MLflow "
        "run is made",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides (names: radengine list); values are YAML",
    )
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "bench",
        help="benchmarks: `bench pipeline` = pretraining img/s and data wait, ours vs the "
        "study's DataLoader + per-sample transforms",
        description="Benchmarks. pipeline: end-to-end pretraining throughput (img/s) and "
        "data-wait fraction of an SSL method (SimCLR, or method=NAME) in radengine's pipeline "
        "against a study-style baseline (DataLoader + per-sample CPU transforms); its "
        "options: radengine bench pipeline --help.",
    )
    p.add_argument("what", choices=["pipeline"], metavar="BENCHMARK", help="pipeline")
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="OPTIONS",
        help="the benchmark's options (radengine bench pipeline --help)",
    )
    p.set_defaults(func=_cmd_bench)

    from radengine.eval.cli import add_parsers as add_eval_parsers

    add_eval_parsers(sub)  # eval knn|linear|finetune|segment, weights import

    from radengine.analysis.cli import add_parsers as add_analysis_parsers

    add_analysis_parsers(sub)  # report, analyze cka|domain|embed

    from radengine.study.cli import add_parsers as add_study_parsers

    add_study_parsers(sub)  # study run|status|list

    p = sub.add_parser(
        "ui",
        help="the MLflow UI on 127.0.0.1 for the tracking store",
        description="Serve the MLflow UI for the tracking store in the foreground and print "
        "the URL to open. Ctrl-C (or SIGTERM/SIGHUP) stops the server. A port in use is an "
        "error that suggests a free one.",
    )
    p.add_argument(
        "--uri",
        metavar="URI",
        help="tracking URI to show (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, i.e. anyone on the network)",
    )
    p.add_argument(
        "--port", type=int, default=5000, metavar="N", help="TCP port to listen on (default 5000)"
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="server worker processes (default 1, plenty for one person)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show all of the server's output (start-up logs and warnings included)",
    )
    p.set_defaults(func=_cmd_ui)
    _describe_subcommands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``radengine`` command.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code (see the module docs). A usage error exits 2 from argparse.
    """
    parser = build_parser()
    # key=value overrides may come before or after pretrain's options
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [a for a in extra if a.startswith("-") or "=" not in a]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.version:
        from radengine import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(args.func, args)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand with the CLI's single error path.

    Every expected failure (a :class:`radengine.errors.UserError`, or an OSError about the
    user's files or machine: a missing path, no permission, a full or read-only disk) ends
    as one ``error: ...`` line on stderr and exit 2, never a traceback. Anything else is a
    bug in radengine and keeps its traceback.

    Args:
        func: The subcommand.
        args: Its parsed arguments.

    Returns:
        The subcommand's exit code; 2 for an expected failure; 130 for Ctrl-C; 141 when
        the reader of stdout went away (a pipe into ``head``).
    """
    from radengine.errors import UserError, describe_os_error, is_environment_os_error

    try:
        return func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(exc, "broken", False):  # a broken process group: no C++ teardown
            import os

            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except BrokenPipeError:
        # The reader stopped early (`radengine info | head -3`): end quietly, with stdout
        # on /dev/null so the flush at exit has nowhere to fail; 141 as a shell's SIGPIPE.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if not is_environment_os_error(exc):
            raise
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
