"""Self-supervised methods, one file each (radengine/ssl/<method>.py), behind a registry.

``method_class(name)`` imports and returns a method's class (a :class:`Method`), whose
``recipe`` is layered under the user's config when a pretraining config is loaded
(``radengine.config``: defaults <- recipe, with the method's ``QUICK`` settings over it when
the config's ``recipe`` is ``quick`` <- YAML <- overrides); ``check(cfg)`` checks the
``ssl.*`` keys given for it; ``build(cfg, backbone)`` makes the method's module.
``radengine list methods`` prints :data:`METHODS` with each method's summary.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import typing
from typing import Any

from radengine.ssl.base import Method, View, cosine_schedule

__all__ = ["METHODS", "Method", "View", "build", "check", "cosine_schedule", "method_class"]

# name -> "module:Class", imported on first use (the methods import torch).
METHODS: dict[str, str] = {
    "simclr": "radengine.ssl.simclr:SimCLR",
    "mocov2": "radengine.ssl.mocov2:MoCoV2",
    "mocov3": "radengine.ssl.mocov3:MoCoV3",
    "byol": "radengine.ssl.byol:BYOL",
    "simsiam": "radengine.ssl.simsiam:SimSiam",
    "barlowtwins": "radengine.ssl.barlowtwins:BarlowTwins",
    "vicreg": "radengine.ssl.vicreg:VICReg",
    "dino": "radengine.ssl.dino:DINO",
}


def method_class(name: str) -> type[Method]:
    """The class of method ``name`` (ConfigError naming ``method`` if unknown)."""
    from radengine.config import ConfigError

    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint} (known: {', '.join(METHODS)})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check(cfg: Any) -> Any:
    """``cfg`` with its ``ssl`` keys checked against the method's ``Options`` and coerced
    (an unknown key names ``ssl.<key>`` and the closest known one; a wrong type or value
    names the key and what it needs), every option present."""
    from radengine import config as config_mod
    from radengine.config import ConfigError

    cls = method_class(cfg.method)
    fields = [f.name for f in dataclasses.fields(cls.Options)]
    hints = typing.get_type_hints(cls.Options)
    values = {}
    for key, value in (cfg.ssl or {}).items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean 'ssl.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown config key 'ssl.{key}' for method {cls.name}{hint} "
                f"({cls.name}'s keys: {', '.join(fields) or 'none'})"
            )
        values[key] = config_mod._coerce(value, hints[key], f"ssl.{key}", type(cfg))
    try:
        opts = cls.Options(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"ssl ({cls.name}): {exc}") from None
    return dataclasses.replace(cfg, ssl=dataclasses.asdict(opts))


def build(cfg: Any, backbone: Any) -> Method:
    """The method module of ``cfg`` on ``backbone``."""
    return method_class(cfg.method).from_config(backbone, check(cfg))
