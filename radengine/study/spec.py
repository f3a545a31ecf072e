"""Study specs: the schema, its checks and its expansion into jobs.

A spec is a YAML file (or the name of a shipped one in ``experiments/studies/``) read with
the same machinery as the pretraining and evaluation configs: ``_base_`` inheritance, then
``key=value`` overrides parsed as YAML, every key checked against the schema below (an
unknown key is a :class:`~radengine.config.ConfigError` naming the closest known key).
``stores.NAME=PATH`` is short for ``stores.NAME.path=PATH``.

Expansion resolves every pretraining config and every evaluation config of the grid
(through :func:`radengine.config.load_pretrain_config` and
:func:`radengine.eval.config.load_eval_config`, so their keys are checked too) and gives one
:class:`~radengine.study.jobs.Job` per pretraining and per (init, protocol, task, label
fraction, seed) evaluation, pretrainings first. See docs/studies.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radengine import config as base_config
from radengine.config import ConfigError
from radengine.study.jobs import Identities, Job, content_key

__all__ = [
    "EvalBlock",
    "InitSpec",
    "PretrainDefaults",
    "SlurmSpec",
    "StoreSpec",
    "Study",
    "StudySpec",
    "experiments_dir",
    "find_spec",
    "load_study",
    "shipped_studies",
]

PROTOCOLS = ("knn", "linear", "finetune", "segment")
DOMAINS = ("ct", "natural")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# ----------------------------------------------------------------------------- the schema


@dataclass
class StoreSpec:
    """A named dataset. ``path: null`` is the built-in synthetic store of ``domain``;
    ``required: true`` makes ``study run`` refuse to start until a path is given."""

    path: str | None = None
    domain: str = "ct"
    required: bool = False


@dataclass
class PretrainDefaults:
    """What every pretraining init starts from: a pretraining config (a shipped name such
    as ``study_a_ct``, or a path relative to the spec) and overrides (dotted keys)."""

    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    gpus: int = 1  # processes (GPUs) per pretraining; > 1: torchrun, one process per GPU


@dataclass
class InitSpec:
    """One initialisation (the mapping form; the string ``scratch`` is the other form).

    Exactly one kind: a pretraining (``pretrain``, ``data``, ``method``, ``fractions``,
    ``stages``, ``mix``, ``overrides``), a weights file (``weights``, with ``format``, ``key``,
    ``strict``) or an MLflow model (``model``: ``models:/...``, ``runs:/...`` or a run id).
    """

    pretrain: str | None = None  # config; None: the study's pretrain.config
    data: str | None = None  # store name: data.store and data.domain
    fractions: list[float] = field(default_factory=list)  # one pretraining per fraction
    stages: list[Any] = field(default_factory=list)  # sequential: store names or {data, epochs}
    mix: list[str] = field(default_factory=list)  # stores added to every batch (1:1 weights)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted pretrain config keys
    method: str | None = None  # the SSL method (radengine list methods); None: the config's
    weights: str | None = None  # a published checkpoint file (relative: to weights_dir)
    format: str = "auto"
    key: str | None = None
    strict: bool = True
    model: str | None = None
    gpus: int | None = None  # this pretraining's processes (GPUs); None: pretrain.gpus


@dataclass
class EvalBlock:
    """A grid of evaluations: every init x protocol x task x label fraction x seed."""

    protocols: Any = "linear"  # one or a list: knn | linear | finetune | segment
    tasks: Any = None  # one or a list; None: the protocol's default task on the data
    label_fractions: Any = 1.0  # one or a list, in (0, 1]
    seeds: Any = field(default_factory=lambda: [42, 1, 2, 3])
    data: str | None = None  # store name; None: the built-in synthetic CT store
    inits: list[str] = field(default_factory=list)  # default: every init
    config: Any = None  # eval config (shipped name or path), or {protocol: config}
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted eval config keys
    input: dict[str, Any] | None = None  # keys replacing the study's input mapping


@dataclass
class SlurmSpec:
    """Resources of every job ``study run --launcher slurm`` submits (sbatch options);
    ``pretrain`` and ``eval`` blocks replace some of them for one kind of job
    (``pretrain: {time: "48:00:00"}``). A pretraining asks for ``pretrain.gpus`` GPUs (or
    its init's ``gpus``) rather than ``gpus_per_job``, unless that is 0 (CPU-only jobs).

    ``time`` and ``mem`` are sbatch's strings (quote a time in YAML: ``"12:00:00"``);
    ``None`` leaves an option to the cluster's defaults. ``extra``: more sbatch options
    (``--qos=high``), one per item; ``setup``: shell lines run before the job (``module
    load cuda``). ``requeue`` with ``signal_seconds`` makes a job that runs into its time
    limit or is preempted checkpoint (SIGTERM that many seconds before the end) and go
    back to the queue, to resume from its checkpoint.
    """

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    gpus_per_job: int = 1
    mem: str | None = None
    extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    requeue: bool = True
    signal_seconds: int = 120
    pretrain: dict[str, Any] = field(default_factory=dict)  # keys above, for pretrainings only
    eval: dict[str, Any] = field(default_factory=dict)  # keys above, for evaluations only

    def for_kind(self, kind: str) -> SlurmSpec:
        """The resources of a ``kind`` job: the common keys with its block's on top."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        common.update(pretrain={}, eval={})
        return base_config._build(
            SlurmSpec, {**common, **getattr(self, kind)}, f"slurm.{kind}.", SlurmSpec
        )


@dataclass
class StudySpec:
    """A study: initialisations x evaluations, the baseline row and the metrics."""

    name: str = ""  # default: the file's stem
    description: str = ""
    experiment: str | None = None  # MLflow experiment of every job; default: the name
    weights_dir: str | None = None  # folder of relative weights files (relative to the spec)
    stores: dict[str, Any] = field(default_factory=dict)
    pretrain: PretrainDefaults = field(default_factory=PretrainDefaults)
    inits: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(
        default_factory=lambda: {"size": 224, "intensity": "minmax", "repeat": 3}
    )
    evals: list[EvalBlock] = field(default_factory=list)
    baseline: str | None = None  # an init name; default: scratch when there is one
    metrics: list[str] = field(default_factory=list)  # default: each task's primary metric
    slurm: SlurmSpec = field(default_factory=SlurmSpec)  # --launcher slurm's resources


@dataclass
class Study:
    """A loaded, checked spec: where it came from, its stores and inits, its jobs."""

    spec: StudySpec
    path: Path
    stores: dict[str, StoreSpec]
    inits: dict[str, InitSpec | str]
    digest: str
    jobs: list[Job] = field(default_factory=list)
    init_names: dict[str, list[str]] = field(default_factory=dict)  # spec name -> expanded

    @property
    def name(self) -> str:
        """The study's name (the ``study`` tag of its runs)."""
        return self.spec.name

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the study's runs."""
        return self.spec.experiment or self.spec.name

    def job(self, job_id: str) -> Job:
        """The job with id ``job_id``."""
        return next(j for j in self.jobs if j.id == job_id)


# ----------------------------------------------------------------------------- locating


def experiments_dir() -> Path:
    """The shipped ``experiments/`` folder (next to the package in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "experiments"


def shipped_studies() -> dict[str, Path]:
    """The shipped study specs, by name (``experiments/studies/<name>.yaml``)."""
    folder = experiments_dir() / "studies"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def find_spec(spec: str | Path) -> Path:
    """A spec argument as a file: an existing path, else a shipped study's name.

    Raises:
        ConfigError: neither, with the closest shipped name.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = shipped_studies()
    if str(spec) in shipped:
        return shipped[str(spec)]
    close = difflib.get_close_matches(str(spec), list(shipped), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(shipped) or "none"
    raise ConfigError(
        f"study spec {spec!r} is neither a file nor a shipped study{hint} (shipped: {known}; "
        "radengine study list)"
    )


def _shipped_config(value: str, kind: str, base: Path, where: str) -> Path:
    """A config named in a spec: a path (relative to the spec's folder) or a shipped name
    from ``experiments/<kind>/``."""
    if "/" in value or value.endswith((".yaml", ".yml")):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(f"config key '{where}': config file {path} does not exist")
        return path.resolve()
    folder = experiments_dir() / kind
    path = folder / f"{value}.yaml"
    if path.is_file():
        return path
    names = [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"config key '{where}': {value!r} is not a shipped {kind} config in {folder}{hint} "
        "(or give a path to a YAML)"
    )


# ----------------------------------------------------------------------------- loading


def _rewrite_overrides(overrides: Sequence[str]) -> list[str]:
    """``stores.NAME=PATH`` -> ``stores.NAME.path=PATH``."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if sep and len(parts) == 2 and parts[0] == "stores":
            item = f"stores.{parts[1]}.path={value}"
        out.append(item)
    return out


def _store_entries(data: dict[str, Any]) -> dict[str, Any]:
    """Stores given as a path (or null) in the YAML, in the mapping form."""
    stores = data.get("stores")
    if isinstance(stores, Mapping):
        data = dict(data)
        data["stores"] = {
            k: (dict(v) if isinstance(v, Mapping) else {"path": v}) for k, v in stores.items()
        }
    return data


def load_study(
    spec: str | Path, overrides: Sequence[str] = (), *, expand: bool = True, strict: bool = False
) -> Study:
    """Read, check and (by default) expand a study spec.

    Args:
        spec: a YAML path or a shipped study's name.
        overrides: ``key=value`` items over the YAML (``stores.ct=/data/ct``).
        expand: build the jobs (resolves every pretraining and eval config).
        strict: every named store and weights file must exist (for running; a dry run
            expands without the data).

    Returns:
        The study.

    Raises:
        ConfigError: an unknown key (with the closest one), a bad value, an unknown store,
            init, task or config, or (``strict``) missing data.
    """
    path = find_spec(spec)
    data = _store_entries(base_config._read_with_bases(path, set()))
    declared = set(data.get("stores") or {}) if isinstance(data.get("stores"), Mapping) else set()
    data = base_config.apply_overrides(data, _rewrite_overrides(overrides))
    s: StudySpec = base_config.config_from_dict(data, StudySpec)  # type: ignore[assignment]
    if not s.name:
        s.name = path.stem
    _check_name(s.name, "name")
    stores = {}
    for name, value in s.stores.items():
        _check_name(str(name), f"stores.{name}")
        st = base_config._build(StoreSpec, value, f"stores.{name}.", StoreSpec)
        if st.domain not in DOMAINS:
            raise ConfigError(f"config key 'stores.{name}.domain' must be one of {DOMAINS}")
        if strict and st.required and st.path is None:
            raise ConfigError(
                f"config key 'stores.{name}' needs your data: give stores.{name}=PATH (a "
                f"{st.domain} store from `radengine ingest`), or look at the grid without it "
                "with --dry-run"
            )
        stores[str(name)] = st
    inits: dict[str, InitSpec | str] = {}
    for name, value in s.inits.items():
        _check_name(str(name), f"inits.{name}")
        if value == "scratch" or value is None:
            inits[str(name)] = "scratch"
            continue
        if isinstance(value, str):
            raise ConfigError(
                f"config key 'inits.{name}' must be 'scratch' or a mapping (pretrain, "
                f"weights or model), got {value!r}"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key 'inits.{name}' must be a mapping, got {value!r}")
        inits[str(name)] = base_config._build(InitSpec, value, f"inits.{name}.", InitSpec)
    if not inits:
        raise ConfigError("config key 'inits' must name at least one initialisation")
    if not s.evals:
        raise ConfigError("config key 'evals' must hold at least one evaluation block")
    if s.input is not None:
        _check_input(s.input, "input")
    _check_slurm(s.slurm)
    if s.pretrain.gpus < 1:
        raise ConfigError("config key 'pretrain.gpus' must be at least 1")
    for name, init in inits.items():
        if isinstance(init, InitSpec) and init.gpus is not None and init.gpus < 1:
            raise ConfigError(f"config key 'inits.{name}.gpus' must be at least 1 (or null)")
    spec_dict = base_config.to_dict(s)
    # Where the jobs run, and how the study is described, is not what the study is: no
    # resources and no description in the digest.
    del spec_dict["slurm"], spec_dict["description"]
    del spec_dict["pretrain"]["gpus"]
    for value in spec_dict["inits"].values():
        if isinstance(value, dict):
            value.pop("gpus", None)
    payload = json.dumps(spec_dict, sort_keys=True, default=str)
    study = Study(
        spec=s,
        path=path.resolve(),
        stores=stores,
        inits=inits,
        digest=hashlib.sha256(payload.encode()).hexdigest(),
    )
    seen: dict[str, str] = {}
    for name, init in inits.items():
        study.init_names[name] = _check_init(study, name, init)
        for variant in study.init_names[name]:
            if variant in seen:
                raise ConfigError(
                    f"config key 'inits.{name}' names the init {variant!r}, and so does "
                    f"inits.{seen[variant]} (fraction variants are <name>_<percent>pct); "
                    "rename one"
                )
            seen[variant] = name
    if s.baseline is not None:
        names = [n for ns in study.init_names.values() for n in ns]
        if s.baseline not in names:
            close = difflib.get_close_matches(s.baseline, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"config key 'baseline': {s.baseline!r} is not an init of the study{hint}"
            )
    _check_new_stores(study, declared)
    if expand:
        study.jobs = _expand(study, Identities(strict=strict))
    return study


def _check_slurm(slurm: SlurmSpec, where: str = "slurm") -> None:
    if slurm.cpus_per_task is not None and slurm.cpus_per_task < 1:
        raise ConfigError(f"config key '{where}.cpus_per_task' must be at least 1 (or null)")
    if slurm.gpus_per_job < 0:
        raise ConfigError(f"config key '{where}.gpus_per_job' must be at least 0")
    if slurm.signal_seconds < 0:
        raise ConfigError(f"config key '{where}.signal_seconds' must be at least 0")
    for i, option in enumerate(slurm.extra):
        if not option.startswith("-") or "\n" in option:
            raise ConfigError(
                f"config key '{where}.extra[{i}]' must be one sbatch option such as "
                f"'--qos=high', got {option!r}"
            )
    for i, line in enumerate(slurm.setup):
        if "\n" in line:
            raise ConfigError(f"config key '{where}.setup[{i}]' must be one line, got {line!r}")
    if where == "slurm":
        for kind in ("pretrain", "eval"):
            block = getattr(slurm, kind)
            if not isinstance(block, Mapping):
                raise ConfigError(f"config key 'slurm.{kind}' must be a mapping of slurm keys")
            if {"pretrain", "eval"} & set(block):
                raise ConfigError(f"config key 'slurm.{kind}' cannot hold another kind's block")
            _check_slurm(slurm.for_kind(kind), f"slurm.{kind}")


def _check_new_stores(study: Study, declared: set[str]) -> None:
    """A store the overrides added but nothing uses is a typo (``stores.cct=/data``): the
    study would run on the store it meant to replace."""
    used = set()
    for init in study.inits.values():
        if isinstance(init, InitSpec):
            used.update([init.data, *init.mix])
            used.update(s if isinstance(s, str) else s.get("data") for s in init.stages)
    used.update(block.data for block in study.spec.evals)
    for name in set(study.stores) - declared - used:
        close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.5)
        hint = f"; did you mean 'stores.{close[0]}'?" if close else ""
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(
            f"config key 'stores.{name}': the spec has no store {name!r} and nothing uses "
            f"it{hint} (the spec's stores: {known})"
        )


def _check_name(name: str, key: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"config key '{key}': {name!r} must be letters, digits, '_', '-' or '.' (it "
            "names folders and MLflow tags)"
        )


def _check_input(value: Any, key: str) -> None:
    from radengine.eval.config import EvalInputConfig

    if not isinstance(value, Mapping):
        raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
    base_config._build(EvalInputConfig, value, f"{key}.", EvalInputConfig)


def _store(study: Study, name: str | None, key: str) -> StoreSpec:
    if name is None:
        return StoreSpec(None, "ct")
    if name not in study.stores:
        close = difflib.get_close_matches(name, list(study.stores), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(study.stores) or "none: add a 'stores' mapping"
        raise ConfigError(f"config key '{key}': unknown store {name!r}{hint} (stores: {known})")
    return study.stores[name]


def _pct(fraction: float) -> str:
    """0.1 -> '10pct', 0.001 -> '0p1pct' (for names)."""
    return f"{fraction * 100:g}".replace(".", "p") + "pct"


def _kind(init: InitSpec | str, name: str) -> str:
    if init == "scratch":
        return "scratch"
    assert isinstance(init, InitSpec)
    pre = (
        init.pretrain is not None
        or init.data is not None
        or init.method is not None
        or bool(init.fractions or init.stages or init.mix or init.overrides)
    )
    flags = {"pretrain": pre, "weights": init.weights is not None, "model": init.model is not None}
    kinds = [k for k, on in flags.items() if on]
    if len(kinds) != 1:
        what = "none" if not kinds else " and ".join(kinds)
        raise ConfigError(
            f"config key 'inits.{name}' must be one kind of init: a pretraining (pretrain, "
            f"data, method, fractions, stages, mix, overrides), a weights file (weights) or an MLflow "
            f"model (model); it has {what}"
        )
    return kinds[0]


def _check_init(study: Study, name: str, init: InitSpec | str) -> list[str]:
    """Check one init; return the names it expands to (fraction variants)."""
    kind = _kind(init, name)
    if kind != "pretrain":
        if kind == "weights":
            from radengine.eval.cli import FORMATS

            assert isinstance(init, InitSpec)
            if init.format not in FORMATS:
                raise ConfigError(f"config key 'inits.{name}.format' must be one of {FORMATS}")
        return [name]
    assert isinstance(init, InitSpec)
    for f in init.fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"config key 'inits.{name}.fractions' must be in (0, 1], got {f}")
    if len(set(init.fractions)) != len(init.fractions):
        raise ConfigError(f"config key 'inits.{name}.fractions' must not repeat a fraction")
    if init.stages and init.mix:
        raise ConfigError(f"config key 'inits.{name}': stages cannot be combined with mix")
    if init.data is not None:
        _store(study, init.data, f"inits.{name}.data")
    for i, m in enumerate(init.mix):
        _store(study, m, f"inits.{name}.mix[{i}]")
    return [f"{name}_{_pct(f)}" for f in init.fractions] if init.fractions else [name]


def _as_list(value: Any, key: str, kind: type) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in items:
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise ConfigError(
                f"config key '{key}' must be a {kind.__name__} or a list of them, got {v!r}"
            )
    if not items:
        raise ConfigError(f"config key '{key}' must not be empty")
    if len(set(items)) != len(items):
        raise ConfigError(f"config key '{key}' must not repeat a value")
    return [float(v) for v in items] if kind is float else items


def _kv(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested or dotted mappings as ``key=value`` overrides (values as JSON, which YAML
    reads back as they were)."""
    out = []
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not key.endswith("params"):
            out += _kv(v, key + ".")
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


# ----------------------------------------------------------------------------- expansion


def _expand(study: Study, ids: Identities) -> list[Job]:
    pretrain_jobs: dict[str, Job] = {}
    for name, init in study.inits.items():
        if _kind(init, name) == "pretrain":
            assert isinstance(init, InitSpec)
            for variant, fraction in zip(
                study.init_names[name], init.fractions or [None], strict=True
            ):
                pretrain_jobs[variant] = _pretrain_job(study, name, variant, init, fraction, ids)
    eval_jobs: list[Job] = []
    seen: set[str] = set()
    for b, block in enumerate(study.spec.evals):
        for job in _eval_jobs(study, b, block, pretrain_jobs, ids):
            if job.key not in seen:  # the same evaluation from two blocks runs once
                seen.add(job.key)
                eval_jobs.append(job)
    return [*pretrain_jobs.values(), *eval_jobs]


def _pretrain_job(
    study: Study, name: str, variant: str, init: InitSpec, fraction: float | None, ids: Identities
) -> Job:
    from radengine.config import load_pretrain_config, to_dict

    where = f"inits.{name}"
    cfg_name = init.pretrain or study.spec.pretrain.config
    key = f"{where}.pretrain" if init.pretrain else "pretrain.config"
    path = _shipped_config(cfg_name, "pretrain", study.path.parent, key) if cfg_name else None
    common = _kv(study.spec.pretrain.overrides)
    if init.data is not None:
        st = _store(study, init.data, f"{where}.data")
        common += [f"data.domain={st.domain}", f"data.store={json.dumps(st.path)}"]
    if fraction is not None:
        common.append(f"data.fraction={fraction}")
    if init.mix:
        mix = []
        for i, m in enumerate(init.mix):
            st = _store(study, m, f"{where}.mix[{i}]")
            mix.append({"domain": st.domain, "store": st.path, "weight": 1.0})
        common.append(f"data.mix={json.dumps(mix)}")
    own = ([f"method={init.method}"] if init.method else []) + _kv(init.overrides)
    forced = [f"study={json.dumps(study.name)}"]

    def load(extra: list[str]) -> Any:
        try:
            return load_pretrain_config(path, [*common, *extra, *own, *forced])
        except ConfigError as exc:
            raise ConfigError(f"{where} (pretraining config): {exc}") from None

    if init.stages:
        cfg0 = load([])
        stages = _stages(study, where, init.stages, cfg0)
        cfg = load([f"stages={json.dumps(stages)}"])
    else:
        cfg = load([])
    resolved = to_dict(cfg)
    data = {}
    for i, src in enumerate(cfg.data.sources()):
        data[f"data[{i}]"] = ids.store(src.store, src.domain)
    for i, st in enumerate(cfg.stages):
        data[f"stages[{i}]"] = ids.store(st.store, st.domain)
    key = content_key("pretrain", resolved, "scratch", data)
    return Job(
        id=f"pretrain-{variant}-{key[:8]}",
        kind="pretrain",
        init=variant,
        init_kind="pretrain",
        key=key,
        config=resolved,
        seed=cfg.seed,
        data="+".join(sorted({v for v in data.values()})),
        data_label=_pretrain_data_label(study, init),
        gpus=init.gpus or study.spec.pretrain.gpus,
    )


def _pretrain_data_label(study: Study, init: InitSpec) -> str:
    if init.stages:
        names = [s if isinstance(s, str) else s.get("data") for s in init.stages]
        return " -> ".join(str(n) for n in names)
    main = init.data or "config"
    return "+".join([main, *init.mix])


def _stages(study: Study, where: str, items: list[Any], cfg0: Any) -> list[dict[str, Any]]:
    """The study's ``stages`` list as the pretraining config's: store names map onto the
    config's stages (same count), or split ``optim.epochs`` evenly when it has none."""
    n = len(items)
    if cfg0.stages and len(cfg0.stages) != n:
        raise ConfigError(
            f"config key '{where}.stages' names {n} stage(s) but its pretraining config has "
            f"{len(cfg0.stages)}"
        )
    total = cfg0.optim.epochs
    if not cfg0.stages and total < n and not all(isinstance(i, Mapping) for i in items):
        raise ConfigError(
            f"config key '{where}.stages': {n} stages need optim.epochs >= {n} (it is {total}), "
            "or give each stage its epochs ({data: NAME, epochs: N})"
        )
    out = []
    for i, item in enumerate(items):
        key = f"{where}.stages[{i}]"
        if isinstance(item, str):
            item = {"data": item}
        if not isinstance(item, Mapping) or set(item) - {"data", "epochs", "fraction"}:
            raise ConfigError(
                f"config key '{key}' must be a store name or {{data: NAME, epochs: N, "
                f"fraction: F}}, got {item!r}"
            )
        st = _store(study, item.get("data"), f"{key}.data")
        if cfg0.stages:
            base = dataclasses.asdict(cfg0.stages[i])
        else:
            base = {"epochs": total // n + (1 if i < total % n else 0), "fraction": 1.0}
        base.update({"domain": st.domain, "store": st.path})
        base.update({k: item[k] for k in ("epochs", "fraction") if k in item})
        out.append(base)
    return out


def _default_task(protocol: str, domain: str) -> str:
    if protocol == "segment":
        return "segmentation"
    return "body_region" if domain == "ct" else "class"


def _eval_config_path(study: Study, block: EvalBlock, b: int, protocol: str) -> Path | None:
    value = block.config
    key = f"evals[{b}].config"
    if isinstance(value, Mapping):
        unknown = set(value) - set(PROTOCOLS)
        if unknown:
            raise ConfigError(
                f"config key '{key}': {sorted(unknown)} are not protocols {PROTOCOLS}"
            )
        value, key = value.get(protocol), f"{key}.{protocol}"
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"config key '{key}' must be a config name or path, got {value!r}")
    path = _shipped_config(value, "eval", study.path.parent, key)
    wanted = base_config._read_with_bases(path, set()).get("protocol")
    if wanted not in (None, protocol):
        raise ConfigError(
            f"config key '{key}': {path.name} is a config for `eval {wanted}`, not {protocol}; "
            "give one per protocol: config: {linear: ..., finetune: ...}"
        )
    return path


def _eval_jobs(
    study: Study, b: int, block: EvalBlock, pretrain_jobs: dict[str, Job], ids: Identities
) -> list[Job]:
    from radengine.eval.config import load_eval_config
    from radengine.eval.tasks import TASKS

    where = f"evals[{b}]"
    protocols = _as_list(block.protocols, f"{where}.protocols", str)
    for p in protocols:
        if p not in PROTOCOLS:
            close = difflib.get_close_matches(p, PROTOCOLS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key '{where}.protocols': unknown protocol {p!r}{hint}")
    tasks = [None] if block.tasks is None else _as_list(block.tasks, f"{where}.tasks", str)
    for t in tasks:
        if t is not None and t not in TASKS:
            close = difflib.get_close_matches(t, list(TASKS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"config key '{where}.tasks': unknown task {t!r}{hint} (known: {', '.join(TASKS)})"
            )
    fractions = _as_list(block.label_fractions, f"{where}.label_fractions", float)
    for f in fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"config key '{where}.label_fractions' must be in (0, 1], got {f}")
    seeds = _as_list(block.seeds, f"{where}.seeds", int)
    store = _store(study, block.data, f"{where}.data")
    data_id = ids.store(store.path, store.domain)
    data_label = block.data or f"builtin {store.domain}"
    inits = _block_inits(study, block, where)
    input_map = {**(study.spec.input or {}), **(block.input or {})}
    if block.input is not None:
        _check_input(block.input, f"{where}.input")
    own = _kv(block.overrides)
    pairs = []
    for p in protocols:
        for t in tasks:
            task = t or _default_task(p, store.domain)
            segment_task = TASKS[task].kind == "segmentation"
            if (p == "segment") == segment_task:
                pairs.append((p, task))
    if not pairs:
        raise ConfigError(
            f"config key '{where}': no protocol of {protocols} can run a task of "
            f"{[t for t in tasks if t]} (segment runs segmentation tasks; knn, linear and "
            "finetune the others)"
        )
    jobs = []
    for protocol, task in pairs:
        cfg_path = _eval_config_path(study, block, b, protocol)
        for init_name, spec_name in inits:
            init = study.inits[spec_name]
            kind = _kind(init, spec_name)
            init_keys: list[str] = []
            depends = None
            if kind == "scratch":
                source, identity = "scratch", "scratch"
            elif kind == "pretrain":
                dep = pretrain_jobs[init_name]
                source, identity, depends = None, f"pretrain:{dep.key}", dep.id
            elif kind == "weights":
                assert isinstance(init, InitSpec) and init.weights is not None
                source = str(_weights_path(study, init.weights))
                identity = ids.weights(source)
                init_keys = [f"init.format={init.format}", f"init.strict={json.dumps(init.strict)}"]
                if init.key is not None:
                    init_keys.append(f"init.key={json.dumps(init.key)}")
            else:
                assert isinstance(init, InitSpec) and init.model is not None
                source, identity = init.model, f"mlflow:{init.model}"
            for fraction in fractions:
                for seed in seeds:
                    overrides = [
                        f"protocol={protocol}",
                        f"task={task}",
                        f"seeds=[{seed}]",
                        f"data.domain={store.domain}",
                        f"data.store={json.dumps(store.path)}",
                        f"data.label_fraction={fraction}",
                        *[f"input.{k}={json.dumps(v)}" for k, v in input_map.items()],
                        *init_keys,
                        *own,
                        f"study={json.dumps(study.name)}",
                        f"init.source={json.dumps(source or 'scratch')}",
                    ]
                    try:
                        cfg = load_eval_config(cfg_path, overrides)
                    except ConfigError as exc:
                        raise ConfigError(f"{where} (eval config): {exc}") from None
                    resolved = base_config.to_dict(cfg)
                    resolved["init"]["source"] = source
                    key = content_key("eval", resolved, identity, {"data": data_id})
                    jobs.append(
                        Job(
                            id=f"{protocol}-{task}-{init_name}-l{_pct(fraction)[:-3]}-s{seed}-"
                            f"{key[:8]}",
                            kind="eval",
                            init=init_name,
                            init_kind=kind,
                            key=key,
                            config=resolved,
                            protocol=protocol,
                            task=task,
                            label_fraction=fraction,
                            seed=seed,
                            data=data_id,
                            data_label=data_label,
                            depends_on=depends,
                            init_source=source,
                        )
                    )
    return jobs


def _block_inits(study: Study, block: EvalBlock, where: str) -> list[tuple[str, str]]:
    """(expanded init name, spec init name) pairs of a block, in the spec's order."""
    every = [(v, n) for n, vs in study.init_names.items() for v in vs]
    if not block.inits:
        return every
    out = []
    for i, name in enumerate(block.inits):
        hits = [(v, n) for v, n in every if name in (v, n)]
        if not hits:
            names = [v for v, _ in every] + list(study.init_names)
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key '{where}.inits[{i}]': unknown init {name!r}{hint}")
        out += [h for h in hits if h not in out]
    return out


def _weights_path(study: Study, file: str) -> Path:
    path = Path(file).expanduser()
    if path.is_absolute():
        return path
    base = study.path.parent
    if study.spec.weights_dir:
        wd = Path(study.spec.weights_dir).expanduser()
        base = wd if wd.is_absolute() else study.path.parent / wd
    return (base / path).absolute()
