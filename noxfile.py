"""nox sessions: `nox` (lint + tests), `nox -s bench`, `nox -s gpu` (the GPU check, offline),
`nox -s docs` (the documentation site, strict).

Sessions see the interpreter's site-packages so an installed torch (CPU or CUDA) is reused;
where there is none, RADENGINE_TORCH (default torch==2.13.0, the CPU wheel) is installed
before radengine, so nothing ever resolves an unpinned torch to a multi-GB CUDA build.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
VENV = ["--system-site-packages"]


def _install_radengine(session: nox.Session, extras: str) -> None:
    has_torch = session.run(
        "python", "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)",
        silent=True,
    ).strip().endswith("True")  # fmt: skip
    if not has_torch:
        session.install(os.environ.get("RADENGINE_TORCH", "torch==2.13.0"))
    session.install("-e", f".[{extras}]")


@nox.session(venv_params=VENV)
def tests(session: nox.Session) -> None:
    """The README's test command: python -m pytest."""
    _install_radengine(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


DOCS_REQUIREMENTS = ("mkdocs==1.6.1", "mkdocs-material==9.8.2")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (MkDocs, Material theme) into site/ in strict mode: a
    broken link or anchor, or a page missing from the nav, fails. `nox -s docs -- serve`
    serves it on http://127.0.0.1:8000 instead."""
    session.install(*DOCS_REQUIREMENTS)
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # Material's end-of-life banner
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(venv_params=VENV)
def bench(session: nox.Session) -> None:
    """Every benchmarks/bench_*.py; arguments after `--` go to each script.

    bench_pipeline.py (end-to-end pretraining, radengine against the study-style baseline)
    trains for a few minutes on a CPU; it runs last, after the per-op benchmarks."""
    _install_radengine(session, "triton,dicom,images")
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    pipeline = ROOT / "benchmarks" / "bench_pipeline.py"
    for script in [s for s in scripts if s != pipeline] + [pipeline]:
        session.run("python", str(script), *session.posargs)


@nox.session(venv_params=VENV)
def gpu(session: nox.Session) -> None:
    """The whole GPU check in one command, with no network (docs/gpu.md): build radengine in
    place for this GPU's architecture only (pip --no-build-isolation --no-deps --no-index
    into this venv, which sees the system's torch, triton, numpy and pybind11), then
    `radengine selftest --device cuda`, the GPU benchmarks, `pytest tests/ops -k "cuda or
    triton"` and the summary against the targets; about 8 minutes on one H100. Arguments
    after `--` go to benchmarks/gpu_check.py, e.g. `nox -s gpu -- --device cuda:1`, or
    `-- --device cpu` for the same steps at tiny sizes on a CPU."""
    ready = session.run(
        "python", "-c",
        "import importlib.util as u; "
        "print(all(u.find_spec(m) for m in ('torch', 'pybind11', 'setuptools')))",
        silent=True,
    ).strip().endswith("True")  # fmt: skip
    if not ready:
        session.error(
            "nox -s gpu builds offline against the system's torch, pybind11 and setuptools, "
            "which this session's venv does not see: install them for the interpreter nox "
            "runs, or run `python benchmarks/gpu_check.py --build` from an environment that "
            "has them"
        )
    session.run("python", str(ROOT / "benchmarks" / "gpu_check.py"), "--build", *session.posargs)
