"""Import published ResNet checkpoints (supervised and self-supervised) onto radengine.

radengine's :class:`~radengine.models.resnet.ResNet` uses torchvision's parameter names, so
importing a checkpoint means: find the backbone's state dict inside the file, strip the
prefix its training wrapper added, drop the heads (classifier, projector, prototypes), and
check every shape. :func:`convert_checkpoint` does that and reports what it did;
:func:`load_pretrained` also loads the result into a model.

Accepted layouts (``fmt``). "Nesting" is the path of dict keys to the state dict, tried in
the order given (override with ``key="student"`` etc.); "prefix" is what precedes the
torchvision key, tried in the order given (the first one under which ``conv1.weight``
exists wins):

=============== ============================= ==========================================
fmt             nesting                       backbone prefixes
=============== ============================= ==========================================
``torchvision`` none, ``state_dict``,         ``""`` (``torchvision.models.resnet50``
                ``model``                     weights; ``fc.*`` dropped)
``moco``        ``state_dict``                ``module.encoder_q.`` (MoCo v1/v2;
                                              ``fc.*`` incl. the v2 MLP dropped,
                                              ``encoder_k``/``queue`` ignored),
                                              ``encoder_q.``, ``module.base_encoder.``,
                                              ``base_encoder.`` (MoCo v3)
``simclr``      ``state_dict``, ``model``     ``""`` (tonylins' conversion of the TF
                                              SimCLR v1/v2 checkpoints: torchvision keys
                                              plus ``fc``), ``module.``, ``encoder.``,
                                              ``backbone.``, ``module.encoder.``,
                                              ``module.backbone.`` (PyTorch SimCLRs,
                                              solo-learn, radengine's own pretraining)
``byol``        ``state_dict``, ``model``     ``""``, ``module.``, ``online_encoder.net.``,
                                              ``module.online_encoder.net.``
                                              (byol-pytorch), ``online_network.encoder.``,
                                              ``online_network.``, ``backbone.``,
                                              ``module.backbone.``, ``encoder.``
``barlow``      none, ``model``               ``""`` (the released ``resnet50.pth``),
                                              ``module.backbone.`` (training checkpoint;
                                              projector and ``bn`` dropped/ignored),
                                              ``backbone.``
``swav``        none, ``state_dict``          ``module.``, ``""`` (``projection_head``,
                                              ``prototypes`` dropped; also SwAV-repo
                                              DeepCluster-v2 and SeLa-v2)
``dino``        none, ``teacher``,            ``""`` (released backbone),
                ``state_dict``, ``model``     ``backbone.``, ``module.backbone.``,
                                              ``module.`` (full checkpoint: the teacher by
                                              default; ``head.*`` dropped)
=============== ============================= ==========================================

``fmt="auto"`` descends ``state_dict``/``model``/``teacher`` and recognises MoCo
(``encoder_q``/``base_encoder``), DINO (``teacher`` nesting or ``head.last_layer``), SwAV
(``prototypes``/``projection_head``), BYOL (``online_encoder``/``online_network``) and
Barlow Twins training checkpoints (``module.backbone`` + ``module.projector``); anything
else whose keys are torchvision keys under exactly one prefix is reported as
``torchvision`` with that prefix. Not accepted: checkpoints whose module names differ from
torchvision's (e.g. the ``net.0.0.weight`` layout of some SimCLR v2 ports, TF or JAX files):
convert those to torchvision names first.

Heads: keys starting (after the backbone prefix, or after a leading ``module.``) with
``fc.``, ``head.``, ``heads.``, ``projector.``, ``projection_head.``, ``prototypes.``,
``predictor.`` or ``classifier.`` are dropped, even when the model has an ``fc``: a
published head never fits a downstream task. The model's own head keys are left as they are
and listed in the report.

Input channels: a first conv with a different number of input channels (an RGB checkpoint
into a 1-channel CT model, or the reverse) is converted with
:func:`~radengine.models.registry.adapt_input_conv` when ``adapt_in_chans`` (default):
summing the RGB filters gives a 1-channel model whose output on a grey image equals the
RGB model's on that image repeated to 3 channels. Any other shape difference is an error
naming the first mismatching key, both shapes and the architectures they suggest.

Files are read with ``torch.load(weights_only=True)`` (data only, no code). Some full
training checkpoints pickle other objects (DINO's ``args`` Namespace); load those yourself
with ``weights_only=False`` if you trust the file, and pass the loaded dict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from radengine.models.registry import adapt_input_conv

__all__ = ["FORMATS", "ImportReport", "convert_checkpoint", "load_pretrained"]

FORMATS = ("auto", "torchvision", "moco", "simclr", "byol", "barlow", "swav", "dino")

_INPUT_CONV = "conv1.weight"
_PROBES = ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")
_NESTING = ("state_dict", "model", "teacher")
_HEADS = (
    "fc.",
    "head.",
    "heads.",
    "projector.",
    "projection_head.",
    "prototypes.",
    "predictor.",
    "classifier.",
)

_PREFIXES: dict[str, tuple[str, ...]] = {
    "torchvision": ("",),
    "moco": ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."),
    "simclr": (
        "",
        "module.",
        "encoder.",
        "backbone.",
        "module.encoder.",
        "module.backbone.",
    ),
    "byol": (
        "",
        "module.",
        "online_encoder.net.",
        "module.online_encoder.net.",
        "online_network.encoder.",
        "online_network.",
        "backbone.",
        "module.backbone.",
        "encoder.",
    ),
    "barlow": ("", "module.backbone.", "backbone."),
    "swav": ("module.", ""),
    "dino": ("", "backbone.", "module.backbone.", "module."),
}

# Published ResNets by (block, blocks per stage), for the mismatch message.
_ARCHS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


@dataclass
class ImportReport:
    """What :func:`convert_checkpoint` did. Key lists hold checkpoint keys (as in the file)
    except ``loaded``, ``missing``, ``filled`` and ``head_not_loaded`` (model keys).

    Attributes:
        format: the layout used (the detected one for ``fmt="auto"``).
        prefix: the backbone prefix stripped from the checkpoint keys.
        nesting: dict keys descended to reach the state dict, e.g. ``("state_dict",)``.
        loaded: model keys filled from the checkpoint.
        missing: model backbone keys the checkpoint lacks.
        unexpected: checkpoint keys under the prefix that the model does not have.
        dropped_head: checkpoint head keys dropped (classifier, projector, ...).
        ignored: other checkpoint keys outside the backbone (momentum encoders, queues).
        adapted: notes on converted tensors (input channels).
        filled: ``num_batches_tracked`` buffers absent from the checkpoint, set to 0.
        head_not_loaded: the model's own head keys (``fc.*``), left untouched.
    """

    format: str
    prefix: str
    nesting: tuple[str, ...]
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    head_not_loaded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        where = f"{'/'.join(self.nesting) or '<top>'}:{self.prefix or '<no prefix>'}"
        parts = [
            f"format={self.format} ({where})",
            f"loaded={len(self.loaded)}",
            f"missing={len(self.missing)}",
            f"unexpected={len(self.unexpected)}",
            f"dropped_head={len(self.dropped_head)}",
            f"ignored={len(self.ignored)}",
        ]
        if self.adapted:
            parts.append("adapted: " + "; ".join(self.adapted))
        return ", ".join(parts)


def _load(checkpoint: str | os.PathLike[str] | Mapping[str, Any], weights_only: bool) -> Any:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, str | os.PathLike):
        raise ValueError(
            f"checkpoint must be a path or a loaded dict, got {type(checkpoint).__name__}"
        )
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint)} does not exist")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        hint = (
            "; it may pickle non-tensor objects: if you trust the file, pass "
            "weights_only=False or a dict you loaded yourself"
            if weights_only
            else ""
        )
        raise ValueError(
            f"cannot read checkpoint {os.fspath(checkpoint)} ({type(exc).__name__}: {exc}){hint}"
        ) from exc


def _has_tensors(d: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Tensor) for v in d.values())


def _unnest(ckpt: Any, key: str | None) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint must hold a dict, got {type(ckpt).__name__}")
    path: list[str] = []
    d: Mapping[str, Any] = ckpt
    if key is not None:
        for part in key.split("."):
            if not isinstance(d, Mapping) or part not in d:
                raise ValueError(f"key {key!r}: no {part!r} in the checkpoint (keys: {_first(d)})")
            d = d[part]
            path.append(part)
        if not isinstance(d, Mapping):
            raise ValueError(f"key {key!r} leads to a {type(d).__name__}, not a state dict")
        return d, tuple(path)
    while not _has_tensors(d):
        nxt = next((k for k in _NESTING if isinstance(d.get(k), Mapping)), None)
        if nxt is None:
            break
        d = d[nxt]
        path.append(nxt)
    return d, tuple(path)


def _first(d: Any, n: int = 8) -> str:
    if not isinstance(d, Mapping):
        return type(d).__name__
    keys = list(d)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _has_backbone(keys: set[str], prefix: str) -> bool:
    return all(prefix + p in keys for p in _PROBES)


def _starts(keys: set[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _detect(keys: set[str], nesting: tuple[str, ...]) -> str:
    """The layout of an unnested state dict, by its marker keys."""
    if _starts(keys, "module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."):
        return "moco"
    if "teacher" in nesting or any("head.last_layer" in k for k in keys):
        return "dino"
    if _starts(keys, "module.prototypes.", "module.projection_head.", "prototypes."):
        return "swav"
    if _starts(
        keys, "online_encoder.", "module.online_encoder.", "online_network.", "module.online_"
    ):
        return "byol"
    if _starts(keys, "module.backbone.") and _starts(keys, "module.projector."):
        return "barlow"
    return "torchvision"


def _fallback_prefix(keys: set[str]) -> str:
    """The single prefix under which torchvision keys sit, for unrecognised layouts."""
    found = sorted(
        {
            k[: -len(_INPUT_CONV)]
            for k in keys
            if k.endswith(_INPUT_CONV) and _has_backbone(keys, k[: -len(_INPUT_CONV)])
        }
    )
    if not found:
        raise ValueError(
            "nothing in the checkpoint maps onto a torchvision-layout ResNet: no prefix "
            f"precedes {list(_PROBES)}; first keys: {_first(dict.fromkeys(sorted(keys)))}"
        )
    if len(found) > 1:
        raise ValueError(
            f"the checkpoint holds several ResNets (prefixes {found}); pick one with fmt= "
            "(e.g. 'moco', 'dino') or key= (e.g. key='student')"
        )
    return found[0]


def _is_head(rel: str) -> bool:
    return rel.startswith(_HEADS) or (rel.startswith("module.") and rel[7:].startswith(_HEADS))


def _describe(shapes: Mapping[str, Any]) -> str:
    """'resnet18 (BasicBlock [2, 2, 2, 2], stem width 64)' for a torchvision-keyed dict."""
    bottleneck = any(re.fullmatch(r"layer\d+\.\d+\.conv3\.weight", k) for k in shapes)
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in shapes if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(idx))
    kind = "bottleneck" if bottleneck else "basic"
    name = _ARCHS.get((kind, tuple(blocks)), "a custom ResNet")
    stem = shapes.get(_INPUT_CONV)
    width = f", stem width {stem.shape[0]}" if isinstance(stem, Tensor) else ""
    block = "Bottleneck" if bottleneck else "BasicBlock"
    return f"{name} ({block} {blocks}{width})"


@torch.no_grad()
def convert_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    model: nn.Module | Mapping[str, Tensor],
    *,
    fmt: str = "auto",
    key: str | None = None,
    strict: bool = True,
    adapt_in_chans: bool = True,
    weights_only: bool = True,
) -> tuple[dict[str, Tensor], ImportReport]:
    """Convert a published ResNet checkpoint into a state dict for ``model``.

    Args:
        checkpoint: a file path or an already-loaded checkpoint dict.
        model: the target (a radengine ResNet) or its ``state_dict()``: gives the key
            names, shapes and dtypes to produce.
        fmt: one of :data:`FORMATS` (see the module docstring for each layout).
        key: dot-separated path to the state dict inside the checkpoint (``"student"``,
            ``"model.state_dict"``); default: descend ``state_dict``/``model``/``teacher``
            while the dict holds no tensors.
        strict: raise when backbone keys are missing or unexpected (shape mismatches are
            always errors).
        adapt_in_chans: convert a first conv with another number of input channels (see
            the module docstring) instead of raising.
        weights_only: passed to ``torch.load`` for a path.

    Returns:
        ``(state_dict, report)``: the state dict holds the loaded backbone keys (in the
        model's dtypes, on the CPU) and 0 for absent ``num_batches_tracked`` buffers, never
        the model's head; load it with ``model.load_state_dict(sd, strict=False)`` or use
        :func:`load_pretrained`.

    Raises:
        ValueError: unknown ``fmt``; nothing maps; a shape mismatch (naming the first key,
            both shapes and the architectures); missing/unexpected keys when ``strict``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if isinstance(model, nn.Module):
        target = model.state_dict()
    elif isinstance(model, Mapping):
        target = dict(model)
    else:
        raise ValueError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    if _INPUT_CONV not in target:
        raise ValueError(
            f"model has no {_INPUT_CONV!r}: only torchvision-layout ResNets are supported"
        )

    state, nesting = _unnest(_load(checkpoint, weights_only), key)
    keys = {k for k, v in state.items() if isinstance(v, Tensor)}
    if not keys:
        raise ValueError(
            "nothing in the checkpoint maps onto the model: no tensors found "
            f"(top-level keys: {_first(state)}); pass key= to point at the state dict"
        )
    if fmt == "auto":
        used = _detect(keys, nesting)
        if used == "torchvision":
            prefix = _fallback_prefix(keys)
        else:
            prefix = next((p for p in _PREFIXES[used] if _has_backbone(keys, p)), None)
            if prefix is None:
                prefix = _fallback_prefix(keys)
    else:
        used = fmt
        prefix = next((p for p in _PREFIXES[fmt] if _has_backbone(keys, p)), None)
        if prefix is None:
            raise ValueError(
                f"nothing maps: this is not a {fmt!r} checkpoint as radengine reads them (none "
                f"of the prefixes {list(_PREFIXES[fmt])} precedes {list(_PROBES)}); first "
                f"keys: {_first(dict.fromkeys(sorted(keys)))}. Try fmt='auto'."
            )

    report = ImportReport(format=used, prefix=prefix, nesting=nesting)
    under = {k[len(prefix) :]: state[k] for k in keys if k.startswith(prefix)}
    source: dict[str, Tensor] = {}
    for k in state:
        if k not in keys:
            report.ignored.append(k)
        elif not k.startswith(prefix):
            (report.dropped_head if _is_head(k) else report.ignored).append(k)
        else:
            rel = k[len(prefix) :]
            if _is_head(rel):
                report.dropped_head.append(k)
            elif rel in target:
                source[rel] = state[k]
            else:
                report.unexpected.append(k)

    # Shapes first, in the model's key order, so the error names the first mismatch.
    out: dict[str, Tensor] = {}
    for name, want in target.items():
        if _is_head(name):
            report.head_not_loaded.append(name)
            continue
        if name not in source:
            if name.endswith("num_batches_tracked"):
                out[name] = torch.zeros_like(want, device="cpu")
                report.filled.append(name)
            else:
                report.missing.append(name)
            continue
        have = source[name]
        if have.shape != want.shape:
            if (
                name == _INPUT_CONV
                and adapt_in_chans
                and have.ndim == 4
                and have.shape[:1] + have.shape[2:] == want.shape[:1] + want.shape[2:]
            ):
                have = adapt_input_conv(have.to(want.dtype), want.shape[1])
                report.adapted.append(
                    f"{name}: {source[name].shape[1]} -> {want.shape[1]} input channels"
                )
            else:
                hint = ""
                if name == _INPUT_CONV and have.shape[0] == want.shape[0]:
                    hint = " (input channels differ: pass adapt_in_chans=True)"
                raise ValueError(
                    f"checkpoint does not match the model: {prefix}{name} has shape "
                    f"{tuple(have.shape)} in the checkpoint but {tuple(want.shape)} in the "
                    f"model{hint}. The checkpoint looks like {_describe(under)}, the model "
                    f"like {_describe(target)}."
                )
        out[name] = have.detach().to(device="cpu", dtype=want.dtype).clone()
        report.loaded.append(name)

    if not report.loaded:
        raise ValueError(f"nothing maps: no checkpoint key under prefix {prefix!r} fits the model")
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"checkpoint does not match the model ({_describe(under)} vs {_describe(target)}): "
            f"{len(report.missing)} model keys missing (first: {report.missing[:3]}), "
            f"{len(report.unexpected)} unexpected checkpoint keys (first: "
            f"{report.unexpected[:3]}); pass strict=False to load the rest"
        )
    return out, report


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    fmt: str = "auto",
    key: str | None = None,
    strict: bool = True,
    adapt_in_chans: bool = True,
    weights_only: bool = True,
) -> ImportReport:
    """Convert ``checkpoint`` (see :func:`convert_checkpoint`) and load it into ``model``.

    The model's head (``fc``), if any, keeps its initialisation.

    Returns:
        The :class:`ImportReport`.
    """
    state, report = convert_checkpoint(
        checkpoint,
        model,
        fmt=fmt,
        key=key,
        strict=strict,
        adapt_in_chans=adapt_in_chans,
        weights_only=weights_only,
    )
    result = model.load_state_dict(state, strict=False)
    left = set(result.missing_keys) - set(report.head_not_loaded) - set(report.missing)
    if left or result.unexpected_keys:  # cannot happen: keys come from the model itself
        raise RuntimeError(f"load_state_dict disagreed: {sorted(left)}, {result.unexpected_keys}")
    return report
