"""Optional native modules. Importing them never raises: a module that is missing or fails
to load leaves ``None`` here and the reason in :data:`ERRORS`, and its backend is skipped."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

ERRORS: dict[str, str] = {}


def _build_info() -> dict[str, Any]:
    path = Path(__file__).with_name("_build_info.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


BUILD_INFO: dict[str, Any] = _build_info()


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"radengine.{name}")
    except ImportError as exc:
        built = BUILD_INFO.get(name.lstrip("_"), {})
        if built and not built.get("built", True):
            ERRORS[name] = f"radengine.{name} was not built: {built.get('reason', 'unknown')}"
        else:
            ERRORS[name] = (
                f"radengine.{name} failed to import ({exc}); rebuild with `pip install -e .`"
            )
        return None


cpu: ModuleType | None = _load("_cpu")
cuda: ModuleType | None = _load("_cuda")

# Dtype codes understood by the kernels (csrc/common/hu_window.h: OutDType).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int16": 3, "uint8": 4}
