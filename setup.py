"""Build radengine's two native modules without linking libtorch.

* ``radengine._cpu``: C++17 + OpenMP kernels on raw pointers (always built).
* ``radengine._cuda``: CUDA kernels on raw device pointers and a stream, built whenever
  ``nvcc`` is found. The .cu files are compiled by nvcc into objects, then linked with the
  pybind11 binding by the host compiler against the *static* CUDA runtime, so the module
  loads on machines without a GPU or libcudart on the library path.

Environment switches:
  RADENGINE_SKIP_CUDA=1            do not build radengine._cuda
  RADENGINE_REQUIRE_CUDA=1         fail the build if radengine._cuda cannot be built (CI)
  RADENGINE_CUDA_ARCHS="80;90"     SM architectures (also "8.0;9.0", "90a")
  MAX_JOBS=N                       parallel nvcc processes
  CUDA_HOME / CUDA_PATH            toolkit root (else found from nvcc on PATH)

What was built, and why anything was not, is written to radengine/_build_info.json so
that `radengine info` can say it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pybind11
from pybind11.setup_helpers import has_flag
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _cuda_home() -> Path | None:
    """The toolkit root: CUDA_HOME/CUDA_PATH, else the one whose nvcc is on PATH."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
        # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc -> exec ...).
        candidates.append("/usr/local/cuda")
    for c in candidates:
        if (
            c
            and (Path(c) / "bin" / "nvcc").exists()
            and (Path(c) / "include" / "cuda_runtime.h").exists()
        ):
            return Path(c)
    return None


def _cuda_archs() -> list[str]:
    raw = os.environ.get("RADENGINE_CUDA_ARCHS", "80;90")
    archs = []
    for token in raw.replace(",", ";").split(";"):
        token = token.strip().replace(".", "").replace("+PTX", "")
        if token:
            archs.append(token)
    if not archs:
        raise RuntimeError(f"RADENGINE_CUDA_ARCHS={raw!r} names no architecture; e.g. '80;90'")
    return archs


def _gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    # PTX of the newest arch so newer GPUs can JIT it.
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        info: dict[str, dict] = {}
        # -fno-trapping-math lets GCC if-convert the clamps so row loops vectorise; no
        # kernel relies on FP exceptions, and results are unchanged (no reassociation).
        cpu_flags = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fno-trapping-math"]
        openmp = has_flag(self.compiler, "-fopenmp")
        for ext in self.extensions:
            ext.extra_compile_args = list(cpu_flags) + (["-fopenmp"] if openmp else [])
            ext.extra_link_args = ["-fopenmp"] if openmp else []
        info["cpu"] = {"built": True, "openmp": openmp, "flags": cpu_flags}

        cuda_ext = next(e for e in self.extensions if e.name == "radengine._cuda")
        reason = self._prepare_cuda(cuda_ext)
        if reason is not None:
            if _truthy("RADENGINE_REQUIRE_CUDA"):
                raise RuntimeError(f"RADENGINE_REQUIRE_CUDA=1 but radengine._cuda: {reason}")
            print(f"radengine: not building radengine._cuda: {reason}", file=sys.stderr)
            self.extensions.remove(cuda_ext)
            info["cuda"] = {"built": False, "reason": reason}
        else:
            info["cuda"] = {
                "built": True,
                "archs": _cuda_archs(),
                "nvcc": self._nvcc_version,
                "cudart": "static",
            }
        super().build_extensions()
        self._build_info = info

    def run(self) -> None:
        super().run()
        # Next to the built modules, and (editable / --inplace) into the source package.
        text = json.dumps(getattr(self, "_build_info", {}), indent=2) + "\n"
        targets = [Path(self.build_lib) / "radengine"]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(ROOT / "radengine")
        for d in targets:
            d.mkdir(parents=True, exist_ok=True)
            (d / "_build_info.json").write_text(text)

    def _prepare_cuda(self, ext: Extension) -> str | None:
        """Compile the .cu sources with nvcc; returns why not, or None on success."""
        if _truthy("RADENGINE_SKIP_CUDA"):
            return "skipped because RADENGINE_SKIP_CUDA=1"
        home = _cuda_home()
        if home is None:
            return "nvcc not found (put it on PATH or set CUDA_HOME)"
        nvcc = home / "bin" / "nvcc"
        self._nvcc_version = (
            subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        lib_dir = next((home / d for d in ("lib64", "lib") if (home / d).is_dir()), None)
        if lib_dir is None or not list(lib_dir.glob("libcudart_static.a")):
            return f"libcudart_static.a not found under {home}"

        build_dir = Path(self.build_temp) / "cuda"
        build_dir.mkdir(parents=True, exist_ok=True)
        flags = [
            "-O3",
            "-std=c++17",
            "-lineinfo",
            "--expt-relaxed-constexpr",
            "-Xcompiler=-fPIC,-fvisibility=hidden",
            f"-I{CSRC}",
            *_gencode_flags(_cuda_archs()),
        ]
        sources = sorted((CSRC / "cuda").glob("*.cu"))

        def compile_one(src: Path) -> Path:
            obj = build_dir / (src.stem + ".o")
            cmd = [str(nvcc), "-c", str(src), "-o", str(obj), *flags]
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
            return obj

        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objects = list(pool.map(compile_one, sources))
        ext.extra_objects = [str(o) for o in objects]
        ext.include_dirs.append(str(home / "include"))
        ext.library_dirs.append(str(lib_dir))
        ext.libraries.extend(["cudart_static", "rt", "pthread", "dl"])
        return None


def _ext(name: str, binding: str, sources: list[Path]) -> Extension:
    return Extension(
        name,
        sources=[str(p.relative_to(ROOT)) for p in [CSRC / binding, *sources]],
        include_dirs=[str(CSRC), pybind11.get_include()],
        language="c++",
    )


setup(
    ext_modules=[
        _ext("radengine._cpu", "bind_cpu.cpp", sorted((CSRC / "cpu").glob("*.cpp"))),
        _ext("radengine._cuda", "bind_cuda.cpp", []),
    ],
    cmdclass={"build_ext": BuildExt},
)
