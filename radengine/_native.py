"""Optional native modules. Importing them never raises: a module that is missing or fails
to load leaves ``None`` here and the reason in :data:`ERRORS`, and its backend is skipped."""

from __future__ import annotations

import importlib
import json
import warnings
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


def _check_one_openmp_runtime() -> None:
    """Warn when radengine._cpu brought a second OpenMP runtime into the process.

    The extension links ``libgomp.so.1``; torch's Linux wheels ship a libgomp with that same
    soname, so the loader maps one runtime and torch, MKL and radengine's kernels share its
    thread pool (tests/test_threads.py checks it). A torch whose runtime is renamed (e.g.
    ``libgomp-<hash>.so.1``) or is Intel's/LLVM's would get a second pool here: two teams,
    each sized to every core, spinning against each other on every mixed workload."""
    from radengine.threads import openmp_runtimes

    found = openmp_runtimes()
    if len(found) > 1:
        warnings.warn(
            f"{len(found)} OpenMP runtimes are loaded ({', '.join(found)}): torch's and "
            "radengine._cpu's thread pools will oversubscribe the cores; build radengine "
            "against the OpenMP runtime torch uses",
            RuntimeWarning,
            stacklevel=2,
        )


cpu: ModuleType | None = _load("_cpu")
cuda: ModuleType | None = _load("_cuda")
if cpu is not None:
    _check_one_openmp_runtime()

# Dtype codes understood by the kernels (csrc/common/hu_window.h: OutDType).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int16": 3, "uint8": 4}
