"""What radengine offers by name, for ``radengine list``: self-supervised methods, backbones,
augmentation presets, HU windows, evaluation tasks and shipped configs.

Every entry is read from the registry the code itself uses (``radengine.ssl.METHODS``, the
model registry, ``radengine.ops.augment.PRESETS`` and the evaluation presets,
``radengine.ops.hu_window.NAMED_WINDOWS``, ``radengine.eval.tasks.TASKS``, the YAML files in
``experiments/``), and the defaults from the config dataclasses, so the list cannot drift
from what a config accepts. Descriptions come from the registries' docstrings and fields, or
a shipped config's ``description`` key or leading comment.

Imports are lazy: listing ``configs`` reads YAML only; ``tasks`` needs numpy; the other
kinds import torch (their registries live in modules that do).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["KINDS", "Entry", "Section", "collect", "format_text", "to_json"]

KINDS = ("methods", "archs", "presets", "windows", "tasks", "configs")


@dataclass(frozen=True)
class Entry:
    """One name a config or option accepts.

    Attributes:
        name: The name, as written in a config or on the command line.
        description: One line on what it is.
        default_for: The config keys (or commands) whose default this name is.
        group: A sub-heading within its kind (configs: pretrain, eval, studies), or None.
        details: Further facts for ``--json`` (a window's HU bounds, a task's metric, a
            config's path...).
    """

    name: str
    description: str
    default_for: tuple[str, ...] = ()
    group: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    """The entries of one kind.

    Attributes:
        kind: One of :data:`KINDS`.
        title: What the names are.
        usage: Where the names go (config keys, options).
        entries: The names, in registry order.
        empty: What the text output says when there are no entries.
    """

    kind: str
    title: str
    usage: str
    entries: list[Entry]
    empty: str = "none"


def collect(kinds: Sequence[str] = KINDS) -> list[Section]:
    """The sections of ``kinds``, in the order given.

    Args:
        kinds: Names from :data:`KINDS`.

    Returns:
        One section per kind.

    Raises:
        radengine.errors.UserError: A kind that is not in :data:`KINDS` (with the closest
            one).
    """
    collectors: dict[str, Callable[[], Section]] = {
        "methods": _methods,
        "archs": _archs,
        "presets": _presets,
        "windows": _windows,
        "tasks": _tasks,
        "configs": _configs,
    }
    for kind in kinds:
        if kind not in collectors:
            from radengine.errors import UserError

            close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"unknown kind {kind!r} for `radengine list`{hint} (choose from "
                f"{', '.join(KINDS)}, or nothing for all of them)"
            )
    return [collectors[kind]() for kind in kinds]


def to_json(sections: Sequence[Section]) -> dict[str, list[dict[str, Any]]]:
    """The sections as ``{kind: [{name, description, default_for, [group,] **details}]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in sections:
        rows = []
        for e in s.entries:
            row: dict[str, Any] = {
                "name": e.name,
                "description": e.description,
                "default_for": list(e.default_for),
            }
            if e.group is not None:
                row["group"] = e.group
            rows.append({**row, **e.details})
        out[s.kind] = rows
    return out


def format_text(sections: Sequence[Section], width: int | None = None) -> str:
    """The sections as text: a heading per kind (what the names are, where they go), then
    one line per name: the name, in brackets the config keys whose default it is, and its
    description.

    Args:
        sections: From :func:`collect`.
        width: Cut descriptions to fit this many columns (None: never cut).

    Returns:
        The text, ending with a newline.
    """
    lines: list[str] = []
    for s in sections:
        if lines:
            lines.append("")
        lines.append(f"{s.kind}: {s.title}")
        lines += textwrap.wrap(s.usage, width or 100, initial_indent="  ", subsequent_indent="    ")
        if not s.entries:
            lines.append(f"  ({s.empty})")
            continue
        name_width = max(len(e.name) for e in s.entries)
        group = None
        for e in s.entries:
            if e.group != group:
                group = e.group
                lines.append(f"  {group}:")
            indent = "    " if e.group is not None else "  "
            head = f"{indent}{e.name:<{name_width}}  "
            if e.default_for:
                head += f"[default: {', '.join(e.default_for)}] "
            lines.append(head + _shorten(e.description, width, len(head)))
    return "\n".join(lines) + "\n"


def _shorten(text: str, width: int | None, used: int) -> str:
    if width is None or used + len(text) <= width:
        return text
    room = max(width - used - 3, 20)
    cut = text[:room].rsplit(" ", 1)[0] if " " in text[:room] else text[:room]
    return cut.rstrip(" ,;:") + "..."


def _first_sentence(text: str | None) -> str:
    """The first sentence of a docstring or comment, on one line."""
    if not text:
        return ""
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    return re.split(r"(?<=\.)\s+(?=[A-Z(`\"])", paragraph, maxsplit=1)[0]


# ----------------------------------------------------------------------------- the kinds


def _methods() -> Section:
    from radengine.config import PretrainConfig
    from radengine.ssl import METHODS, method_class

    default = PretrainConfig().method
    entries = []
    for name in METHODS:
        cls = method_class(name)
        module = sys.modules.get(cls.__module__)
        text = _first_sentence(module.__doc__ if module else None)
        entries.append(
            Entry(
                name,
                text or _first_sentence(cls.__doc__),
                ("pretrain method",) if name == default else (),
            )
        )
    return Section(
        "methods",
        "self-supervised pretraining methods",
        "pretrain config key: method=NAME",
        entries,
    )


def _archs() -> Section:
    from radengine.config import ModelConfig
    from radengine.models import registry

    default = ModelConfig().arch
    timm = "installed" if importlib.util.find_spec("timm") else "not installed"
    entries = [
        Entry(
            name,
            _first_sentence(registry._MODELS[name].__doc__),
            ("pretrain model.arch",) if name == default else (),
        )
        for name in registry._MODELS  # registration order; list_models() sorts
    ]
    return Section(
        "archs",
        "backbone architectures",
        f"pretrain and eval config key: model.arch=NAME (eval's default: the init's "
        f"architecture); also {registry.TIMM_PREFIX}<name> for any timm model (timm "
        f"{timm})",
        entries,
    )


def _describe_augment(spec: Any) -> str:
    """An AugmentSpec in one line: what it randomises, with what probability and range."""
    from radengine.ops.augment import JITTER_IDENTITY, JITTER_OPS

    def rng(r: tuple[float, float]) -> str:
        return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g}..{r[1]:g}"

    parts = [f"crop {rng(spec.crop_scale)} of the area" if spec.crop else "the full image"]
    for p, what in (("hflip_p", "hflip"), ("vflip_p", "vflip")):
        if getattr(spec, p) > 0:
            parts.append(f"{what} p {getattr(spec, p):g}")
    if spec.rotate_p > 0:
        parts.append(f"rotate {rng(spec.rotate_deg)} deg p {spec.rotate_p:g}")
    if spec.window_jitter_p > 0:
        parts.append(
            f"window jitter p {spec.window_jitter_p:g} (centre {rng(spec.window_center_shift)} "
            f"x width, width x {rng(spec.window_width_scale)})"
        )
    if spec.jitter_p > 0:
        factors = [
            f"{op} {rng(getattr(spec, op))}"
            for op, identity in zip(JITTER_OPS, JITTER_IDENTITY, strict=True)
            if getattr(spec, op) != (identity, identity)
        ]
        if factors:
            parts.append(f"colour jitter p {spec.jitter_p:g} ({', '.join(factors)})")
    if spec.grayscale_p > 0:
        parts.append(f"grayscale p {spec.grayscale_p:g}")
    if spec.gamma_p > 0:
        parts.append(f"gamma {rng(spec.gamma)} p {spec.gamma_p:g}")
    if spec.solarize_p > 0:
        parts.append(f"solarize above {spec.solarize_threshold:g} p {spec.solarize_p:g}")
    if spec.blur_p > 0:
        parts.append(f"blur sigma {rng(spec.blur_sigma)} px p {spec.blur_p:g}")
    if spec.noise_p > 0:
        parts.append(f"noise std {rng(spec.noise_std)} p {spec.noise_p:g}")
    if len(parts) == 1 and not spec.crop:
        parts.append("nothing random")
    return ", ".join(parts)


def _presets() -> Section:
    from radengine.config import AugmentConfig
    from radengine.eval.config import (
        EVAL_AUGMENT_PRESETS,
        FinetuneEvalConfig,
        SegmentEvalConfig,
        augment_spec,
    )
    from radengine.ops.augment import PRESETS

    defaults: dict[str, list[str]] = {}
    for key, value in (
        ("pretrain augment.preset", AugmentConfig().preset),
        ("eval finetune.augment.preset", FinetuneEvalConfig().augment.get("preset")),
        ("eval segment.augment.preset", SegmentEvalConfig().augment.get("preset")),
    ):
        defaults.setdefault(str(value), []).append(key)
    entries = [
        Entry(
            name,
            _describe_augment(spec),
            tuple(defaults.get(name, ())),
            details={"used_by": ["pretrain", "eval"]},
        )
        for name, spec in PRESETS.items()
    ]
    entries += [
        Entry(
            name,
            _describe_augment(augment_spec(name)) + " (eval only)",
            tuple(defaults.get(name, ())),
            details={"used_by": ["eval"]},
        )
        for name in EVAL_AUGMENT_PRESETS
    ]
    return Section(
        "presets",
        "augmentation presets (radengine.ops.augment_views)",
        "pretrain config key: augment.preset=NAME; eval: finetune.augment / segment.augment "
        "({preset: NAME, field: value}); fields override a preset (augment.params)",
        entries,
    )


def _windows() -> Section:
    from radengine.config import AugmentConfig
    from radengine.ops.hu_window import MINMAX_NAMES, NAMED_WINDOWS

    default = AugmentConfig().intensity
    entries = []
    for name, (center, width) in NAMED_WINDOWS.items():
        lo, hi = center - width / 2, center + width / 2
        entries.append(
            Entry(
                name,
                f"center {center:g} HU, width {width:g} HU: {lo:g} to {hi:g} HU -> [0, 1]",
                ("pretrain augment.intensity",) if name == default else (),
                details={"center": center, "width": width, "low": lo, "high": hi},
            )
        )
    minmax, *aliases = MINMAX_NAMES
    entries.append(
        Entry(
            minmax,
            "no fixed window: each slice scaled by its own min and max to [0, 1] (study A's "
            f"'naive' intensity; alias {', '.join(aliases)})",
            ("pretrain augment.intensity",) if default in MINMAX_NAMES else (),
            details={"aliases": list(aliases)},
        )
    )
    return Section(
        "windows",
        "CT intensity windows (Hounsfield units)",
        "pretrain config key: augment.intensity=NAME, or a list of names and [center, width] "
        "pairs (one channel each); eval: input.intensity",
        entries,
    )


def _tasks() -> Section:
    from radengine.eval.config import PROTOCOLS
    from radengine.eval.tasks import TASKS, default_task

    labels = {"ct": "CT stores", "images": "image stores"}
    # task -> protocol -> the store kinds on which it is that protocol's default
    found: dict[str, dict[str, list[str]]] = {}
    for kind in labels:
        store = SimpleNamespace(kind=kind)  # default_task reads only the store's kind
        for protocol in PROTOCOLS:
            task = default_task(protocol, store)
            found.setdefault(task, {}).setdefault(protocol, []).append(kind)
    entries = [
        Entry(
            name,
            spec.description,
            _task_defaults(found.get(name, {}), labels),
            details={"type": spec.kind, "metric": spec.primary_metric, "needs": spec.needs},
        )
        for name, spec in TASKS.items()
    ]
    return Section(
        "tasks",
        "evaluation tasks read from a store",
        "eval option: --task NAME (config key task); segmentation goes with `eval segment`",
        entries,
    )


def _task_defaults(protocols: dict[str, list[str]], labels: dict[str, str]) -> tuple[str, ...]:
    """``{knn: [ct], linear: [ct], segment: [ct, images]}`` -> ``("eval segment", "eval
    knn|linear on CT stores")``."""
    every = [p for p, kinds in protocols.items() if len(kinds) == len(labels)]
    out = [f"eval {p}" for p in every]
    for kind, label in labels.items():
        some = [p for p, kinds in protocols.items() if p not in every and kind in kinds]
        if some:
            out.append(f"eval {'|'.join(some)} on {label}")
    return tuple(out)


def _config_description(path: Path, data: dict[str, Any]) -> str:
    """A shipped YAML's ``description`` key, else the first sentence of its leading
    comment."""
    if data.get("description"):
        return " ".join(str(data["description"]).split())
    comment = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text:
            break
        comment.append(text)
    return _first_sentence("\n".join(comment))


def _configs() -> Section:
    from radengine.config import read_yaml
    from radengine.study.spec import experiments_dir

    root = experiments_dir()
    entries = []
    for group in ("pretrain", "eval", "studies"):
        folder = root / group
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            data = read_yaml(path)
            details: dict[str, Any] = {"path": str(path)}
            if group == "eval" and data.get("protocol"):
                details["protocol"] = data["protocol"]
            entries.append(
                Entry(path.stem, _config_description(path, data), group=group, details=details)
            )
    return Section(
        "configs",
        f"shipped configs ({root})",
        "pretrain --config PATH; eval PROTOCOL --config PATH; study run NAME; in a study "
        "spec, pretrain.config and evals[].config take the names",
        entries,
        empty=f"none found: {root} does not exist; the configs ship with a source checkout",
    )
