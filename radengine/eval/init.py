"""Where an evaluated encoder's weights come from (``--init``), and building it.

``--init`` accepts, in this order of interpretation:

- ``scratch``: random initialisation (torchvision's scheme), seeded by the run's seed;
- ``models:/<model id>`` or ``models:/<name>/<version|latest>``: an MLflow model (a
  pretraining run's encoder, or one brought in by ``radengine weights import``);
- ``runs:/<run id>[/...]`` or a bare 32-hex MLflow run id: a pretraining run. Its weights are
  read from its run folder (the run's ``out`` tag: ``encoder.pt``) when that exists here,
  else from the encoder model it logged, else from its newest logged checkpoint artifact;
- a directory: a pretraining run folder (``encoder.pt``, else its newest checkpoint);
- a file: a radengine pretraining checkpoint (``checkpoints/step-*.pt``), an ``encoder.pt``,
  or a published checkpoint in any layout radengine.eval.weights reads (``--init-format``
  forces one, ``init.key`` points inside the file).
- nothing (``init.source: null``): the newest FINISHED run tagged ``stage=pretrain`` in the
  tracking store.

ResNet weights go through :func:`radengine.eval.weights.convert_checkpoint` whatever their
source, so every init gets the same checks and the same :class:`ImportReport` (missing and
unexpected keys, dropped heads, adapted input channels); a checkpoint of another
architecture is an error naming both. Other backbones (ViT) load their own runs' state
dicts by name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from radengine.eval.common import EvalError
from radengine.eval.weights import ImportReport, convert_checkpoint

__all__ = [
    "Init",
    "build_encoder",
    "infer_arch",
    "latest_pretrain_run",
    "nested_keys",
    "resolve_init",
]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_BLOCK = re.compile(r"^(.*?)layer([1-4])\.(\d+)\.conv([1-3])\.weight$")
_ARCHS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
}
NO_PRETRAIN_RUN = (
    "no finished pretraining run in the tracking store {uri}: run `radengine pretrain "
    "--domain ct` first, or pass --init (scratch, an MLflow run id, a models:/ URI, a run "
    "folder or a checkpoint file)"
)


@dataclass
class Init:
    """A resolved ``--init``.

    Attributes:
        kind: scratch | run | model | folder | checkpoint | file.
        source: what was given (or the run id found for a missing ``--init``).
        label: a short name for tags and run names.
        state: the state dict to convert (None for scratch).
        fmt: the layout for :func:`convert_checkpoint` ("auto" except for published files).
        arch: the architecture the weights are for, when known.
        pretrain_config: the pretraining run's config (nested dicts), when known.
        pretrain_run_id: the pretraining MLflow run, when known.
        tags: facts about the pretraining for the eval run's tags (method, domain, ...).
    """

    kind: str
    source: str
    label: str
    state: Mapping[str, Any] | None = None
    fmt: str = "auto"
    arch: str | None = None
    pretrain_config: dict[str, Any] | None = None
    pretrain_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def infer_arch(keys: Any) -> str | None:
    """The torchvision ResNet whose block structure the state dict keys show (under any
    prefix), or None when none or several do."""
    found: dict[str, tuple[bool, list[set[int]]]] = {}
    for k in keys:
        m = _BLOCK.match(str(k))
        if not m:
            continue
        prefix, stage, block, conv = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        _, blocks = found.setdefault(prefix, (False, [set(), set(), set(), set()]))
        blocks[stage - 1].add(block)
        if conv == "3":
            found[prefix] = (True, blocks)
    archs = {_ARCHS.get((b, tuple(len(s) for s in blocks))) for b, blocks in found.values()}
    return archs.pop() if len(archs) == 1 else None


def nested_keys(data: Mapping[str, Any], depth: int = 0) -> list[str]:
    """Keys of a checkpoint, descending into nested dicts (``state_dict.module.conv1...``)."""
    out = []
    for k, v in data.items():
        if isinstance(v, Mapping) and depth < 3:
            out += [f"{k}.{sub}" for sub in nested_keys(v, depth + 1)]
        else:
            out.append(str(k))
    return out


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EvalError(
            f"--init {path}: cannot read it as a checkpoint ({type(exc).__name__}: {exc}). "
            "Files are read with weights_only=True; a file that pickles other objects must "
            "be re-saved as a plain state dict"
        ) from None


def _attach_encoder(data: dict[str, Any], encoder: Path, path: Path) -> None:
    """A checkpoint written at the end of its schedule keeps its encoder in the run's
    encoder.pt (radengine.engine.checkpoint); put it back, or say what is missing."""
    if not data.get("encoder_file"):
        return
    from radengine.engine import checkpoint

    try:
        checkpoint.attach_encoder(data, encoder, path)
    except checkpoint.CheckpointError as exc:
        raise EvalError(f"--init {path}: {exc}") from None


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else None


def _source_label(src: Mapping[str, Any]) -> str:
    """``ct``, or ``ct 10%`` for a fraction of the store."""
    domain = str(src.get("domain") or "ct")
    try:
        fraction = float(src.get("fraction", 1.0))
    except (TypeError, ValueError):
        fraction = 1.0
    return domain if fraction == 1.0 else f"{domain} {fraction * 100:g}%"


def pretrain_data_label(cfg: Mapping[str, Any], *, fractions: bool = True) -> str:
    """What a pretraining config trained on, for people: ``ct``, ``ct 10%``, ``natural -> ct``
    (sequential ``stages``), ``ct + natural`` (``data.mix``); ``fractions=False`` leaves the
    fractions out."""
    label = _source_label if fractions else (lambda src: str(src.get("domain") or "ct"))
    stages = cfg.get("stages") or []
    if stages:
        return " -> ".join(label(st or {}) for st in stages)
    data = cfg.get("data") or {}
    return " + ".join(label(s or {}) for s in [data, *(data.get("mix") or [])])


def _pretrain_tags(cfg: Mapping[str, Any] | None) -> dict[str, str]:
    """The pretraining's tags an evaluation carries: ``method``, ``pretrain_domain`` (the
    single-source domain, ``natural -> ct`` for stages, ``ct + natural`` for a mix),
    ``pretrain_data`` (the same with fractions, what the report's row labels show) and
    ``data_fraction`` (single-source runs)."""
    if not cfg:
        return {}
    data = cfg.get("data") or {}
    simple = not (cfg.get("stages") or data.get("mix"))
    tags = {
        "method": cfg.get("method"),
        "pretrain_domain": pretrain_data_label(cfg, fractions=False),
        "pretrain_data": pretrain_data_label(cfg),
        "data_fraction": data.get("fraction") if simple else None,
        "pretrain_study": cfg.get("study"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def _from_folder(folder: Path, source: str) -> Init:
    cfg = _read_config(folder)
    enc = folder / "encoder.pt"
    if enc.is_file():
        state = _load_file(enc)
    else:
        from radengine.engine import checkpoint

        found = checkpoint.latest(folder / "checkpoints")
        if found is None:
            raise EvalError(
                f"--init {source}: {folder} holds neither encoder.pt nor a checkpoint; is it "
                "a pretraining run folder?"
            )
        state = found[1]["model"]
        cfg = cfg or found[1].get("config")
    run_id = _run_id_of_folder(folder)
    return Init(
        kind="folder",
        source=source,
        label=folder.name,
        state=state,
        arch=((cfg or {}).get("model") or {}).get("arch"),
        pretrain_config=cfg,
        pretrain_run_id=run_id,
        tags=_pretrain_tags(cfg),
    )


def _run_id_of_folder(folder: Path) -> str | None:
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            return json.loads(summary.read_text()).get("run_id")
        except ValueError:
            return None
    return None


def _from_file(path: Path, source: str, fmt: str) -> Init:
    data = _load_file(path)
    if isinstance(data, Mapping) and "format" in data and "model" in data and "config" in data:
        _attach_encoder(data, path.parent.parent / str(data.get("encoder_file", "")), path)
        cfg = data["config"]
        run_id = (data.get("state") or {}).get("run_id")
        return Init(
            kind="checkpoint",
            source=source,
            label=f"{path.parent.parent.name}/{path.stem}",
            state=data["model"],
            arch=(cfg.get("model") or {}).get("arch"),
            pretrain_config=cfg,
            pretrain_run_id=run_id,
            tags=_pretrain_tags(cfg),
        )
    if path.name == "encoder.pt" and (path.parent / "config.yaml").is_file():
        init = _from_folder(path.parent, source)
        init.kind, init.state = "checkpoint", data
        return init
    if not isinstance(data, Mapping):
        raise EvalError(f"--init {source}: the file holds a {type(data).__name__}, not a dict")
    return Init(
        kind="file",
        source=source,
        label=path.stem,
        state=data,
        fmt=fmt,
        arch=None,
        tags={"method": f"import:{fmt}"},
    )


def _client(uri: str) -> Any:
    from radengine import tracking

    tracking.require_mlflow()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _sqlite_missing(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        return path != ":memory:" and not Path(path).is_file()
    return False


def latest_pretrain_run(uri: str) -> Any | None:
    """The newest FINISHED MLflow run tagged ``stage=pretrain`` in any experiment, or None.
    Never creates a store: a missing SQLite file means no runs."""
    if _sqlite_missing(uri):
        return None
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string="tags.stage = 'pretrain' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _params_config(params: Mapping[str, str]) -> dict[str, Any]:
    """The parts of a pretraining config eval needs, from a run's flat params."""

    def value(text: str) -> Any:
        if text == "None":
            return None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text

    cfg: dict[str, Any] = {}
    for key, text in params.items():
        if key.split(".", 1)[0] in ("model", "augment", "data", "method", "study"):
            node = cfg
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    break
            else:
                node[parts[-1]] = value(text)
    return cfg


def _from_run(run: Any, uri: str, source: str, echo: Callable[[str], None]) -> Init:
    run_id = run.info.run_id
    tags = run.data.tags
    if tags.get("stage") not in (None, "pretrain"):
        raise EvalError(
            f"--init {source}: MLflow run {run_id} is a {tags.get('stage')!r} run, not a "
            "pretraining run"
        )
    folder = Path(tags["out"]) if tags.get("out") else None
    if folder is not None and (folder / "encoder.pt").is_file():
        init = _from_folder(folder, source)
        init.kind, init.label, init.pretrain_run_id = "run", run_id[:8], run_id
        init.pretrain_config = init.pretrain_config or _params_config(run.data.params)
        init.tags = {**_pretrain_tags(init.pretrain_config), **init.tags}
        return init
    cfg = _params_config(run.data.params)
    client = _client(uri)
    state = None
    try:
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
        )
    except Exception:  # an MLflow without logged models
        models = []
    models = [m for m in models if m.name == "encoder"] or list(models)
    if models:
        echo(f"loading the encoder model {models[0].model_id} of run {run_id}")
        state = _state_of_model(f"models:/{models[0].model_id}", uri)
    else:
        arts = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
        arts = sorted(a for a in arts if re.search(r"step-\d+\.pt$", a))
        if not arts:
            raise EvalError(
                f"--init {source}: run {run_id} has no run folder here ({folder}), no encoder "
                "model and no checkpoint artifacts: nothing to load. Evaluate it where its "
                "run folder is, or give --init that folder; runs pretrained with "
                "tracking.log_model=true (the default) or tracking.log_checkpoints=true can be "
                "evaluated anywhere their MLflow store is"
            )
        local = Path(client.download_artifacts(run_id, arts[-1]))
        data = _load_file(local)
        if data.get("encoder_file"):  # the final checkpoint: its encoder is the run's encoder.pt
            try:
                encoder = Path(client.download_artifacts(run_id, str(data["encoder_file"])))
            except Exception as exc:  # MLflow's own error for an artifact it does not hold
                encoder = Path(str(data["encoder_file"]))
                echo(f"run {run_id} has no {encoder} artifact ({type(exc).__name__})")
            _attach_encoder(data, encoder, local)
        state = data["model"]
    return Init(
        kind="run",
        source=source,
        label=run_id[:8],
        state=state,
        arch=(cfg.get("model") or {}).get("arch"),
        pretrain_config=cfg,
        pretrain_run_id=run_id,
        tags=_pretrain_tags(cfg),
    )


def _state_of_model(model_uri: str, uri: str) -> dict[str, Tensor]:
    from radengine import tracking

    try:
        module = tracking.load_model(model_uri, uri=uri)
    except Exception as exc:
        raise EvalError(f"--init {model_uri}: cannot load the MLflow model ({exc})") from None
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _from_model(source: str, uri: str) -> Init:
    client = _client(uri)
    rest = source[len("models:/") :].strip("/")
    model_id = None
    try:
        if "/" in rest:
            name, version = rest.split("/", 1)
            if version == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                version = str(max(int(v.version) for v in versions)) if versions else version
            model_id = getattr(client.get_model_version(name, version), "model_id", None)
        else:
            model_id = rest
        logged = client.get_logged_model(model_id) if model_id else None
    except Exception:  # metadata is a nicety; the weights decide
        logged = None
    state = _state_of_model(source, uri)
    params = dict(getattr(logged, "params", None) or {})
    cfg = _params_config(params)
    tags: dict[str, str] = {}
    run_id = getattr(logged, "source_run_id", None)
    pretrain_run_id = None
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.data.tags.get("stage") == "pretrain":
                pretrain_run_id = run_id
            elif run.data.tags.get("stage") == "import":
                tags["method"] = run.data.tags.get("method", "import")
        except Exception:
            pass
    return Init(
        kind="model",
        source=source,
        label=(rest.split("/")[0] if "/" in rest else rest)[:40],
        state=state,
        arch=(cfg.get("model") or {}).get("arch"),
        pretrain_config=cfg if pretrain_run_id else None,
        pretrain_run_id=pretrain_run_id,
        tags={**_pretrain_tags(cfg if pretrain_run_id else None), **tags},
    )


def resolve_init(
    source: str | None,
    *,
    fmt: str = "auto",
    uri: str,
    echo: Callable[[str], None] = print,
) -> Init:
    """Interpret ``--init`` (see the module docstring) and read the weights.

    Args:
        source: the ``--init`` value; None for the newest pretraining run.
        fmt: the layout of a published checkpoint file.
        uri: the tracking URI to look runs and models up in.
        echo: where progress messages go.

    Raises:
        EvalError: nothing found, an unreadable file, a run that is not a pretraining run.
    """
    if source is None:
        try:
            run = latest_pretrain_run(uri)
        except RuntimeError as exc:  # mlflow missing
            raise EvalError(f"{NO_PRETRAIN_RUN.format(uri=uri)} ({exc})") from None
        if run is None:
            raise EvalError(NO_PRETRAIN_RUN.format(uri=uri))
        echo(
            f"evaluating the newest pretraining run {run.info.run_id} "
            f"({run.info.run_name}; pass --init to choose another)"
        )
        return _from_run(run, uri, run.info.run_id, echo)
    if source == "scratch":
        return Init(kind="scratch", source="scratch", label="scratch", tags={"method": "none"})
    if source.startswith("models:/"):
        return _from_model(source, uri)
    run_id = None
    if source.startswith("runs:/"):
        run_id = source[len("runs:/") :].strip("/").split("/", 1)[0]
    elif _RUN_ID.match(source) and not os.path.exists(source):
        run_id = source
    if run_id is not None:
        if _sqlite_missing(uri):
            raise EvalError(f"--init {source}: no tracking store at {uri}")
        try:
            run = _client(uri).get_run(run_id)
        except RuntimeError:
            raise
        except Exception as exc:
            raise EvalError(f"--init {source}: no MLflow run {run_id} in {uri} ({exc})") from None
        return _from_run(run, uri, source, echo)
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, source)
    if path.is_file():
        return _from_file(path, source, fmt)
    raise EvalError(
        f"--init {source!r} is neither 'scratch', an MLflow run id (runs:/<id>), a models:/ "
        "URI, nor an existing run folder or checkpoint file"
    )


def _strip_prefix(state: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in ("", "backbone.", "module.backbone.", "encoder.", "module."):
        sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if model_keys & set(sub):
            return sub
    return tensors


def build_encoder(
    init: Init,
    arch: str,
    in_chans: int,
    *,
    img_size: int = 224,
    key: str | None = None,
    strict: bool = True,
) -> tuple[nn.Module, ImportReport | None]:
    """A fresh ``arch`` backbone (no classifier) with ``init``'s weights loaded.

    Returns:
        ``(encoder, report)``; the report is None for scratch.

    Raises:
        EvalError: unknown arch; weights of another architecture (naming both); missing
            or unexpected keys when ``strict``.
    """
    from radengine.models import create_model

    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if arch.startswith("vit"):
        kwargs["img_size"] = img_size
    try:
        model = create_model(arch, **kwargs)
    except (ValueError, ImportError) as exc:
        raise EvalError(f"model.arch: {exc}") from None
    if init.state is None:
        return model, None
    if "conv1.weight" in model.state_dict():
        try:
            state, report = convert_checkpoint(
                dict(init.state),
                model,
                fmt=init.fmt,
                key=key if init.kind == "file" else None,
                strict=strict,
            )
        except ValueError as exc:
            raise EvalError(f"--init {init.source}: {exc}") from None
        model.load_state_dict(state, strict=False)
        return model, report
    target = model.state_dict()
    state = _strip_prefix(init.state, set(target))
    report = ImportReport(format="radengine", prefix="", nesting=())
    for name, want in target.items():
        have = state.get(name)
        if have is None:
            report.missing.append(name)
        elif have.shape != want.shape:
            raise EvalError(
                f"--init {init.source}: {name} has shape {tuple(have.shape)} in the "
                f"checkpoint but {tuple(want.shape)} in the {arch} model: the weights are "
                "for another architecture (set model.arch)"
            )
        else:
            report.loaded.append(name)
    report.unexpected = sorted(set(state) - set(target))
    if strict and (report.missing or report.unexpected):
        raise EvalError(
            f"--init {init.source}: the weights do not match {arch}: {len(report.missing)} "
            f"keys missing (first {report.missing[:3]}), {len(report.unexpected)} unexpected "
            f"(first {report.unexpected[:3]}); set init.strict=false to load the rest"
        )
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return model, report
