"""One resolved configuration per job: dataclass defaults, then an experiment YAML, then
``key=value`` overrides from the command line (dinov2 style).

Every key is checked: an unknown key is an error that names it and suggests the closest
known one, and a value of the wrong type names the key and the type it needs. The resolved
config is saved next to the checkpoints (``config.yaml``) and logged to MLflow, so a run can
be repeated from its own record.

>>> cfg = load_pretrain_config(overrides=["optim.epochs=5", "model.arch=resnet50"])
>>> cfg.optim.epochs, cfg.model.arch
(5, 'resnet50')
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from radengine.errors import UserError

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "KnnConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "SourceConfig",
    "StageConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_yaml",
    "load_pretrain_config",
    "to_dict",
]


class ConfigError(UserError, ValueError):
    """A bad configuration key or value; the message names the key and what to do."""


# ----------------------------------------------------------------------------- the schema


@dataclass
class SourceConfig:
    """One dataset: a store of one domain, a patient-level fraction of its split.

    ``store: null`` means the built-in synthetic store of the domain (built on first use).
    ``weight`` is the source's share of every batch when several are mixed.
    """

    domain: str = "ct"
    store: str | None = None
    fraction: float = 1.0
    weight: float = 1.0


@dataclass
class DataConfig:
    """Pretraining data. ``mix`` adds sources to every batch (mixed-domain pretraining)."""

    domain: str = "ct"
    store: str | None = None
    fraction: float = 1.0
    weight: float = 1.0
    split: str = "train"  # the store's patient-level split; "all" uses every patient
    split_seed: int = 0
    mix: list[SourceConfig] = field(default_factory=list)
    workers: int = 2
    prefetch: int = 4
    pin_memory: bool | None = None  # None: pin when training on CUDA

    def sources(self) -> list[SourceConfig]:
        main = SourceConfig(self.domain, self.store, self.fraction, self.weight)
        return [main, *self.mix]


@dataclass
class StageConfig:
    """One phase of sequential pretraining (e.g. ImageNet for 50 epochs, then CT).

    The learning-rate schedule spans all stages, as one run of sum(epochs) epochs.
    """

    epochs: int = 1
    domain: str = "ct"
    store: str | None = None
    fraction: float = 1.0


@dataclass
class AugmentConfig:
    """Views made on the device by ``radengine.ops.augment_views``.

    ``intensity`` is the CT intensity spec (``"minmax"`` is study A's naive per-slice
    scaling; a window name, ``[center, width]`` or a list of them gives windows as
    channels); ``repeat`` copies channels (study A: 1 min-max channel to 3). ``params``
    overrides fields of the preset (see ``AugmentSpec``), e.g. ``{window_jitter_p: 0.8}``.
    """

    preset: str = "simclr"
    size: int = 96
    views: int = 2
    intensity: Any = "minmax"
    repeat: int = 3
    mean: list[float] | None = None
    std: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The backbone and the method's projector (``proj_hidden`` null: the backbone's
    feature width). A method's recipe sets the projector's shape (``radengine.ssl``)."""

    arch: str = "resnet18"
    proj_dim: int = 128  # output width (DINO: the number of prototypes)
    proj_hidden: int | None = None  # hidden width; None: the backbone's feature width
    proj_layers: int = 2  # Linear layers of the projector (DINO: of its MLP)
    proj_bn: bool = True  # BatchNorm in the projector's hidden layers
    zero_init_residual: bool = False
    sync_bn: bool = False
    channels_last: bool | None = None  # None: on for convolutional backbones
    compile: bool = False


@dataclass
class LossConfig:
    """``temperature``: SimCLR's and MoCo's InfoNCE temperature, DINO's student temperature;
    unused by BYOL, SimSiam, Barlow Twins and VICReg."""

    temperature: float = 0.5
    gather: bool = True  # negatives from every rank (the correct SimCLR)


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | sgd | adamw
    batch_size: int = 128  # global, over all ranks
    epochs: int = 6
    lr: float | None = None  # None: lr_base scaled by lr_scaling and the batch size
    lr_base: float | None = None  # None: the rule's default (sqrt: 0.075, linear: 0.3)
    lr_scaling: str = "sqrt"  # sqrt | linear | none
    momentum: float = 0.9
    weight_decay: float = 1e-6
    weight_decay_end: float | None = None  # cosine from weight_decay to this (DINO); None: constant
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 0.5
    final_lr_fraction: float = 0.0
    grad_clip: float | None = None  # max global grad norm; None: off


@dataclass
class KnnConfig:
    """The kNN monitor on held-out labels (weighted kNN, InstDisc/DINO style)."""

    # epochs; 0 disables. Before the first step and at the end too. Each pass costs ~7 s
    # on 2 CPU cores for the built-in CT, a sixth of an epoch of the quick run: every 2.
    every: int = 2
    k: int = 20
    temperature: float = 0.07
    bank: int = 4096  # labelled train samples in the feature bank (first of a fixed order)
    queries: int = 1024  # held-out samples classified
    split: str = "val"


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = (
        "auto"  # auto (bf16 on CUDA and bf16-capable CPUs, else fp32) | fp32 | bf16 | fp16
    )
    out: str | None = None  # None: runs/<method>-<arch>-<domain>-<time>
    checkpoint_every: int = 500  # steps; checkpoints are also written at the end
    keep_checkpoints: int = 2
    log_every: int = 10  # steps
    nonfinite: str = "stop"  # stop | skip: what a NaN/Inf loss does
    max_skips: int = 20  # consecutive skipped steps before stopping anyway
    max_steps: int | None = None  # stop early after this many steps (tests, smoke runs)
    deterministic: bool = False  # torch.use_deterministic_algorithms
    progress: bool = True


@dataclass
class DistConfig:
    """The torchrun process group (docs/distributed.md).

    ``timeout_min`` bounds how long joining (whose error names this key) and every
    collective after it wait for the other ranks before the run fails. torch's default is
    30 silent minutes; 10 still covers what rank 0 does alone while the others wait at the
    next collective: the kNN monitor, a checkpoint write and its MLflow upload, the final
    encoder's MLflow logging. Raise it when those take longer (a slow remote tracking
    server, a large ``knn.bank``).
    """

    timeout_min: float = 10.0


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite mlflow.db in the cwd
    experiment: str = "radengine-pretrain"
    run_name: str | None = None
    registered_name: str | None = None  # register the final encoder under this name
    log_checkpoints: bool = False  # also upload every checkpoint to MLflow (docs/files.md)
    log_model: bool = True
    system_metrics: bool = True
    tags: dict[str, str] = field(default_factory=dict)  # extra tags of the run


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs. Defaults: the quick CPU run on synthetic CT."""

    study: str = "quickstart"
    method: str = "simclr"
    # quick: the method's quick-run settings (Method.QUICK) over its paper's recipe, so the
    # defaults' CPU run learns in minutes; paper: the published recipe only (radengine.ssl)
    recipe: str = "quick"
    seed: int = 0
    ssl: dict[str, Any] = field(default_factory=dict)  # the method's own keys (radengine.ssl)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages) if self.stages else self.optim.epochs

    def validate(self) -> PretrainConfig:
        """Check value ranges across fields; raise ConfigError naming the key."""
        _check(self.recipe in ("quick", "paper"), "recipe", "must be quick or paper")
        domains = ("ct", "natural")
        for key, src in [("data", self.data)] + [
            (f"data.mix[{i}]", s) for i, s in enumerate(self.data.mix)
        ]:
            _check(src.domain in domains, f"{key}.domain", f"must be one of {domains}")
            _check(0 < src.fraction <= 1, f"{key}.fraction", "must be in (0, 1]")
            _check(src.weight > 0, f"{key}.weight", "must be > 0")
        for i, st in enumerate(self.stages):
            _check(st.domain in domains, f"stages[{i}].domain", f"must be one of {domains}")
            _check(st.epochs >= 1, f"stages[{i}].epochs", "must be >= 1")
            _check(0 < st.fraction <= 1, f"stages[{i}].fraction", "must be in (0, 1]")
        _check(not (self.stages and self.data.mix), "stages", "cannot be combined with data.mix")
        _check(
            self.data.split in ("train", "val", "test", "all"), "data.split", "train|val|test|all"
        )
        _check(self.data.workers >= 0, "data.workers", "must be >= 0")
        _check(self.augment.size >= 8, "augment.size", "must be >= 8 pixels")
        _check(
            self.augment.views == 2,
            "augment.views",
            "must be 2: every method takes two global views (DINO adds local crops with "
            "ssl.local_crops_number)",
        )
        m = self.model
        _check(m.proj_dim >= 1, "model.proj_dim", "must be >= 1")
        _check(m.proj_hidden is None or m.proj_hidden >= 1, "model.proj_hidden", "must be >= 1")
        _check(m.proj_layers >= 1, "model.proj_layers", "must be >= 1")
        _check(self.loss.temperature > 0, "loss.temperature", "must be > 0")
        o = self.optim
        _check(o.name in ("lars", "sgd", "adamw"), "optim.name", "must be lars, sgd or adamw")
        _check(o.batch_size >= 2, "optim.batch_size", "must be >= 2")
        _check(o.epochs >= 1, "optim.epochs", "must be >= 1")
        _check(o.lr is None or o.lr > 0, "optim.lr", "must be > 0")
        _check(o.lr_scaling in ("sqrt", "linear", "none"), "optim.lr_scaling", "sqrt|linear|none")
        _check(o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "must be > 0 or null")
        _check(
            o.weight_decay_end is None or o.weight_decay_end >= 0,
            "optim.weight_decay_end",
            "must be >= 0 or null",
        )
        _check(self.knn.k >= 1, "knn.k", "must be >= 1")
        t = self.train
        _check(
            t.precision in ("auto", "fp32", "bf16", "fp16"),
            "train.precision",
            "auto|fp32|bf16|fp16",
        )
        _check(t.nonfinite in ("stop", "skip"), "train.nonfinite", "must be stop or skip")
        _check(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1 step")
        _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _check(t.log_every >= 1, "train.log_every", "must be >= 1")
        _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1")
        _check(self.dist.timeout_min > 0, "dist.timeout_min", "must be > 0 minutes")
        return self


def _check(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {what}")


# ----------------------------------------------------------------------------- building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, for suggestions."""
    keys = []
    for f in dataclasses.fields(cls):
        t = _hints(cls)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, prefix + f.name + ".")
    return keys


def _unknown(key: str, cls: type, where: str, root: type) -> ConfigError:
    """An unknown key under ``cls`` (at ``where`` in the ``root`` config), with the closest
    known key: a sibling, else the same leaf under another parent, else any dotted key."""
    known = [f.name for f in dataclasses.fields(cls)]
    full = f"{where}{key}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean '{where}{close[0]}'?"
    else:  # maybe the user gave a leaf name under the wrong parent
        dotted = _all_keys(root)
        close = [k for k in dotted if k.rsplit(".", 1)[-1] == key]
        close = close or difflib.get_close_matches(full, dotted, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{full}'{hint}")


def _coerce(value: Any, tp: Any, key: str, root: type) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, root)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key + ".", root)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", root) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], where: str, root: type) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), cls, where, root)
        kwargs[key] = _coerce(value, hints[key], where + key, root)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(data: Mapping[str, Any], cls: type | None = None) -> PretrainConfig:
    """Build and validate a config from (partial) nested dicts over the defaults.

    A pretraining config is layered: the defaults, then the recipe of its ``method``
    (``radengine.ssl``: the method's heads, temperatures, optimizer and ``ssl.*`` keys, as
    its paper gives them, and its quick-run settings over them when ``recipe`` is ``quick``),
    then ``data``; its ``ssl`` keys are checked against the method's.
    """
    cls = cls or PretrainConfig
    base = to_dict(cls())
    if cls is PretrainConfig:
        base = _merge(base, _method_recipe(_merge(base, data)))
    merged = _merge(base, data)
    cfg = _build(cls, merged, "", cls)
    if cls is PretrainConfig:
        from radengine import ssl

        cfg = ssl.check(cfg)
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def _method_recipe(data: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe (nested config dicts) of the method ``data`` names: its paper's, with its
    quick-run settings on top when ``recipe`` is ``quick``."""
    from radengine import ssl

    method = data.get("method", PretrainConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method' must be a string, got {method!r}")
    cls = ssl.method_class(method)
    out = cls.recipe(data)
    if data.get("recipe", PretrainConfig.recipe) == "quick":
        out = _merge(out, cls.quick(data))
    return out


def _parse_value(text: str) -> Any:
    """A CLI value as YAML: ``5`` -> 5, ``1e-6`` -> 1e-06, ``null``, ``[1, 2]``, strings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _looks_float(value):
        return float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
    return value


def _looks_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to nested dicts (values parsed as YAML)."""
    out = _merge({}, data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. optim.epochs=10")
        parts = key.split(".")
        node: Any = out
        for depth, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, p, ".".join(parts[: depth + 1]))
                continue
            child = node.get(p)
            if isinstance(child, list):
                child = node[p] = [dict(c) if isinstance(c, Mapping) else c for c in child]
            elif isinstance(child, Mapping):
                child = node[p] = dict(child)
            else:
                child = node[p] = {}
            node = child
        if isinstance(node, list):
            idx = _index(parts[-1], key)
            if idx >= len(node):
                raise ConfigError(f"override '{item}': {key} is past the list's end")
            node[idx] = _parse_value(text)
        else:
            node[parts[-1]] = _parse_value(text)
    return out


def _index(part: str, key: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"config key '{key}': '{part}' must be a list index (0, 1, ...)")
    return int(part)


def _list_item(items: list, part: str, key: str) -> dict:
    idx = _index(part, key)
    if idx >= len(items):
        raise ConfigError(
            f"config key '{key}': the list has {len(items)} item(s); set the whole list "
            "in the YAML to add items"
        )
    if not isinstance(items[idx], dict):
        items[idx] = dict(items[idx]) if isinstance(items[idx], Mapping) else {}
    return items[idx]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


def load_pretrain_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> PretrainConfig:
    """Defaults <- the method's recipe <- ``base`` (e.g. from CLI flags) <- YAML at ``path``
    <- ``overrides``.

    A YAML may name a parent with ``_base_: other.yaml`` (relative to itself) to inherit
    from, so the shipped variants stay a few lines each.
    """
    given: dict[str, Any] = dict(base or {})
    if path is not None:
        given = _merge(given, _read_with_bases(Path(path), set()))
    # the method's recipe goes under what the user gave, so the method must be known first
    first = apply_overrides(_merge(to_dict(PretrainConfig()), given), overrides)
    data = _merge(to_dict(PretrainConfig()), _method_recipe(first))
    data = apply_overrides(_merge(data, given), overrides)
    return config_from_dict(data)


def _read_with_bases(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} inherits from itself through _base_")
    seen.add(path)
    data = read_yaml(path)
    parent = data.pop("_base_", None)
    if parent is None:
        return data
    return _merge(_read_with_bases(path.parent / parent, seen), data)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML (keys in schema order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(a: Any, b: Any, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs, skipping ``ignore`` prefixes."""
    fa, fb = _flat(to_dict(a)), _flat(to_dict(b))
    keys = sorted(set(fa) | set(fb))
    return [
        k
        for k in keys
        if fa.get(k) != fb.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)
    ]


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "params":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
