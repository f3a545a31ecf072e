"""What `radengine info` reports: versions, native modules, devices, op backends and why
any backend cannot run, and the tracking URI."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

import torch

import radengine
from radengine import _native, threads, tracking
from radengine.ops import OPS, _dispatch

PACKAGES = ("torch", "numpy", "triton", "pybind11", "mlflow", "pydicom", "nibabel", "omegaconf")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect() -> dict[str, Any]:
    """Everything `radengine info` prints, as plain data (also its --json output)."""
    native: dict[str, Any] = {}
    for name, module in (("_cpu", _native.cpu), ("_cuda", _native.cuda)):
        entry: dict[str, Any] = {"loaded": module is not None}
        if module is None:
            entry["reason"] = _native.ERRORS.get(name)
        entry["build"] = _native.BUILD_INFO.get(name.lstrip("_"), {})
        native[f"radengine.{name}"] = entry
    if _native.cpu is not None:
        native["radengine._cpu"]["openmp_threads"] = _native.cpu.openmp_threads()
    if _native.cuda is not None:
        count, error = _native.cuda.device_count()
        native["radengine._cuda"].update(
            runtime_version=_native.cuda.runtime_version(),
            devices=count if count >= 0 else 0,
            device_error=error or None,
        )

    devices: dict[str, Any] = {
        "cpu": {
            "name": _cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
    }
    if torch.cuda.is_available():
        devices["cuda"] = [
            {"index": i, "name": torch.cuda.get_device_name(i)}
            for i in range(torch.cuda.device_count())
        ]
    else:
        devices["cuda"] = _dispatch.unavailable_reason("cuda", "cuda") or "not available"

    backends = {
        op: {dev: _dispatch.status(impls, dev) for dev in ("cpu", "cuda")}
        for op, impls in OPS.items()
    }
    defaults = {
        op: {dev: _dispatch.default_backend(impls, dev) for dev in ("cpu", "cuda")}
        for op, impls in OPS.items()
    }
    return {
        "radengine": radengine.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "packages": {p: _version(p) for p in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "native": native,
        "devices": devices,
        "backends": backends,
        "default_backend": defaults,
        "RADENGINE_BACKEND": os.environ.get("RADENGINE_BACKEND") or None,
        "tracking_uri": tracking.tracking_uri(),
        "openmp": threads.status(),
    }


def format_text(info: dict[str, Any]) -> str:
    lines = [f"radengine {info['radengine']}", f"python    {info['python']}"]
    pkgs = ", ".join(f"{k} {v or '-'}" for k, v in info["packages"].items())
    lines.append(f"packages  {pkgs}")
    lines.append(f"torch CUDA build: {info['torch_cuda'] or 'none (CPU build)'}")
    lines.append("")
    lines.append("native modules")
    for name, entry in info["native"].items():
        if entry["loaded"]:
            extra = []
            if "openmp_threads" in entry:
                extra.append(f"OpenMP threads {entry['openmp_threads']}")
            build = entry.get("build") or {}
            if build.get("archs"):
                extra.append("archs " + ";".join(build["archs"]))
            if "runtime_version" in entry:
                rv = entry["runtime_version"]
                extra.append(f"CUDA runtime {rv // 1000}.{rv % 1000 // 10}")
                extra.append(
                    f"{entry['devices']} device(s)"
                    + (f" ({entry['device_error']})" if entry.get("device_error") else "")
                )
            lines.append(f"  {name:<16} loaded   {', '.join(extra)}")
        else:
            lines.append(f"  {name:<16} missing  {entry['reason']}")
    omp = info["openmp"]
    runtimes = ", ".join(omp["runtimes"]) or "none loaded"
    policy = "passive wait" if omp["wait_policy_applied"] else f"runtime default ({omp['reason']})"
    lines.append(f"  OpenMP           {policy}; runtime {runtimes}")
    lines.append("")
    lines.append("devices")
    cpu = info["devices"]["cpu"]
    lines.append(
        f"  cpu   {cpu['name']}, {cpu['cores']} cores, torch threads {cpu['torch_threads']}"
    )
    cuda = info["devices"]["cuda"]
    if isinstance(cuda, list):
        for d in cuda:
            lines.append(f"  cuda:{d['index']} {d['name']}")
    else:
        lines.append(f"  cuda  none: {cuda}")
    lines.append("")
    forced = info["RADENGINE_BACKEND"]
    lines.append("op backends (* = default; RADENGINE_BACKEND=" + (forced or "unset") + ")")
    for op, per_device in info["backends"].items():
        for dev, status in per_device.items():
            lines.append(f"  {op} on {dev} tensors:")
            for backend, why in status.items():
                mark = "*" if info["default_backend"][op][dev] == backend else " "
                state = "available" if why is None else f"unavailable: {why}"
                lines.append(f"    {mark} {backend:<10} {state}")
    lines.append("")
    lines.append(f"tracking URI  {info['tracking_uri']}")
    lines.append("check the kernels here: radengine selftest --device cpu|cuda (docs/gpu.md)")
    return "\n".join(lines)
